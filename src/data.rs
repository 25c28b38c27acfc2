//! Text in: the built-in Brown splits, tokenising files, cutting token ids into windows,
//! and training token streams (packed sequences visited in a seeded order that is a pure
//! function of (seed, index), so a resumed run sees exactly the sequences an
//! uninterrupted one would).
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

/// Tokenise a text file without special tokens (no BOS), keeping at most `max` tokens.
pub fn tokenize_file(tok: &tokenizers::Tokenizer, path: &Path, max: usize) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading text file {}", path.display()))?;
    if text.trim().is_empty() {
        bail!("text file {} is empty", path.display());
    }
    let enc = tok.encode(text.as_str(), false).map_err(|e| anyhow!("tokenising {}: {e}", path.display()))?;
    let mut ids = enc.get_ids().to_vec();
    ids.truncate(max);
    Ok(ids)
}

/// The first `n` consecutive windows of `len` tokens of `ids` (`what` names the text in
/// the error when it is too short).
pub fn windows<'a>(ids: &'a [u32], len: usize, n: usize, what: &str) -> Result<Vec<&'a [u32]>> {
    let w: Vec<&[u32]> = ids.chunks_exact(len).take(n).collect();
    if w.len() < n {
        bail!("{what} has {} tokens: fewer than the {n} windows of {len} tokens asked for", ids.len());
    }
    Ok(w)
}

/// Tokens per calibration and evaluation window.
pub const WINDOW: usize = 256;

/// The Brown corpus splits shipped in assets/brown (disjoint by source file).
pub mod brown {
    pub const CALIBRATION: &str = include_str!("../assets/brown/calibration.txt");
    pub const TRAIN: &str = include_str!("../assets/brown/train.txt");
    pub const EVAL: &str = include_str!("../assets/brown/eval.txt");
}

/// Tokenise `path`, or the built-in text when `path` is None.
pub fn tokenize_or(tok: &tokenizers::Tokenizer, path: Option<&Path>, builtin: &str, max: usize) -> Result<Vec<u32>> {
    match path {
        Some(p) => tokenize_file(tok, p, max),
        None => {
            let enc = tok.encode(builtin, false).map_err(|e| anyhow!("tokenising the built-in corpus: {e}"))?;
            Ok(enc.get_ids().iter().copied().take(max).collect())
        }
    }
}

pub struct TokenStream {
    /// Packed sequences of `seq_len` tokens each (consecutive, non-overlapping).
    seqs: Vec<Vec<u32>>,
    pub seq_len: usize,
    pub seed: u64,
}

impl TokenStream {
    /// Pack `ids` into sequences of `seq_len` tokens (the tail shorter than `seq_len` is dropped).
    pub fn new(ids: &[u32], seq_len: usize, seed: u64) -> Result<TokenStream> {
        ensure!(seq_len >= 2, "sequence length must be at least 2 (got {seq_len})");
        ensure!(
            ids.len() >= seq_len,
            "the training text has {} tokens, fewer than one sequence of {seq_len}: pass more text (--train FILE) or a shorter --seq-len",
            ids.len()
        );
        let seqs = ids.chunks_exact(seq_len).map(|c| c.to_vec()).collect();
        Ok(TokenStream { seqs, seq_len, seed })
    }

    /// Number of distinct sequences (one epoch).
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The `i`-th sequence of the infinite stream: epoch `i / len` visits every sequence once
    /// in an order shuffled by (seed, epoch).
    pub fn get(&self, i: usize) -> &[u32] {
        let n = self.seqs.len();
        let (epoch, j) = (i / n, i % n);
        &self.seqs[self.order(epoch)[j]]
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.seqs.len()).collect();
        let mut r = rand::rngs::StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        o.shuffle(&mut r);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_visits_every_sequence_once_in_a_seeded_order() {
        let ids: Vec<u32> = (0..103).collect();
        let s = TokenStream::new(&ids, 10, 7).unwrap();
        assert_eq!(s.len(), 10);
        let firsts = |e: usize| -> Vec<u32> { (0..10).map(|j| s.get(e * 10 + j)[0]).collect() };
        let (a, b) = (firsts(0), firsts(1));
        let mut sa = a.clone();
        sa.sort();
        assert_eq!(sa, (0..10).map(|k| k * 10).collect::<Vec<_>>());
        assert_ne!(a, b, "epochs should be shuffled differently");
        let again = TokenStream::new(&ids, 10, 7).unwrap();
        assert_eq!(again.get(13), s.get(13));
        assert_ne!(firsts(0), (0..10).map(|j| TokenStream::new(&ids, 10, 8).unwrap().get(j)[0]).collect::<Vec<_>>());
        assert!(TokenStream::new(&ids[..5], 10, 1).is_err());
    }
}
