//! Text in: tokenising files, cutting token streams into windows.
use anyhow::{anyhow, bail, Context as _, Result};
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

/// Consecutive non-overlapping windows of `len` tokens (a shorter tail is dropped unless
/// it is the only window).
pub fn windows(ids: &[u32], len: usize) -> Vec<&[u32]> {
    if ids.len() <= len {
        return vec![ids];
    }
    ids.chunks_exact(len).collect()
}

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
