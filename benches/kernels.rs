//! Criterion benchmarks of the main kernels: one iteration = record a batch, submit it and
//! wait for the GPU. Sizes and sample counts are small so `cargo bench --bench kernels`
//! takes a few minutes on lavapipe (software Vulkan); `taylorcal::experiments::bench` has the
//! GPU-timestamped suite with GFLOP/s.
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::time::Duration;
use taylorcal::gpu::{Batch, Gpu, Tensor};
use taylorcal::ops::{self, attention::AttnShape, matmul::MatmulKernel};

/// The program's reading of the environment, so a bench runs where and how the CLI would.
#[path = "../src/cli/env.rs"]
#[allow(dead_code)]
mod env;

fn gpu() -> &'static Gpu {
    env::gpu_options_from_env().and_then(Gpu::shared_with).unwrap_or_else(|e| panic!("the kernel benchmarks need a wgpu adapter: {e:#}"))
}

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// Record with `f`, submit, wait.
fn run(g: &Gpu, f: impl FnOnce(&mut Batch)) {
    let mut b = g.batch();
    f(&mut b);
    b.submit();
    g.sync().unwrap();
}

struct Mm {
    x: Tensor,
    w: Tensor,
    y: Tensor,
}

fn mm(g: &Gpu, m: usize, n: usize, k: usize) -> Mm {
    Mm { x: g.upload(&[m, k], &data(m * k, 1)).unwrap(), w: g.upload(&[n, k], &data(n * k, 2)).unwrap(), y: g.zeros(&[m, n]).unwrap() }
}

fn matmul(c: &mut Criterion) {
    let g = gpu();
    let mut group = c.benchmark_group("matmul");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let auto = MatmulKernel::auto(g);
    let mut cases: Vec<(String, usize, usize, usize, Option<MatmulKernel>)> = vec![
        (format!("linear[{auto:?}]/256x256x256"), 256, 256, 256, Some(auto)),
        (format!("linear[{auto:?}]/1024x576x576"), 1024, 576, 576, Some(auto)),
    ];
    if auto != MatmulKernel::Tiled {
        cases.push(("linear[Tiled]/256x256x256".into(), 256, 256, 256, Some(MatmulKernel::Tiled)));
    }
    cases.push(("naive/256x256x256".into(), 256, 256, 256, None));
    for (name, m, n, k, kernel) in cases {
        let t = mm(g, m, n, k);
        group.throughput(Throughput::Elements((2 * m * n * k) as u64)); // flops
        group.bench_function(name, |b| {
            b.iter(|| {
                run(g, |bt| match kernel {
                    Some(kn) => ops::matmul::linear_with(bt, &t.x, &t.w, None, &t.y, false, kn),
                    None => ops::matmul::linear_naive(bt, &t.x, &t.w, &t.y),
                })
            })
        });
    }
    group.finish();
}

fn attention(c: &mut Criterion) {
    let g = gpu();
    let mut group = c.benchmark_group("attention");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(5));
    let (t, h, hkv, d) = (256, 9, 3, 64);
    let q = g.upload(&[t, h * d], &data(t * h * d, 3)).unwrap();
    let k = g.upload(&[t, hkv * d], &data(t * hkv * d, 4)).unwrap();
    let v = g.upload(&[t, hkv * d], &data(t * hkv * d, 5)).unwrap();
    let o = g.zeros(&[t, h * d]).unwrap();
    let st = g.zeros(&[t, h, 2]).unwrap();
    let s = AttnShape { heads: h, kv_heads: hkv, dim: d, pos0: 0, scale: 1.0 / (d as f32).sqrt(), seqs: 1 };
    group.throughput(Throughput::Elements((2 * t * t * h * d) as u64)); // causal flops: 4 T^2/2 H d
    group.bench_function(format!("causal/T{t}_H{h}_{hkv}_d{d}"), |b| {
        b.iter(|| run(g, |bt| ops::attention::attention(bt, &q, &k, &v, &o, &st, s)))
    });
    if ops::mma::available(g) {
        // the same on f16 tiles (the matrix units where the adapter has them)
        group.bench_function(format!("causal_mma/T{t}_H{h}_{hkv}_d{d}"), |b| {
            b.iter(|| run(g, |bt| ops::attention::attention_mma(bt, &q, &k, &v, &o, s)))
        });
    }
    // backward (both passes) of the same causal attention, from the forward's o
    let dout = g.upload(&[t, h * d], &data(t * h * d, 6)).unwrap();
    let (dq, dk, dv) = (g.zeros(&[t, h * d]).unwrap(), g.zeros(&[t, hkv * d]).unwrap(), g.zeros(&[t, hkv * d]).unwrap());
    let scratch = ops::attention::AttnBwdScratch::new(g, t, h, d).unwrap();
    run(g, |bt| ops::attention::attention(bt, &q, &k, &v, &o, &st, s));
    group.throughput(Throughput::Elements((5 * t * t * h * d) as u64)); // conventional 2.5x the forward
    group.bench_function(format!("causal_backward/T{t}_H{h}_{hkv}_d{d}"), |b| {
        b.iter(|| run(g, |bt| ops::attention::attention_backward(bt, &q, &k, &v, &o, &dout, &dq, &dk, &dv, &scratch, s)))
    });
    if ops::mma::available(g) {
        group.bench_function(format!("causal_backward_mma/T{t}_H{h}_{hkv}_d{d}"), |b| {
            b.iter(|| run(g, |bt| ops::attention::attention_backward_mma(bt, &q, &k, &v, &o, &dout, &dq, &dk, &dv, &scratch, s)))
        });
    }
    group.finish();
}

/// Fused LM heads + KL(teacher || student) with dhs and dws: SmolLM2's head
/// (N 512, V 49152, D 576) on a GPU, N 64, V 8192 on a CPU adapter.
fn kl_lm_head(c: &mut Criterion) {
    let g = gpu();
    let mut group = c.benchmark_group("kl_lm_head");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(5));
    let (n, v, d) = if taylorcal::experiments::bench::is_cpu_adapter(g) { (64, 8192, 576) } else { (512, 49152, 576) };
    let hs = g.upload(&[n, d], &data(n * d, 6)).unwrap();
    let ht = g.upload(&[n, d], &data(n * d, 7)).unwrap();
    let ws = g.upload(&[v, d], &data(v * d, 8).iter().map(|x| x * 0.25).collect::<Vec<_>>()).unwrap();
    let wt = g.upload(&[v, d], &data(v * d, 9).iter().map(|x| x * 0.25).collect::<Vec<_>>()).unwrap();
    let work = ops::kl::KlWorkspace::new(g, v, d, n, ops::kl::KL_DEFAULT_BUDGET).unwrap();
    let (loss, dhs, dws) = (g.zeros(&[n]).unwrap(), g.zeros(&[n, d]).unwrap(), g.zeros(&[v, d]).unwrap());
    group.throughput(Throughput::Elements((8 * n * v * d) as u64)); // flops of the four matmuls
    group.bench_function(format!("fwd_bwd/N{n}_V{v}_D{d}"), |b| {
        b.iter(|| {
            run(g, |bt| {
                let out = ops::kl::KlOut { loss_rows: &loss, dhs: Some(&dhs), dws: Some(&dws) };
                ops::kl::kl_lm_head(bt, &hs, &ws, &ht, &wt, &work, out, 1.0 / n as f32)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, matmul, attention, kl_lm_head);
criterion_main!(benches);
