//! Matrix products on the GPU's matrix units: one tiled GEMM (shaders/mma_common.wgsl,
//! 64 x 64 or 128 x 128 output tiles, slices of 64, 32 or 16 as workgroup memory allows)
//! with f16 operands and f32 accumulation, whose tiles a workgroup multiplies with
//! cooperative matrices (tensor cores: shaders/mma_coop.wgsl) where the adapter lists the
//! 16 x 16 x 16 f16 -> f32 shape ([`GpuInfo::coop16`](crate::gpu::GpuInfo::coop16)), or
//! with the same tiles, staging and output on ordinary invocations (shaders/mma_tile.wgsl)
//! elsewhere, so CI (lavapipe) runs the shared tiling, staging and bounds (the cooperative
//! multiply and its output scratch are checked on a GPU that has them, by the same tests).
//! The three products of a linear layer are its cases: [`linear`], [`backward_input`],
//! [`backward_weight`], split over bindings as `ops::matmul` splits them; a weight gradient
//! (and an input gradient: the KL head's, over the vocabulary) of few tiles over a long
//! reduction also splits it over workgroups (partial sums, then added). `ops::matmul` and
//! `ops::matmul_grad` run them when the context's precision is f16
//! ([`MatmulKernel::Mma`](crate::gpu::MatmulKernel::Mma)), so the whole model does.
//!
//! Precision: A and B are rounded to f16 when staged (relative error 2^-11 each); their
//! products are exact in f32 and summed in f32. In the two gradients A is dy, scaled by a
//! power of two from max |dy| (one pass per dy, shared by the two products through
//! `dy_scale`; shaders/mma_absmax.wgsl) before the rounding (and C
//! back after), so gradients far below f16's range (a KL loss's, ~1e-9 per logit) keep
//! f16's relative precision instead of flushing to zero: per-tensor scales, not a global
//! loss scale, so no step is ever skipped. Tested against an f64 reference of the
//! f16-rounded operands (f32-accumulation tolerance) and of the exact ones (the f16
//! tolerance) in tests/kernels/mma.rs.
use super::{dummy, reduction_splits, row_split, weight_rows};
use crate::gpu::{Batch, Binding, DType, Gpu, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    ni: u32,
    nj: u32,
    nr: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    acol: u32,
    ccol: u32,
    flags: u32,
    rchunk: u32,
    cstride: u32,
    _pad: u32,
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

    /// `tile`, else the context's forced tile ([`GpuOptions::mma_tile`](crate::gpu::GpuOptions::mma_tile)), else [`Tile::auto`].
    fn pick(gpu: &Gpu, tile: Option<Tile>, ni: usize, nj: usize) -> Tile {
        let forced = match gpu.options().mma_tile {
            Some(64) => Some(Tile::T64),
            Some(128) => Some(Tile::T128),
            _ => None,
        };
        tile.or(forced).unwrap_or(Tile::auto(ni, nj))
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
        let wg = match self {
            MmaPath::Coop => sgm * sgn * gpu.info.min_subgroup_size,
            MmaPath::Tile => sgm * sgn * 32,
        };
        let k = match self {
            MmaPath::Coop => Kernel::new("mma_coop", "mma").with("SGM", sgm).with("SGN", sgn),
            MmaPath::Tile => Kernel::new("mma_tile", "mma"),
        }
        .with("WG", wg);
        let t = tile.size() as u32;
        // the deepest slice whose staged tiles (f16, rows padded by 8) and output scratch (the
        // cooperative path's 16 x 16 f32 per subgroup) fit the adapter's workgroup memory:
        // 64 on the H200 (48 KiB; 2x the speed of 32 there), 32 or 64 on lavapipe (32 KiB)
        let scratch = if self == MmaPath::Coop { sgm * sgn * 1024 } else { 0 };
        let fits = |bk: u32| 2 * t * (bk + 8) * 2 + scratch <= gpu.limits.max_compute_workgroup_storage_size;
        // and whose runs of 4 per invocation are 1 to 8 (the shader's named registers)
        let runs = |bk: u32| t * bk / (4 * wg);
        let bk = [64, 32].into_iter().find(|&bk| fits(bk) && runs(bk) <= 8).unwrap_or(16);
        assert!((1..=8).contains(&runs(bk)), "mma: {t} x {bk} slices over {wg} invocations");
        k.with("BM", t).with("BN", t).with("BK", bk).with("BKP", bk + 8).with("TA", ta as u32).with("TB", tb as u32).f16(f16_b)
    }
}

/// Whether the adapter can run these kernels (they stage f16 tiles: SHADER_F16).
pub fn available(gpu: &Gpu) -> bool {
    gpu.info.shader_f16
}

/// One dispatch's operands: `a`, `b` (f16 or f32 as `f16_b`) and `c` bound, with their
/// leading dimensions, A's first column `acol` and C's `ccol` within the bound rows.
struct Operands {
    a: Binding,
    ta: bool,
    b: Binding,
    tb: bool,
    f16_b: bool,
    bias: Option<Binding>,
    c: Binding,
    lda: usize,
    ldb: usize,
    ldc: usize,
    acol: usize,
    ccol: usize,
    /// Scale A by a power of two from max |A| (written by [`absmax`]) before rounding it to
    /// f16 (shaders/mma_common.wgsl `a_scale`): for gradients, whose magnitudes lie mostly
    /// below f16's normal range.
    scale_a: Option<Binding>,
}

/// `C[i, ccol + j] (+)= sum_r A(i, r) B(j, r) (+ bias[j])` for an ni x nj block; A(i, r) =
/// a[i lda + acol + r] or, with `ta`, a[r lda + acol + i]; B likewise with `tb` (no offset).
/// With `split` (parts, cstride): the reduction in `parts` pieces over as many workgroups
/// per tile, piece z written (not accumulated) to C + z cstride. Returns the pieces written
/// (fewer than asked where the reduction is short).
fn gemm(
    bt: &mut Batch,
    o: Operands,
    [ni, nj, nr]: [usize; 3],
    accumulate: bool,
    tile: Option<Tile>,
    split: Option<(usize, usize)>,
) -> usize {
    assert!(available(bt.gpu), "the mma kernels need SHADER_F16, which {} lacks", bt.gpu.info.name);
    if ni == 0 || nj == 0 {
        return 0;
    }
    // pieces of whole 64-row slices (so each piece's runs stay 16-byte aligned)
    let (rchunk, parts, cstride) = match split {
        Some((parts, cstride)) if parts > 1 && nr > 0 => {
            let rchunk = nr.div_ceil(parts).div_ceil(64) * 64;
            (rchunk, nr.div_ceil(rchunk), cstride)
        }
        _ => (nr, 1, 0),
    };
    let p = Params {
        ni: ni as u32,
        nj: nj as u32,
        nr: nr as u32,
        lda: o.lda as u32,
        ldb: o.ldb as u32,
        ldc: o.ldc as u32,
        acol: o.acol as u32,
        ccol: o.ccol as u32,
        flags: o.bias.is_some() as u32 | (accumulate as u32) << 1 | (o.scale_a.is_some() as u32) << 2,
        rchunk: rchunk as u32,
        cstride: cstride as u32,
        _pad: 0,
    };
    let tile = Tile::pick(bt.gpu, tile, ni, nj);
    let kernel = MmaPath::auto(bt.gpu).kernel(bt.gpu, tile, o.ta, o.tb, o.f16_b);
    let t = tile.size();
    let bias = o.bias.unwrap_or_else(|| dummy(bt));
    // an empty reduction (nr = 0) still writes C = bias, or leaves it when accumulating
    let (ab, bb) = if nr == 0 { (dummy(bt), dummy(bt)) } else { (o.a, o.b) };
    let scale = o.scale_a.unwrap_or_else(|| dummy(bt));
    bt.dispatch(&kernel, &p, &[ab, bb, bias, o.c, scale], [nj.div_ceil(t) as u32, ni.div_ceil(t) as u32, parts as u32]);
    parts
}

/// [`gemm`] into `o.c` (ldc = nj), with the reduction in pieces over several workgroups
/// per output tile when there are few tiles and a long reduction (as ops::matmul_grad): the
/// pieces' partial sums go to a scratch and are then added into C.
fn gemm_split(bt: &mut Batch, mut o: Operands, [ni, nj, nr]: [usize; 3], accumulate: bool, tile: Option<Tile>) {
    let tl = Tile::pick(bt.gpu, tile, ni, nj);
    let t = tl.size();
    let pieces = reduction_splits(bt, ni.div_ceil(t) * nj.div_ceil(t), nr, (ni * nj * 4) as u64);
    if pieces <= 1 {
        gemm(bt, o, [ni, nj, nr], accumulate, Some(tl), None);
        return;
    }
    debug_assert_eq!((o.ldc, o.ccol), (nj, 0), "mma: split products write whole rows");
    let partial = bt.gpu.empty(&[pieces, ni * nj], DType::F32).expect("mma: partial sums of a split reduction");
    let c = std::mem::replace(&mut o.c, (&partial).into());
    let used = gemm(bt, o, [ni, nj, nr], false, Some(tl), Some((pieces, ni * nj)));
    super::gdn_act::colsum_binding(bt, (&partial).into(), used, ni * nj, c, accumulate);
}

/// max |t| (the bits of an f32, in a new one-element buffer) for the f16 scale of a
/// gradient product's dy: one pass over t, split over bindings.
fn absmax(b: &mut Batch, t: &Tensor) -> Tensor {
    let out = b.gpu.empty(&[1], DType::F32).expect("mma: a 4-byte buffer for max |dy|");
    let kernel = Kernel::new("mma_absmax", "absmax");
    for part in row_split(b.gpu, t.rows(), [t]) {
        let n = part.rows * t.cols();
        if n == 0 {
            continue;
        }
        let groups = n.div_ceil(256 * 16).clamp(1, 1024) as u32;
        b.dispatch(&kernel, &[n as u32, 0, 0, 0], &[part.binds[0].clone(), (&out).into()], [groups, 1, 1]);
    }
    out
}

fn check_f32(t: &Tensor, what: &str) {
    assert_eq!(t.dtype, DType::F32, "mma: {what} must be f32");
}

/// `y[M, N] (+)= x[M, K] W[N, K]^T (+ bias[N])`, W f32 or f16. `tile` None: [`Tile::auto`]
/// (the three functions take it so tests and benches can run both tiles).
pub fn linear(b: &mut Batch, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &Tensor, accumulate: bool, tile: Option<Tile>) {
    let (n, k) = (w.rows(), w.cols());
    let m = x.numel() / k.max(1);
    assert_eq!(x.numel(), m * k, "mma::linear: x {:?} vs W {:?}", x.shape, w.shape);
    assert_eq!(y.numel(), m * n, "mma::linear: y {:?} for x {:?} W {:?}", y.shape, x.shape, w.shape);
    check_f32(x, "x");
    let (x, y) = (x.reshape(&[m, k]), y.reshape(&[m, n]));
    let wparts = weight_rows(b, w, bias);
    for xy in row_split(b.gpu, m, [&x, &y]) {
        let [xb, yb] = xy.binds;
        for wc in &wparts {
            let [wb, bias_b] = wc.binds.clone();
            let o = Operands {
                a: xb.clone(),
                ta: false,
                b: wb,
                tb: false,
                f16_b: w.dtype == DType::F16,
                bias: bias.map(|_| bias_b),
                c: yb.clone(),
                lda: k,
                ldb: k,
                ldc: n,
                acol: 0,
                ccol: wc.row0,
                scale_a: None,
            };
            gemm(b, o, [xy.rows, wc.rows, k], accumulate, tile, None);
        }
    }
}

/// max |dy| for the f16 scale of both gradients of one layer (see
/// `ops::matmul_grad::linear_backward`), dy viewed as rows of `n`.
pub(crate) fn dy_scale(b: &mut Batch, dy: &Tensor, n: usize) -> Tensor {
    absmax(b, &dy.reshape(&[dy.numel() / n.max(1), n]))
}

/// `dx[M, K] (+)= dy[M, N] W[N, K]`, W f32 or f16.
pub fn backward_input(b: &mut Batch, dy: &Tensor, w: &Tensor, dx: &Tensor, accumulate: bool, tile: Option<Tile>) {
    input_grad(b, dy, w, dx, accumulate, tile, None)
}

/// [`backward_input`] with max |dy| from [`dy_scale`] (computed here when None).
pub(crate) fn input_grad(
    b: &mut Batch,
    dy: &Tensor,
    w: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    tile: Option<Tile>,
    scale: Option<&Tensor>,
) {
    let (n, k) = (w.rows(), w.cols());
    let m = dx.numel() / k.max(1);
    assert_eq!(dx.numel(), m * k, "mma::backward_input: dx {:?} vs W {:?}", dx.shape, w.shape);
    assert_eq!(dy.numel(), m * n, "mma::backward_input: dy {:?} for dx {:?} W {:?}", dy.shape, dx.shape, w.shape);
    check_f32(dy, "dy");
    let (dy, dx) = (dy.reshape(&[m, n]), dx.reshape(&[m, k]));
    let amax = scale.cloned().unwrap_or_else(|| absmax(b, &dy));
    for ms in row_split(b.gpu, m, [&dy, &dx]) {
        let [dyb, dxb] = ms.binds;
        // the reduction over W's rows, one part per binding of W (dy's columns alike)
        let parts: Vec<(usize, usize, Binding)> =
            if n == 0 { vec![(0, 0, dummy(b))] } else { row_split(b.gpu, n, [w]).map(|c| (c.row0, c.rows, c.binds[0].clone())).collect() };
        for (s, (n0, nc, wb)) in parts.into_iter().enumerate() {
            let o = Operands {
                a: dyb.clone(),
                ta: false,
                b: wb,
                tb: true,
                f16_b: w.dtype == DType::F16,
                bias: None,
                c: dxb.clone(),
                lda: n,
                ldb: k,
                ldc: k,
                acol: n0,
                ccol: 0,
                scale_a: Some((&amax).into()),
            };
            // few rows over a long reduction (the KL head's dh: 49,152 vocabulary rows)
            gemm_split(b, o, [ms.rows, k, nc], accumulate || s > 0, tile);
        }
    }
}

/// `dW[N, K] (+)= dy[M, N]^T x[M, K]`.
pub fn backward_weight(b: &mut Batch, dy: &Tensor, x: &Tensor, dw: &Tensor, accumulate: bool, tile: Option<Tile>) {
    weight_grad(b, dy, x, dw, accumulate, tile, None)
}

/// [`backward_weight`] with max |dy| from [`dy_scale`] (computed here when None).
pub(crate) fn weight_grad(
    b: &mut Batch,
    dy: &Tensor,
    x: &Tensor,
    dw: &Tensor,
    accumulate: bool,
    tile: Option<Tile>,
    scale: Option<&Tensor>,
) {
    let (n, k) = (dw.rows(), dw.cols());
    let m = x.numel() / k.max(1);
    assert_eq!(x.numel(), m * k, "mma::backward_weight: x {:?} vs dW {:?}", x.shape, dw.shape);
    assert_eq!(dy.numel(), m * n, "mma::backward_weight: dy {:?} for x {:?} dW {:?}", dy.shape, x.shape, dw.shape);
    check_f32(dy, "dy");
    check_f32(dw, "dW");
    let (dy, x) = (dy.reshape(&[m, n]), x.reshape(&[m, k]));
    let amax = scale.cloned().unwrap_or_else(|| absmax(b, &dy));
    for ns in row_split(b.gpu, n, [dw]) {
        let [dwb] = ns.binds;
        // the reduction over the tokens, one part per binding of dy and x
        let parts: Vec<(usize, [Binding; 2])> =
            if m == 0 { vec![(0, [dummy(b), dummy(b)])] } else { row_split(b.gpu, m, [&dy, &x]).map(|c| (c.rows, c.binds)).collect() };
        for (s, (mc, [dyb, xb])) in parts.into_iter().enumerate() {
            let o = Operands {
                a: dyb,
                ta: true,
                b: xb,
                tb: true,
                f16_b: x.dtype == DType::F16,
                bias: None,
                c: dwb.clone(),
                lda: n,
                ldb: k,
                ldc: k,
                acol: ns.row0,
                ccol: 0,
                scale_a: Some((&amax).into()),
            };
            // a dW of few tiles over many tokens
            gemm_split(b, o, [ns.rows, k, mc], accumulate || s > 0, tile);
        }
    }
}
