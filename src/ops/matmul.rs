//! Linear layers: y = x W^T (+ bias) (+= y) with the tiled kernel (shaders/matmul.wgsl)
//! or, on CPU adapters with 8-lane subgroups (lavapipe), the subgroup-broadcast kernel
//! (shaders/matmul_sg.wgsl); and the naive one-thread-per-output baseline
//! (shaders/matmul_naive.wgsl). Tested in tests/kernels/matmul.rs (split over small bindings
//! included).
use super::{mma, row_split, weight_rows};
use crate::gpu::{grid, Batch, DType, Gpu, Kernel, Precision, Tensor};

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

/// The kernel behind [`linear`] (defined in `gpu`, whose options can force one).
pub use crate::gpu::MatmulKernel;

/// Rows up to which [`linear`] uses the matrix-vector kernel (its `MV` constant).
pub const MATVEC_MAX_ROWS: usize = 4;

impl MatmulKernel {
    /// Whether this adapter can run the kernel: `Subgroup` needs SUBGROUP and subgroups of
    /// exactly 8 invocations (its workgroup is one subgroup).
    pub fn available(self, gpu: &Gpu) -> bool {
        match self {
            MatmulKernel::Tiled | MatmulKernel::Tiled64 | MatmulKernel::Tiled128 | MatmulKernel::Matvec => true,
            MatmulKernel::Subgroup => gpu.info.subgroup && gpu.info.min_subgroup_size == 8 && gpu.info.max_subgroup_size == 8,
            MatmulKernel::Mma => mma::available(gpu),
        }
    }

    /// The kernel `linear` (and `ops::matmul_grad`) uses here: `Mma` where the context's
    /// precision is f16, else `Subgroup` on a CPU adapter that can run it, else `Tiled`.
    /// [`GpuOptions::matmul`](crate::gpu::GpuOptions::matmul) overrides the choice
    /// (where available; the CLI reads it from `TAYLORCAL_MATMUL`), so tests can cover every
    /// kernel on one machine.
    pub fn auto(gpu: &Gpu) -> MatmulKernel {
        match gpu.options().matmul {
            Some(k) if k.available(gpu) => k,
            Some(_) => MatmulKernel::Tiled,
            None if gpu.info.precision == Precision::F16 => MatmulKernel::Mma,
            None if gpu.info.device_type == "Cpu" && MatmulKernel::Subgroup.available(gpu) => MatmulKernel::Subgroup,
            None => MatmulKernel::Tiled,
        }
    }

    /// The specialised kernel and its output tile (rows, columns) for an m x n output.
    fn kernel(self, gpu: &Gpu, m: usize, n: usize, f16: bool) -> (Kernel, usize, usize) {
        match self {
            MatmulKernel::Tiled | MatmulKernel::Tiled64 | MatmulKernel::Tiled128 => {
                // Tiled: 128 x 128 tiles (8 x 8 per invocation) once there are enough of them
                // to fill a GPU (on an H200 they win from 2048^2 outputs on, 64 x 64 below);
                // always on CPU adapters, where fewer loads per FMA is all that counts
                let big = match self {
                    MatmulKernel::Tiled64 => false,
                    MatmulKernel::Tiled128 => true,
                    _ => gpu.info.device_type == "Cpu" || m.div_ceil(128) * n.div_ceil(128) >= 256,
                };
                let (tile, r) = if big { (128, 2) } else { (64, 1) };
                let k = Kernel::new("matmul", "matmul").with("BM", tile).with("BN", tile).with("RM", r).with("RN", r).f16(f16);
                (k, tile as usize, tile as usize)
            }
            MatmulKernel::Subgroup => (Kernel::new("matmul_sg", "matmul_sg").f16(f16), 64, 64),
            // one workgroup per output column; bm is never exceeded (m <= MATVEC_MAX_ROWS)
            MatmulKernel::Matvec => (Kernel::new("matvec", "matvec").f16(f16), MATVEC_MAX_ROWS, 1),
            MatmulKernel::Mma => unreachable!("linear_with hands Mma to ops::mma"),
        }
    }
}

/// y[M, N] = x[M, K] W[N, K]^T + bias[N] (or y += ... when `accumulate`).
/// W may be f32 or f16 (f16 needs SHADER_F16). Tensors larger than the adapter's binding
/// limit are split over rows of x/y and of W into several dispatches.
/// Runs the kernel [`MatmulKernel::auto`] picks for the adapter.
/// A few rows (decoding) go to the matrix-vector kernel instead.
pub fn linear(b: &mut Batch, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, accumulate: bool) {
    let m = x.numel() / w.cols();
    let kernel = if m <= MATVEC_MAX_ROWS { MatmulKernel::Matvec } else { MatmulKernel::auto(b.gpu) };
    linear_with(b, x, w, bias, y, accumulate, kernel);
}

/// [`linear`] with an explicit kernel; panics if the adapter cannot run it.
pub fn linear_with(b: &mut Batch, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, accumulate: bool, kernel: MatmulKernel) {
    assert!(kernel.available(b.gpu), "matmul kernel {kernel:?} is not available on {}", b.gpu.info.name);
    if kernel == MatmulKernel::Mma {
        return mma::linear(b, x, w, bias, y, accumulate, None);
    }
    let (n, k) = (w.rows(), w.cols());
    let m = x.numel() / k;
    assert_eq!(x.numel(), m * k, "linear: x {:?} vs W {:?}", x.shape, w.shape);
    assert_eq!(y.numel(), m * n, "linear: y {:?} for x {:?} W {:?}", y.shape, x.shape, w.shape);
    let x = x.reshape(&[m, k]);
    let y = y.reshape(&[m, n]);
    let f16 = w.dtype == DType::F16;
    let (kernel, bm, bn) = kernel.kernel(b.gpu, m, n, f16);
    // row ranges of W, each with its part of the bias
    let wparts = weight_rows(b, w, bias);
    for xy in row_split(b.gpu, m, [&x, &y]) {
        let [xb, yb] = xy.binds;
        for wc in &wparts {
            let (mc, n0, nc) = (xy.rows, wc.row0, wc.rows);
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
            let [wb, bias_b] = wc.binds.clone();
            let binds = [xb.clone(), wb, bias_b, yb.clone()];
            let groups = if bn == 1 {
                assert!(mc <= bm, "matvec takes at most {bm} rows, got {mc}");
                grid(b.gpu, nc as u32)
            } else {
                [nc.div_ceil(bn) as u32, mc.div_ceil(bm) as u32, 1]
            };
            b.dispatch(&kernel, &p, &binds, groups);
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
