//! Sampling the next token from one row of logits, on the host in f64: repetition penalty,
//! temperature, top-k, top-p and min-p (applied in that order, as Hugging Face's
//! `generate` does), then a seeded draw. Each filter is a pure function over the logits that
//! sets the tokens it drops to minus infinity; ties in order are broken by the lower id.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings; the defaults are greedy decoding with no filter.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOpts {
    /// 0: greedy (the highest logit, lowest id on ties); otherwise logits are divided by it.
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1: all).
    pub top_p: f64,
    /// Keep tokens whose probability is at least `min_p` times the largest (0: all).
    pub min_p: f64,
    /// CTRL's penalty on tokens already in the context: positive logits are divided by it,
    /// negative ones multiplied (1: none).
    pub repetition_penalty: f64,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for SampleOpts {
    fn default() -> Self {
        SampleOpts { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SampleOpts {
    /// An error naming the setting out of range.
    pub fn check(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(self.temperature >= 0.0 && self.temperature.is_finite(), "--temperature must be >= 0, got {}", self.temperature);
        ensure!(self.top_p > 0.0 && self.top_p <= 1.0, "--top-p must be in (0, 1], got {}", self.top_p);
        ensure!((0.0..=1.0).contains(&self.min_p), "--min-p must be in [0, 1], got {}", self.min_p);
        ensure!(
            self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite(),
            "--repetition-penalty must be > 0, got {}",
            self.repetition_penalty
        );
        Ok(())
    }
}

/// Draws tokens with [`SampleOpts`]; the same seed and logits give the same tokens.
pub struct Sampler {
    pub opts: SampleOpts,
    // rand's StdRng (ChaCha12), already the crate's RNG for initialisation and shuffling:
    // reproducible for a seed within one rand version
    rng: StdRng,
}

impl Sampler {
    pub fn new(opts: SampleOpts) -> Self {
        let rng = StdRng::seed_from_u64(opts.seed);
        Sampler { opts, rng }
    }

    /// The next token after `context` (prompt and tokens generated so far) from its logits.
    pub fn next(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        let o = &self.opts;
        let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        repetition_penalty(&mut l, context, o.repetition_penalty);
        if o.temperature == 0.0 {
            return argmax(&l);
        }
        l.iter_mut().for_each(|x| *x /= o.temperature);
        top_k(&mut l, o.top_k);
        top_p(&mut l, o.top_p);
        min_p(&mut l, o.min_p);
        draw(&softmax(&l), self.rng.random::<f64>())
    }
}

/// The index of the largest value, the lowest on ties.
pub fn argmax(l: &[f64]) -> u32 {
    l.iter().enumerate().fold((0, f64::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0 as u32
}

/// Divide the positive logits of the tokens in `context` by `penalty`, multiply the
/// negative ones (each token once, however often it occurs).
pub fn repetition_penalty(l: &mut [f64], context: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; l.len()];
    for &id in context {
        let i = id as usize;
        if i < l.len() && !seen[i] {
            seen[i] = true;
            l[i] = if l[i] > 0.0 { l[i] / penalty } else { l[i] * penalty };
        }
    }
}

/// The probabilities of the logits (minus infinity gives 0).
pub fn softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|&x| (x - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Indices from the most likely to the least, ties by lower id.
fn order(l: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
    idx
}

/// Drop every token but those at `keep` positions of `order`.
fn keep_first(l: &mut [f64], order: &[usize], keep: usize) {
    for &i in &order[keep.min(order.len())..] {
        l[i] = f64::NEG_INFINITY;
    }
}

/// Keep the `k` largest logits (ties by lower id); `k` = 0 keeps all.
pub fn top_k(l: &mut [f64], k: usize) {
    if k > 0 && k < l.len() {
        keep_first(l, &order(l), k);
    }
}

/// Keep the smallest prefix of the tokens sorted by probability whose mass reaches `p`.
pub fn top_p(l: &mut [f64], p: f64) {
    if p >= 1.0 {
        return;
    }
    let (probs, ord) = (softmax(l), order(l));
    let (mut mass, mut n) = (0.0, 0);
    // 1e-12: a mass equal to p up to rounding reaches it
    while n < ord.len() && mass < p - 1e-12 {
        mass += probs[ord[n]];
        n += 1;
    }
    keep_first(l, &ord, n.max(1));
}

/// Keep the tokens whose probability is at least `min_p` times the largest's.
pub fn min_p(l: &mut [f64], min_p: f64) {
    if min_p <= 0.0 {
        return;
    }
    let probs = softmax(l);
    let cut = min_p * probs.iter().copied().fold(0.0, f64::max);
    for (x, p) in l.iter_mut().zip(probs) {
        if p < cut {
            *x = f64::NEG_INFINITY;
        }
    }
}

/// The token whose cumulative probability interval holds `u` in [0, 1).
pub fn draw(probs: &[f64], u: f64) -> u32 {
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if u < acc {
                return i as u32;
            }
        }
    }
    last as u32 // rounding left u at or past the total: the last token with mass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(l: &[f64]) -> Vec<usize> {
        (0..l.len()).filter(|&i| l[i].is_finite()).collect()
    }

    #[test]
    fn top_k_keeps_k_with_ties_by_id() {
        let mut l = vec![1.0, 3.0, 2.0, 3.0, 2.0, -1.0];
        top_k(&mut l, 3);
        assert_eq!(kept(&l), [1, 2, 3]);
        let mut l = vec![1.0, 3.0, 2.0];
        top_k(&mut l, 0);
        assert_eq!(kept(&l), [0, 1, 2]);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (ids 2, 0, 1, 3)
        let p = [0.25f64, 0.125, 0.5, 0.125];
        let base: Vec<f64> = p.iter().map(|x| x.ln()).collect();
        for (mass, want) in [(0.5, vec![2]), (0.6, vec![0, 2]), (0.75, vec![0, 2]), (0.8, vec![0, 1, 2]), (1.0, vec![0, 1, 2, 3])] {
            let mut l = base.clone();
            top_p(&mut l, mass);
            assert_eq!(kept(&l), want, "top_p {mass}");
        }
    }

    #[test]
    fn min_p_keeps_tokens_at_least_min_p_of_the_max() {
        // probabilities 0.4, 0.3, 0.2, 0.1: min_p 0.5 keeps those >= 0.2
        let base: Vec<f64> = [0.1f64, 0.4, 0.2, 0.3].iter().map(|x| x.ln()).collect();
        for (m, want) in [(0.5, vec![1, 2, 3]), (0.6, vec![1, 3]), (0.25, vec![0, 1, 2, 3]), (1.0, vec![1])] {
            let mut l = base.clone();
            min_p(&mut l, m);
            assert_eq!(kept(&l), want, "min_p {m}");
        }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
        let mut l = vec![2.0, -2.0, 4.0, -1.0, 0.5];
        repetition_penalty(&mut l, &[0, 1, 1, 4, 9], 2.0);
        assert_eq!(l, [1.0, -4.0, 4.0, -1.0, 0.25]);
    }

    #[test]
    fn greedy_is_the_argmax_after_the_penalty() {
        let mut s = Sampler::new(SampleOpts::default());
        assert_eq!(s.next(&[1.0, 3.0, 3.0, 2.0], &[]), 1);
        let mut s = Sampler::new(SampleOpts { repetition_penalty: 2.0, ..Default::default() });
        assert_eq!(s.next(&[1.0, 3.0, 3.0, 2.0], &[1, 2]), 3);
    }

    #[test]
    fn seeded_sampling_is_deterministic() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        let run = |seed| {
            let opts = SampleOpts { temperature: 0.8, top_k: 20, top_p: 0.9, min_p: 0.05, repetition_penalty: 1.3, seed };
            let mut s = Sampler::new(opts);
            let mut ctx = vec![];
            for _ in 0..200 {
                let t = s.next(&logits, &ctx);
                ctx.push(t);
            }
            ctx
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// At temperature 1, 20,000 draws from probabilities 0.5, 0.3, 0.2: each frequency is
    /// within 0.015 of its probability (more than 4 standard deviations, sqrt(p(1-p)/n) <=
    /// 0.0036; a fixed seed makes the test deterministic anyway).
    #[test]
    fn draws_follow_the_distribution() {
        let p = [0.5f64, 0.3, 0.2];
        let logits: Vec<f32> = p.iter().map(|x| x.ln() as f32).collect();
        let mut s = Sampler::new(SampleOpts { temperature: 1.0, seed: 3, ..Default::default() });
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.next(&logits, &[]) as usize] += 1;
        }
        for (c, want) in counts.iter().zip(p) {
            let f = *c as f64 / n as f64;
            assert!((f - want).abs() < 0.015, "frequency {f} vs probability {want} ({counts:?})");
        }
    }
}
