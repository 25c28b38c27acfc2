//! Shared test helpers: the GPU contexts (default, per options, and the split-binding
//! one), upload / read-back, seeded random data, error metrics, finite differences.
//! Each test binary includes this module with `#[path = "../common/mod.rs"] mod common;`.
#![allow(dead_code)]

pub mod student;
pub mod tiny;

/// The program's reading of the environment (`WGPU_ADAPTER_NAME`, `TAYLORCAL_MATMUL`, ...),
/// so the tests run on the adapter and with the kernel choices a developer asks for.
#[path = "../../src/cli/env.rs"]
mod env;

use rand::{Rng, SeedableRng};
use taylorcal::gpu::{Gpu, GpuOptions, Precision, Tensor};

/// The options the environment sets (the defaults when none is set), as the program reads
/// them, at precision f32: the tests check the f32 kernels at f32 tolerances on every
/// adapter (a GPU's default, f16, would run the products through `ops::mma`); the f16
/// paths' tests ask for f16 themselves.
pub fn env_options() -> GpuOptions {
    GpuOptions { precision: Some(Precision::F32), ..env::gpu_options_from_env().unwrap_or_else(|e| panic!("{e:#}")) }
}

/// The model cache directory the program uses (`TAYLORCAL_CACHE` or the platform's).
pub fn cache_dir() -> std::path::PathBuf {
    env::cache_dir_from_env()
}

/// The process-wide GPU context with the environment's options. Fails loudly (never
/// skips) when no adapter exists.
pub fn gpu() -> &'static Gpu {
    gpu_with(env_options())
}

/// The process-wide GPU context for `opts` (one per distinct options, created on first use).
pub fn gpu_with(opts: GpuOptions) -> &'static Gpu {
    match Gpu::shared_with(opts) {
        Ok(g) => g,
        Err(e) => panic!("GPU tests need a wgpu adapter (install mesa-vulkan-drivers for lavapipe): {e:#}"),
    }
}

/// The binding limit of [`split_gpu`]: 4 KiB.
pub const MAX_BINDING: u64 = 4096;

/// The shared context with the storage-binding limit lowered to [`MAX_BINDING`]
/// (`GpuOptions::max_binding`): every tensor over 4 KiB is bound in pieces, so each
/// kernel's split path runs on any adapter. Checks that the limit took effect.
pub fn split_gpu() -> &'static Gpu {
    let g = gpu_with(GpuOptions { max_binding: Some(MAX_BINDING), ..env_options() });
    assert_eq!(g.max_binding, MAX_BINDING, "the lowered binding limit was not applied: nothing would be split");
    g
}

/// An f32 tensor of `shape` holding `data`.
pub fn up(g: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    g.upload(shape, data).unwrap()
}

/// A tensor's contents as f32.
pub fn read(g: &Gpu, t: &Tensor) -> Vec<f32> {
    g.read(t).unwrap()
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

/// `v` rounded to f32 (what the GPU sees).
pub fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
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

/// [`assert_close`] that also prints the error (the margin shows in `--nocapture` runs).
pub fn check(what: &str, got: &[f32], want: &[f64], tol: f64) {
    eprintln!("{what:<40} rel max err {:.2e}", rel_err(got, want));
    assert_close(what, got, want, tol);
}

/// max |a - b| / max |b| of two f64 vectors (for finite differences).
pub fn rel_err_f64(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs())) / scale
}

/// sqrt(sum (a - b)^2 / sum b^2) of two f64 vectors.
pub fn rel_rms_f64(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().max(1e-300);
    (num / den).sqrt()
}

/// Central differences of `f` at `x` in every coordinate.
pub fn numeric_grad(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let fp = f(&x);
            x[i] = x0 - h;
            let fm = f(&x);
            x[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// The built `taylorcal` binary as a command run in directory `cwd`.
pub fn taylorcal_cmd(cwd: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_taylorcal"));
    c.current_dir(cwd).env("XDG_RUNTIME_DIR", "/tmp");
    c
}

/// Runs the built `taylorcal` binary with `args` in directory `cwd`: (success, stdout, stderr).
pub fn taylorcal_in(cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = taylorcal_cmd(cwd).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Writes `dir/text.txt`: a 1,200-word text of a small vocabulary (calibration, training
/// and evaluation text for the tiny models).
pub fn word_text(dir: &std::path::Path) -> std::path::PathBuf {
    let text = dir.join("text.txt");
    let words = ["the", "cat", "sat", "on", "mat", "hello", "world", "12", "or", "then"];
    let body: Vec<&str> = (0..1200).map(|i| words[(i * 7 + i / 3) % words.len()]).collect();
    std::fs::write(&text, body.join(" ")).unwrap();
    text
}
