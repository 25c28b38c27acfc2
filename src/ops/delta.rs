//! The gated delta rule (Gated DeltaNet's sequence mixer) on shaders/delta_chunk.wgsl,
//! delta_state.wgsl, delta_out.wgsl, delta_bwd.wgsl and delta_step.wgsl (with
//! delta_common.wgsl): chunked forward and backward, one-step recurrent decoding, and the
//! f64 references ([`cpu`], [`chunk_ref`]). Tested in tests/kernels/delta.rs, and inside the
//! GDN block in tests/pipeline/gdn_block.rs.
//!
//! Per batch b and head h the state S is a [dv, dk] matrix and, token by token,
//!
//! ```text
//! S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,    o_t = scale * S_t q_t
//! ```
//!
//! with q, k [B, T, H, dk], v [B, T, H, dv], log-decay g [B, T, H] (g <= 0),
//! beta [B, T, H] in [0, 1], optional initial state h0 [B, H, dv, dk]; o [B, T, H, dv],
//! optional final state ht [B, H, dv, dk]. With `l2norm`, q and k are normalised per head
//! inside the op as `x / sqrt(sum x^2 + 1e-6)` (flash-linear-attention's convention,
//! [`L2_EPS`]); the scale multiplies the normalised q. dk and dv are independent
//! multiples of 4 up to 256.
//!
//! # API
//! The inputs travel as one [`DeltaInputs`] (over [`Tensor`]s for the GPU entry points,
//! over `[f64]` for the references).
//! - [`chunk_forward`] / [`chunk_forward_ws`]: o and optionally ht.
//! - [`chunk_backward`] / [`chunk_backward_ws`]: dq, dk, dv, dg (w.r.t. the per-token g),
//!   dbeta, and dh0 when h0 was given, from d(o) and optionally d(ht); recomputes what the
//!   forward did not keep. [`chunk_backward_after_forward`] takes the forward's
//!   intermediates from a shared [`DeltaWorkspace`] instead (the training path).
//! - [`recurrent_step`]: decoding, in place on the state.
//! - GPU timings: `experiments::bench_gdn` (`taylorcal bench gdn`, benches/delta.rs,
//!   examples/profile_delta.rs).
//!
//! # Kernels (chunk C = 64, flash-linear-attention's chunked algorithm)
//! `delta_chunk.wgsl`: `delta_prep` (per-token in-chunk cumsum gamma of g, L2-norm
//! factors), `delta_intra` (A = tril(beta KK^T exp(gamma_i - gamma_j)), T = (I + A)^-1
//! by 16 x 16 forward substitution and two doubling steps, w = T beta exp(gamma) K,
//! u = T beta V);
//! `delta_state.wgsl`: the two sequential passes over chunks (forward states `h[n]` and
//! v_new = u - w h; backward `dh[n]` and dv_new), parallel over (B, H, blocks of dv);
//! `delta_out.wgsl`: `delta_fwd_out` (o = s [exp(gamma) Q h + tril(QK^T M) v_new]) and
//! `delta_bwd_local` (the intra-chunk part of dv_new, dS, dgamma); `delta_bwd.wgsl`:
//! `delta_bwd_dqkw` (dq, dk, dw, dgamma), `delta_bwd_wy_a` / `delta_bwd_wy_b` (back
//! through T, w, u; reverse cumsum of dgamma; L2-norm backward); `delta_step.wgsl`.
//! With a backward workspace the forward also keeps T, (K K^T) o exp(gamma_i - gamma_j)
//! and P = s tril(Q K^T M) per chunk, which the backward after it reuses.
//! Chunk-parallel kernels run one 256-invocation workgroup per (chunk, b*H + h); products
//! needed on the lower triangle only run on the first 4.25 warps (`low_tile`). Only
//! exponentials of non-positive differences of gamma are taken. The chunk-parallel kernels
//! fit 16 KiB of workgroup memory (WebGPU's guaranteed minimum); the state passes take
//! wider column blocks where the adapter has more ([`DeltaTiles`]).
//!
//! # Memory
//! With R = B*T*H rows and N = B*H*ceil(T/64) chunks, the workspace holds (f32 elements)
//! R (4 + dk + 2 dv) + N dk dv for the forward and R (dk + dv) + N (4 * 64^2 + dk dv) more
//! for the backward; see [`DeltaWorkspace::bytes`]. Every buffer must fit one storage
//! binding of the adapter (a clear error otherwise).
pub mod chunk_ref;
pub mod cpu;

/// The epsilon of the in-op L2 normalisation: `x / sqrt(sum x^2 + L2_EPS)`.
pub const L2_EPS: f64 = 1e-6;

/// The problem: batch, length, heads, key and value head dims, query scale, in-op L2 norm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeltaShape {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub dk: usize,
    pub dv: usize,
    pub scale: f32,
    pub l2norm: bool,
}

impl DeltaShape {
    /// The GDN block's case: dk = dv = d, scale 1/sqrt(d).
    pub fn new(b: usize, t: usize, h: usize, d: usize, l2norm: bool) -> DeltaShape {
        DeltaShape { b, t, h, dk: d, dv: d, scale: 1.0 / (d as f32).sqrt(), l2norm }
    }
}

use crate::gpu::{Batch, Binding, DType, Gpu, Kernel, Tensor};
use anyhow::{bail, Result};

/// The inputs of the delta rule: q, k [B, T, H, dk], v [B, T, H, dv], log-decay g and
/// beta [B, T, H], and the optional initial state h0 [B, H, dv, dk]. `T` is [`Tensor`] for
/// the GPU entry points and `[f64]` for the references ([`cpu`], [`chunk_ref`]).
pub struct DeltaInputs<'a, T: ?Sized = Tensor> {
    pub q: &'a T,
    pub k: &'a T,
    pub v: &'a T,
    pub g: &'a T,
    pub beta: &'a T,
    pub h0: Option<&'a T>,
}

// by hand: derived impls would ask for `T: Clone` / `T: Copy`, which `[f64]` is not
impl<T: ?Sized> Clone for DeltaInputs<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for DeltaInputs<'_, T> {}

/// Tokens per chunk of the chunked kernels.
pub const CHUNK: usize = 64;

const F_L2: u32 = 1;
const F_H0: u32 = 2;
const F_HT: u32 = 4;
const F_STORE_T: u32 = 8;
/// delta_fwd_out keeps P = s (Q K^T o M) for the backward; delta_bwd_local takes it.
const F_STORE_P: u32 = 16;
const F_HAVE_P: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    b: u32,
    t: u32,
    h: u32,
    dk: u32,
    dv: u32,
    nt: u32,
    flags: u32,
    scale: f32,
}

impl DeltaShape {
    /// Number of chunks of [`CHUNK`] tokens.
    pub fn chunks(&self) -> usize {
        self.t.div_ceil(CHUNK)
    }
    /// Rows (b, t, h) of the [B, T, H, *] tensors.
    pub fn rows(&self) -> usize {
        self.b * self.t * self.h
    }
    /// Index of row (b, t, h) of a [B, T, H, *] tensor.
    pub fn row(&self, b: usize, t: usize, h: usize) -> usize {
        (b * self.t + t) * self.h + h
    }
    /// Elements of one state [B, H, dv, dk].
    pub fn state_len(&self) -> usize {
        self.b * self.h * self.dv * self.dk
    }

    fn params(&self, flags: u32) -> Params {
        Params {
            b: self.b as u32,
            t: self.t as u32,
            h: self.h as u32,
            dk: self.dk as u32,
            dv: self.dv as u32,
            nt: self.chunks() as u32,
            flags: flags | if self.l2norm { F_L2 } else { 0 },
            scale: self.scale,
        }
    }

    /// Clear errors for shapes the kernels do not take.
    pub fn check(&self) -> Result<()> {
        if self.b == 0 || self.t == 0 || self.h == 0 {
            bail!("delta rule: empty shape {self:?}");
        }
        for (name, d) in [("dk", self.dk), ("dv", self.dv)] {
            if d == 0 || d > 256 || d % 4 != 0 {
                bail!("delta rule: {name} = {d} is not supported (the kernels take multiples of 4 up to 256)");
            }
        }
        if self.chunks() > 65535 || self.b * self.h > 65535 {
            bail!("delta rule: {self:?} needs more than 65535 workgroups along one grid dimension");
        }
        Ok(())
    }

    /// dk rounded up to the state kernels' register tiling (64, 128 or 256).
    pub fn dk_pad(&self) -> usize {
        if self.dk <= 64 {
            64
        } else if self.dk <= 128 {
            128
        } else {
            256
        }
    }
}

/// Tile choices of the sequential state passes: BV value columns per workgroup
/// (8, 16 or 32; 4 * BV invocations, 8 * BV at dk > 64) for the forward and the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaTiles {
    pub bv_fwd: usize,
    pub bv_bwd: usize,
}

impl DeltaTiles {
    /// Workgroup memory of `delta_fwd_state` in bytes (the H copy, later v_new, shares
    /// one array with the backward's buffers).
    pub fn smem_fwd(dk_pad: usize, bv: usize) -> usize {
        4 * (dk_pad.max(128) * bv + 128)
    }
    /// Workgroup memory of `delta_bwd_state` in bytes.
    pub fn smem_bwd(dk_pad: usize, bv: usize) -> usize {
        4 * (dk_pad.max(128) * bv + 192)
    }

    /// The widest column blocks whose workgroup memory fits `budget` bytes (and the
    /// adapter), no wider than dv needs.
    pub fn for_budget(gpu: &Gpu, s: &DeltaShape, budget: usize) -> DeltaTiles {
        let budget = budget.min(gpu.limits.max_compute_workgroup_storage_size as usize);
        let dkp = s.dk_pad();
        let widest = s.dv.next_power_of_two().clamp(8, 32);
        let pick = |f: fn(usize, usize) -> usize| [32, 16, 8].into_iter().find(|&bv| bv <= widest && f(dkp, bv) <= budget).unwrap_or(8);
        DeltaTiles { bv_fwd: pick(Self::smem_fwd), bv_bwd: pick(Self::smem_bwd) }
    }

    /// The default: the widest blocks within the budget of
    /// [`GpuOptions::delta_state_smem`](crate::gpu::GpuOptions::delta_state_smem) bytes of
    /// workgroup memory ([`crate::gpu::DEFAULT_STATE_SMEM`] unless set otherwise; the CLI
    /// reads `TAYLORCAL_DELTA_SMEM`) or the adapter's limit, whichever is smaller (on a
    /// 16 KiB adapter, WebGPU's guaranteed minimum, BV = 16 at dk <= 128). Wider blocks mean
    /// fewer workgroups, all of them resident at once on large problems (H200, (4, 4096, 16,
    /// 128): forward state pass 1.85 -> 1.10 ms, backward 2.52 -> 1.48 ms from BV = 16 to 32).
    pub fn auto(gpu: &Gpu, s: &DeltaShape) -> DeltaTiles {
        Self::for_budget(gpu, s, gpu.options().delta_state_smem)
    }
}

/// Gradients of the chunked op, shaped as its inputs.
pub struct DeltaGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dg: Tensor,
    pub dbeta: Tensor,
    /// d(initial state) [B, H, dv, dk], filled when the forward had an initial state.
    pub dh0: Option<Tensor>,
}

impl DeltaGrads {
    pub fn new(gpu: &Gpu, s: &DeltaShape, with_h0: bool) -> Result<DeltaGrads> {
        Ok(DeltaGrads {
            dq: gpu.zeros(&[s.b, s.t, s.h, s.dk])?,
            dk: gpu.zeros(&[s.b, s.t, s.h, s.dk])?,
            dv: gpu.zeros(&[s.b, s.t, s.h, s.dv])?,
            dg: gpu.zeros(&[s.b, s.t, s.h])?,
            dbeta: gpu.zeros(&[s.b, s.t, s.h])?,
            dh0: if with_h0 { Some(gpu.zeros(&[s.b, s.h, s.dv, s.dk])?) } else { None },
        })
    }
}

/// Scratch of the chunked kernels, reusable across calls of one shape. With R = B*T*H
/// rows and N = B*H*ceil(T/64) chunks, in f32 elements:
/// forward  R (4 + dk + 2 dv) + N dk dv (aux, w, u, v_new, per-chunk states);
/// backward adds R (dk + dv) + N (4 * 64 * 64 + dk dv) (dw, dv_new, T, K K^T o M, P,
/// dS / D, dh).
#[derive(Clone)]
pub struct DeltaWorkspace {
    pub shape: DeltaShape,
    pub tiles: DeltaTiles,
    backward: bool,
    aux: Tensor,
    w: Tensor,
    u: Tensor,
    vn: Tensor,
    h: Tensor,
    bwd: Option<BwdScratch>,
    dummies: [Tensor; 3],
}

#[derive(Clone)]
struct BwdScratch {
    tinv: Tensor,
    /// (Khat Khat^T) o exp(gamma_i - gamma_j) per chunk (strictly lower), from delta_intra
    kkm: Tensor,
    /// the forward's P = s (Qhat Khat^T o M) per chunk (lower), from delta_fwd_out
    pm: Tensor,
    dvn: Tensor,
    dh: Tensor,
    ds: Tensor,
    dw: Tensor,
}

impl DeltaWorkspace {
    /// Scratch for the forward (and, with `backward`, the backward) pass of shape `s`.
    pub fn new(gpu: &Gpu, s: &DeltaShape, backward: bool) -> Result<DeltaWorkspace> {
        Self::with_tiles(gpu, s, backward, DeltaTiles::auto(gpu, s))
    }

    pub fn with_tiles(gpu: &Gpu, s: &DeltaShape, backward: bool, tiles: DeltaTiles) -> Result<DeltaWorkspace> {
        s.check()?;
        let limit = gpu.limits.max_compute_workgroup_storage_size as usize;
        for (name, bv, bytes) in [
            ("forward", tiles.bv_fwd, DeltaTiles::smem_fwd(s.dk_pad(), tiles.bv_fwd)),
            ("backward", tiles.bv_bwd, DeltaTiles::smem_bwd(s.dk_pad(), tiles.bv_bwd)),
        ] {
            if ![8, 16, 32].contains(&bv) {
                bail!("delta rule: {name} state tile BV = {bv} (must be 8, 16 or 32)");
            }
            if bytes > limit {
                bail!("delta rule: the {name} state pass with BV = {bv} needs {bytes} bytes of workgroup memory; the adapter has {limit}");
            }
        }
        let (r, n) = (s.rows(), s.b * s.h * s.chunks());
        let mk = |shape: &[usize]| -> Result<Tensor> {
            let t = gpu.zeros(shape)?;
            if t.bytes() > gpu.max_binding {
                bail!(
                    "delta rule: scratch {shape:?} ({} MiB) exceeds the adapter's largest storage binding ({} MiB); use a shorter sequence or fewer heads per call",
                    t.bytes() >> 20,
                    gpu.max_binding >> 20
                );
            }
            Ok(t)
        };
        let bwd = if backward {
            Some(BwdScratch {
                tinv: mk(&[n, CHUNK, CHUNK])?,
                kkm: mk(&[n, CHUNK, CHUNK])?,
                pm: mk(&[n, CHUNK, CHUNK])?,
                dvn: mk(&[r, s.dv])?,
                dh: mk(&[n, s.dk, s.dv])?,
                ds: mk(&[n, CHUNK, CHUNK])?,
                dw: mk(&[r, s.dk])?,
            })
        } else {
            None
        };
        Ok(DeltaWorkspace {
            shape: *s,
            tiles,
            backward,
            aux: mk(&[r, 4])?,
            w: mk(&[r, s.dk])?,
            u: mk(&[r, s.dv])?,
            vn: mk(&[r, s.dv])?,
            h: mk(&[n, s.dk, s.dv])?,
            bwd,
            dummies: [gpu.zeros(&[4])?, gpu.zeros(&[4])?, gpu.zeros(&[4])?],
        })
    }

    /// Bytes of GPU memory this workspace holds.
    pub fn bytes(&self) -> u64 {
        let mut n = self.aux.bytes() + self.w.bytes() + self.u.bytes() + self.vn.bytes() + self.h.bytes();
        if let Some(b) = &self.bwd {
            n += b.tinv.bytes() + b.kkm.bytes() + b.pm.bytes() + b.dvn.bytes() + b.dh.bytes() + b.ds.bytes() + b.dw.bytes();
        }
        n
    }

    /// The per-chunk states `h[n]` (state entering chunk n, `[B*H, NT, dk, dv]`) and v_new
    /// [B, T, H, dv] of the last forward (for tests and debugging).
    pub fn states(&self) -> (&Tensor, &Tensor) {
        (&self.h, &self.vn)
    }
}

fn check_len(what: &str, t: &Tensor, n: usize) -> Result<()> {
    if t.numel() != n || t.dtype != DType::F32 {
        bail!("delta rule: {what} has shape {:?} ({:?}), expected {n} f32 elements", t.shape, t.dtype);
    }
    Ok(())
}

fn check_inputs(s: &DeltaShape, x: &DeltaInputs) -> Result<()> {
    s.check()?;
    let r = s.rows();
    check_len("q", x.q, r * s.dk)?;
    check_len("k", x.k, r * s.dk)?;
    check_len("v", x.v, r * s.dv)?;
    check_len("g", x.g, r)?;
    check_len("beta", x.beta, r)?;
    if let Some(h0) = x.h0 {
        check_len("initial state", h0, s.state_len())?;
    }
    Ok(())
}

/// One workgroup of `shader`'s kernel `entry` per (chunk, b*H + h), binding `tensors` in order.
fn chunk_pass(b: &mut Batch, s: &DeltaShape, (shader, entry): (&'static str, &'static str), flags: u32, tensors: &[&Tensor]) {
    let binds: Vec<Binding> = tensors.iter().map(|&t| t.into()).collect();
    b.dispatch(&Kernel::new(shader, entry), &s.params(flags), &binds, [s.chunks() as u32, (s.b * s.h) as u32, 1]);
}

/// aux (gamma, rq, rk), w, u of every chunk; with a backward workspace also T and
/// K K^T o M in its scratch, for the backward.
fn record_prep(b: &mut Batch, ws: &DeltaWorkspace, x: &DeltaInputs) {
    let s = &ws.shape;
    let keep = ws.bwd.as_ref();
    let flags = if keep.is_some() { F_STORE_T } else { 0 };
    b.dispatch(
        &Kernel::new("delta_chunk", "delta_prep"),
        &s.params(flags),
        &[x.q.into(), x.k.into(), x.g.into(), (&ws.aux).into()],
        super::groups_for(b.gpu, s.rows(), 64),
    );
    let t = keep.map(|bw| &bw.tinv).unwrap_or(&ws.dummies[0]);
    let kkm = keep.map(|bw| &bw.kkm).unwrap_or(&ws.dummies[1]);
    chunk_pass(b, s, ("delta_chunk", "delta_intra"), flags, &[x.k, x.v, x.beta, &ws.aux, &ws.w, &ws.u, t, kkm]);
}

/// The forward state pass: h, v_new (and ht).
fn record_fwd_state(b: &mut Batch, ws: &DeltaWorkspace, x: &DeltaInputs, ht: Option<&Tensor>) {
    let (k, h0) = (x.k, x.h0);
    let s = &ws.shape;
    let bv = ws.tiles.bv_fwd;
    let flags = if h0.is_some() { F_H0 } else { 0 } | if ht.is_some() { F_HT } else { 0 };
    let kernel = Kernel::new("delta_state", "delta_fwd_state").with("DK", s.dk_pad() as u32).with("BV", bv as u32);
    let h0b: Binding = match h0 {
        Some(t) => t.into(),
        None => super::dummy(b),
    };
    let htb: Binding = ht.unwrap_or(&ws.dummies[1]).into();
    b.dispatch(
        &kernel,
        &s.params(flags),
        &[k.into(), (&ws.w).into(), (&ws.u).into(), (&ws.aux).into(), h0b, (&ws.h).into(), (&ws.vn).into(), htb],
        [s.dv.div_ceil(bv) as u32, (s.b * s.h) as u32, 1],
    );
}

/// Chunked forward (chunk 64) with a fresh workspace: o [B, T, H, dv] and, when `ht` is
/// given, the final state [B, H, dv, dk]. See the module docs for the recurrence.
pub fn chunk_forward(b: &mut Batch, s: &DeltaShape, x: &DeltaInputs, o: &Tensor, ht: Option<&Tensor>) -> Result<()> {
    let ws = DeltaWorkspace::new(b.gpu, s, false)?;
    chunk_forward_ws(b, &ws, x, o, ht)
}

/// [`chunk_forward`] with a caller-owned workspace (of the same shape).
pub fn chunk_forward_ws(b: &mut Batch, ws: &DeltaWorkspace, x: &DeltaInputs, o: &Tensor, ht: Option<&Tensor>) -> Result<()> {
    let s = &ws.shape;
    check_inputs(s, x)?;
    check_len("o", o, s.rows() * s.dv)?;
    if let Some(ht) = ht {
        check_len("final state", ht, s.state_len())?;
    }
    // with a backward workspace, keep T, K K^T o M and P too so that the backward can
    // skip recomputing them
    record_prep(b, ws, x);
    record_fwd_state(b, ws, x, ht);
    let pm = ws.bwd.as_ref().map(|bw| &bw.pm).unwrap_or(&ws.dummies[0]);
    let flags = if ws.bwd.is_some() { F_STORE_P } else { 0 };
    chunk_pass(b, s, ("delta_out", "delta_fwd_out"), flags, &[x.q, x.k, &ws.vn, &ws.h, &ws.aux, o, pm]);
    Ok(())
}

/// Chunked backward with a fresh workspace: recomputes the forward's intermediates
/// (w, u, T, per-chunk states, v_new), then dq, dk, dv, dg (w.r.t. the per-token g), dbeta
/// and, when `x.h0` is given, dh0, from d(o) and optionally d(final state).
pub fn chunk_backward(
    b: &mut Batch,
    s: &DeltaShape,
    x: &DeltaInputs,
    do_: &Tensor,
    dht: Option<&Tensor>,
    grads: &DeltaGrads,
) -> Result<()> {
    let ws = DeltaWorkspace::new(b.gpu, s, true)?;
    chunk_backward_ws(b, &ws, x, do_, dht, grads)
}

/// [`chunk_backward`] with a caller-owned workspace made with `backward = true`.
pub fn chunk_backward_ws(
    b: &mut Batch,
    ws: &DeltaWorkspace,
    x: &DeltaInputs,
    do_: &Tensor,
    dht: Option<&Tensor>,
    grads: &DeltaGrads,
) -> Result<()> {
    backward_impl(b, ws, x, do_, dht, grads, true)
}

/// The backward without recomputing the forward's intermediates: `ws` (made with
/// `backward = true`) must still hold what [`chunk_forward_ws`] left there for these same
/// inputs (recorded earlier in this batch or a previous one, with no other use of `ws` in
/// between). Saves the prep, intra-chunk and forward state passes.
pub fn chunk_backward_after_forward(
    b: &mut Batch,
    ws: &DeltaWorkspace,
    x: &DeltaInputs,
    do_: &Tensor,
    dht: Option<&Tensor>,
    grads: &DeltaGrads,
) -> Result<()> {
    backward_impl(b, ws, x, do_, dht, grads, false)
}

fn backward_impl(
    b: &mut Batch,
    ws: &DeltaWorkspace,
    x: &DeltaInputs,
    do_: &Tensor,
    dht: Option<&Tensor>,
    grads: &DeltaGrads,
    recompute: bool,
) -> Result<()> {
    let s = &ws.shape;
    check_inputs(s, x)?;
    let Some(bw) = ws.bwd.as_ref().filter(|_| ws.backward) else {
        bail!("delta rule: the workspace was made for the forward pass only");
    };
    check_len("d(o)", do_, s.rows() * s.dv)?;
    check_len("dq", &grads.dq, s.rows() * s.dk)?;
    check_len("dk", &grads.dk, s.rows() * s.dk)?;
    check_len("dv", &grads.dv, s.rows() * s.dv)?;
    check_len("dg", &grads.dg, s.rows())?;
    check_len("dbeta", &grads.dbeta, s.rows())?;
    if let Some(d) = dht {
        check_len("d(final state)", d, s.state_len())?;
    }
    if x.h0.is_some() != grads.dh0.is_some() {
        bail!("delta rule: dh0 must be given exactly when the initial state is");
    }
    if let Some(d) = &grads.dh0 {
        check_len("dh0", d, s.state_len())?;
    }
    if recompute {
        record_prep(b, ws, x);
        record_fwd_state(b, ws, x, None);
    }
    // after the forward, its P is in the workspace; a recomputing backward forms it anew
    let flags = if recompute { 0 } else { F_HAVE_P };
    chunk_pass(b, s, ("delta_out", "delta_bwd_local"), flags, &[x.q, x.k, &ws.vn, do_, &ws.aux, &bw.ds, &bw.dvn, &bw.pm]);
    let bv = ws.tiles.bv_bwd;
    let flags = if x.h0.is_some() { F_H0 } else { 0 } | if dht.is_some() { F_HT } else { 0 };
    let dhtb: Binding = match dht {
        Some(t) => t.into(),
        None => super::dummy(b),
    };
    let dh0b: Binding = grads.dh0.as_ref().unwrap_or(&ws.dummies[2]).into();
    b.dispatch(
        &Kernel::new("delta_state", "delta_bwd_state").with("DK", s.dk_pad() as u32).with("BV", bv as u32),
        &s.params(flags),
        &[x.q.into(), x.k.into(), (&ws.w).into(), do_.into(), (&ws.aux).into(), dhtb, (&bw.dh).into(), (&bw.dvn).into(), dh0b],
        [s.dv.div_ceil(bv) as u32, (s.b * s.h) as u32, 1],
    );
    let (q, k, v, beta) = (x.q, x.k, x.v, x.beta);
    let dqkw = [q, k, do_, &ws.vn, &bw.dvn, &ws.h, &bw.dh, &bw.ds, &ws.aux, &grads.dq, &grads.dk, &bw.dw];
    chunk_pass(b, s, ("delta_bwd", "delta_bwd_dqkw"), 0, &dqkw);
    let wy_a = [k, v, beta, &bw.tinv, &bw.dw, &bw.dvn, &ws.aux, &bw.ds, &grads.dbeta, &bw.kkm];
    chunk_pass(b, s, ("delta_bwd", "delta_bwd_wy_a"), 0, &wy_a);
    let wy_b = [q, k, v, beta, &ws.aux, &bw.tinv, &bw.ds, &bw.dw, &bw.dvn, &grads.dq, &grads.dk, &grads.dv, &grads.dbeta, &grads.dg];
    chunk_pass(b, s, ("delta_bwd", "delta_bwd_wy_b"), 0, &wy_b);
    Ok(())
}

/// delta_common's `low_tile` on the GPU for invocations 0..255, as (ti, tj): the 4 x 4
/// thread tile over a 64 x 64 block that each invocation of a chunk-parallel kernel takes
/// (for tests: the first 136 must be the tiles on or below the diagonal).
pub fn low_tile_map(gpu: &Gpu) -> Result<Vec<(u32, u32)>> {
    let out = gpu.upload_u32(&[256], &[0; 256])?;
    let mut b = gpu.batch();
    let s = DeltaShape::new(1, 1, 1, 16, false);
    b.dispatch(&Kernel::new("delta_step", "delta_tile_map"), &s.params(0), &[(&out).into()], [1, 1, 1]);
    b.submit();
    Ok(gpu.read_u32(&out)?.into_iter().map(|x| (x / 16, x % 16)).collect())
}

/// Token-by-token recurrence for decoding, in place on `state` [B, H, dv, dk]: runs the
/// `s.t` tokens of `x` (without `h0`: the state is the initial one) in order (normally
/// T = 1) and writes o [B, T, H, dv].
pub fn recurrent_step(b: &mut Batch, s: &DeltaShape, x: &DeltaInputs, state: &Tensor, o: &Tensor) -> Result<()> {
    if x.h0.is_some() {
        bail!("delta rule: the one-step recurrence starts from `state`; h0 must be None");
    }
    check_inputs(s, &DeltaInputs { h0: Some(state), ..*x })?;
    check_len("o", o, s.rows() * s.dv)?;
    b.dispatch(
        &Kernel::new("delta_step", "delta_step"),
        &s.params(0),
        &[x.q.into(), x.k.into(), x.v.into(), x.g.into(), x.beta.into(), state.into(), o.into()],
        [s.dv.div_ceil(64) as u32, (s.b * s.h) as u32, 1],
    );
    Ok(())
}
