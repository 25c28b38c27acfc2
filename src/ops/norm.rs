//! RMSNorm over the last dimension (shaders/rmsnorm.wgsl).
use crate::gpu::{grid, Batch, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

/// y[r, :] = x[r, :] / sqrt(mean(x[r, :]^2) + eps) * w, with `cols = w.numel()`
/// (so a [T, H * d] tensor with a [d] weight is normalised per head).
pub fn rmsnorm(b: &mut Batch, x: &Tensor, w: &Tensor, eps: f32, y: &Tensor) {
    let cols = w.numel();
    let rows = x.numel() / cols;
    assert_eq!(x.numel(), y.numel());
    let p = Params { rows: rows as u32, cols: cols as u32, eps, _pad: 0 };
    b.dispatch(&Kernel::new("rmsnorm", "rmsnorm"), &p, &[x.into(), w.into(), y.into()], grid(b.gpu, rows as u32));
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
}
