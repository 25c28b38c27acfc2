//! Phase 2: per-layer alignment of a converted GDN layer to the teacher's attention output
//! (MSE on the captured activations), AdamW on the decoder's optimizer.
use super::capture::Capture;
use crate::gpu::{Gpu, Tensor};
use crate::io::checkpoint::{gdn_name, AlignGroup, GDN_PARAMS};
use crate::io::HostTensor;
use crate::nn::decoder::upload_gdn;
use crate::nn::gdn::{self, GdnActs};
use crate::nn::optim::Optimizer;
use crate::ops::optim::{self, AdamW};
use anyhow::{bail, ensure, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Phase 2 settings (reference defaults).
#[derive(Clone, Debug, Serialize)]
pub struct AlignOpts {
    pub steps: usize,
    /// for W_q, W_k, W_v
    pub lr_qkv: f32,
    /// for W_a, W_b, W_g, A_log, dt_bias
    pub lr_gates: f32,
    pub weight_decay: f32,
    pub max_norm: f32,
}

impl Default for AlignOpts {
    fn default() -> Self {
        AlignOpts { steps: 300, lr_qkv: 1e-4, lr_gates: 1e-3, weight_decay: 0.01, max_norm: 1.0 }
    }
}

impl AlignOpts {
    /// Reject settings no alignment can use (a learning rate of 0 freezes its group; a
    /// `max_norm` of 0 does not clip).
    pub fn check(&self) -> Result<()> {
        for (name, v) in
            [("lr_qkv", self.lr_qkv), ("lr_gates", self.lr_gates), ("weight_decay", self.weight_decay), ("max_norm", self.max_norm)]
        {
            ensure!(v >= 0.0 && v.is_finite(), "phase 2 {name} must be a number >= 0 (got {v})");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AlignReport {
    pub initial_loss: f64,
    pub initial_cosine: f64,
    pub final_loss: f64,
    pub final_cosine: f64,
    pub best_step: usize,
    pub seconds: f64,
}

/// Phase 2 on converted layer `li`: AdamW on MSE(layer(x), teacher output) for `o.steps`
/// steps, W_o and w_norm frozen; the lowest-loss parameters seen are kept.
pub fn align_layer(
    gpu: &Gpu,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    li: usize,
    o: &AlignOpts,
    mut progress: impl FnMut(usize, f64),
) -> Result<AlignReport> {
    let t0 = Instant::now();
    let l = cap.layers[li];
    let p = upload_gdn(gpu, tensors, l)?;
    let dims = p.dims();
    let (x, target) = (&cap.x[li], &cap.target[li]);
    let n = x.numel();
    let acts = GdnActs::new(gpu, dims, cap.seqs, true)?;
    let grads = p.zeros_like(gpu)?;
    let out = gpu.zeros(&x.shape)?;
    let dout = gpu.zeros(&x.shape)?;
    // the trained parameters with their learning-rate group (0: lr_qkv, 1: lr_gates); the
    // frozen ones (W_o, w_norm) stay out
    let params: Vec<(String, Tensor, Tensor, usize)> = GDN_PARAMS
        .iter()
        .zip(p.tensors())
        .zip(grads.tensors())
        .filter_map(|((q, pt), gt)| {
            let group = match q.group {
                AlignGroup::Qkv => 0,
                AlignGroup::Gates => 1,
                AlignGroup::Frozen => return None,
            };
            Some((gdn_name(l, q.name), pt.clone(), gt.clone(), group))
        })
        .collect();
    let lrs = [o.lr_qkv, o.lr_gates];
    let mut opt = Optimizer::new(gpu, params, AdamW { weight_decay: o.weight_decay, max_norm: o.max_norm, ..Default::default() })?;
    let best: Vec<Tensor> = opt.slots.iter().map(|s| gpu.zeros(&s.param.shape)).collect::<Result<_>>()?;
    let red_loss = optim::Reducer::new(gpu, n, 1)?;
    let mut rep = AlignReport { initial_loss: f64::NAN, final_loss: f64::INFINITY, ..Default::default() };
    for step in 0..=o.steps {
        let mut b = gpu.batch();
        gdn::gdn_forward(&mut b, &p, x, cap.seqs, &acts, &out)?;
        optim::mse(&mut b, &out, target, &dout, &red_loss, 0);
        b.submit();
        let s = gpu.read(&red_loss.out)?;
        let (loss, cos) = optim::mse_summary([s[0], s[1], s[2], s[3]], n);
        if !loss.is_finite() {
            bail!("layer {l}: alignment loss became {loss} at step {step}");
        }
        if step == 0 {
            rep.initial_loss = loss;
            rep.initial_cosine = cos;
        }
        let mut b = gpu.batch();
        if loss < rep.final_loss {
            rep.final_loss = loss;
            rep.final_cosine = cos;
            rep.best_step = step;
            for (s, kept) in opt.slots.iter().zip(&best) {
                b.copy(&s.param, 0, kept, 0, s.param.bytes());
            }
        }
        progress(step, loss);
        if step == o.steps {
            b.submit();
            break;
        }
        gdn::gdn_backward(&mut b, &p, x, cap.seqs, &acts, &dout, &grads, None, false)?;
        opt.step(&mut b, &lrs);
        b.submit();
    }
    for (s, kept) in opt.slots.iter().zip(&best) {
        tensors.get_mut(&s.name).expect("gdn tensor").data = gpu.read(kept)?;
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}
