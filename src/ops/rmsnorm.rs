//! RMSNorm over the last dimension, forward and backward (shaders/rmsnorm.wgsl). Tested in
//! tests/kernels/rmsnorm.rs (split over small bindings included).
use super::{row_split, view};
use crate::gpu::{grid, Batch, DType, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32,
    rows_per: u32,
    _pad: [u32; 3],
}

/// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, with `cols = w.numel()`
/// (so a [T, H * d] tensor with a [d] weight is normalised per head).
pub fn rmsnorm(b: &mut Batch, x: &Tensor, w: &Tensor, eps: f32, y: &Tensor) {
    let cols = w.numel();
    let rows = x.numel() / cols;
    assert_eq!(x.numel(), y.numel());
    let p = Params { rows: rows as u32, cols: cols as u32, eps, ..Default::default() };
    b.dispatch(&Kernel::new("rmsnorm", "rmsnorm"), &p, &[x.into(), w.into(), y.into()], grid(b.gpu, rows as u32));
}

/// Rows per range of the dw column sums: enough ranges to spread a long sequence over
/// workgroups, at most 65535 of them.
const DW_ROWS_PER: usize = 128;

/// Backward of [`rmsnorm`] (y = x inv w, inv = 1 / sqrt(mean(x^2) + eps)), from dy:
/// `dx = inv (w dy) - x inv^3 mean(x w dy)`, written to `dx` or, with `dx_accumulate`,
/// added to it (the residual stream sums gradients); `dw += sum over rows of dy x inv`
/// (always accumulated). `cols = w.numel()`, any number of rows.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(b: &mut Batch, x: &Tensor, w: &Tensor, eps: f32, dy: &Tensor, dx: &Tensor, dw: &Tensor, dx_accumulate: bool) {
    let cols = w.numel();
    assert!(cols > 0, "rmsnorm_backward: empty weight");
    let rows = x.numel() / cols;
    assert_eq!(x.numel(), rows * cols, "rmsnorm_backward: x {:?} vs w {:?}", x.shape, w.shape);
    assert_eq!(dy.numel(), x.numel(), "rmsnorm_backward: dy {:?} vs x {:?}", dy.shape, x.shape);
    assert_eq!(dx.numel(), x.numel(), "rmsnorm_backward: dx {:?} vs x {:?}", dx.shape, x.shape);
    assert_eq!(dw.numel(), cols, "rmsnorm_backward: dw {:?} vs w {:?}", dw.shape, w.shape);
    if rows == 0 {
        return;
    }
    let [x, dy, dx] = [x, dy, dx].map(|t| view(t, rows, cols));
    let inv = b.gpu.empty(&[rows, 1], DType::F32).expect("rmsnorm_backward: inverse rms");
    let bwd = Kernel::new("rmsnorm", "rmsnorm_bwd");
    let dwk = Kernel::new("rmsnorm", "rmsnorm_dw");
    for c in row_split(b.gpu, rows, [&x, &dy, &dx, &inv]) {
        let rc = c.rows;
        let p = Params { rows: rc as u32, cols: cols as u32, eps, accumulate: dx_accumulate as u32, ..Default::default() };
        let [x, dy, dx, inv] = c.binds;
        b.dispatch(&bwd, &p, &[x.clone(), w.into(), dy.clone(), dx, inv.clone()], grid(b.gpu, rc as u32));

        let per = DW_ROWS_PER.max(rc.div_ceil(65535));
        let splits = rc.div_ceil(per);
        let gx = cols.div_ceil(64) as u32;
        let mut p = Params { rows: rc as u32, cols: cols as u32, rows_per: per as u32, accumulate: 1, ..Default::default() };
        if splits == 1 {
            b.dispatch(&dwk, &p, &[x, dy, inv, dw.into()], [gx, 1, 1]);
        } else {
            let partial = b.gpu.empty(&[splits, cols], DType::F32).expect("rmsnorm_backward: partial sums");
            p.accumulate = 0;
            b.dispatch(&dwk, &p, &[x, dy, inv, (&partial).into()], [gx, splits as u32, 1]);
            super::gdn_act::colsum_binding(b, (&partial).into(), splits, cols, dw.into(), true);
        }
    }
}

pub mod cpu {
    pub fn rmsnorm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let c = w.len();
        x.chunks(c)
            .flat_map(|row| {
                let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
                row.iter().zip(w).map(move |(v, w)| v * inv * w).collect::<Vec<_>>()
            })
            .collect()
    }

    /// (dx, dw) of [`rmsnorm`] for the output gradient dy.
    pub fn rmsnorm_backward(x: &[f64], w: &[f64], eps: f64, dy: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let c = w.len();
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; c];
        for (r, row) in x.chunks(c).enumerate() {
            let inv = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
            let g = &dy[r * c..(r + 1) * c];
            let mean_xwg = (0..c).map(|j| row[j] * w[j] * g[j]).sum::<f64>() / c as f64;
            for j in 0..c {
                dx[r * c + j] = inv * w[j] * g[j] - row[j] * inv.powi(3) * mean_xwg;
                dw[j] += g[j] * row[j] * inv;
            }
        }
        (dx, dw)
    }
}
