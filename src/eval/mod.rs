//! Perplexity (one sequence or windows) and generation (greedy or sampled, [`sample`]) with a
//! KV cache and GDN state.
use crate::gpu::Gpu;
use crate::nn::decoder::{Decoder, ForwardOpts};
use crate::ops;
use anyhow::{ensure, Result};
use serde::Serialize;
use std::time::Instant;

pub mod sample;
pub use sample::{SampleOpts, Sampler};

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
    let mut sampler = Sampler::new(SampleOpts::default());
    let g = generate_with(gpu, model, prompt, max_new, eos, &mut sampler, |id| {
        on_token(id);
        false
    })?;
    Ok(g.ids)
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// The model's end-of-sequence token (kept as the last id).
    Eos,
    /// The caller's `on_token` asked to stop (a stop string).
    Stop,
    /// `max_new` tokens.
    Length,
}

/// The new tokens and the time each phase took.
#[derive(Clone, Debug)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub stop: StopReason,
    /// Seconds from the start to the first sampled token (the prompt's prefill).
    pub prefill_s: f64,
    /// Seconds of the single-token steps after the first token.
    pub decode_s: f64,
    /// GPU bytes of the KV caches (allocated for the prompt and `max_new` tokens) and of the
    /// GDN states ([`KvCache::bytes`](crate::nn::decoder::KvCache::bytes)).
    pub kv_cache_bytes: u64,
    pub state_bytes: u64,
}

/// Decoding with the KV cache (softmax layers) and recurrent state (GDN layers), each token
/// drawn by `sampler` on the host from the one logits row read back per step. Stops at
/// `eos`, after `max_new` tokens, or when `on_token` returns true.
pub fn generate_with(
    gpu: &Gpu,
    model: &Decoder,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
    sampler: &mut Sampler,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Generation> {
    ensure!(!prompt.is_empty(), "the prompt tokenised to nothing");
    let start = Instant::now();
    let cache = model.kv_cache(gpu, prompt.len() + max_new)?;
    let mut context = prompt.to_vec();
    let (mut pos, mut prefill_s, mut step_s) = (0, 0.0, 0.0);
    let mut stop = StopReason::Length;
    while context.len() - prompt.len() < max_new {
        let t0 = Instant::now();
        let ids = &context[pos..];
        let tid = model.upload_ids(gpu, ids)?;
        let mut b = gpu.batch();
        let hidden = model.forward(&mut b, &cache, &tid, pos, ForwardOpts::default())?;
        let logits = model.logits(&mut b, &hidden, ids.len() - 1, 1)?;
        b.submit();
        let next = sampler.next(&gpu.read(&logits)?, &context);
        if pos == 0 {
            prefill_s = start.elapsed().as_secs_f64();
        } else {
            step_s += t0.elapsed().as_secs_f64();
        }
        pos = context.len();
        context.push(next);
        if Some(next) == eos {
            stop = StopReason::Eos;
            break;
        }
        if on_token(next) {
            stop = StopReason::Stop;
            break;
        }
    }
    let (kv_cache_bytes, state_bytes) = cache.bytes();
    Ok(Generation { ids: context.split_off(prompt.len()), stop, prefill_s, decode_s: step_s, kv_cache_bytes, state_bytes })
}

/// The byte offset of the earliest occurrence of any of `stops` in `text`.
pub fn stop_at(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// How much of a text being generated can be shown for good: all but a trailing
/// replacement character (a multi-byte character whose rest is still to come) and a
/// trailing piece that may grow into one of `stops`.
pub fn printable_len(text: &str, stops: &[String]) -> usize {
    let t = text.trim_end_matches('\u{FFFD}');
    let held = |s: &String| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && t.ends_with(&s[..k])).unwrap_or(0);
    t.len() - stops.iter().map(held).max().unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_and_hold_back_the_text() {
        let stops = vec!["END".to_string(), "\n\n".to_string()];
        assert_eq!(stop_at("abc\n\nxEND", &stops), Some(3));
        assert_eq!(stop_at("abc\n", &stops), None);
        assert_eq!(printable_len("abc\n", &stops), 3);
        assert_eq!(printable_len("abcEN", &stops), 3);
        assert_eq!(printable_len("abcE", &stops), 3);
        assert_eq!(printable_len("abcEx", &stops), 5);
        assert_eq!(printable_len("ab\u{e9}\u{FFFD}", &[]), 4);
    }
}
