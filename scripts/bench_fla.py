"""Side-by-side reference timings for `taylorcal bench gdn`: flash-linear-attention's
chunk_gated_delta_rule (Triton; bf16 and fp32) and a naive PyTorch recurrence, on the same
shapes, on the device GPU. Median of 20 runs with CUDA events; writes JSON lines to argv[1].
fla itself is installed from wheels on the device only (never committed)."""
import json, sys, time
import torch
import fla
import fla.ops.common.chunk_o as chunk_o
from fla.ops.gated_delta_rule import chunk_gated_delta_rule

chunk_o.TRITON_ABOVE_3_7_1 = True  # timing only (see DEVICE.md): fla refuses the gated backward on Triton < 3.7.1
out = open(sys.argv[1], "a")
SHAPES = [(1, 2048, 16, 64), (4, 4096, 16, 128), (1, 8192, 8, 128)]
if len(sys.argv) > 2:  # e.g. "4,4096,16,128;1,8192,8,128"
    SHAPES = [tuple(int(x) for x in s.split(",")) for s in sys.argv[2].split(";")]
# optional third argument: the dtypes to time ("bfloat16", "float32" or both, comma-separated);
# "nonaive" in it skips the naive recurrence (Triton autotuning costs minutes per shape and dtype)
WANT = sys.argv[3].split(",") if len(sys.argv) > 3 else ["bfloat16", "float32"]


def inputs(b, t, h, d, dtype, grad):
    g = torch.Generator(device="cuda").manual_seed(0)
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=torch.float32, generator=g)
    q, k, v = mk(b, t, h, d), mk(b, t, h, d), mk(b, t, h, d)
    gate = -torch.exp(mk(b, t, h) - 2.0)
    beta = torch.sigmoid(mk(b, t, h))
    xs = [x.to(dtype).requires_grad_(grad) for x in (q, k, v, gate, beta)]
    return xs


def timeit(fn, runs=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def naive(q, k, v, gate, beta, scale):
    b, t, h, d = q.shape
    q = torch.nn.functional.normalize(q.float(), dim=-1) * scale
    k = torch.nn.functional.normalize(k.float(), dim=-1)
    v, gate, beta = v.float(), gate.float(), beta.float()
    S = q.new_zeros(b, h, d, d)
    o = []
    for i in range(t):
        S = S * gate[:, i].exp()[..., None, None]
        kv = torch.einsum("bhd,bhed->bhe", k[:, i], S)
        vn = beta[:, i][..., None] * (v[:, i] - kv)
        S = S + torch.einsum("bhe,bhd->bhed", vn, k[:, i])
        o.append(torch.einsum("bhed,bhd->bhe", S, q[:, i]))
    return torch.stack(o, 1)


for (b, t, h, d) in SHAPES:
    for dtype in [d for d in (torch.bfloat16, torch.float32) if str(d).split(".")[-1] in WANT]:
        xs = inputs(b, t, h, d, dtype, True)
        f = lambda: chunk_gated_delta_rule(*xs, scale=d ** -0.5, use_qk_l2norm_in_kernel=True)[0]
        fwd = timeit(lambda: f())
        do = torch.randn(b, t, h, d, device="cuda", dtype=dtype)
        fb = timeit(lambda: f().backward(do))
        rec = dict(impl="fla", dtype=str(dtype).split(".")[-1], shape=[b, t, h, d], fwd_ms=fwd, fwd_bwd_ms=fb, gpu=torch.cuda.get_device_name())
        print(rec, flush=True); out.write(json.dumps(rec) + "\n"); out.flush()
    if "nonaive" in WANT:
        continue
    xs = inputs(b, t, h, d, torch.float32, False)
    with torch.no_grad():
        nf = timeit(lambda: naive(*xs, d ** -0.5), runs=3, warm=1)
    rec = dict(impl="naive-pytorch", dtype="float32", shape=[b, t, h, d], fwd_ms=nf, gpu=torch.cuda.get_device_name())
    print(rec, flush=True); out.write(json.dumps(rec) + "\n"); out.flush()
