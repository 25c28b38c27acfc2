//! Gradients of a linear layer `y[M, N] = x[M, K] W[N, K]^T` (shaders/matmul_grad.wgsl):
//! `dx = dy W` and `dW = dy^T x`, tiled with workgroup memory and f32 accumulation; at
//! precision f16 (where [`MatmulKernel::auto`] is `Mma`) through `ops::mma` instead.
//! Tensors larger than the adapter's binding limit are split over rows (and the reduction)
//! into several dispatches, like [`crate::ops::matmul::linear`]. Tested in
//! tests/kernels/matmul_grad.rs (split over small bindings included).
use super::{dummy, mma, reduction_splits, row_split};
use crate::gpu::{Batch, DType, Kernel, MatmulKernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    ni: u32,
    nj: u32,
    nr: u32,
    lda: u32,
    acol: u32,
    ldb: u32,
    ldc: u32,
    accumulate: u32,
    rchunk: u32,
    cstride: u32,
    _pad0: u32,
    _pad1: u32,
}

impl Params {
    /// One workgroup layer (no split of the reduction).
    #[allow(clippy::too_many_arguments)]
    fn new(ni: usize, nj: usize, nr: usize, lda: usize, acol: usize, ldb: usize, ldc: usize, accumulate: bool) -> Params {
        Params {
            ni: ni as u32,
            nj: nj as u32,
            nr: nr as u32,
            lda: lda as u32,
            acol: acol as u32,
            ldb: ldb as u32,
            ldc: ldc as u32,
            accumulate: accumulate as u32,
            rchunk: nr.max(1) as u32,
            cstride: 0,
            _pad0: 0,
            _pad1: 0,
        }
    }
}

const TILE: usize = 64;

/// Both gradients of `y = x W^T` from one dy: `dx (+)= dy W` where `dx` is given (with its
/// accumulate flag) and `dW (+)= dy^T x`. At precision f16 the two mma products share one
/// pass for max |dy| (their f16 scale) instead of one each.
pub fn linear_backward(b: &mut Batch, dy: &Tensor, w: &Tensor, x: &Tensor, dx: Option<(&Tensor, bool)>, dw: &Tensor, acc_dw: bool) {
    if MatmulKernel::auto(b.gpu) != MatmulKernel::Mma {
        if let Some((dx, acc)) = dx {
            linear_backward_input(b, dy, w, dx, acc);
        }
        return linear_backward_weight(b, dy, x, dw, acc_dw);
    }
    let scale = mma::dy_scale(b, dy, w.rows());
    if let Some((dx, acc)) = dx {
        mma::input_grad(b, dy, w, dx, acc, None, Some(&scale));
    }
    mma::weight_grad(b, dy, x, dw, acc_dw, None, Some(&scale));
}

/// `dx[M, K] (+)= dy[M, N] W[N, K]`: the input gradient of `y = x W^T` (f32 W, or f16 at
/// precision f16).
pub fn linear_backward_input(b: &mut Batch, dy: &Tensor, w: &Tensor, dx: &Tensor, accumulate: bool) {
    if MatmulKernel::auto(b.gpu) == MatmulKernel::Mma {
        return mma::backward_input(b, dy, w, dx, accumulate, None);
    }
    let (n, k) = (w.rows(), w.cols());
    let m = dx.numel() / k.max(1);
    assert_eq!(dx.numel(), m * k, "linear_backward_input: dx {:?} vs W {:?}", dx.shape, w.shape);
    assert_eq!(dy.numel(), m * n, "linear_backward_input: dy {:?} for dx {:?} W {:?}", dy.shape, dx.shape, w.shape);
    assert_eq!(w.dtype, DType::F32, "linear_backward_input: W must be f32");
    if m == 0 || k == 0 {
        return;
    }
    let dy = dy.reshape(&[m, n]);
    let dx = dx.reshape(&[m, k]);
    let kernel = Kernel::new("matmul_grad", "matmul_grad").with("TA", 0);
    for ms in row_split(b.gpu, m, [&dy, &dx]) {
        let [dyb, dxb] = ms.binds;
        let groups = [k.div_ceil(TILE) as u32, ms.rows.div_ceil(TILE) as u32, 1];
        if n == 0 {
            // an empty reduction still defines dx = 0 (dy and W are empty: bind something valid)
            if !accumulate {
                let p = Params::new(ms.rows, k, 0, 1, 0, k, k, false);
                b.dispatch(&kernel, &p, &[dummy(b), dummy(b), dxb], groups);
            }
            continue;
        }
        for (s, ns) in row_split(b.gpu, n, [w]).enumerate() {
            let p = Params::new(ms.rows, k, ns.rows, n, ns.row0, k, k, accumulate || s > 0);
            let [wb] = ns.binds;
            b.dispatch(&kernel, &p, &[dyb.clone(), wb, dxb.clone()], groups);
        }
    }
}

/// `dW[N, K] (+)= dy[M, N]^T x[M, K]`: the weight gradient of `y = x W^T`, a reduction
/// over the M rows (tokens). Where dW has too few 64 x 64 tiles to fill the GPU (a narrow
/// layer such as the gate's [H, D]) and M is long, the reduction is split over several
/// workgroups per tile whose partial sums are then added up. At precision f16 it goes
/// through `ops::mma`, which splits narrow layers' reductions the same way.
pub fn linear_backward_weight(b: &mut Batch, dy: &Tensor, x: &Tensor, dw: &Tensor, accumulate: bool) {
    let (n, k) = (dw.rows(), dw.cols());
    let m = x.numel() / k.max(1);
    if MatmulKernel::auto(b.gpu) == MatmulKernel::Mma {
        return mma::backward_weight(b, dy, x, dw, accumulate, None);
    }
    assert_eq!(x.numel(), m * k, "linear_backward_weight: x {:?} vs dW {:?}", x.shape, dw.shape);
    assert_eq!(dy.numel(), m * n, "linear_backward_weight: dy {:?} for x {:?} dW {:?}", dy.shape, x.shape, dw.shape);
    if n == 0 || k == 0 {
        return;
    }
    let dy = dy.reshape(&[m, n]);
    let x = x.reshape(&[m, k]);
    let kernel = Kernel::new("matmul_grad", "matmul_grad").with("TA", 1);
    for ns in row_split(b.gpu, n, [dw]) {
        let (n0, nc) = (ns.row0, ns.rows);
        let [dwb] = ns.binds;
        let groups = [k.div_ceil(TILE) as u32, nc.div_ceil(TILE) as u32, 1];
        if m == 0 {
            if !accumulate {
                let p = Params::new(nc, k, 0, 1, 0, k, k, false);
                b.dispatch(&kernel, &p, &[dummy(b), dummy(b), dwb], groups);
            }
            continue;
        }
        for (s, ms) in row_split(b.gpu, m, [&dy, &x]).enumerate() {
            let mc = ms.rows;
            let acc = accumulate || s > 0;
            let [dyb, xb] = ms.binds;
            let splits = reduction_splits(b, groups[0] as usize * groups[1] as usize, mc, (nc * k * 4) as u64);
            if splits <= 1 {
                let p = Params::new(nc, k, mc, n, n0, k, k, acc);
                b.dispatch(&kernel, &p, &[dyb, xb, dwb.clone()], groups);
                continue;
            }
            let rchunk = mc.div_ceil(splits);
            let splits = mc.div_ceil(rchunk);
            let partial = b.gpu.empty(&[splits, nc * k], DType::F32).expect("linear_backward_weight: partial sums");
            let mut p = Params::new(nc, k, mc, n, n0, k, k, false);
            p.rchunk = rchunk as u32;
            p.cstride = (nc * k) as u32;
            b.dispatch(&kernel, &p, &[dyb, xb, (&partial).into()], [groups[0], groups[1], splits as u32]);
            super::gdn_act::colsum_binding(b, (&partial).into(), splits, nc * k, dwb.clone(), acc);
        }
    }
}

pub mod cpu {
    /// dx[M, K] = dy[M, N] W[N, K]
    pub fn linear_backward_input(dy: &[f64], w: &[f64], n: usize, k: usize) -> Vec<f64> {
        let m = dy.len() / n.max(1);
        let mut dx = vec![0.0; m * k];
        for i in 0..m {
            for j in 0..n {
                let g = dy[i * n + j];
                for c in 0..k {
                    dx[i * k + c] += g * w[j * k + c];
                }
            }
        }
        dx
    }

    /// dW[N, K] = dy[M, N]^T x[M, K]
    pub fn linear_backward_weight(dy: &[f64], x: &[f64], n: usize, k: usize) -> Vec<f64> {
        let m = x.len() / k.max(1);
        let mut dw = vec![0.0; n * k];
        for i in 0..m {
            for j in 0..n {
                let g = dy[i * n + j];
                for c in 0..k {
                    dw[j * k + c] += g * x[i * k + c];
                }
            }
        }
        dw
    }
}
