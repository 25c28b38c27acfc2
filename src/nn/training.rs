//! The hybrid student's training pass, written out layer by layer (llm.c style): a forward
//! that keeps each layer's activations (or only its input, with recomputation) and the
//! matching backward through the final norm, every layer's MLP, softmax attention (flash
//! style, RoPE, GQA) or GDN block, and the (tied) embedding. No autograd tape: each piece
//! calls its op's backward.
use crate::gpu::{Batch, Gpu, Tensor};
use crate::nn::decoder::{Decoder, KvCache, Layer, LayerBufs, Mixer};
use crate::nn::gdn::{self, GdnActs};
use crate::ops::{self, attention::AttnBwdScratch, matmul_grad};
use anyhow::{bail, Result};

/// Activations and gradient scratch of a batch of `seqs` training sequences of `t` tokens,
/// held as seqs x t rows (every matrix product takes all rows at once).
pub struct TrainActs {
    pub t: usize,
    pub seqs: usize,
    /// Recompute each layer's activations from its input in the backward (memory: one
    /// layer's buffers instead of all).
    pub recompute: bool,
    /// x[l]: the residual stream entering layer l; x[L] leaves the last layer.
    pub x: Vec<Tensor>,
    /// The residual after layer l's mixer (per layer, or one shared buffer with recompute).
    x_mid: Vec<Tensor>,
    bufs: Vec<LayerBufs>,
    /// Post-RoPE K and V of softmax layers (a "cache" of exactly t rows).
    cache: KvCache,
    gdn: Vec<Option<GdnActs>>,
    /// Final-normed hidden states [t, D] (the LM head's input).
    pub hidden: Tensor,
    /// Layer output scratch for recomputation.
    x_out: Tensor,
    // backward scratch
    pub dx: Tensor,
    dhn: Tensor,
    dact: Tensor,
    dgate: Tensor,
    dup: Tensor,
    dctx: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    attn_scratch: AttnBwdScratch,
}

fn slot(recompute: bool, l: usize) -> usize {
    if recompute {
        0
    } else {
        l
    }
}

impl TrainActs {
    pub fn new(gpu: &Gpu, model: &Decoder, seqs: usize, t: usize, recompute: bool) -> Result<TrainActs> {
        let c = &model.cfg;
        if c.qk_norm {
            bail!("training models with q/k norms (Qwen3) is not supported yet");
        }
        let (d, h, hkv, hd, i) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size);
        let nl = model.layers.len();
        let kept = if recompute { 1 } else { nl };
        let (t_seq, t) = (t, seqs * t); // from here on t counts rows
        let x = (0..=nl).map(|_| gpu.zeros(&[t, d])).collect::<Result<Vec<_>>>()?;
        let x_mid = (0..kept).map(|_| gpu.zeros(&[t, d])).collect::<Result<Vec<_>>>()?;
        let bufs = (0..kept).map(|_| LayerBufs::new(gpu, c, t, false)).collect::<Result<Vec<_>>>()?;
        let w = hkv * hd;
        let (mut ck, mut cv, mut gdn_acts) = (vec![], vec![], vec![]);
        let (mut shared_k, mut shared_v, mut shared_gdn): (Option<Tensor>, Option<Tensor>, Option<GdnActs>) = (None, None, None);
        for l in &model.layers {
            match &l.mixer {
                Mixer::Attn(_) => {
                    if recompute {
                        if shared_k.is_none() {
                            shared_k = Some(gpu.zeros(&[t, w])?);
                            shared_v = Some(gpu.zeros(&[t, w])?);
                        }
                        ck.push(shared_k.clone());
                        cv.push(shared_v.clone());
                    } else {
                        ck.push(Some(gpu.zeros(&[t, w])?));
                        cv.push(Some(gpu.zeros(&[t, w])?));
                    }
                    gdn_acts.push(None);
                }
                Mixer::Gdn(p) => {
                    ck.push(None);
                    cv.push(None);
                    if recompute {
                        if shared_gdn.is_none() {
                            shared_gdn = Some(GdnActs::new(gpu, p.dims(), (seqs, t_seq), true)?);
                        }
                        gdn_acts.push(None);
                    } else {
                        gdn_acts.push(Some(GdnActs::new(gpu, p.dims(), (seqs, t_seq), true)?));
                    }
                }
            }
        }
        if let Some(s) = shared_gdn {
            // one set of GDN activations (shared buffers) serves every GDN layer
            for (g, l) in gdn_acts.iter_mut().zip(&model.layers) {
                if matches!(l.mixer, Mixer::Gdn(_)) {
                    *g = Some(s.clone());
                }
            }
        }
        let state = vec![None; nl];
        Ok(TrainActs {
            t: t_seq,
            seqs,
            recompute,
            x,
            x_mid,
            bufs,
            cache: KvCache { k: ck, v: cv, state, max_len: t },
            gdn: gdn_acts,
            hidden: gpu.zeros(&[t, d])?,
            x_out: gpu.zeros(&[t, d])?,
            dx: gpu.zeros(&[t, d])?,
            dhn: gpu.zeros(&[t, d])?,
            dact: gpu.zeros(&[t, i])?,
            dgate: gpu.zeros(&[t, i])?,
            dup: gpu.zeros(&[t, i])?,
            dctx: gpu.zeros(&[t, h * hd])?,
            dq: gpu.zeros(&[t, h * hd])?,
            dk: gpu.zeros(&[t, w])?,
            dv: gpu.zeros(&[t, w])?,
            attn_scratch: AttnBwdScratch::new(gpu, t, h, hd)?,
        })
    }
}

impl TrainActs {
    /// GPU bytes these activations and scratch buffers take (shared buffers counted once).
    pub fn bytes(&self) -> u64 {
        let mut ts: Vec<&Tensor> = vec![&self.hidden, &self.x_out, &self.dx, &self.dhn, &self.dact, &self.dgate, &self.dup];
        ts.extend([&self.dctx, &self.dq, &self.dk, &self.dv]);
        ts.extend(self.x.iter().chain(&self.x_mid));
        for b in &self.bufs {
            ts.extend([&b.hn, &b.hn2, &b.q, &b.k, &b.v, &b.ctx, &b.ao, &b.stats, &b.gate, &b.up, &b.act]);
        }
        ts.extend(self.cache.k.iter().chain(&self.cache.v).flatten());
        let mut seen: Vec<&Tensor> = vec![];
        let mut total = self.attn_scratch.bytes();
        for t in ts {
            if !seen.iter().any(|s| s.same_buffer(t)) {
                total += t.bytes();
                seen.push(t);
            }
        }
        let mut gdn_seen: Vec<&GdnActs> = vec![];
        for a in self.gdn.iter().flatten() {
            if !gdn_seen.iter().any(|s| s.zq.same_buffer(&a.zq)) {
                total += a.bytes();
                gdn_seen.push(a);
            }
        }
        total
    }
}

/// Layer `l`'s forward from acts.x[l] into the layer's buffers; the output goes to `x_out`.
fn layer_forward(b: &mut Batch, m: &Decoder, a: &TrainActs, l: usize, x_out: &Tensor) -> Result<()> {
    let c = &m.cfg;
    let layer = &m.layers[l];
    let s = slot(a.recompute, l);
    let bufs = &a.bufs[s];
    ops::rmsnorm::rmsnorm(b, &a.x[l], &layer.input_norm, c.rms_norm_eps, &bufs.hn);
    match &layer.mixer {
        Mixer::Attn(at) => {
            let (kc, vc) = (a.cache.k[l].as_ref().expect("K"), a.cache.v[l].as_ref().expect("V"));
            m.attn_forward(b, at, bufs, kc, vc, 0, a.seqs, false);
        }
        Mixer::Gdn(p) => gdn::gdn_forward(b, p, &bufs.hn, (a.seqs, a.t), a.gdn[l].as_ref().expect("GDN acts"), &bufs.ao)?,
    }
    let x_mid = &a.x_mid[s];
    b.copy(&a.x[l], 0, x_mid, 0, x_mid.bytes());
    ops::elementwise::add(b, &bufs.ao, x_mid);
    m.mlp_forward(b, layer, x_mid, bufs, x_out);
    Ok(())
}

/// Forward of the batch `ids` (a.seqs sequences of a.t tokens, each at positions 0..t)
/// keeping what the backward needs; the final-normed hidden states land in `a.hidden`.
pub fn forward(b: &mut Batch, m: &Decoder, ids: &Tensor, a: &TrainActs) -> Result<()> {
    assert_eq!(ids.numel(), a.seqs * a.t, "training forward: {} ids for activations of {} x {} tokens", ids.numel(), a.seqs, a.t);
    ops::elementwise::embed(b, ids, &m.embed, &a.x[0]);
    for l in 0..m.layers.len() {
        layer_forward(b, m, a, l, &a.x[l + 1])?;
    }
    ops::rmsnorm::rmsnorm(b, &a.x[m.layers.len()], &m.norm, m.cfg.rms_norm_eps, &a.hidden);
    Ok(())
}

/// Backward from dL/d(hidden) `dhidden` [t, D]: every parameter gradient is ADDED into
/// `gr` (a `Decoder::zeros_like` of the model; a tied head shares the embedding's buffer).
/// `ids_host` are the batch's token ids.
pub fn backward(b: &mut Batch, m: &Decoder, a: &TrainActs, ids_host: &[u32], dhidden: &Tensor, gr: &Decoder) -> Result<()> {
    let c = &m.cfg;
    let eps = c.rms_norm_eps;
    let nl = m.layers.len();
    ops::rmsnorm::rmsnorm_backward(b, &a.x[nl], &m.norm, eps, dhidden, &a.dx, &gr.norm, false);
    for l in (0..nl).rev() {
        if a.recompute {
            layer_forward(b, m, a, l, &a.x_out)?;
        }
        let s = slot(a.recompute, l);
        let (bufs, x_mid) = (&a.bufs[s], &a.x_mid[s]);
        let (layer, gl) = (&m.layers[l], &gr.layers[l]);
        mlp_backward(b, layer, gl, bufs, a);
        ops::rmsnorm::rmsnorm_backward(b, x_mid, &layer.post_norm, eps, &a.dhn, &a.dx, &gl.post_norm, true);
        // the mixer's output gradient is the residual gradient dx
        match (&layer.mixer, &gl.mixer) {
            (Mixer::Attn(at), Mixer::Attn(ga)) => attn_backward(b, m, at, ga, bufs, a, l),
            (Mixer::Gdn(p), Mixer::Gdn(gp)) => {
                b.clear(&a.dhn);
                let acts = a.gdn[l].as_ref().expect("GDN acts");
                gdn::gdn_backward(b, p, &bufs.hn, (a.seqs, a.t), acts, &a.dx, gp, Some(&a.dhn), true)?;
            }
            _ => bail!("layer {l}: gradient buffers do not match the model"),
        }
        ops::rmsnorm::rmsnorm_backward(b, &a.x[l], &layer.input_norm, eps, &a.dhn, &a.dx, &gl.input_norm, true);
    }
    ops::elementwise::embed_backward(b, ids_host, &a.dx, &gr.embed);
    Ok(())
}

/// x_out = x_mid + swiglu(hn2 Wg^T, hn2 Wu^T) Wd^T: from dx (= d x_out) to dhn (d hn2) and
/// the three weight gradients.
fn mlp_backward(b: &mut Batch, layer: &Layer, gl: &Layer, bufs: &LayerBufs, a: &TrainActs) {
    matmul_grad::linear_backward(b, &a.dx, &layer.down, &bufs.act, Some((&a.dact, false)), &gl.down, true);
    ops::elementwise::swiglu_backward(b, &bufs.gate, &bufs.up, &a.dact, &a.dgate, &a.dup);
    matmul_grad::linear_backward(b, &a.dgate, &layer.gate, &bufs.hn2, Some((&a.dhn, false)), &gl.gate, true);
    matmul_grad::linear_backward(b, &a.dup, &layer.up, &bufs.hn2, Some((&a.dhn, true)), &gl.up, true);
}

/// Softmax attention of layer `l`: from dx (= d ao) to dhn and the projection gradients.
fn attn_backward(
    b: &mut Batch,
    m: &Decoder,
    at: &crate::nn::decoder::Attn,
    ga: &crate::nn::decoder::Attn,
    bufs: &LayerBufs,
    a: &TrainActs,
    l: usize,
) {
    let c = &m.cfg;
    matmul_grad::linear_backward(b, &a.dx, &at.o, &bufs.ctx, Some((&a.dctx, false)), &ga.o, true);
    let (kc, vc) = (a.cache.k[l].as_ref().expect("K"), a.cache.v[l].as_ref().expect("V"));
    let shape = ops::attention::AttnShape { seqs: a.seqs, ..m.attn_shape(0) };
    ops::attention::attention_backward_auto(b, &bufs.q, kc, vc, &bufs.ctx, &a.dctx, &a.dq, &a.dk, &a.dv, &a.attn_scratch, shape);
    ops::rope::rope_backward(b, &a.dq, c.num_attention_heads, &m.rope, 0, a.seqs);
    ops::rope::rope_backward(b, &a.dk, c.num_key_value_heads, &m.rope, 0, a.seqs);
    for (i, (dz, w, gw, gbias)) in
        [(&a.dq, &at.q, &ga.q, &ga.q_bias), (&a.dk, &at.k, &ga.k, &ga.k_bias), (&a.dv, &at.v, &ga.v, &ga.v_bias)].into_iter().enumerate()
    {
        matmul_grad::linear_backward(b, dz, w, &bufs.hn, Some((&a.dhn, i > 0)), gw, true);
        if let Some(gb) = gbias {
            ops::gdn_act::colsum(b, dz, gb, true);
        }
    }
}
