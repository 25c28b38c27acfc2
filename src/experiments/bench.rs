//! Kernel benchmarks: time dispatches on the GPU (timestamp queries where the adapter has
//! them, else wall-clock around a synchronised submission) and report serde-serialisable
//! results with GFLOP/s or GB/s.
//!
//! Every benchmark allocates its own tensors, fills them with deterministic pseudo-random
//! data, runs the kernel once (warm-up / calibration) and then as many timed runs as fit a
//! time budget that depends on the adapter (a CPU adapter such as lavapipe gets a few
//! seconds and few runs; a slow kernel is timed once or twice with no warm-up).
use crate::gpu::{Batch, Gpu, GpuInfo, GpuTimer, Tensor};
use crate::ops;
use crate::ops::attention::AttnShape;
use crate::ops::matmul::MatmulKernel;
use anyhow::{bail, Result};
use std::time::Instant;

/// One benchmark's outcome.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    /// Kernel name, e.g. "matmul", "matmul_naive", "matmul_f16w", "attention".
    pub kernel: String,
    /// Human-readable problem size, e.g. "1024x1024x1024" (M x N x K).
    pub shape: String,
    /// Median time of one run, in milliseconds.
    pub ms: f64,
    /// Useful floating-point work per second (matmul, attention).
    pub gflops: Option<f64>,
    /// Minimal memory traffic per second (memory-bound kernels).
    pub gbps: Option<f64>,
    /// Number of timed runs the median is taken over.
    pub runs: usize,
    /// "gpu-timestamps" or "wall-clock".
    pub timing: String,
}

pub const GPU_TIMESTAMPS: &str = "gpu-timestamps";
pub const WALL_CLOCK: &str = "wall-clock";

/// Most dispatches one recorded run may time with timestamps (2 queries each; wgpu allows
/// 4096 queries per set). A run with more falls back to wall-clock.
const TIMER_CAPACITY: u32 = 2048;

/// Least wall time of the untimed warm-up runs on a GPU adapter.
const WARM_GPU_SECONDS: f64 = 0.5;

fn median(v: &mut [f64]) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Per-run times in seconds of `runs` runs after `warmup` untimed ones, and how they were
/// measured. Each run records with `record` into a fresh batch, submits and waits; with
/// timestamps a run's time is the sum of the durations of all the passes it dispatched.
fn time_samples(gpu: &Gpu, warmup: usize, runs: usize, record: &dyn Fn(&mut Batch)) -> Result<(Vec<f64>, &'static str)> {
    // on a GPU the warm-up also lasts WARM_GPU_SECONDS (clocks ramp up from idle: the first
    // benchmark of a process read up to 20% slow with three warm-up runs alone)
    let warm_for = if warmup > 0 && !is_cpu_adapter(gpu) { WARM_GPU_SECONDS } else { 0.0 };
    let start = Instant::now();
    let mut done = 0;
    while done < warmup || start.elapsed().as_secs_f64() < warm_for {
        let mut b = gpu.batch();
        record(&mut b);
        b.submit();
        gpu.sync()?;
        done += 1;
    }
    let mut out = Vec::with_capacity(runs);
    let mut timer = GpuTimer::new(gpu, TIMER_CAPACITY);
    while out.len() < runs {
        if let Some(t) = timer.as_mut() {
            t.reset();
            let mut b = gpu.batch();
            b.time_with(&mut *t);
            record(&mut b);
            b.submit();
            let passes = if t.next < t.capacity { t.read(gpu)? } else { vec![] };
            if !passes.is_empty() {
                out.push(passes.iter().sum());
                continue;
            }
            // more dispatches than the query set holds (or none at all): time every run
            // by the wall clock instead, from the start
            gpu.sync()?;
            timer = None;
            out.clear();
        }
        let mut b = gpu.batch();
        record(&mut b);
        let t0 = Instant::now();
        b.submit();
        gpu.sync()?;
        out.push(t0.elapsed().as_secs_f64());
    }
    Ok((out, if timer.is_some() { GPU_TIMESTAMPS } else { WALL_CLOCK }))
}

/// Two sets' medians agree when they are within this fraction of the faster one.
const STABLE_REL: f64 = 0.03;
/// Most sets of runs [`time_kernel`] takes on a GPU while looking for two that agree.
const MAX_SETS: usize = 4;

/// The median to report from a first set's median and `next` (which times one more set):
/// more sets until two in a row agree within [`STABLE_REL`] (at most [`MAX_SETS`] in all),
/// then the fastest set median seen. A transient slow phase only inflates times (on a
/// freshly started H200 every run of one set read 3.2x slow, the next process normal), so
/// the fastest of agreeing sets is the kernel's time.
fn stable_median(first: f64, mut next: impl FnMut() -> Result<f64>) -> Result<f64> {
    let (mut prev, mut best) = (first, first);
    for _ in 1..MAX_SETS {
        let cur = next()?;
        best = best.min(cur);
        if (cur - prev).abs() <= STABLE_REL * cur.min(prev) {
            break;
        }
        eprintln!("taylorcal bench: two sets of runs disagree ({:.3} vs {:.3} ms); timing another", prev * 1e3, cur * 1e3);
        prev = cur;
    }
    Ok(best)
}

/// Median seconds of one run of `record` over `runs` runs after `warmup` untimed runs, and
/// the timing method: GPU timestamps around every pass when the adapter has
/// TIMESTAMP_QUERY (a run issuing several dispatches is the sum of its passes), else wall
/// clock around submit + [`Gpu::sync`] (recording, i.e. bind groups and pipeline
/// compilation, is outside the timed region). On a GPU, sets of `runs` runs repeat until
/// two agree (see [`stable_median`]).
pub fn time_kernel(gpu: &Gpu, warmup: usize, runs: usize, record: impl Fn(&mut Batch)) -> Result<(f64, &'static str)> {
    if runs == 0 {
        bail!("time_kernel: runs must be at least 1");
    }
    let (mut s, how) = time_samples(gpu, warmup, runs, &record)?;
    let first = median(&mut s);
    if is_cpu_adapter(gpu) {
        return Ok((first, how));
    }
    let m = stable_median(first, || {
        let (mut s, _) = time_samples(gpu, 0, runs, &record)?;
        Ok(median(&mut s))
    })?;
    Ok((m, how))
}

/// How long to spend on one benchmark.
#[derive(Clone, Copy, Debug)]
struct Budget {
    seconds: f64,
    max_runs: usize,
}

fn budget(gpu: &Gpu) -> Budget {
    if is_cpu_adapter(gpu) {
        Budget { seconds: 3.0, max_runs: 10 }
    } else {
        Budget { seconds: 1.0, max_runs: 50 }
    }
}

/// True on a software adapter (lavapipe, WARP): the suite then picks small sizes.
pub fn is_cpu_adapter(gpu: &Gpu) -> bool {
    gpu.info.device_type == "Cpu"
}

/// Time one calibration run (compiles and touches everything); a run longer than half the
/// budget is kept as a sample and followed by at most one more, otherwise the calibration
/// counts as the warm-up and as many runs as fit the budget follow (at least 3).
fn measure(gpu: &Gpu, budget: Budget, record: &dyn Fn(&mut Batch)) -> Result<(f64, usize, &'static str)> {
    let (mut first, how) = time_samples(gpu, 0, 1, record)?;
    let t0 = first[0].max(1e-7);
    if t0 >= budget.seconds / 2.0 {
        if t0 < budget.seconds {
            let (more, _) = time_samples(gpu, 0, 1, record)?;
            first.extend(more);
        }
        let n = first.len();
        return Ok((median(&mut first), n, how));
    }
    let runs = ((budget.seconds / t0) as usize).clamp(3, budget.max_runs);
    let (mut s, how) = time_samples(gpu, 0, runs, record)?;
    Ok((median(&mut s), runs, how))
}

/// `n` deterministic values in [0, 1) (xorshift; no dependency on `rand`): the benchmarks'
/// inputs.
pub(crate) fn unit_noise(n: usize, seed: u64) -> impl Iterator<Item = f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n).map(move |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// Deterministic values in [-scale, scale).
fn fill(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    unit_noise(n, seed).map(|u| (u * 2.0 - 1.0) * scale).collect()
}

fn result(kernel: &str, shape: String, secs: f64, runs: usize, how: &str, flops: Option<f64>, bytes: Option<f64>) -> BenchResult {
    BenchResult {
        kernel: kernel.to_string(),
        shape,
        ms: secs * 1e3,
        gflops: flops.map(|f| f / secs / 1e9),
        gbps: bytes.map(|b| b / secs / 1e9),
        runs,
        timing: how.to_string(),
    }
}

/// Which matmul a benchmark runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatmulImpl {
    /// What `ops::matmul::linear` picks for the adapter ([`MatmulKernel::auto`]).
    Auto,
    /// shaders/matmul.wgsl
    Tiled,
    /// shaders/matmul_sg.wgsl (CPU adapters with 8-lane subgroups)
    Subgroup,
    /// shaders/matmul_naive.wgsl: one invocation per output (f32 only)
    Naive,
    /// `ops::mma`: f16 operands, f32 accumulation, on cooperative matrices where the
    /// adapter has them ("matmul_mma"; "matmul_mma_tile" for the fallback)
    Mma,
}

/// The result name of a matmul kernel: "matmul" (tiled), "matmul_sg", "matmul_naive", with
/// "_f16w" appended for f16 weights.
fn matmul_name(kernel: Option<MatmulKernel>, f16_weights: bool) -> String {
    let base = match kernel {
        None => "matmul_naive",
        Some(MatmulKernel::Tiled) => "matmul",
        Some(MatmulKernel::Tiled64) => "matmul_t64",
        Some(MatmulKernel::Tiled128) => "matmul_t128",
        Some(MatmulKernel::Subgroup) => "matmul_sg",
        Some(MatmulKernel::Matvec) => "matvec",
        Some(MatmulKernel::Mma) => "matmul_mma",
    };
    if f16_weights {
        format!("{base}_f16w")
    } else {
        base.to_string()
    }
}

/// y[M, N] = x[M, K] W[N, K]^T through `ops::matmul::linear` (the adapter's kernel, W in
/// f32 or, with `f16_weights`, f16) or, with `naive`, the naive one-invocation-per-output
/// kernel; GFLOP/s = 2MNK / t.
pub fn bench_matmul(gpu: &Gpu, m: usize, n: usize, k: usize, naive: bool, f16_weights: bool) -> Result<BenchResult> {
    bench_matmul_impl(gpu, m, n, k, if naive { MatmulImpl::Naive } else { MatmulImpl::Auto }, f16_weights)
}

/// [`bench_matmul`] with an explicit kernel.
pub fn bench_matmul_impl(gpu: &Gpu, m: usize, n: usize, k: usize, imp: MatmulImpl, f16_weights: bool) -> Result<BenchResult> {
    let kernel = match imp {
        MatmulImpl::Auto => Some(MatmulKernel::auto(gpu)),
        MatmulImpl::Tiled => Some(MatmulKernel::Tiled),
        MatmulImpl::Subgroup => Some(MatmulKernel::Subgroup),
        MatmulImpl::Naive | MatmulImpl::Mma => None,
    };
    if imp == MatmulImpl::Mma || kernel == Some(MatmulKernel::Mma) {
        return bench_mma(gpu, m, n, k, f16_weights);
    }
    if let Some(kn) = kernel {
        if !kn.available(gpu) {
            bail!("matmul kernel {kn:?} is not available on {}", gpu.info.name);
        }
    }
    if f16_weights && kernel.is_none() {
        bail!("the naive matmul has no f16-weight variant");
    }
    if f16_weights && !gpu.info.shader_f16 {
        bail!("adapter {} has no SHADER_F16: no f16-weight matmul", gpu.info.name);
    }
    let (x, w, y) = matmul_operands(gpu, m, n, k, f16_weights)?;
    let record = |b: &mut Batch| match kernel {
        None => ops::matmul::linear_naive(b, &x, &w, &y),
        Some(kn) => ops::matmul::linear_with(b, &x, &w, None, &y, false, kn),
    };
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let name = matmul_name(kernel, f16_weights);
    Ok(result(&name, format!("{m}x{n}x{k}"), secs, runs, how, Some(2.0 * (m * n * k) as f64), None))
}

/// x [M, K], W [N, K] (f32, or f16 with `f16_weights`) of fixed noise and y [M, N] zeros.
fn matmul_operands(gpu: &Gpu, m: usize, n: usize, k: usize, f16_weights: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let x = gpu.upload(&[m, k], &fill(m * k, 1, 1.0))?;
    let wdata = fill(n * k, 2, 1.0);
    let w = if f16_weights { gpu.upload_f16(&[n, k], &wdata)? } else { gpu.upload(&[n, k], &wdata)? };
    Ok((x, w, gpu.zeros(&[m, n])?))
}

/// y[M, N] = x[M, K] W[N, K]^T through `ops::mma::linear` (f16 operands, f32 accumulation).
fn bench_mma(gpu: &Gpu, m: usize, n: usize, k: usize, f16_weights: bool) -> Result<BenchResult> {
    if !ops::mma::available(gpu) {
        bail!("adapter {} has no SHADER_F16: no mma kernels", gpu.info.name);
    }
    let (x, w, y) = matmul_operands(gpu, m, n, k, f16_weights)?;
    let (secs, runs, how) = measure(gpu, budget(gpu), &|b: &mut Batch| ops::mma::linear(b, &x, &w, None, &y, false, None))?;
    let path = match ops::mma::MmaPath::auto(gpu) {
        ops::mma::MmaPath::Coop => "matmul_mma",
        ops::mma::MmaPath::Tile => "matmul_mma_tile",
    };
    let name = if f16_weights { format!("{path}_f16w") } else { path.to_string() };
    Ok(result(&name, format!("{m}x{n}x{k}"), secs, runs, how, Some(2.0 * (m * n * k) as f64), None))
}

/// The gradients of y[M, N] = x[M, K] W[N, K]^T through `ops::mma` (f16 operands, f32
/// accumulation): dx = dy W ("matmul_mma_dx") or, with `weight`, dW = dy^T x
/// ("matmul_mma_dw"); W f16; GFLOP/s = 2MNK / t.
fn bench_mma_grad(gpu: &Gpu, m: usize, n: usize, k: usize, weight: bool) -> Result<BenchResult> {
    if !ops::mma::available(gpu) {
        bail!("adapter {} has no SHADER_F16: no mma kernels", gpu.info.name);
    }
    let (x, w, dy) = matmul_operands(gpu, m, n, k, true)?;
    gpu.write(&dy, &fill(m * n, 3, 1e-3));
    let (secs, runs, how) = if weight {
        let dw = gpu.zeros(&[n, k])?;
        measure(gpu, budget(gpu), &|b: &mut Batch| ops::mma::backward_weight(b, &dy, &x, &dw, false, None))?
    } else {
        measure(gpu, budget(gpu), &|b: &mut Batch| ops::mma::backward_input(b, &dy, &w, &x, false, None))?
    };
    let name = if weight { "matmul_mma_dw" } else { "matmul_mma_dx" };
    Ok(result(name, format!("{m}x{n}x{k}"), secs, runs, how, Some(2.0 * (m * n * k) as f64), None))
}

/// Causal GQA attention over T tokens (self-attention, pos0 = 0); GFLOP/s counts
/// 4 * T * T / 2 * H * d (QK^T and PV over the causal half).
/// With `mma`, [`ops::attention::attention_mma`] (f16 tiles, no statistics).
pub fn bench_attention(gpu: &Gpu, t: usize, heads: usize, kv_heads: usize, dim: usize, mma: bool) -> Result<BenchResult> {
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("attention: {heads} heads is not a multiple of {kv_heads} kv heads");
    }
    let q = gpu.upload(&[t, heads * dim], &fill(t * heads * dim, 3, 1.0))?;
    let k = gpu.upload(&[t, kv_heads * dim], &fill(t * kv_heads * dim, 4, 1.0))?;
    let v = gpu.upload(&[t, kv_heads * dim], &fill(t * kv_heads * dim, 5, 1.0))?;
    let o = gpu.zeros(&[t, heads * dim])?;
    let stats = gpu.zeros(&[t, heads, 2])?;
    let s = AttnShape { heads, kv_heads, dim, pos0: 0, scale: 1.0 / (dim as f32).sqrt(), seqs: 1 };
    let record = |b: &mut Batch| match mma {
        true => ops::attention::attention_mma(b, &q, &k, &v, &o, s),
        false => ops::attention::attention(b, &q, &k, &v, &o, &stats, s),
    };
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let flops = 4.0 * (t as f64) * (t as f64) / 2.0 * (heads * dim) as f64;
    let name = if mma { "attention_mma" } else { "attention" };
    Ok(result(name, format!("T{t} H{heads}/{kv_heads} d{dim}"), secs, runs, how, Some(flops), None))
}

/// Backward of causal GQA attention over T tokens (both passes of
/// `ops::attention::attention_backward`; o comes from one forward run before timing).
/// GFLOP/s counts the conventional 10 * T * T / 2 * H * d (QK^T recomputed, dP = dO V^T,
/// dV = P^T dO, dQ = dS K, dK = dS^T Q over the causal half), 2.5x the forward's count;
/// the kernels do 16 * T * T / 2 * H * d since the query pass recomputes QK^T twice and
/// the key pass recomputes QK^T and dO V^T.
/// With `mma`, [`ops::attention::attention_backward_mma`] (f16 tiles; its max |dO| pass included).
pub fn bench_attention_backward(gpu: &Gpu, t: usize, heads: usize, kv_heads: usize, dim: usize, mma: bool) -> Result<BenchResult> {
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        bail!("attention_bwd: {heads} heads is not a multiple of {kv_heads} kv heads");
    }
    let q = gpu.upload(&[t, heads * dim], &fill(t * heads * dim, 3, 1.0))?;
    let k = gpu.upload(&[t, kv_heads * dim], &fill(t * kv_heads * dim, 4, 1.0))?;
    let v = gpu.upload(&[t, kv_heads * dim], &fill(t * kv_heads * dim, 5, 1.0))?;
    let dout = gpu.upload(&[t, heads * dim], &fill(t * heads * dim, 10, 1.0))?;
    let o = gpu.zeros(&[t, heads * dim])?;
    let stats = gpu.zeros(&[t, heads, 2])?;
    let dq = gpu.zeros(&[t, heads * dim])?;
    let dk = gpu.zeros(&[t, kv_heads * dim])?;
    let dv = gpu.zeros(&[t, kv_heads * dim])?;
    let scratch = ops::attention::AttnBwdScratch::new(gpu, t, heads, dim)?;
    let s = AttnShape { heads, kv_heads, dim, pos0: 0, scale: 1.0 / (dim as f32).sqrt(), seqs: 1 };
    gpu.run(|b| {
        ops::attention::attention(b, &q, &k, &v, &o, &stats, s);
        Ok(())
    })?;
    let record = |b: &mut Batch| match mma {
        true => ops::attention::attention_backward_mma(b, &q, &k, &v, &o, &dout, &dq, &dk, &dv, &scratch, s),
        false => ops::attention::attention_backward(b, &q, &k, &v, &o, &dout, &dq, &dk, &dv, &scratch, s),
    };
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let flops = 10.0 * (t as f64) * (t as f64) / 2.0 * (heads * dim) as f64;
    let name = if mma { "attention_bwd_mma" } else { "attention_bwd" };
    Ok(result(name, format!("T{t} H{heads}/{kv_heads} d{dim}"), secs, runs, how, Some(flops), None))
}

/// RMSNorm of [rows, cols]; GB/s counts reading x and writing y once (the weight is small).
pub fn bench_rmsnorm(gpu: &Gpu, rows: usize, cols: usize) -> Result<BenchResult> {
    let x = gpu.upload(&[rows, cols], &fill(rows * cols, 6, 2.0))?;
    let w = gpu.upload(&[cols], &fill(cols, 7, 1.0))?;
    let y = gpu.zeros(&[rows, cols])?;
    let record = |b: &mut Batch| ops::rmsnorm::rmsnorm(b, &x, &w, 1e-5, &y);
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let bytes = (2 * rows * cols + cols) as f64 * 4.0;
    Ok(result("rmsnorm", format!("{rows}x{cols}"), secs, runs, how, None, Some(bytes)))
}

/// RoPE in place on [tokens, heads * dim]; GB/s counts reading and writing x plus the
/// cos/sin rows of the positions used.
pub fn bench_rope(gpu: &Gpu, tokens: usize, heads: usize, dim: usize) -> Result<BenchResult> {
    let x = gpu.upload(&[tokens, heads * dim], &fill(tokens * heads * dim, 8, 1.0))?;
    let tab = ops::rope::RopeTables::new(gpu, 10000.0, dim, tokens)?;
    let record = |b: &mut Batch| ops::rope::rope(b, &x, heads, &tab, 0, 1);
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let bytes = (2 * tokens * heads * dim + tokens * dim) as f64 * 4.0;
    Ok(result("rope", format!("T{tokens} H{heads} d{dim}"), secs, runs, how, None, Some(bytes)))
}

/// Next-token NLL over logits [rows, vocab]; GB/s counts reading the logits once.
pub fn bench_nll(gpu: &Gpu, rows: usize, vocab: usize) -> Result<BenchResult> {
    let logits = gpu.upload(&[rows, vocab], &fill(rows * vocab, 9, 8.0))?;
    let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 7919) % vocab as u32).collect();
    let targets = gpu.upload_u32(&[rows], &targets)?;
    let out: Tensor = gpu.zeros(&[rows])?;
    let record = |b: &mut Batch| ops::nll::nll(b, &logits, &targets, &out);
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let bytes = (rows * vocab + 2 * rows) as f64 * 4.0;
    Ok(result("nll", format!("{rows}x{vocab}"), secs, runs, how, None, Some(bytes)))
}

/// Fused LM heads + KL(teacher || student) with both gradients ([`ops::kl::kl_lm_head`]):
/// N rows of hidden states of width D, vocabulary V, chunked by the default memory budget.
/// GFLOP/s counts the four matmuls (two heads, dhs, dws): 8 N V D.
pub fn bench_kl_lm_head(gpu: &Gpu, rows: usize, vocab: usize, dim: usize) -> Result<BenchResult> {
    let a = 6.0 / (dim as f32).sqrt();
    let hs = gpu.upload(&[rows, dim], &fill(rows * dim, 10, 1.0))?;
    let ht = gpu.upload(&[rows, dim], &fill(rows * dim, 11, 1.0))?;
    let ws = gpu.upload(&[vocab, dim], &fill(vocab * dim, 12, a))?;
    let wt = gpu.upload(&[vocab, dim], &fill(vocab * dim, 13, a))?;
    let work = ops::kl::KlWorkspace::new(gpu, vocab, dim, rows, ops::kl::KL_DEFAULT_BUDGET)?;
    let loss_rows = gpu.zeros(&[rows])?;
    let dhs = gpu.zeros(&[rows, dim])?;
    let dws = gpu.zeros(&[vocab, dim])?;
    let record = |b: &mut Batch| {
        let out = ops::kl::KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) };
        ops::kl::kl_lm_head(b, &hs, &ws, &ht, &wt, &work, out, 1.0 / rows as f32)
    };
    let (secs, runs, how) = measure(gpu, budget(gpu), &record)?;
    let flops = 8.0 * (rows * vocab * dim) as f64;
    Ok(result("kl_lm_head", format!("N{rows} V{vocab} D{dim}"), secs, runs, how, Some(flops), None))
}

/// One benchmark of a suite.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "bench", rename_all = "snake_case")]
pub enum Bench {
    Matmul {
        m: usize,
        n: usize,
        k: usize,
        kernel: MatmulImpl,
        f16_weights: bool,
    },
    /// the mma kernel's input (`weight` false) or weight gradient of an M x N x K linear layer
    MmaGrad {
        m: usize,
        n: usize,
        k: usize,
        weight: bool,
    },
    Attention {
        t: usize,
        heads: usize,
        kv_heads: usize,
        dim: usize,
    },
    /// the attention forward on f16 tiles and the matrix units (no statistics)
    AttentionMma {
        t: usize,
        heads: usize,
        kv_heads: usize,
        dim: usize,
    },
    AttentionBackward {
        t: usize,
        heads: usize,
        kv_heads: usize,
        dim: usize,
    },
    /// the attention backward on f16 tiles and the matrix units
    AttentionBackwardMma {
        t: usize,
        heads: usize,
        kv_heads: usize,
        dim: usize,
    },
    RmsNorm {
        rows: usize,
        cols: usize,
    },
    Rope {
        tokens: usize,
        heads: usize,
        dim: usize,
    },
    Nll {
        rows: usize,
        vocab: usize,
    },
    KlLmHead {
        rows: usize,
        vocab: usize,
        dim: usize,
    },
}

impl Bench {
    pub fn run(&self, gpu: &Gpu) -> Result<BenchResult> {
        match *self {
            Bench::Matmul { m, n, k, kernel, f16_weights } => bench_matmul_impl(gpu, m, n, k, kernel, f16_weights),
            Bench::MmaGrad { m, n, k, weight } => bench_mma_grad(gpu, m, n, k, weight),
            Bench::Attention { t, heads, kv_heads, dim } => bench_attention(gpu, t, heads, kv_heads, dim, false),
            Bench::AttentionMma { t, heads, kv_heads, dim } => bench_attention(gpu, t, heads, kv_heads, dim, true),
            Bench::AttentionBackward { t, heads, kv_heads, dim } => bench_attention_backward(gpu, t, heads, kv_heads, dim, false),
            Bench::AttentionBackwardMma { t, heads, kv_heads, dim } => bench_attention_backward(gpu, t, heads, kv_heads, dim, true),
            Bench::RmsNorm { rows, cols } => bench_rmsnorm(gpu, rows, cols),
            Bench::Rope { tokens, heads, dim } => bench_rope(gpu, tokens, heads, dim),
            Bench::Nll { rows, vocab } => bench_nll(gpu, rows, vocab),
            Bench::KlLmHead { rows, vocab, dim } => bench_kl_lm_head(gpu, rows, vocab, dim),
        }
    }

    /// A short label for progress output, e.g. "matmul_naive 1024x1024x1024".
    pub fn label(&self) -> String {
        match *self {
            Bench::Matmul { m, n, k, kernel, f16_weights } => {
                let name = match kernel {
                    MatmulImpl::Auto => "matmul",
                    MatmulImpl::Tiled => "matmul[tiled]",
                    MatmulImpl::Subgroup => "matmul[subgroup]",
                    MatmulImpl::Naive => "matmul_naive",
                    MatmulImpl::Mma => "matmul_mma",
                };
                let f16 = if f16_weights { "_f16w" } else { "" };
                format!("{name}{f16} {m}x{n}x{k}")
            }
            Bench::MmaGrad { m, n, k, weight } => format!("matmul_mma_{} {m}x{n}x{k}", if weight { "dw" } else { "dx" }),
            Bench::Attention { t, heads, kv_heads, dim } => format!("attention T{t} H{heads}/{kv_heads} d{dim}"),
            Bench::AttentionMma { t, heads, kv_heads, dim } => format!("attention_mma T{t} H{heads}/{kv_heads} d{dim}"),
            Bench::AttentionBackward { t, heads, kv_heads, dim } => format!("attention_bwd T{t} H{heads}/{kv_heads} d{dim}"),
            Bench::AttentionBackwardMma { t, heads, kv_heads, dim } => format!("attention_bwd_mma T{t} H{heads}/{kv_heads} d{dim}"),
            Bench::RmsNorm { rows, cols } => format!("rmsnorm {rows}x{cols}"),
            Bench::Rope { tokens, heads, dim } => format!("rope T{tokens} H{heads} d{dim}"),
            Bench::Nll { rows, vocab } => format!("nll {rows}x{vocab}"),
            Bench::KlLmHead { rows, vocab, dim } => format!("kl_lm_head N{rows} V{vocab} D{dim}"),
        }
    }
}

fn mm(s: usize, kernel: MatmulImpl, f16_weights: bool) -> Bench {
    Bench::Matmul { m: s, n: s, k: s, kernel, f16_weights }
}

/// The benchmarks worth running on this adapter. On a CPU adapter (lavapipe): matmul
/// 1024^3 with the adapter's kernel (f32, and f16 weights where supported), with the
/// generic tiled kernel too when that is not the adapter's choice, naive, and the mma
/// kernel (f16 weights); attention
/// T=512 with SmolLM2-135M's heads (9 / 3, d 64) forward and backward (f32, and on f16 tiles); small
/// norm/rope/NLL/KL head. On a GPU: matmul 4096^3 (f32 and f16 weights; the mma kernel with f32 and
/// f16 weights, and at 1024^3; its three products at 4096^3 and SmolLM2's attention
/// projection, MLP and LM head shapes over 8192 tokens), 1024^3, naive at
/// 1024^3 and 4096^3, attention forward and backward (f32, and on f16 tiles) T=4096 H=16/4
/// at d 64 and 128,
/// model-sized norm/rope/NLL, and the KL head at SmolLM2's vocabulary (N 512, V 49152, D 576).
pub fn default_suite(gpu: &Gpu) -> Vec<Bench> {
    use MatmulImpl::*;
    let f16 = gpu.info.shader_f16;
    let tiled_too = MatmulKernel::auto(gpu) != MatmulKernel::Tiled;
    let mut v = Vec::new();
    if is_cpu_adapter(gpu) {
        v.push(mm(1024, Auto, false));
        if f16 {
            v.push(mm(1024, Auto, true));
        }
        if tiled_too {
            v.push(mm(1024, Tiled, false));
        }
        v.push(mm(1024, Naive, false));
        if f16 {
            v.push(mm(1024, Mma, true));
        }
        v.push(Bench::Attention { t: 512, heads: 9, kv_heads: 3, dim: 64 });
        if f16 {
            v.push(Bench::AttentionMma { t: 512, heads: 9, kv_heads: 3, dim: 64 });
        }
        v.push(Bench::AttentionBackward { t: 512, heads: 9, kv_heads: 3, dim: 64 });
        if f16 {
            v.push(Bench::AttentionBackwardMma { t: 512, heads: 9, kv_heads: 3, dim: 64 });
        }
        v.push(Bench::RmsNorm { rows: 512, cols: 576 });
        v.push(Bench::Rope { tokens: 512, heads: 9, dim: 64 });
        v.push(Bench::Nll { rows: 64, vocab: 49152 });
        v.push(Bench::KlLmHead { rows: 64, vocab: 8192, dim: 576 });
    } else {
        v.push(mm(4096, Auto, false));
        if f16 {
            v.push(mm(4096, Auto, true));
        }
        if tiled_too {
            v.push(mm(4096, Tiled, false));
        }
        if f16 {
            v.push(mm(4096, Mma, false));
            v.push(mm(4096, Mma, true));
            v.push(mm(1024, Mma, true));
            // the three products at 4096^3, and at SmolLM2's attention projection, MLP and LM
            // head over 16 x 512 tokens
            for (m, n, k) in [(4096, 4096, 4096), (8192, 576, 576), (8192, 1536, 576), (8192, 576, 1536), (8192, 49152, 576)] {
                if m != n {
                    v.push(Bench::Matmul { m, n, k, kernel: Mma, f16_weights: true });
                }
                v.push(Bench::MmaGrad { m, n, k, weight: false });
                v.push(Bench::MmaGrad { m, n, k, weight: true });
            }
        }
        v.push(mm(1024, Auto, false));
        v.push(mm(1024, Naive, false));
        v.push(mm(4096, Naive, false));
        v.push(Bench::Attention { t: 4096, heads: 16, kv_heads: 4, dim: 64 });
        v.push(Bench::Attention { t: 4096, heads: 16, kv_heads: 4, dim: 128 });
        if f16 {
            v.push(Bench::AttentionMma { t: 4096, heads: 16, kv_heads: 4, dim: 64 });
            v.push(Bench::AttentionMma { t: 4096, heads: 16, kv_heads: 4, dim: 128 });
        }
        v.push(Bench::AttentionBackward { t: 4096, heads: 16, kv_heads: 4, dim: 64 });
        v.push(Bench::AttentionBackward { t: 4096, heads: 16, kv_heads: 4, dim: 128 });
        if f16 {
            v.push(Bench::AttentionBackwardMma { t: 4096, heads: 16, kv_heads: 4, dim: 64 });
            v.push(Bench::AttentionBackwardMma { t: 4096, heads: 16, kv_heads: 4, dim: 128 });
        }
        v.push(Bench::RmsNorm { rows: 4096, cols: 4096 });
        v.push(Bench::Rope { tokens: 4096, heads: 32, dim: 128 });
        v.push(Bench::Nll { rows: 2048, vocab: 49152 });
        v.push(Bench::KlLmHead { rows: 512, vocab: 49152, dim: 576 });
    }
    v
}

/// The benchmarks of [`default_suite`] whose label contains one of `words` (all of them when
/// `words` is empty); an error when none does.
pub fn suite_matching(gpu: &Gpu, words: &[String]) -> Result<Vec<Bench>> {
    let suite = default_suite(gpu);
    let benches: Vec<Bench> =
        suite.iter().filter(|b| words.is_empty() || words.iter().any(|w| b.label().contains(w.as_str()))).cloned().collect();
    if benches.is_empty() {
        let labels: Vec<String> = suite.iter().map(Bench::label).collect();
        bail!("no benchmark matches {words:?}; the benchmarks on this adapter are {}, and `gdn` (the delta-rule scan)", labels.join(", "));
    }
    Ok(benches)
}

/// A matmul kernel vs the naive one at one shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Speedup {
    /// "matmul" (tiled) or "matmul_sg"
    pub kernel: String,
    pub shape: String,
    pub tiled_ms: f64,
    pub naive_ms: f64,
    /// naive time / tiled time
    pub factor: f64,
}

/// A suite's results with the adapter they were measured on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SuiteReport {
    pub adapter: GpuInfo,
    pub results: Vec<BenchResult>,
    /// Benchmarks that could not run: (label, error).
    pub failures: Vec<(String, String)>,
    /// Every f32 matmul kernel vs naive at every shape both were run at.
    pub speedup: Vec<Speedup>,
}

/// Run `benches` in order, calling `progress` after each success (for streaming output);
/// a failing benchmark is recorded in `failures` and the suite goes on.
pub fn run_suite(gpu: &Gpu, benches: &[Bench], mut progress: impl FnMut(&BenchResult)) -> SuiteReport {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for bench in benches {
        match bench.run(gpu) {
            Ok(r) => {
                progress(&r);
                results.push(r);
            }
            Err(e) => failures.push((bench.label(), format!("{e:#}"))),
        }
    }
    let speedup = speedups(&results);
    SuiteReport { adapter: gpu.info.clone(), results, failures, speedup }
}

/// Every f32 matmul kernel ("matmul", "matmul_sg") vs naive wherever both ran at one shape.
pub fn speedups(results: &[BenchResult]) -> Vec<Speedup> {
    let mut out = Vec::new();
    for naive in results.iter().filter(|r| r.kernel == "matmul_naive") {
        for fast in results.iter().filter(|r| (r.kernel == "matmul" || r.kernel == "matmul_sg") && r.shape == naive.shape) {
            out.push(Speedup {
                kernel: fast.kernel.clone(),
                shape: naive.shape.clone(),
                tiled_ms: fast.ms,
                naive_ms: naive.ms,
                factor: naive.ms / fast.ms,
            });
        }
    }
    out
}

impl Speedup {
    /// e.g. "speedup: matmul_sg vs matmul_naive at 1024x1024x1024: 31.2x (512.3 ms vs 16000.1 ms)"
    pub fn line(&self) -> String {
        format!(
            "speedup: {} vs matmul_naive at {}: {:.1}x ({:.2} ms vs {:.2} ms)",
            self.kernel, self.shape, self.factor, self.tiled_ms, self.naive_ms
        )
    }
}

impl BenchResult {
    /// One row of [`table`], without a newline.
    pub fn row(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}"));
        format!(
            "{:<14} {:<24} {:>12.3} {:>10} {:>9} {:>5}  {}",
            self.kernel,
            self.shape,
            self.ms,
            opt(self.gflops),
            opt(self.gbps),
            self.runs,
            self.timing
        )
    }
}

/// The header of the table whose rows are [`BenchResult::row`], without a newline.
pub fn table_header() -> String {
    format!("{:<14} {:<24} {:>12} {:>10} {:>9} {:>5}  {}", "kernel", "shape", "ms (median)", "GFLOP/s", "GB/s", "runs", "timing")
}

/// The line naming the adapter a suite runs on, without a newline.
pub fn adapter_line(a: &GpuInfo) -> String {
    format!("adapter: {} ({}, {}, driver {} {})", a.name, a.backend, a.device_type, a.driver, a.driver_info)
}

impl SuiteReport {
    /// What follows the table: failures and speedup lines (each with a newline).
    pub fn footer(&self) -> String {
        let mut s = String::new();
        for (label, err) in &self.failures {
            s.push_str(&format!("failed: {label}: {err}\n"));
        }
        for sp in &self.speedup {
            s.push_str(&sp.line());
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: f64, rest: &[f64]) -> (f64, usize) {
        let mut it = rest.iter();
        let mut taken = 0;
        let m = stable_median(first, || {
            taken += 1;
            Ok(*it.next().expect("more sets asked for than given"))
        })
        .unwrap();
        (m, taken)
    }

    #[test]
    fn stable_median_repeats_until_two_sets_agree() {
        // agreeing sets: one more set, the faster reported
        assert_eq!(run(8.13, &[8.14]), (8.13, 1));
        assert_eq!(run(8.14, &[8.13]), (8.13, 1));
        // a slow first set (the fresh-machine reading): the two normal sets after it agree
        assert_eq!(run(8.011, &[2.477, 2.480]), (2.477, 2));
        // a slow set in the middle: two normal ones in a row are needed after it
        assert_eq!(run(2.50, &[8.0, 2.49, 2.51]), (2.49, 3));
        // never agreeing: MAX_SETS sets, the fastest
        assert_eq!(run(3.0, &[2.0, 1.5, 1.0]), (1.0, MAX_SETS - 1));
        // under 3% apart is agreement, 4% is not
        assert_eq!(run(1.0, &[1.029]).1, 1);
        assert_eq!(run(1.0, &[1.04, 1.04]).1, 2);
    }

    #[test]
    fn stable_median_passes_errors_on() {
        assert!(stable_median(1.0, || bail!("device lost")).is_err());
    }
}
