//! Phase 2: per-layer alignment of a converted GDN layer to the teacher's attention output
//! (MSE on the captured activations), AdamW on the decoder's optimizer.
use super::capture::Capture;
use crate::gpu::{Gpu, Tensor};
use crate::io::checkpoint::{gdn_name, GDN_PARAMS};
use crate::io::HostTensor;
use crate::nn::decoder::upload_gdn;
use crate::nn::gdn::{self, GdnActs};
use crate::ops::optim;
use anyhow::{bail, Result};
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
    let pt = p.tensors();
    let gt = grads.tensors();
    // trained: wq wk wv (lr_qkv), wa wb wg a_log dt_bias (lr_gates); wo, w_norm frozen
    let trained: Vec<(usize, f32)> = vec![
        (0, o.lr_qkv),
        (1, o.lr_qkv),
        (2, o.lr_qkv),
        (3, o.lr_gates),
        (4, o.lr_gates),
        (5, o.lr_gates),
        (7, o.lr_gates),
        (8, o.lr_gates),
    ];
    let mstate: Vec<(Tensor, Tensor)> =
        trained.iter().map(|&(i, _)| Ok((gpu.zeros(&pt[i].shape)?, gpu.zeros(&pt[i].shape)?))).collect::<Result<_>>()?;
    let best: Vec<Tensor> = trained.iter().map(|&(i, _)| gpu.zeros(&pt[i].shape)).collect::<Result<_>>()?;
    let red_loss = optim::Reducer::new(gpu, n, 1)?;
    let red_norm = optim::Reducer::new(gpu, pt.iter().map(|t| t.numel()).sum(), 1)?;
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
            for (k, &(i, _)) in trained.iter().enumerate() {
                b.copy(pt[i], 0, &best[k], 0, pt[i].bytes());
            }
        }
        progress(step, loss);
        if step == o.steps {
            b.submit();
            break;
        }
        gdn::gdn_backward(&mut b, &p, x, cap.seqs, &acts, &dout, &grads, None, false)?;
        optim::sum_squares(&mut b, &trained.iter().map(|&(i, _)| gt[i]).collect::<Vec<_>>(), &red_norm, 0);
        for (k, &(i, lr)) in trained.iter().enumerate() {
            let ao = optim::AdamW { lr, weight_decay: o.weight_decay, max_norm: o.max_norm, ..Default::default() };
            optim::adamw(&mut b, &ao, step as u32 + 1, pt[i], gt[i], &mstate[k].0, &mstate[k].1, &red_norm);
        }
        b.submit();
    }
    for (k, &(i, _)) in trained.iter().enumerate() {
        tensors.get_mut(&gdn_name(l, GDN_PARAMS[i].name)).expect("gdn tensor").data = gpu.read(&best[k])?;
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}
