//! The Gated DeltaNet student block ("gdn_v4"), forward and backward on the GPU, written
//! out layer by layer with explicit activation buffers (no autograd tape), plus the f64
//! reference of the whole block ([`cpu`]).
//!
//! For x [N, D] (N = B T tokens, sequences of length T), H heads of dim d:
//!
//! ```text
//! q = silu(x Wq^T), k = silu(x Wk^T), v = silu(x Wv^T)           [N, H, d]
//! g = -exp(A_log) softplus(x Wa^T + dt_bias),  beta = sigmoid(x Wb^T)   [N, H]
//! o = delta-rule scan(q, k, v, g, beta), q and k L2-normalised inside, scale 1/sqrt(d)
//! y = rmsnorm_per_head(o) * w_norm * silu(x Wg^T)                  (eps 1e-5)
//! out = y Wo^T                                                      [N, D]
//! ```
//!
//! The forward is three stages, [`gdn_forward_inputs`] (projections, activations, gate),
//! the scan, and [`gdn_forward_output`] (gated norm, output projection); the backward
//! mirrors them: [`gdn_backward_output`], the scan backward, [`gdn_backward_inputs`].
//! [`gdn_forward`] and [`gdn_backward`] run all three.
use crate::gpu::{Batch, Gpu, Tensor};
use crate::io::checkpoint::{GdnParam, GDN_PARAMS};
use crate::ops::delta::{self, DeltaGrads, DeltaInputs, DeltaShape, DeltaWorkspace};
use crate::ops::{gated_norm, gdn_act, matmul, matmul_grad};
use anyhow::Result;

/// The epsilon of the gated output RMSNorm.
pub const NORM_EPS: f32 = 1e-5;

/// The ten tensors of one block in [`GDN_PARAMS`] order (that table names and shapes
/// them): its parameters, or their gradients, which are shaped alike. `T` is a GPU
/// [`Tensor`] ([`GdnParams`]) or, in the f64 reference, a host vector ([`cpu::Params`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GdnTensors<T> {
    pub wq: T,
    pub wk: T,
    pub wv: T,
    pub wa: T,
    pub wb: T,
    pub wg: T,
    pub wo: T,
    pub a_log: T,
    pub dt_bias: T,
    pub w_norm: T,
}

/// A block's parameters, or their gradients, on the GPU (f32).
pub type GdnParams = GdnTensors<Tensor>;

impl<T> GdnTensors<T> {
    /// Every tensor in [`GDN_PARAMS`] order.
    pub fn tensors(&self) -> [&T; 10] {
        [&self.wq, &self.wk, &self.wv, &self.wa, &self.wb, &self.wg, &self.wo, &self.a_log, &self.dt_bias, &self.w_norm]
    }

    /// Every tensor in [`GDN_PARAMS`] order, mutable.
    pub fn tensors_mut(&mut self) -> [&mut T; 10] {
        let GdnTensors { wq, wk, wv, wa, wb, wg, wo, a_log, dt_bias, w_norm } = self;
        [wq, wk, wv, wa, wb, wg, wo, a_log, dt_bias, w_norm]
    }
}

/// Collects exactly ten tensors given in [`GDN_PARAMS`] order (panics on another count);
/// through `Result`'s `FromIterator`, fallible makers collect into `Result<GdnTensors<T>, E>`.
impl<T> FromIterator<T> for GdnTensors<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let items: Vec<T> = items.into_iter().collect();
        let n = items.len();
        let Ok([wq, wk, wv, wa, wb, wg, wo, a_log, dt_bias, w_norm]) = <[T; 10]>::try_from(items) else {
            panic!("a GDN block has {} tensors, not {n}", GDN_PARAMS.len())
        };
        GdnTensors { wq, wk, wv, wa, wb, wg, wo, a_log, dt_bias, w_norm }
    }
}

/// The block's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GdnDims {
    /// model width D
    pub d_model: usize,
    /// heads H
    pub heads: usize,
    /// head dim d
    pub head_dim: usize,
}

impl GdnDims {
    /// H d, the width of q, k, v, o, y.
    pub fn inner(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The shape of parameter `p` in a block of these dimensions.
    pub fn shape(&self, p: &GdnParam) -> Vec<usize> {
        p.shape(self.d_model, self.heads, self.head_dim)
    }
}

impl GdnParams {
    /// The dimensions, read off the tensor shapes (and checked for consistency).
    pub fn dims(&self) -> GdnDims {
        let dims = GdnDims { d_model: self.wq.cols(), heads: self.a_log.numel(), head_dim: self.w_norm.numel() };
        for (q, t) in GDN_PARAMS.iter().zip(self.tensors()) {
            let want: usize = dims.shape(q).iter().product();
            assert_eq!(t.numel(), want, "GDN parameter {} {:?} does not fit {dims:?}", q.name, t.shape);
        }
        let (dm, hd) = (dims.d_model, dims.inner());
        assert_eq!(self.wo.cols(), hd, "GDN parameter wo {:?} is not [{dm}, {hd}]", self.wo.shape);
        dims
    }

    /// Upload host parameters (f64, stored as f32).
    pub fn upload(gpu: &Gpu, p: &cpu::Params) -> Result<GdnParams> {
        let dims = p.dims();
        let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
        GDN_PARAMS.iter().zip(p.tensors()).map(|(q, v)| gpu.upload(&dims.shape(q), &f32s(v))).collect()
    }

    /// Zero-filled tensors shaped like these (gradient buffers).
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<GdnParams> {
        self.tensors().into_iter().map(|t| gpu.zeros(&t.shape)).collect()
    }
}

/// Activations the forward saves for the backward (N = B T tokens), the scan's workspace
/// and the backward's buffers. Shapes: [N, H d] for zq..v, zg, o, y and the backward's
/// d*; [N, H] for za..beta, dg, dbeta; [N H] for rstd.
#[derive(Clone)]
pub struct GdnActs {
    /// (B, T): sequences and their length
    pub seqs: (usize, usize),
    pub tokens: usize,
    /// pre-activations x W^T of q, k, v
    pub zq: Tensor,
    pub zk: Tensor,
    pub zv: Tensor,
    /// silu of the above: the scan's inputs (L2 normalisation of q, k happens inside it)
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// x Wa^T, x Wb^T
    pub za: Tensor,
    pub zb: Tensor,
    /// log decay and write strength
    pub g: Tensor,
    pub beta: Tensor,
    /// output-gate pre-activation x Wg^T
    pub zg: Tensor,
    /// scan output
    pub o: Tensor,
    /// 1 / RMS of each (token, head) row of o
    pub rstd: Tensor,
    /// gated-norm output, the input of Wo
    pub y: Tensor,
    /// Buffers of the backward (None for a forward-only block).
    pub back: Option<GdnBackBufs>,
    /// Scratch of the chunked scan (forward, and backward with `back`).
    pub scan: DeltaWorkspace,
}

/// The backward's intermediate gradients. `dy` (dL/dy) is reused for dq once the gated
/// norm's backward has consumed it; dq, dk, dv become dzq, dzk, dzv in place, dg, dbeta
/// become dza, dzb.
#[derive(Clone, Debug)]
pub struct GdnBackBufs {
    pub dy: Tensor,
    pub d_o: Tensor,
    pub dzg: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dg: Tensor,
    pub dbeta: Tensor,
    pub scratch: Tensor,
}

impl GdnBackBufs {
    /// dL/dq (and then dL/dzq): the `dy` buffer, free once the gated norm backward ran.
    pub fn dq(&self) -> &Tensor {
        &self.dy
    }

    /// The scan's gradient outputs: views of dq (`dy`), dk, dv, dg, dbeta.
    pub fn scan_grads(&self) -> DeltaGrads {
        DeltaGrads {
            dq: self.dy.clone(),
            dk: self.dk.clone(),
            dv: self.dv.clone(),
            dg: self.dg.clone(),
            dbeta: self.dbeta.clone(),
            dh0: None,
        }
    }
}

impl GdnActs {
    /// Buffers for `seqs` = (B, T) sequences; `backward` adds the backward's buffers.
    /// Fails with a clear message for head dims the scan does not take.
    pub fn new(gpu: &Gpu, dims: GdnDims, seqs: (usize, usize), backward: bool) -> Result<GdnActs> {
        let tokens = seqs.0 * seqs.1;
        let scan = DeltaWorkspace::new(gpu, &scan_shape(dims, seqs), backward)?;
        let (n, h, hd) = (tokens, dims.heads, dims.inner());
        let wide = || gpu.zeros(&[n, hd]);
        let narrow = || gpu.zeros(&[n, h]);
        let back = if backward {
            Some(GdnBackBufs {
                dy: wide()?,
                d_o: wide()?,
                dzg: wide()?,
                dk: wide()?,
                dv: wide()?,
                dg: narrow()?,
                dbeta: narrow()?,
                scratch: wide()?,
            })
        } else {
            None
        };
        Ok(GdnActs {
            seqs,
            tokens,
            zq: wide()?,
            zk: wide()?,
            zv: wide()?,
            q: wide()?,
            k: wide()?,
            v: wide()?,
            za: narrow()?,
            zb: narrow()?,
            g: narrow()?,
            beta: narrow()?,
            zg: wide()?,
            o: wide()?,
            rstd: gpu.zeros(&[n * h])?,
            y: wide()?,
            back,
            scan,
        })
    }
}

impl GdnActs {
    /// GPU bytes of the activations, backward buffers and scan workspace.
    pub fn bytes(&self) -> u64 {
        let mut ts = vec![&self.zq, &self.zk, &self.zv, &self.q, &self.k, &self.v, &self.za, &self.zb, &self.g, &self.beta, &self.zg];
        ts.extend([&self.o, &self.rstd, &self.y]);
        if let Some(bb) = &self.back {
            ts.extend([&bb.dy, &bb.d_o, &bb.dzg, &bb.dk, &bb.dv, &bb.dg, &bb.dbeta, &bb.scratch]);
        }
        ts.iter().map(|t| t.bytes()).sum::<u64>() + self.scan.bytes()
    }
}

/// The scan's problem for `seqs` = (B, T) and the block's dims.
pub fn scan_shape(dims: GdnDims, seqs: (usize, usize)) -> DeltaShape {
    DeltaShape::new(seqs.0, seqs.1, dims.heads, dims.head_dim, true)
}

fn check_x(p: &GdnParams, x: &Tensor, acts: &GdnActs) -> GdnDims {
    let dims = p.dims();
    assert_eq!(x.numel(), acts.tokens * dims.d_model, "GDN block: x {:?} is not [{}, {}]", x.shape, acts.tokens, dims.d_model);
    dims
}

/// Forward, stage 1: q, k, v (pre- and post-SiLU), g, beta and the output-gate
/// pre-activation zg from x [N, D].
pub fn gdn_forward_inputs(b: &mut Batch, p: &GdnParams, x: &Tensor, acts: &GdnActs) {
    check_x(p, x, acts);
    for (w, z, a) in [(&p.wq, &acts.zq, &acts.q), (&p.wk, &acts.zk, &acts.k), (&p.wv, &acts.zv, &acts.v)] {
        matmul::linear(b, x, w, None, z, false);
        gdn_act::silu_forward(b, z, a);
    }
    matmul::linear(b, x, &p.wa, None, &acts.za, false);
    matmul::linear(b, x, &p.wb, None, &acts.zb, false);
    gdn_act::gate_forward(b, &acts.za, &acts.zb, &p.a_log, &p.dt_bias, &acts.g, &acts.beta);
    matmul::linear(b, x, &p.wg, None, &acts.zg, false);
}

fn check_seqs(p: &GdnParams, seqs: (usize, usize), acts: &GdnActs) {
    assert_eq!(seqs, acts.seqs, "GDN block: {seqs:?} sequences, but the activations were made for {:?}", acts.seqs);
    assert_eq!(acts.scan.shape, scan_shape(p.dims(), seqs), "GDN block: the activations were made for another block shape");
}

impl GdnActs {
    /// The scan's inputs q, k, v, g, beta (no initial state).
    pub fn scan_inputs(&self) -> DeltaInputs<'_> {
        DeltaInputs { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta, h0: None }
    }
}

/// Forward, stage 2: the chunked delta-rule scan o = scan(q, k, v, g, beta) (q, k
/// L2-normalised inside, scale 1/sqrt(d)).
pub fn gdn_scan_forward(b: &mut Batch, p: &GdnParams, seqs: (usize, usize), acts: &GdnActs) -> Result<()> {
    check_seqs(p, seqs, acts);
    delta::chunk_forward_ws(b, &acts.scan, &acts.scan_inputs(), &acts.o, None)
}

/// Forward, stage 3: y = gated_rmsnorm(o, zg), out = y Wo^T.
pub fn gdn_forward_output(b: &mut Batch, p: &GdnParams, acts: &GdnActs, out: &Tensor) {
    let dims = p.dims();
    gated_norm::gated_norm_forward(b, &acts.o, &acts.zg, &p.w_norm, NORM_EPS, &acts.y, &acts.rstd);
    assert_eq!(out.numel(), acts.tokens * dims.d_model, "GDN block: out {:?} is not [{}, {}]", out.shape, acts.tokens, dims.d_model);
    matmul::linear(b, &acts.y, &p.wo, None, out, false);
}

/// The whole forward: out [N, D] for x [N, D] holding `seqs` = (B, T) sequences; the
/// activations the backward needs stay in `acts`.
pub fn gdn_forward(b: &mut Batch, p: &GdnParams, x: &Tensor, seqs: (usize, usize), acts: &GdnActs, out: &Tensor) -> Result<()> {
    check_seqs(p, seqs, acts);
    gdn_forward_inputs(b, p, x, acts);
    gdn_scan_forward(b, p, seqs, acts)?;
    gdn_forward_output(b, p, acts, out);
    Ok(())
}

fn back(acts: &GdnActs) -> &GdnBackBufs {
    acts.back.as_ref().expect("GDN backward: the activations were allocated without backward buffers")
}

/// Backward, stage 3 (first): from dout, dWo, then through the gated norm to d_o, dzg
/// and dw_norm.
pub fn gdn_backward_output(b: &mut Batch, p: &GdnParams, acts: &GdnActs, dout: &Tensor, grads: &GdnParams, accumulate: bool) {
    let bb = back(acts);
    matmul_grad::linear_backward(b, dout, &p.wo, &acts.y, Some((&bb.dy, false)), &grads.wo, accumulate);
    gated_norm::gated_norm_backward(
        b,
        &acts.o,
        &acts.zg,
        &p.w_norm,
        &acts.rstd,
        &bb.dy,
        &bb.d_o,
        &bb.dzg,
        &grads.w_norm,
        &bb.scratch,
        accumulate,
    );
}

/// Backward, stage 2: the scan's backward from d_o to dq (in the `dy` buffer), dk, dv, dg,
/// dbeta. Takes the forward's intermediates from `acts.scan` (the backward's contract: the
/// forward on the same input last used these activations), so nothing is recomputed.
pub fn gdn_scan_backward(b: &mut Batch, p: &GdnParams, seqs: (usize, usize), acts: &GdnActs) -> Result<()> {
    check_seqs(p, seqs, acts);
    let bb = back(acts);
    let grads = bb.scan_grads();
    delta::chunk_backward_after_forward(b, &acts.scan, &acts.scan_inputs(), &bb.d_o, None, &grads)
}

/// Backward, stage 1 (last): through SiLU and the gate to the pre-activations, then the
/// projection weights' gradients and dx (`+=` when `accumulate`, like the parameter grads).
pub fn gdn_backward_inputs(
    b: &mut Batch,
    p: &GdnParams,
    x: &Tensor,
    acts: &GdnActs,
    grads: &GdnParams,
    dx: Option<&Tensor>,
    accumulate: bool,
) {
    check_x(p, x, acts);
    let bb = back(acts);
    gdn_act::silu_backward(b, &acts.zq, bb.dq());
    gdn_act::silu_backward(b, &acts.zk, &bb.dk);
    gdn_act::silu_backward(b, &acts.zv, &bb.dv);
    gdn_act::gate_backward(
        b,
        &acts.za,
        &acts.beta,
        &p.a_log,
        &p.dt_bias,
        &bb.dg,
        &bb.dbeta,
        &bb.scratch,
        &grads.a_log,
        &grads.dt_bias,
        accumulate,
    );
    let pairs = [
        (bb.dq(), &p.wq, &grads.wq),
        (&bb.dk, &p.wk, &grads.wk),
        (&bb.dv, &p.wv, &grads.wv),
        (&bb.dg, &p.wa, &grads.wa),
        (&bb.dbeta, &p.wb, &grads.wb),
        (&bb.dzg, &p.wg, &grads.wg),
    ];
    for (i, (dz, w, dw)) in pairs.into_iter().enumerate() {
        matmul_grad::linear_backward(b, dz, w, x, dx.map(|dx| (dx, accumulate || i > 0)), dw, accumulate);
    }
}

/// The whole backward: every parameter gradient into `grads` and, when given, dx [N, D]
/// (overwritten, or added to when `accumulate`, which also makes the parameter gradients
/// accumulate). Needs the `acts` of the forward on the same x, allocated with `backward`.
#[allow(clippy::too_many_arguments)]
pub fn gdn_backward(
    b: &mut Batch,
    p: &GdnParams,
    x: &Tensor,
    seqs: (usize, usize),
    acts: &GdnActs,
    dout: &Tensor,
    grads: &GdnParams,
    dx: Option<&Tensor>,
    accumulate: bool,
) -> Result<()> {
    check_seqs(p, seqs, acts);
    gdn_backward_output(b, p, acts, dout, grads, accumulate);
    gdn_scan_backward(b, p, seqs, acts)?;
    gdn_backward_inputs(b, p, x, acts, grads, dx, accumulate);
    Ok(())
}

/// Decoding: runs the block over x [B T, D] token by token with the one-step recurrence,
/// continuing from (and updating in place) `state` [B, H, d, d] (zeros for a fresh
/// sequence). `acts` is made for (B, T) (normally T = 1) without backward buffers.
pub fn gdn_recurrent_step(b: &mut Batch, p: &GdnParams, x: &Tensor, acts: &GdnActs, state: &Tensor, out: &Tensor) -> Result<()> {
    let s = scan_shape(p.dims(), acts.seqs);
    gdn_forward_inputs(b, p, x, acts);
    delta::recurrent_step(b, &s, &acts.scan_inputs(), state, &acts.o)?;
    gdn_forward_output(b, p, acts, out);
    Ok(())
}

/// The f64 reference of the whole block, forward and backward, on the naive recurrence
/// of [`crate::ops::delta::cpu`].
pub mod cpu {
    use super::{GdnDims, GdnTensors};
    use crate::io::checkpoint::GDN_PARAMS;
    use crate::ops::delta::{cpu as delta, DeltaInputs, DeltaShape};
    use crate::ops::gated_norm::cpu as gated_norm;
    use crate::ops::gdn_act::cpu as gdn_act;
    use crate::ops::matmul::cpu::linear;
    use crate::ops::matmul_grad::cpu as matmul_grad;

    /// Parameters (or their gradients) on the host, in f64.
    pub type Params = GdnTensors<Vec<f64>>;

    impl Params {
        /// fla-like initialisation from a U[0, 1) sampler: every projection
        /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)), A_log = ln U(1, 16), dt_bias the inverse
        /// softplus of dt log-uniform in [1e-3, 0.1], w_norm = 1 + U(-0.1, 0.1). Values are
        /// rounded to f32 so the GPU (f32) and this reference see the same parameters.
        pub fn init(dims: GdnDims, uniform: &mut impl FnMut() -> f64) -> Params {
            let (d, h, hd) = (dims.d_model, dims.heads, dims.inner());
            let f32r = |v: f64| v as f32 as f64;
            let mut mat = |rows: usize, cols: usize| -> Vec<f64> {
                let s = 1.0 / (cols as f64).sqrt();
                (0..rows * cols).map(|_| f32r((2.0 * uniform() - 1.0) * s)).collect()
            };
            let (wq, wk, wv, wa, wb, wg, wo) = (mat(hd, d), mat(hd, d), mat(hd, d), mat(h, d), mat(h, d), mat(hd, d), mat(d, hd));
            let a_log = (0..h).map(|_| f32r((1.0 + 15.0 * uniform()).ln())).collect();
            let (lo, hi) = (1e-3f64.ln(), 0.1f64.ln());
            let dt_bias = (0..h).map(|_| f32r(gdn_act::inv_softplus((lo + (hi - lo) * uniform()).exp().max(1e-4)))).collect();
            let w_norm = (0..dims.head_dim).map(|_| f32r(1.0 + 0.2 * (uniform() - 0.5))).collect();
            Params { wq, wk, wv, wa, wb, wg, wo, a_log, dt_bias, w_norm }
        }

        /// All zeros (a gradient accumulator).
        pub fn zeros(dims: GdnDims) -> Params {
            GDN_PARAMS.iter().map(|q| vec![0.0; dims.shape(q).iter().product()]).collect()
        }

        /// The dimensions, read off the lengths: H of A_log, d of w_norm, D of Wq [H d, D].
        pub fn dims(&self) -> GdnDims {
            let (heads, head_dim) = (self.a_log.len(), self.w_norm.len());
            GdnDims { d_model: self.wq.len() / (heads * head_dim), heads, head_dim }
        }
    }

    /// The forward's intermediate values (same names and layouts as [`super::GdnActs`]).
    #[derive(Clone, Debug)]
    pub struct Acts {
        pub zq: Vec<f64>,
        pub zk: Vec<f64>,
        pub zv: Vec<f64>,
        pub q: Vec<f64>,
        pub k: Vec<f64>,
        pub v: Vec<f64>,
        pub za: Vec<f64>,
        pub zb: Vec<f64>,
        pub g: Vec<f64>,
        pub beta: Vec<f64>,
        pub zg: Vec<f64>,
        pub o: Vec<f64>,
        pub rstd: Vec<f64>,
        pub y: Vec<f64>,
    }

    pub fn scan_shape(dims: GdnDims, seqs: (usize, usize)) -> DeltaShape {
        super::scan_shape(dims, seqs)
    }

    fn silu_all(z: &[f64]) -> Vec<f64> {
        z.iter().map(|&v| gdn_act::silu(v)).collect()
    }

    /// out [N, D] for x [N, D] holding `seqs` = (B, T) sequences, and the activations.
    pub fn forward(p: &Params, x: &[f64], seqs: (usize, usize)) -> (Vec<f64>, Acts) {
        let d = p.dims().d_model;
        let n = x.len() / d;
        assert_eq!(n, seqs.0 * seqs.1, "GDN reference: {seqs:?} sequences vs {n} tokens");
        let (zq, zk, zv) = (linear(x, &p.wq, None, d), linear(x, &p.wk, None, d), linear(x, &p.wv, None, d));
        let (q, k, v) = (silu_all(&zq), silu_all(&zk), silu_all(&zv));
        let (za, zb) = (linear(x, &p.wa, None, d), linear(x, &p.wb, None, d));
        let (g, beta) = gdn_act::gate_forward(&za, &zb, &p.a_log, &p.dt_bias);
        let s = scan_shape(p.dims(), seqs);
        let (o, _) = delta::forward(&s, &DeltaInputs { q: &q, k: &k, v: &v, g: &g, beta: &beta, h0: None });
        let zg = linear(x, &p.wg, None, d);
        let (y, rstd) = gated_norm::gated_norm_forward(&o, &zg, &p.w_norm, super::NORM_EPS as f64);
        let out = linear(&y, &p.wo, None, p.dims().inner());
        (out, Acts { zq, zk, zv, q, k, v, za, zb, g, beta, zg, o, rstd, y })
    }

    /// (parameter gradients, dx) for dL/dout = `dout`.
    pub fn backward(p: &Params, x: &[f64], seqs: (usize, usize), a: &Acts, dout: &[f64]) -> (Params, Vec<f64>) {
        let dims = p.dims();
        let (d, h, hd) = (dims.d_model, dims.heads, dims.inner());
        let mut gr = Params::zeros(dims);
        gr.wo = matmul_grad::linear_backward_weight(dout, &a.y, d, hd);
        let dy = matmul_grad::linear_backward_input(dout, &p.wo, d, hd);
        let (d_o, dzg, dw_norm) = gated_norm::gated_norm_backward(&a.o, &a.zg, &p.w_norm, super::NORM_EPS as f64, &dy);
        gr.w_norm = dw_norm;
        let s = scan_shape(dims, seqs);
        let sg = delta::backward(&s, &DeltaInputs { q: &a.q, k: &a.k, v: &a.v, g: &a.g, beta: &a.beta, h0: None }, &d_o, None);
        let through_silu = |dq: &[f64], z: &[f64]| dq.iter().zip(z).map(|(g, &z)| g * gdn_act::silu_grad(z)).collect::<Vec<_>>();
        let dzq = through_silu(&sg.dq, &a.zq);
        let dzk = through_silu(&sg.dk, &a.zk);
        let dzv = through_silu(&sg.dv, &a.zv);
        let (dza, dzb, da_log, ddt) = gdn_act::gate_backward(&a.za, &a.zb, &p.a_log, &p.dt_bias, &sg.dg, &sg.dbeta);
        gr.a_log = da_log;
        gr.dt_bias = ddt;
        let mut dx = vec![0.0; x.len()];
        for (dz, w, rows, dw) in [
            (&dzq, &p.wq, hd, &mut gr.wq),
            (&dzk, &p.wk, hd, &mut gr.wk),
            (&dzv, &p.wv, hd, &mut gr.wv),
            (&dza, &p.wa, h, &mut gr.wa),
            (&dzb, &p.wb, h, &mut gr.wb),
            (&dzg, &p.wg, hd, &mut gr.wg),
        ] {
            *dw = matmul_grad::linear_backward_weight(dz, x, rows, d);
            for (a, b) in dx.iter_mut().zip(matmul_grad::linear_backward_input(dz, w, rows, d)) {
                *a += b;
            }
        }
        (gr, dx)
    }
}

#[cfg(test)]
mod tests {
    use super::GdnTensors;
    use crate::io::checkpoint::GDN_PARAMS;

    #[test]
    fn the_fields_follow_the_parameter_table() {
        let mut t: GdnTensors<usize> = (0..GDN_PARAMS.len()).collect();
        let at = |name: &str| GDN_PARAMS.iter().position(|q| q.name == name).unwrap();
        let fields = [
            (t.wq, "q_proj.weight"),
            (t.wk, "k_proj.weight"),
            (t.wv, "v_proj.weight"),
            (t.wa, "a_proj.weight"),
            (t.wb, "b_proj.weight"),
            (t.wg, "g_proj.weight"),
            (t.wo, "o_proj.weight"),
            (t.a_log, "A_log"),
            (t.dt_bias, "dt_bias"),
            (t.w_norm, "o_norm.weight"),
        ];
        for (got, name) in fields {
            assert_eq!(got, at(name), "{name}");
        }
        assert_eq!(t.tensors().map(|&i| i), std::array::from_fn(|i| i));
        assert_eq!(t.tensors_mut().map(|i| *i), std::array::from_fn(|i| i));
    }
}
