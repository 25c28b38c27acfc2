//! Criterion benchmarks of the chunked gated delta rule (shaders/delta_*.wgsl): one
//! iteration = record the forward (or forward + backward) into a batch, submit, wait.
//! Small shapes so that `cargo bench --bench delta` stays short on lavapipe; real-GPU
//! numbers come from `taylorcal::experiments::bench_gdn` (GPU timestamps).
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use std::time::Duration;
use taylorcal::experiments::bench_gdn::DeltaProblem;
use taylorcal::gpu::Gpu;
use taylorcal::ops::delta::DeltaShape;

/// The program's reading of the environment, so a bench runs where and how the CLI would.
#[path = "../src/cli/env.rs"]
#[allow(dead_code)]
mod env;

fn gpu() -> &'static Gpu {
    env::gpu_options_from_env()
        .and_then(Gpu::shared_with)
        .unwrap_or_else(|e| panic!("the delta-rule benchmarks need a wgpu adapter: {e:#}"))
}

fn delta(c: &mut Criterion) {
    let g = gpu();
    let mut group = c.benchmark_group("delta");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for &(b, t, h, d) in &[(1, 256, 2, 64), (1, 512, 2, 128)] {
        let s = DeltaShape::new(b, t, h, d, true);
        group.throughput(Throughput::Elements((b * t * h) as u64)); // tokens x heads
        for backward in [false, true] {
            let pb = DeltaProblem::new(g, &s, backward, None).unwrap();
            let name = format!("{}/B{b}_T{t}_H{h}_d{d}", if backward { "fwd+bwd" } else { "fwd" });
            group.bench_function(name, |bn| {
                bn.iter(|| {
                    let mut bt = g.batch();
                    pb.record(&mut bt).unwrap();
                    bt.submit();
                    g.sync().unwrap();
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, delta);
criterion_main!(benches);
