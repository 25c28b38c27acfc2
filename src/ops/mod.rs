//! Host side of every shader: one module per kernel family, each with its dispatch
//! wrapper(s) and a plain-Rust f64 CPU reference (`cpu` functions) the tests compare to.
//! Kernels over rows split tensors larger than one storage binding with `row_split`
//! (tested in the split sections of tests/kernels/).

pub mod attention;
pub mod delta;
pub mod elementwise;
pub mod gated_norm;
pub mod gdn_act;
pub mod kl;
pub mod matmul;
pub mod matmul_grad;
pub mod mma;
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

/// Rows `row0 .. row0 + rows` of every tensor given to [`row_split`], bound in the order given.
pub(crate) struct RowChunk<const N: usize> {
    pub row0: usize,
    pub rows: usize,
    pub binds: [Binding; N],
}

/// The row ranges of a weight W[N, K] that each fit one binding, with the matching part of
/// `bias` (the dummy binding where there is none) as the second binding.
pub(crate) fn weight_rows(b: &Batch, w: &Tensor, bias: Option<&Tensor>) -> Vec<RowChunk<2>> {
    let n = w.rows();
    match bias.map(|bv| bv.reshape(&[n, 1])) {
        Some(bv) => row_split(b.gpu, n, [w, &bv]).collect(),
        None => row_split(b.gpu, n, [w]).map(|c| RowChunk { row0: c.row0, rows: c.rows, binds: [c.binds[0].clone(), dummy(b)] }).collect(),
    }
}

/// The first `rows` rows of `tensors` (each split along its rows of `cols() * dtype.size()`
/// bytes, all along the same rows) in ranges whose part of every tensor fits one storage
/// binding and starts at an aligned offset, with those parts' bindings. Kernels over rows
/// run one dispatch per range, so a tensor larger than the adapter's largest binding is
/// split, not refused.
pub(crate) fn row_split<'t, const N: usize>(gpu: &Gpu, rows: usize, tensors: [&'t Tensor; N]) -> impl Iterator<Item = RowChunk<N>> + 't {
    let row_bytes = tensors.map(|t| {
        debug_assert!(t.rows() >= rows, "row_split: tensor {:?} has fewer than {rows} rows", t.shape);
        (t.cols() * t.dtype.size()) as u64
    });
    let step = gpu.rows_per_binding(&row_bytes).max(1);
    (0..rows).step_by(step).map(move |row0| {
        let n = step.min(rows - row0);
        RowChunk { row0, rows: n, binds: tensors.map(|t| t.rows_binding(row0, n)) }
    })
}

/// Workgroups per dW tile for a reduction of `m` rows over `tiles` tiles: enough to have
/// about 256 workgroups, each over at least 256 rows, within 64 and one binding of partials.
pub(crate) fn reduction_splits(b: &Batch, tiles: usize, m: usize, tile_bytes: u64) -> usize {
    const TARGET: usize = 256;
    if tiles >= TARGET / 2 {
        return 1;
    }
    let by_binding = (b.gpu.max_binding / tile_bytes.max(1)) as usize;
    TARGET.div_ceil(tiles).min(m / 256).min(64).min(by_binding).min(b.gpu.limits.max_compute_workgroups_per_dimension as usize).max(1)
}
