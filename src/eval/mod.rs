//! Perplexity (one sequence or windows) and greedy generation with a KV cache or GDN state.
use crate::gpu::Gpu;
use crate::nn::decoder::{Decoder, ForwardOpts};
use crate::ops;
use anyhow::{ensure, Result};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct EvalResult {
    /// Tokens in the evaluated sequence (predictions scored = tokens - 1).
    pub tokens: usize,
    /// Mean next-token negative log-likelihood (nats).
    pub nll: f64,
    pub ppl: f64,
}

/// Next-token NLL per position of `ids` as one sequence (position T-1 scores nothing).
pub fn token_nll(gpu: &Gpu, model: &Decoder, ids: &[u32], opts: ForwardOpts) -> Result<Vec<f32>> {
    ensure!(ids.len() >= 2, "need at least 2 tokens to score next-token predictions, got {}", ids.len());
    let t = ids.len();
    let cache = model.kv_cache(gpu, t)?;
    let tid = model.upload_ids(gpu, ids)?;
    let mut targets: Vec<u32> = ids[1..].to_vec();
    targets.push(ops::nll::IGNORE);
    let ttg = gpu.upload_u32(&[t], &targets)?;
    let nll = gpu.zeros(&[t])?;
    let mut b = gpu.batch();
    let hidden = model.forward(&mut b, &cache, &tid, 0, opts)?;
    let chunk = model.logit_rows_per_chunk(gpu);
    for r0 in (0..t).step_by(chunk) {
        let rows = chunk.min(t - r0);
        let logits = model.logits(&mut b, &hidden, r0, rows)?;
        ops::nll::nll_rows(&mut b, &logits, &ttg, &nll, r0);
        // submit per chunk so only one chunk of logits is alive at a time
        b.submit();
        b = gpu.batch();
    }
    b.submit();
    let mut v = gpu.read(&nll)?;
    v.truncate(t - 1);
    Ok(v)
}

pub fn perplexity(gpu: &Gpu, model: &Decoder, ids: &[u32]) -> Result<EvalResult> {
    perplexity_with(gpu, model, ids, ForwardOpts::default())
}

pub fn perplexity_with(gpu: &Gpu, model: &Decoder, ids: &[u32], opts: ForwardOpts) -> Result<EvalResult> {
    let v = token_nll(gpu, model, ids, opts)?;
    let nll = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    Ok(EvalResult { tokens: ids.len(), nll, ppl: nll.exp() })
}

/// Greedy decoding with the KV cache: returns the new token ids (stops at `eos`).
pub fn generate(
    gpu: &Gpu,
    model: &Decoder,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>> {
    ensure!(!prompt.is_empty(), "the prompt tokenised to nothing");
    let cache = model.kv_cache(gpu, prompt.len() + max_new)?;
    let mut out = Vec::new();
    let mut ids = prompt.to_vec();
    let mut pos = 0;
    while out.len() < max_new {
        let tid = model.upload_ids(gpu, &ids)?;
        let mut b = gpu.batch();
        let hidden = model.forward(&mut b, &cache, &tid, pos, ForwardOpts::default())?;
        let logits = model.logits(&mut b, &hidden, ids.len() - 1, 1)?;
        b.submit();
        let l = gpu.read(&logits)?;
        let next = l.iter().enumerate().fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32;
        pos += ids.len();
        out.push(next);
        on_token(next);
        if Some(next) == eos {
            break;
        }
        ids = vec![next];
    }
    Ok(out)
}

/// Perplexity over several windows, each its own sequence: exp of the mean NLL over every
/// scored position of every window.
pub fn perplexity_windows(gpu: &Gpu, model: &Decoder, windows: &[&[u32]]) -> Result<EvalResult> {
    perplexity_windows_skipping(gpu, model, windows, &[])
}

/// `perplexity_windows` with the attention output of the `skip` layers zeroed (residual
/// kept): the AR policy's probe.
pub fn perplexity_windows_skipping(gpu: &Gpu, model: &Decoder, windows: &[&[u32]], skip: &[usize]) -> Result<EvalResult> {
    let (mut sum, mut count, mut tokens) = (0.0f64, 0usize, 0usize);
    for w in windows {
        let v = token_nll(gpu, model, w, ForwardOpts { skip_attn: skip.to_vec(), ..Default::default() })?;
        sum += v.iter().map(|&x| x as f64).sum::<f64>();
        count += v.len();
        tokens += w.len();
    }
    ensure!(count > 0, "nothing to evaluate");
    let nll = sum / count as f64;
    Ok(EvalResult { tokens, nll, ppl: nll.exp() })
}
