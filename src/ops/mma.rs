//! Matrix products on the GPU's matrix units: one tiled GEMM (shaders/mma_common.wgsl,
//! 64 x 64 or 128 x 128 output tiles, slices of 64, 32 or 16 as workgroup memory allows)
//! with f16 operands and f32 accumulation, whose tiles a workgroup multiplies with
//! cooperative matrices (tensor cores: shaders/mma_coop.wgsl) where the adapter lists the
//! 16 x 16 x 16 f16 -> f32 shape ([`GpuInfo::coop16`](crate::gpu::GpuInfo::coop16)), or
//! with the same tiles, staging and output on ordinary invocations (shaders/mma_tile.wgsl)
//! elsewhere, so CI (lavapipe) runs the shared tiling, staging and bounds (the cooperative
//! multiply and its output scratch are checked on a GPU that has them, by the same tests).
//! The three products of a linear layer are its cases: [`linear`], [`backward_input`],
//! [`backward_weight`]. Not yet wired into the model, nor split over bindings as
//! `ops::matmul` is: an operand larger than one binding is refused (assert).
//!
//! Precision: A and B are rounded to f16 when staged (relative error 2^-11 each); their
//! products are exact in f32 and summed in f32. Tested against an f64 reference of the
//! f16-rounded operands (f32-accumulation tolerance) and of the exact ones (the f16
//! tolerance) in tests/kernels/mma.rs.
use super::dummy;
use crate::gpu::{Batch, DType, Gpu, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    ni: u32,
    nj: u32,
    nr: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    ccol: u32,
    flags: u32,
}

/// How a workgroup multiplies its tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmaPath {
    /// Cooperative matrices (tensor cores).
    Coop,
    /// Ordinary invocations, same tiles.
    Tile,
}

/// The output tile of a workgroup (both paths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tile {
    /// 64 x 64: 4 subgroups of 32 x 32 (coop), or 128 invocations (fallback).
    T64,
    /// 128 x 128: 8 subgroups of 64 x 32 (coop), or 256 invocations (fallback).
    T128,
}

impl Tile {
    /// 128 x 128 once there are enough such tiles to fill a large GPU (as the f32 tiled
    /// matmul), else 64 x 64.
    pub fn auto(ni: usize, nj: usize) -> Tile {
        if ni.div_ceil(128) * nj.div_ceil(128) >= 256 {
            Tile::T128
        } else {
            Tile::T64
        }
    }

    pub fn size(self) -> usize {
        match self {
            Tile::T64 => 64,
            Tile::T128 => 128,
        }
    }
}

impl MmaPath {
    /// Cooperative matrices where the adapter has them, else the fallback.
    pub fn auto(gpu: &Gpu) -> MmaPath {
        if gpu.info.coop16 {
            MmaPath::Coop
        } else {
            MmaPath::Tile
        }
    }

    fn kernel(self, gpu: &Gpu, tile: Tile, ta: bool, tb: bool, f16_b: bool) -> Kernel {
        // subgroups over the tile (cooperative path): 2 x 2 or 2 x 4
        let (sgm, sgn) = match tile {
            Tile::T64 => (2, 2),
            Tile::T128 => (2, 4),
        };
        let k = match self {
            MmaPath::Coop => {
                Kernel::new("mma_coop", "mma").with("SGM", sgm).with("SGN", sgn).with("WG", sgm * sgn * gpu.info.min_subgroup_size)
            }
            MmaPath::Tile => Kernel::new("mma_tile", "mma").with("WG", sgm * sgn * 32),
        };
        let t = tile.size() as u32;
        // the deepest slice whose staged tiles (f16, rows padded by 8) and output scratch (the
        // cooperative path's 16 x 16 f32 per subgroup) fit the adapter's workgroup memory:
        // 64 on the H200 (48 KiB; 2x the speed of 32 there), 32 or 64 on lavapipe (32 KiB)
        let scratch = if self == MmaPath::Coop { sgm * sgn * 1024 } else { 0 };
        let fits = |bk: u32| 2 * t * (bk + 8) * 2 + scratch <= gpu.limits.max_compute_workgroup_storage_size;
        let bk = [64, 32].into_iter().find(|&bk| fits(bk)).unwrap_or(16);
        k.with("BM", t).with("BN", t).with("BK", bk).with("BKP", bk + 8).with("TA", ta as u32).with("TB", tb as u32).f16(f16_b)
    }
}

/// Whether the adapter can run these kernels (they stage f16 tiles: SHADER_F16).
pub fn available(gpu: &Gpu) -> bool {
    gpu.info.shader_f16
}

/// `C[i, j] (+)= sum_r A(i, r) B(j, r) (+ bias[j])` for an ni x nj output with row stride
/// nj; A(i, r) = a[i lda + r] or, with `ta`, a[r lda + i]; B likewise with `tb`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    b: &mut Batch,
    a: &Tensor,
    ta: bool,
    bm: &Tensor,
    tb: bool,
    bias: Option<&Tensor>,
    c: &Tensor,
    [ni, nj, nr]: [usize; 3],
    accumulate: bool,
    tile: Option<Tile>,
) {
    assert!(available(b.gpu), "the mma kernels need SHADER_F16, which {} lacks", b.gpu.info.name);
    assert_eq!(a.dtype, DType::F32, "mma: A must be f32");
    assert_eq!(c.numel(), ni * nj, "mma: C {:?} is not {ni} x {nj}", c.shape);
    if ni == 0 || nj == 0 {
        return;
    }
    for t in [a, bm, c] {
        let bytes = (t.numel() * t.dtype.size()) as u64;
        assert!(bytes <= b.gpu.max_binding, "mma: a {bytes}-byte operand exceeds one binding ({} bytes)", b.gpu.max_binding);
    }
    let p = Params {
        ni: ni as u32,
        nj: nj as u32,
        nr: nr as u32,
        lda: if ta { ni } else { nr } as u32,
        ldb: if tb { nj } else { nr } as u32,
        ldc: nj as u32,
        ccol: 0,
        flags: bias.is_some() as u32 | (accumulate as u32) << 1,
    };
    let tile = tile.unwrap_or(Tile::auto(ni, nj));
    let kernel = MmaPath::auto(b.gpu).kernel(b.gpu, tile, ta, tb, bm.dtype == DType::F16);
    let t = tile.size();
    let bias = bias.map_or_else(|| dummy(b), |t| t.into());
    // an empty reduction (nr = 0) still writes C = bias, or leaves it when accumulating
    let (ab, bb) = if nr == 0 { (dummy(b), dummy(b)) } else { (a.into(), bm.into()) };
    b.dispatch(&kernel, &p, &[ab, bb, bias, c.into()], [nj.div_ceil(t) as u32, ni.div_ceil(t) as u32, 1]);
}

/// `y[M, N] (+)= x[M, K] W[N, K]^T (+ bias[N])`, W f32 or f16. `tile` None: [`Tile::auto`]
/// (the three functions take it so tests and benches can run both tiles).
pub fn linear(b: &mut Batch, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, accumulate: bool, tile: Option<Tile>) {
    let (n, k) = (w.rows(), w.cols());
    let m = x.numel() / k.max(1);
    assert_eq!(x.numel(), m * k, "mma::linear: x {:?} vs W {:?}", x.shape, w.shape);
    gemm(b, x, false, w, false, bias, y, [m, n, k], accumulate, tile);
}

/// `dx[M, K] (+)= dy[M, N] W[N, K]`, W f32 or f16.
pub fn backward_input(b: &mut Batch, dy: &Tensor, w: &Tensor, dx: &Tensor, accumulate: bool, tile: Option<Tile>) {
    let (n, k) = (w.rows(), w.cols());
    let m = dx.numel() / k.max(1);
    assert_eq!(dy.numel(), m * n, "mma::backward_input: dy {:?} for dx {:?} W {:?}", dy.shape, dx.shape, w.shape);
    gemm(b, dy, false, w, true, None, dx, [m, k, n], accumulate, tile);
}

/// `dW[N, K] (+)= dy[M, N]^T x[M, K]`.
pub fn backward_weight(b: &mut Batch, dy: &Tensor, x: &Tensor, dw: &Tensor, accumulate: bool, tile: Option<Tile>) {
    let (n, k) = (dw.rows(), dw.cols());
    let m = x.numel() / k.max(1);
    assert_eq!(dy.numel(), m * n, "mma::backward_weight: dy {:?} for x {:?} dW {:?}", dy.shape, x.shape, dw.shape);
    gemm(b, dy, true, x, true, None, dw, [n, k, m], accumulate, tile);
}
