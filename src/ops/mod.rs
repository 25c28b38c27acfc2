//! Host side of every shader: one module per kernel family, each with its dispatch
//! wrapper(s) and a plain-Rust f64 CPU reference (`cpu` functions) the tests compare to.

pub mod act;
pub mod attention;
pub mod delta;
pub mod elementwise;
pub mod kl;
pub mod matmul;
pub mod matmul_grad;
pub mod nll;
pub mod optim;
pub mod rmsnorm;
pub mod rope;

use crate::gpu::{Batch, Binding, Gpu, Tensor};

/// Workgroups for `n` threads of `wg` threads each, folded into 2-D past the dimension limit.
pub(crate) fn groups_for(gpu: &Gpu, n: usize, wg: usize) -> [u32; 3] {
    crate::gpu::grid(gpu, n.div_ceil(wg) as u32)
}

/// The device's 16-byte dummy buffer, bound where a kernel's optional input is absent.
pub(crate) fn dummy(b: &Batch) -> Binding {
    Binding { buf: b.gpu.dummy.clone(), offset: 0, size: None }
}

/// `t` viewed as [rows, cols] (its buffer may be larger than rows * cols).
pub(crate) fn view(t: &Tensor, rows: usize, cols: usize) -> Tensor {
    assert!(rows * cols <= t.numel(), "tensor {:?} is smaller than [{rows}, {cols}]", t.shape);
    Tensor { buf: t.buf.clone(), shape: vec![rows, cols], dtype: t.dtype }
}

/// Row ranges `(row0, nrows)` such that every tensor split along the same rows (with the
/// given bytes per row) fits one binding and starts at an aligned offset.
pub(crate) fn row_chunks(b: &Batch, rows: usize, row_bytes: &[u64]) -> Vec<(usize, usize)> {
    let step = b.gpu.rows_per_binding(row_bytes).max(1);
    (0..rows).step_by(step).map(|r0| (r0, step.min(rows - r0))).collect()
}
