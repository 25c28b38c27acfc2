//! Column sums (shaders/reduce.wgsl).
use crate::gpu::{Batch, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

/// y[c] = scale * sum_r x[r, c] for x viewed as [rows, y.numel()].
pub fn colsum(b: &mut Batch, x: &Tensor, scale: f32, y: &Tensor) {
    let cols = y.numel();
    let rows = x.numel() / cols;
    let p = Params { rows: rows as u32, cols: cols as u32, scale, _pad: 0 };
    b.dispatch(&Kernel::new("reduce", "colsum"), &p, &[x.into(), y.into()], [cols.div_ceil(64) as u32, 1, 1]);
}

pub mod cpu {
    pub fn colsum(x: &[f64], cols: usize, scale: f64) -> Vec<f64> {
        let mut y = vec![0.0; cols];
        for row in x.chunks(cols) {
            for (a, v) in y.iter_mut().zip(row) {
                *a += v;
            }
        }
        y.iter().map(|v| v * scale).collect()
    }
}
