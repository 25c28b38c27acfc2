//! Shared test helpers: the one GPU context, seeded random data, error metrics.
#![allow(dead_code)]

pub mod tiny;

use rand::{Rng, SeedableRng};
use taylorcal::gpu::{Gpu, GpuOptions};

/// The process-wide GPU context with the default options. Fails loudly (never skips) when
/// no adapter exists.
pub fn gpu() -> &'static Gpu {
    gpu_with(GpuOptions::default())
}

/// The process-wide GPU context for `opts` (one per distinct options, created on first use).
pub fn gpu_with(opts: GpuOptions) -> &'static Gpu {
    match Gpu::shared_with(opts) {
        Ok(g) => g,
        Err(e) => panic!("GPU tests need a wgpu adapter (install mesa-vulkan-drivers for lavapipe): {e:#}"),
    }
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Uniform random values in [-scale, scale).
pub fn randn(r: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-scale..scale)).collect()
}

pub fn f64v(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// max |a - b| / max(max |b|, tiny): the relative error of a whole tensor.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    err / scale
}

pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let e = rel_err(got, want);
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
}
