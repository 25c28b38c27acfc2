//! Every kernel family against its f64 CPU reference, on random data at shapes that are
//! not multiples of the tile sizes: one file per `src/ops` module, named like it (and like
//! its shader), so `shaders/X.wgsl` -> `src/ops/X.rs` -> `tests/kernels/X.rs`. Each file
//! tests the forward, then the backward (with the f64 backward against finite
//! differences), then the split path on `common::split_gpu` (every tensor over 4 KiB
//! bound in pieces).
//!
//! Files, in order: attention, delta, elementwise, gated_norm, gdn_act, kl, matmul,
//! matmul_grad, mma, nll, optim, rmsnorm, rope, and shaders (every WGSL file registered,
//! validated and translated by naga).
#[path = "../common/mod.rs"]
mod common;

mod attention;
mod delta;
mod elementwise;
mod gated_norm;
mod gdn_act;
mod kl;
mod matmul;
mod matmul_grad;
mod mma;
mod nll;
mod optim;
mod rmsnorm;
mod rope;
mod shaders;
