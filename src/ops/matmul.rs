//! Linear layers: y = x W^T (+ bias) (+= y) with the tiled kernel (shaders/matmul.wgsl),
//! and the naive one-thread-per-output baseline (shaders/matmul_naive.wgsl).
use super::dummy;
use crate::gpu::{Batch, DType, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldy: u32,
    ycol: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: u32,
}

const BM: usize = 64;
const BN: usize = 64;

/// y[M, N] = x[M, K] W[N, K]^T + bias[N] (or y += ... when `accumulate`).
/// W may be f32 or f16 (f16 needs SHADER_F16). Tensors larger than the adapter's binding
/// limit are split over rows of x/y and of W into several dispatches.
pub fn linear(b: &mut Batch, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, accumulate: bool) {
    let (n, k) = (w.rows(), w.cols());
    let m = x.numel() / k;
    assert_eq!(x.numel(), m * k, "linear: x {:?} vs W {:?}", x.shape, w.shape);
    assert_eq!(y.numel(), m * n, "linear: y {:?} for x {:?} W {:?}", y.shape, x.shape, w.shape);
    let x = x.reshape(&[m, k]);
    let y = y.reshape(&[m, n]);
    let f16 = w.dtype == DType::F16;
    let kernel = Kernel::new("matmul", "matmul").f16(f16);
    let mstep = b.gpu.rows_per_binding(&[(k * 4) as u64, (n * 4) as u64]);
    let nstep = b.gpu.rows_per_binding(&[(k * w.dtype.size()) as u64, 4]);
    for m0 in (0..m).step_by(mstep) {
        let mc = mstep.min(m - m0);
        for n0 in (0..n).step_by(nstep) {
            let nc = nstep.min(n - n0);
            let bias_b = match bias {
                Some(bv) => bv.reshape(&[n, 1]).rows_binding(n0, nc),
                None => dummy(b),
            };
            let p = Params {
                m: mc as u32,
                n: nc as u32,
                k: k as u32,
                ldy: n as u32,
                ycol: n0 as u32,
                has_bias: bias.is_some() as u32,
                accumulate: accumulate as u32,
                _pad: 0,
            };
            let binds = [x.rows_binding(m0, mc), w.rows_binding(n0, nc), bias_b, y.rows_binding(m0, mc)];
            b.dispatch(&kernel, &p, &binds, [nc.div_ceil(BN) as u32, mc.div_ceil(BM) as u32, 1]);
        }
    }
}

/// The naive baseline: one thread per output, no tiling (f32, no splitting).
pub fn linear_naive(b: &mut Batch, x: &Tensor, w: &Tensor, y: &Tensor) {
    let (n, k) = (w.rows(), w.cols());
    let m = x.numel() / k;
    let p = [m as u32, n as u32, k as u32, 0];
    b.dispatch(
        &Kernel::new("matmul_naive", "matmul_naive"),
        &p,
        &[x.into(), w.into(), y.into()],
        [n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1],
    );
}

pub mod cpu {
    /// y[M, N] = x[M, K] W[N, K]^T + bias
    pub fn linear(x: &[f64], w: &[f64], bias: Option<&[f64]>, k: usize) -> Vec<f64> {
        let n = w.len() / k;
        let mut y = Vec::with_capacity(x.len() / k * n);
        for row in x.chunks(k) {
            for j in 0..n {
                let wr = &w[j * k..(j + 1) * k];
                let dot: f64 = row.iter().zip(wr).map(|(a, b)| a * b).sum();
                y.push(dot + bias.map_or(0.0, |bv| bv[j]));
            }
        }
        y
    }
}
