//! Distillation loss: the LM heads of student and teacher fused with KL(teacher || student)
//! over the vocabulary (shaders/kl.wgsl), in chunks of rows so that the [T, V] logits of
//! both models never exist at once. Tested in tests/kernels/kl.rs (split over small
//! bindings included).
//!
//! Per chunk of R rows: `zs = hs ws^T`, `zt = ht wt^T` ([`linear`]); the KL kernel writes
//! the per-row loss and overwrites `zs` with `g = scale (p_s - p_t)`; then
//! `dhs = g ws` ([`linear_backward_input`]) and `dws += g^T hs` ([`linear_backward_weight`]).
use super::matmul::linear;
use super::matmul_grad::{linear_backward_input, linear_backward_weight};
use super::optim::{self, Reducer};
use super::view;
use crate::gpu::{grid, Batch, DType, Gpu, Kernel, Tensor};
use anyhow::{ensure, Result};

/// Default memory for the two [R, V] logits chunks of a [`KlWorkspace`] (bytes).
pub const KL_DEFAULT_BUDGET: u64 = 256 << 20;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    row0: u32,
    grad: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Scratch of [`kl_lm_head`]: two [R, V] logits chunks and three [R, D] row chunks.
pub struct KlWorkspace {
    /// Rows per chunk (R).
    pub rows: usize,
    pub vocab: usize,
    pub dim: usize,
    logits_s: Tensor,
    logits_t: Tensor,
    hs: Tensor,
    ht: Tensor,
    dhs: Tensor,
}

impl KlWorkspace {
    /// Chunks of as many rows (at most `max_rows`) as fit `budget` bytes for the two
    /// [R, V] f32 logits buffers and one storage binding each.
    pub fn new(gpu: &Gpu, vocab: usize, dim: usize, max_rows: usize, budget: u64) -> Result<KlWorkspace> {
        let row_bytes = (vocab.max(1) * 4) as u64;
        ensure!(
            row_bytes <= gpu.max_binding,
            "kl_lm_head: one logits row ({vocab} x f32 = {row_bytes} bytes) exceeds the binding limit ({} bytes)",
            gpu.max_binding
        );
        let rows = (budget / (2 * row_bytes)).min(gpu.max_binding / row_bytes).min(max_rows as u64).max(1) as usize;
        KlWorkspace::with_rows(gpu, vocab, dim, rows)
    }

    /// Chunks of exactly `rows` rows (tests force small chunks with this).
    pub fn with_rows(gpu: &Gpu, vocab: usize, dim: usize, rows: usize) -> Result<KlWorkspace> {
        ensure!(rows > 0, "kl_lm_head: chunk of 0 rows");
        let row_bytes = (vocab.max(1) * 4) as u64;
        ensure!(
            rows as u64 * row_bytes <= gpu.max_binding,
            "kl_lm_head: a chunk of {rows} x {vocab} f32 logits exceeds the binding limit ({} bytes)",
            gpu.max_binding
        );
        Ok(KlWorkspace {
            rows,
            vocab,
            dim,
            logits_s: gpu.zeros(&[rows, vocab])?,
            logits_t: gpu.zeros(&[rows, vocab])?,
            hs: gpu.zeros(&[rows, dim])?,
            ht: gpu.zeros(&[rows, dim])?,
            dhs: gpu.zeros(&[rows, dim])?,
        })
    }
}

/// Outputs of [`kl_lm_head`].
pub struct KlOut<'a> {
    /// [N]: KL(teacher || student) of every row (unscaled), overwritten.
    pub loss_rows: &'a Tensor,
    /// [N, D]: d(scale * sum loss) / d hs, overwritten; None: not computed.
    pub dhs: Option<&'a Tensor>,
    /// [V, D]: d(scale * sum loss) / d ws, accumulated (+=); None: not computed.
    pub dws: Option<&'a Tensor>,
}

/// Fused LM heads + KL(teacher || student) for N rows of final-normed hidden states:
/// `hs` [N, D] with the student head `ws` [V, D] (f32), `ht` [N, D] with the teacher head
/// `wt` [V, D] (f32 or f16). Writes `loss_rows[r] = sum_v p_t (log p_t - log p_s)`; with
/// `dhs` / `dws` also the gradients of `scale * sum_r loss_rows[r]`. Without either only the
/// loss is computed (evaluation).
#[allow(clippy::too_many_arguments)]
pub fn kl_lm_head(b: &mut Batch, hs: &Tensor, ws: &Tensor, ht: &Tensor, wt: &Tensor, work: &KlWorkspace, out: KlOut, scale: f32) {
    let (v, d) = (ws.rows(), ws.cols());
    let n = hs.numel() / d.max(1);
    assert_eq!(hs.numel(), n * d, "kl_lm_head: hs {:?} vs ws {:?}", hs.shape, ws.shape);
    assert_eq!(ht.numel(), n * d, "kl_lm_head: ht {:?} vs hs {:?}", ht.shape, hs.shape);
    assert_eq!((wt.rows(), wt.cols()), (v, d), "kl_lm_head: wt {:?} vs ws {:?}", wt.shape, ws.shape);
    assert_eq!((work.vocab, work.dim), (v, d), "kl_lm_head: workspace for V={} D={}, heads are {:?}", work.vocab, work.dim, ws.shape);
    assert_eq!(out.loss_rows.numel(), n, "kl_lm_head: loss_rows {:?} for {n} rows", out.loss_rows.shape);
    assert_eq!(ws.dtype, DType::F32, "kl_lm_head: the student head must be f32");
    assert!(hs.dtype == DType::F32 && ht.dtype == DType::F32, "kl_lm_head: hidden states must be f32");
    if let Some(t) = out.dhs {
        assert_eq!(t.numel(), n * d, "kl_lm_head: dhs {:?} vs hs {:?}", t.shape, hs.shape);
    }
    if let Some(t) = out.dws {
        assert_eq!(t.numel(), v * d, "kl_lm_head: dws {:?} vs ws {:?}", t.shape, ws.shape);
    }
    if n == 0 {
        return;
    }
    let grad = out.dhs.is_some() || out.dws.is_some();
    let (hs, ht) = (view(hs, n, d), view(ht, n, d));
    let kernel = Kernel::new("kl", "kl_rows");
    for r0 in (0..n).step_by(work.rows) {
        let rc = work.rows.min(n - r0);
        // one chunk covering all rows reads and writes the caller's tensors directly
        let whole = rc == n;
        let (hs_c, ht_c) = if whole {
            (hs.clone(), ht.clone())
        } else {
            let bytes = (rc * d * 4) as u64;
            let off = (r0 * d * 4) as u64;
            b.copy(&hs, off, &work.hs, 0, bytes);
            b.copy(&ht, off, &work.ht, 0, bytes);
            (view(&work.hs, rc, d), view(&work.ht, rc, d))
        };
        let (zs, zt) = (view(&work.logits_s, rc, v), view(&work.logits_t, rc, v));
        linear(b, &hs_c, ws, None, &zs, false);
        linear(b, &ht_c, wt, None, &zt, false);
        let p = Params { rows: rc as u32, vocab: v as u32, row0: r0 as u32, grad: grad as u32, scale, _pad: [0; 3] };
        b.dispatch(&kernel, &p, &[(&zs).into(), (&zt).into(), out.loss_rows.into()], grid(b.gpu, rc as u32));
        if let Some(dhs) = out.dhs {
            if whole {
                linear_backward_input(b, &zs, ws, &view(dhs, n, d), false);
            } else {
                let dhs_c = view(&work.dhs, rc, d);
                linear_backward_input(b, &zs, ws, &dhs_c, false);
                b.copy(&work.dhs, 0, dhs, (r0 * d * 4) as u64, (rc * d * 4) as u64);
            }
        }
        if let Some(dws) = out.dws {
            linear_backward_weight(b, &zs, &hs_c, dws, true);
        }
    }
}

/// `red.out[slot].x = scale * sum_r loss_rows[r]` (e.g. scale = 1 / N for the mean KL).
pub fn kl_total(b: &mut Batch, loss_rows: &Tensor, scale: f32, red: &Reducer, slot: usize) {
    optim::sum(b, &[loss_rows], scale, red, slot);
}

pub mod cpu {
    use crate::ops::matmul::cpu::linear;
    use crate::ops::matmul_grad::cpu::{linear_backward_input, linear_backward_weight};
    use crate::ops::nll::cpu::log_softmax;

    /// Per-row KL(teacher || student) of logits rows and the gradient `scale (p_s - p_t)`
    /// with respect to the student logits.
    pub fn kl_logits(zs: &[f64], zt: &[f64], vocab: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
        let mut loss = Vec::with_capacity(zs.len() / vocab.max(1));
        let mut grad = Vec::with_capacity(zs.len());
        for (a, t) in zs.chunks(vocab).zip(zt.chunks(vocab)) {
            let (ls, lt) = (log_softmax(a), log_softmax(t));
            loss.push(lt.iter().zip(&ls).map(|(t, s)| t.exp() * (t - s)).sum());
            grad.extend(ls.iter().zip(&lt).map(|(s, t)| scale * (s.exp() - t.exp())));
        }
        (loss, grad)
    }

    /// (loss_rows [N], dhs [N, D], dws [V, D]) of the fused heads + KL.
    pub fn kl_lm_head(hs: &[f64], ws: &[f64], ht: &[f64], wt: &[f64], dim: usize, scale: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let vocab = ws.len() / dim;
        let zs = linear(hs, ws, None, dim);
        let zt = linear(ht, wt, None, dim);
        let (loss, g) = kl_logits(&zs, &zt, vocab, scale);
        let dhs = linear_backward_input(&g, ws, vocab, dim);
        let dws = linear_backward_weight(&g, hs, vocab, dim);
        (loss, dhs, dws)
    }
}
