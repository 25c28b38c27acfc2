#!/usr/bin/env bash
# One device call that times every cell of docs/results.md's GDN table side by side:
# fla's chunk_gated_delta_rule (bf16, fp32) and a naive PyTorch recurrence at the three
# `taylorcal bench gdn` shapes, and ours before and after them.
#   scripts/bench_fla_all.sh TAYLORCAL_BINARY OUT_DIR
# Triton autotuning compiles dozens of configs per shape and dtype (minutes each): a warm-up
# phase compiles them all at once, one process per shape and dtype, into a shared
# TRITON_CACHE_DIR (their timings are discarded); then one process times every cell on a
# quiet GPU, autotuning from the cached binaries in seconds. Needs fla on PYTHONPATH.
set -u
TC=$1
OUT=$2
WARM=${WARM:-320}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.tritoncache}
mkdir -p "$TRITON_CACHE_DIR" "$OUT/warm"
T0=$(date +%s)
for s in "1,2048,16,64" "4,4096,16,128" "1,8192,8,128"; do
  for dt in bfloat16 float32; do
    timeout "$WARM" python3 scripts/bench_fla.py "$OUT/warm/w.jsonl" "$s" "$dt,nonaive" > /dev/null 2> "$OUT/warm/$s-$dt.err" &
  done
done
wait
echo "Triton warm-up: $(( $(date +%s) - T0 )) s"
"$TC" bench gdn --json > "$OUT/gdn_ours.json"
LEFT=$(( ${BUDGET:-585} - ( $(date +%s) - T0 ) - 25 ))
timeout "$LEFT" python3 scripts/bench_fla.py "$OUT/fla.jsonl" "1,2048,16,64;1,8192,8,128;4,4096,16,128" bfloat16,float32 > "$OUT/fla.out" 2> "$OUT/fla.err"
echo "fla: exit $?"
cat "$OUT/fla.jsonl"
"$TC" bench gdn --json > "$OUT/gdn_ours_after.json"
echo "total: $(( $(date +%s) - T0 )) s"
