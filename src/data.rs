//! Text in: the built-in Brown splits, token sources read piece by piece (so a reader stops
//! as soon as it holds the tokens it needs, and a file is never held whole), cutting token
//! ids into windows, and training token streams (packed sequences visited in a seeded order
//! that is a pure function of (seed, index), so a resumed run sees exactly the sequences an
//! uninterrupted one would). Every id a source reads ([`read_tokens`], [`TokenStream::read`])
//! is checked against the model's vocabulary.
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::Read;
use std::path::Path;

/// Bytes of text tokenised at a time: the tokenizer holds about 140 bytes per byte of its
/// input, so pieces keep that bounded whatever the file's size.
pub const CHUNK: usize = 64 << 10;

/// Refuse ids the model has no embedding row for (`what` names the text): they would read
/// past the embedding table (nonsense on the GPU, a panic in the embedding backward).
pub fn check_ids(ids: &[u32], vocab: usize, what: &str) -> Result<()> {
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("{what} has token id {id} but the model's vocabulary has {vocab} ids: the tokenizer does not match the model");
    }
    Ok(())
}

/// Token ids read piece by piece from a named source: a text ([`TextSource`]), or anything
/// else that yields ids (pre-tokenised shards would be one).
pub trait TokenSource {
    /// The source in errors: a file's path, or which built-in split.
    fn name(&self) -> &str;
    /// Appends the next piece's ids to `out`; false once the source is exhausted.
    fn next_piece(&mut self, out: &mut Vec<u32>) -> Result<bool>;
}

/// Appends `src`'s ids to `out` until it has added `max` (or `src` ends), reading no more
/// pieces than that takes; every id is checked against the model's `vocab`.
pub fn read_tokens(src: &mut impl TokenSource, vocab: usize, max: usize, out: &mut Vec<u32>) -> Result<()> {
    let end = out.len().saturating_add(max);
    while out.len() < end {
        let before = out.len();
        if !src.next_piece(out)? {
            break;
        }
        out.truncate(end);
        check_ids(&out[before..], vocab, src.name())?;
    }
    Ok(())
}

/// A text tokenised without special tokens (no BOS) in pieces of about [`CHUNK`] bytes,
/// each cut where tokenising the pieces one by one gives the whole text's tokens
/// ([`cut`]).
pub struct TextSource<'a> {
    tok: &'a tokenizers::Tokenizer,
    name: String,
    reader: Box<dyn Read + 'a>,
    chunk: usize,
    /// Bytes read and not yet tokenised (fewer than `chunk` between pieces).
    buf: Vec<u8>,
    /// Bytes tokenised so far (offsets in errors).
    done: u64,
    eof: bool,
    /// Nothing but whitespace seen so far.
    blank: bool,
}

impl<'a> TextSource<'a> {
    /// The text `reader` reads, `name` in errors, tokenised `chunk` bytes (at least 4) at a time.
    pub fn new(tok: &'a tokenizers::Tokenizer, name: String, reader: impl Read + 'a, chunk: usize) -> Result<TextSource<'a>> {
        ensure!(chunk >= 4, "text chunks must hold a UTF-8 character (4 bytes), got {chunk}");
        Ok(TextSource { tok, name, reader: Box::new(reader), chunk, buf: vec![], done: 0, eof: false, blank: true })
    }

    /// A text file (opened now, so a missing one is reported before any work).
    pub fn file(tok: &'a tokenizers::Tokenizer, path: &Path) -> Result<TextSource<'a>> {
        let f = std::fs::File::open(path).with_context(|| format!("reading text file {}", path.display()))?;
        Self::new(tok, format!("text file {}", path.display()), f, CHUNK)
    }

    /// A built-in text.
    pub fn builtin(tok: &'a tokenizers::Tokenizer, text: &Builtin) -> Result<TextSource<'a>> {
        Self::new(tok, text.name.to_string(), text.text.as_bytes(), CHUNK)
    }

    /// Reads until `buf` holds `chunk` bytes or the text ends.
    fn fill(&mut self) -> Result<()> {
        while !self.eof && self.buf.len() < self.chunk {
            let n0 = self.buf.len();
            self.buf.resize(self.chunk, 0);
            let got = match self.reader.read(&mut self.buf[n0..]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    self.buf.truncate(n0);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", self.name)),
            };
            self.buf.truncate(n0 + got);
            self.eof = got == 0;
        }
        Ok(())
    }
}

impl TokenSource for TextSource<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_piece(&mut self, out: &mut Vec<u32>) -> Result<bool> {
        self.fill()?;
        let end = if self.eof { self.buf.len() } else { cut(&self.buf) };
        if end == 0 {
            ensure!(!self.blank, "{} is empty", self.name);
            return Ok(false);
        }
        let piece = std::str::from_utf8(&self.buf[..end])
            .map_err(|e| anyhow!("{} is not UTF-8 text (invalid byte at offset {})", self.name, self.done + e.valid_up_to() as u64))?;
        self.blank &= piece.trim().is_empty();
        ensure!(!(self.blank && self.eof), "{} is empty", self.name);
        let enc = self.tok.encode(piece, false).map_err(|e| anyhow!("tokenising {}: {e}", self.name))?;
        out.extend_from_slice(enc.get_ids());
        self.buf.drain(..end);
        self.done += end as u64;
        Ok(true)
    }
}

/// Where to end a piece of `buf` (at least 4 bytes, more text after it) so that tokenising
/// the pieces one by one gives the whole text's tokens with byte-level BPE tokenizers (GPT-2
/// style: SmolLM2, Llama 3, Qwen; tested in tests/pipeline/data.rs); a SentencePiece-style
/// tokenizer that prepends "▁" to every text it encodes gets one such token more at each cut
/// (one per 64 KiB of text). The cut comes after a line break between two
/// non-blank characters (tokenizers split there anyway), else before a line break that
/// follows a non-blank (the next piece starts with the whole whitespace run, which GPT-2
/// style pre-tokenizers split off alone), else before a space that follows a non-blank
/// (the space starts the next word's token), else at the last character boundary. Never
/// 0, never inside a UTF-8 character.
pub fn cut(buf: &[u8]) -> usize {
    let n = buf.len();
    let ws = |b: u8| b.is_ascii_whitespace();
    let last = |f: &dyn Fn(usize) -> bool| (2..n).rev().find(|&p| f(p));
    last(&|p| buf[p - 1] == b'\n' && !ws(buf[p - 2]) && !ws(buf[p]))
        .or_else(|| last(&|p| buf[p] == b'\n' && !ws(buf[p - 1])))
        .or_else(|| last(&|p| buf[p] == b' ' && !ws(buf[p - 1])))
        .or_else(|| (1..n).rev().find(|&p| buf[p] & 0xC0 != 0x80))
        .unwrap_or(n)
}

/// Tokenise a text file without special tokens (no BOS), keeping at most `max` tokens (the
/// file is read only as far as they take), checked against the model's `vocab`.
pub fn tokenize_file(tok: &tokenizers::Tokenizer, path: &Path, vocab: usize, max: usize) -> Result<Vec<u32>> {
    let mut ids = vec![];
    read_tokens(&mut TextSource::file(tok, path)?, vocab, max, &mut ids)?;
    Ok(ids)
}

/// [`tokenize_file`] of `path`, or of the built-in text when `path` is None.
pub fn tokenize_or(tok: &tokenizers::Tokenizer, path: Option<&Path>, builtin: &Builtin, vocab: usize, max: usize) -> Result<Vec<u32>> {
    if let Some(p) = path {
        return tokenize_file(tok, p, vocab, max);
    }
    let mut ids = vec![];
    read_tokens(&mut TextSource::builtin(tok, builtin)?, vocab, max, &mut ids)?;
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

/// A text shipped in the binary, with its name for errors.
pub struct Builtin {
    pub name: &'static str,
    pub text: &'static str,
}

/// The Brown corpus splits shipped in assets/brown (disjoint by source file).
pub mod brown {
    use super::Builtin;
    pub const CALIBRATION: Builtin =
        Builtin { name: "the built-in Brown calibration split", text: include_str!("../assets/brown/calibration.txt") };
    pub const TRAIN: Builtin = Builtin { name: "the built-in Brown training split", text: include_str!("../assets/brown/train.txt") };
    pub const EVAL: Builtin = Builtin { name: "the built-in Brown evaluation split", text: include_str!("../assets/brown/eval.txt") };
}

pub struct TokenStream {
    /// Packed sequences of `seq_len` tokens each (consecutive, non-overlapping), flat.
    ids: Vec<u32>,
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
        Ok(TokenStream { ids: ids[..ids.len() - ids.len() % seq_len].to_vec(), seq_len, seed })
    }

    /// The stream of `sources` read in turn (sequences may span two of them), stopping as
    /// soon as it holds `max_seqs` sequences: a run of S steps of B sequences needs S x B.
    /// Ids are checked against the model's `vocab`.
    pub fn read<S: TokenSource>(
        sources: impl IntoIterator<Item = S>,
        vocab: usize,
        seq_len: usize,
        max_seqs: usize,
        seed: u64,
    ) -> Result<TokenStream> {
        let max = max_seqs.max(1).saturating_mul(seq_len);
        let mut ids = vec![];
        for mut s in sources {
            read_tokens(&mut s, vocab, max - ids.len(), &mut ids)?;
            if ids.len() == max {
                break;
            }
        }
        Self::new(&ids, seq_len, seed)
    }

    /// Number of distinct sequences (one epoch).
    pub fn len(&self) -> usize {
        self.ids.len() / self.seq_len
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `i`-th sequence of the infinite stream: epoch `i / len` visits every sequence once
    /// in an order shuffled by (seed, epoch).
    pub fn get(&self, i: usize) -> &[u32] {
        let n = self.len();
        let (epoch, j) = (i / n, i % n);
        let k = self.order(epoch)[j];
        &self.ids[k * self.seq_len..(k + 1) * self.seq_len]
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.len()).collect();
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
