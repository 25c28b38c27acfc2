//! Token shards (`taylorcal tokenize`), in the spirit of llm.c's and nanoGPT's `.bin`
//! files: a fixed [`HEADER`]-byte header, then the token ids as little-endian u16 (a
//! vocabulary of at most 65,536 ids) or u32. Header fields, little-endian from byte 0:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `TCSHARD\0` |
//! | 8..12 | version (1) |
//! | 12..16 | token width in bytes: 2 or 4 |
//! | 16..24 | token count |
//! | 24..32 | fingerprint of the tokenizer's vocabulary ([`vocab_fingerprint`]) |
//! | 32..40 | fingerprint of the token ids |
//! | 40..44 | end-of-document id (u32::MAX: none) |
//! | 44..48 | number of source files n (at most [`MAX_SOURCES`]) |
//! | 48..64 | zero |
//! | 64..64+8n | fingerprint of each source file's bytes ([`super::fingerprint::of_files`]) |
//! | ..1024 | zero |
//!
//! A shard is written through a temporary file renamed at the end, so a reader never sees
//! a half-written one.
use super::fingerprint::Fingerprint;
use anyhow::{bail, ensure, Context as _, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"TCSHARD\0";
pub const VERSION: u32 = 1;
/// Bytes before the first token.
pub const HEADER: u64 = 1024;
/// Source fingerprints a header holds.
pub const MAX_SOURCES: usize = (HEADER as usize - 64) / 8;

/// A shard's header.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardHeader {
    /// 2 or 4 bytes per token.
    pub width: u32,
    pub tokens: u64,
    pub vocab: u64,
    pub content: u64,
    pub eos: Option<u32>,
    /// Fingerprints of the source files' bytes (hex, as [`super::fingerprint::of_files`]).
    pub sources: Vec<u64>,
}

/// The fingerprint of a tokenizer's vocabulary (every token with its id, added ones
/// included): shards made with another vocabulary are refused.
pub fn vocab_fingerprint(tok: &tokenizers::Tokenizer) -> u64 {
    let mut v: Vec<(u32, String)> = tok.get_vocab(true).into_iter().map(|(s, id)| (id, s)).collect();
    v.sort();
    let mut fp = Fingerprint::default();
    for (id, s) in &v {
        fp.u32s([*id]).bytes(s.as_bytes());
    }
    fp.value()
}

/// The token width a vocabulary of `vocab` ids needs.
pub fn width_for(vocab: usize) -> u32 {
    if vocab <= 1 << 16 {
        2
    } else {
        4
    }
}

impl ShardHeader {
    fn encode(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER as usize);
        h.extend_from_slice(MAGIC);
        for v in [VERSION, self.width] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.tokens, self.vocab, self.content] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.eos.unwrap_or(u32::MAX), self.sources.len() as u32] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.resize(64, 0);
        for s in &self.sources {
            h.extend_from_slice(&s.to_le_bytes());
        }
        h.resize(HEADER as usize, 0);
        h
    }

    /// Read and check the header of `path` (`file`), and that the file holds its tokens.
    pub fn read(path: &Path, file: &mut std::fs::File) -> Result<ShardHeader> {
        let what = || format!("token shard {}", path.display());
        let mut h = vec![0u8; HEADER as usize];
        file.seek(SeekFrom::Start(0)).with_context(what)?;
        match file.read_exact(&mut h) {
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                bail!("{} is no token shard: shorter than the {HEADER}-byte header", what())
            }
            r => r.with_context(what)?,
        }
        ensure!(&h[..8] == MAGIC, "{} is no token shard (no {:?} magic; make shards with `taylorcal tokenize`)", what(), "TCSHARD");
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        ensure!(u32_at(8) == VERSION, "{} has format version {}; this taylorcal reads version {VERSION}", what(), u32_at(8));
        let width = u32_at(12);
        ensure!(width == 2 || width == 4, "{} has token width {width}: not 2 or 4 bytes", what());
        let n = u32_at(44) as usize;
        ensure!(n <= MAX_SOURCES, "{} names {n} source files, more than a header holds ({MAX_SOURCES})", what());
        let eos = Some(u32_at(40)).filter(|&e| e != u32::MAX);
        let sources = (0..n).map(|i| u64_at(64 + 8 * i)).collect();
        let header = ShardHeader { width, tokens: u64_at(16), vocab: u64_at(24), content: u64_at(32), eos, sources };
        let len = file.metadata().with_context(what)?.len();
        let want = header.tokens.checked_mul(width as u64).and_then(|b| b.checked_add(HEADER));
        ensure!(
            want == Some(len),
            "{} is {len} bytes but its header says {} tokens of {width} bytes after {HEADER} bytes: the file is truncated or damaged",
            what(),
            header.tokens
        );
        Ok(header)
    }
}

/// Writes one shard: tokens are appended as they come, the header is completed by
/// [`ShardWriter::finish`], which renames the temporary file into place.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    header: ShardHeader,
    fp: Fingerprint,
    /// Ids written, for the content fingerprint (flushed two at a time).
    pending: Option<u32>,
}

impl ShardWriter {
    pub fn create(path: &Path, width: u32, vocab: u64, eos: Option<u32>) -> Result<ShardWriter> {
        let tmp = super::hf::tmp_path(path);
        let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let header = ShardHeader { width, tokens: 0, vocab, content: 0, eos, sources: vec![] };
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        out.write_all(&header.encode()).with_context(|| format!("writing {}", tmp.display()))?;
        Ok(ShardWriter { path: path.to_path_buf(), tmp, out, header, fp: Fingerprint::default(), pending: None })
    }

    pub fn tokens(&self) -> u64 {
        self.header.tokens
    }

    pub fn sources(&self) -> &[u64] {
        &self.header.sources
    }

    /// Records that the shard holds tokens of a source file of this fingerprint.
    pub fn add_source(&mut self, fingerprint: u64) {
        if !self.header.sources.contains(&fingerprint) {
            self.header.sources.push(fingerprint);
        }
    }

    pub fn write(&mut self, ids: &[u32]) -> Result<()> {
        let limit = if self.header.width == 2 { u16::MAX as u32 } else { u32::MAX };
        for &id in ids {
            ensure!(id <= limit, "token id {id} does not fit a {}-byte shard", self.header.width);
            let r =
                if self.header.width == 2 { self.out.write_all(&(id as u16).to_le_bytes()) } else { self.out.write_all(&id.to_le_bytes()) };
            r.with_context(|| format!("writing {}", self.tmp.display()))?;
            match self.pending.take() {
                None => self.pending = Some(id),
                Some(lo) => {
                    self.fp.u32s([lo, id]);
                }
            }
        }
        self.header.tokens += ids.len() as u64;
        Ok(())
    }

    /// Completes the header, flushes and renames the shard into place; its header.
    pub fn finish(mut self) -> Result<ShardHeader> {
        self.fp.u32s(self.pending.take());
        self.header.content = self.fp.u32s([self.header.tokens as u32, (self.header.tokens >> 32) as u32]).value();
        let err = || format!("writing {}", self.tmp.display());
        self.out.seek(SeekFrom::Start(0)).with_context(err)?;
        self.out.write_all(&self.header.encode()).with_context(err)?;
        let file = self.out.into_inner().map_err(|e| e.into_error()).with_context(err)?;
        file.sync_all().with_context(err)?;
        std::fs::rename(&self.tmp, &self.path).with_context(|| format!("renaming {} to {}", self.tmp.display(), self.path.display()))?;
        Ok(self.header)
    }
}

/// Reads `n` tokens from token `at` of the shard `file` (of `width` bytes each) into
/// `out`, through `buf` (resized to the bytes read: the only buffer a read holds).
pub fn read_at(file: &mut std::fs::File, width: u32, at: u64, n: usize, buf: &mut Vec<u8>, out: &mut Vec<u32>) -> std::io::Result<()> {
    buf.resize(n * width as usize, 0);
    file.seek(SeekFrom::Start(HEADER + at * width as u64))?;
    file.read_exact(buf)?;
    if width == 2 {
        out.extend(buf.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32));
    } else {
        out.extend(buf.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    }
    Ok(())
}
