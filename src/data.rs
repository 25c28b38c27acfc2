//! Text in: the built-in Brown splits, token sources read piece by piece (so a reader stops
//! as soon as it holds the tokens it needs, and a file is never held whole), cutting token
//! ids into windows, and training token streams (packed sequences visited in a seeded order
//! that is a pure function of (seed, index), so a resumed run sees exactly the sequences an
//! uninterrupted one would). Every id a source reads ([`read_tokens`], [`TokenStream::read`])
//! is checked against the model's vocabulary.
use crate::io::fingerprint;
use crate::io::shard::{self, ShardHeader, ShardWriter};
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    packed: Packed,
    pub seq_len: usize,
    pub seed: u64,
}

/// Where a stream's sequences lie.
enum Packed {
    /// Packed sequences of `seq_len` tokens each (consecutive, non-overlapping), flat.
    Memory(Vec<u32>),
    /// Token shards read a sequence at a time.
    Shards(ShardSet),
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
        Ok(TokenStream { packed: Packed::Memory(ids[..ids.len() - ids.len() % seq_len].to_vec()), seq_len, seed })
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

    /// The stream of token shards `set`, read a sequence at a time: the tokens of all the
    /// shards in turn cut into sequences of `seq_len` (sequences may span two shards; the
    /// tail shorter than `seq_len` is dropped), each epoch in an order shuffled by (seed,
    /// epoch) that needs no memory per sequence.
    pub fn shards(set: ShardSet, seq_len: usize, seed: u64) -> Result<TokenStream> {
        ensure!(seq_len >= 2, "sequence length must be at least 2 (got {seq_len})");
        ensure!(
            set.total >= seq_len as u64,
            "the token shards hold {} tokens, fewer than one sequence of {seq_len}: pass more shards or a shorter --seq-len",
            set.total
        );
        Ok(TokenStream { packed: Packed::Shards(set), seq_len, seed })
    }

    /// Number of distinct sequences (one epoch).
    pub fn len(&self) -> usize {
        match &self.packed {
            Packed::Memory(ids) => ids.len() / self.seq_len,
            Packed::Shards(s) => (s.total / self.seq_len as u64) as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the stream holds in host memory: the tokens of an in-memory stream; the shard
    /// table and the read buffer of a shard stream (the same at any corpus size).
    pub fn resident_bytes(&self) -> usize {
        match &self.packed {
            Packed::Memory(ids) => ids.capacity() * 4,
            Packed::Shards(s) => s.resident_bytes(),
        }
    }

    /// The shards a stream of shards reads.
    pub fn shard_set(&self) -> Option<&ShardSet> {
        match &self.packed {
            Packed::Shards(s) => Some(s),
            Packed::Memory(_) => None,
        }
    }

    /// The `i`-th sequence of an in-memory stream (see [`TokenStream::sequence`]); panics
    /// on a stream of shards, whose sequences are read from disk.
    pub fn get(&self, i: usize) -> &[u32] {
        let Packed::Memory(ids) = &self.packed else { panic!("TokenStream::get reads in-memory streams; use sequence") };
        let k = self.pick(i);
        &ids[k * self.seq_len..(k + 1) * self.seq_len]
    }

    /// Appends the `i`-th sequence of the infinite stream to `out`: epoch `i / len` visits
    /// every sequence once in an order shuffled by (seed, epoch).
    pub fn sequence(&self, i: usize, out: &mut Vec<u32>) -> Result<()> {
        match &self.packed {
            Packed::Memory(_) => out.extend_from_slice(self.get(i)),
            Packed::Shards(s) => s.read(self.pick(i) as u64 * self.seq_len as u64, self.seq_len, out)?,
        }
        Ok(())
    }

    /// The index of the `i`-th sequence of the stream.
    fn pick(&self, i: usize) -> usize {
        let n = self.len();
        let (epoch, j) = (i / n, i % n);
        let key = self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        match &self.packed {
            Packed::Memory(_) => self.order(epoch)[j],
            Packed::Shards(_) => permute(j as u64, n as u64, key) as usize,
        }
    }

    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.len()).collect();
        let mut r = rand::rngs::StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        o.shuffle(&mut r);
        o
    }
}

/// splitmix64: a well-mixed 64-bit function of `x`.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Position of `j` in a permutation of 0..n chosen by `key`, in O(1) memory: a four-round
/// Feistel network over the smallest even power of two >= n (at most 4n), walked until it
/// lands inside 0..n (a bijection of 0..n, as cycle walking keeps).
fn permute(j: u64, n: u64, key: u64) -> u64 {
    let bits = (64 - (n - 1).leading_zeros()).max(2).div_ceil(2) * 2;
    let half = bits / 2;
    let mask = (1u64 << half) - 1;
    let mut x = j;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for round in 0..4u64 {
            let f = mix(r ^ mix(key ^ round)) & mask;
            (l, r) = (r, l ^ f);
        }
        x = l << half | r;
        if x < n {
            return x;
        }
    }
}

/// One shard of a [`ShardSet`].
struct ShardFile {
    path: PathBuf,
    /// Index of its first token in the set.
    start: u64,
    header: ShardHeader,
}

/// A read buffer and the shard file last read (its index and handle).
type ShardReader = (Vec<u8>, Option<(usize, std::fs::File)>);

/// Token shards read as one sequence of tokens (see [`crate::io::shard`]): a table of the
/// files, one open file and one read buffer.
pub struct ShardSet {
    files: Vec<ShardFile>,
    total: u64,
    vocab: usize,
    /// The read buffer and the file last read.
    io: Mutex<ShardReader>,
}

impl ShardSet {
    /// Open `paths` (their headers are read and checked now): shards made with another
    /// vocabulary than `tok`'s are refused, and ids are checked against the model's `vocab`
    /// as they are read.
    pub fn open(paths: &[PathBuf], tok: &tokenizers::Tokenizer, vocab: usize) -> Result<ShardSet> {
        let want = shard::vocab_fingerprint(tok);
        let mut files = vec![];
        let mut total = 0u64;
        for p in paths {
            let header = read_header(p)?;
            ensure!(
                header.vocab == want,
                "token shard {} was made with another tokenizer (vocabulary fingerprint {:016x}, this model's {want:016x}): \
                 tokenize the text again with this model (`taylorcal tokenize --model ...`)",
                p.display(),
                header.vocab
            );
            files.push(ShardFile { path: p.clone(), start: total, header });
            total += files.last().expect("pushed").header.tokens;
        }
        Ok(ShardSet { files, total, vocab, io: Mutex::new((vec![], None)) })
    }

    /// Tokens in all the shards.
    pub fn tokens(&self) -> u64 {
        self.total
    }

    /// The shards' paths and headers.
    pub fn headers(&self) -> impl Iterator<Item = (&Path, &ShardHeader)> {
        self.files.iter().map(|f| (f.path.as_path(), &f.header))
    }

    fn resident_bytes(&self) -> usize {
        let table: usize =
            self.files.iter().map(|f| size_of::<ShardFile>() + f.path.as_os_str().len() + f.header.sources.capacity() * 8).sum();
        let io = self.io.lock().expect("not poisoned");
        size_of::<Self>() + table + io.0.capacity()
    }

    /// Appends the `n` tokens from token `at` of the set to `out`.
    fn read(&self, mut at: u64, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let mut io = self.io.lock().expect("not poisoned");
        let (buf, open) = &mut *io;
        let mut left = n;
        while left > 0 {
            let k = self.files.partition_point(|f| f.start <= at) - 1;
            let f = &self.files[k];
            let take = left.min((f.start + f.header.tokens - at) as usize);
            if open.as_ref().is_none_or(|(i, _)| *i != k) {
                let file = std::fs::File::open(&f.path).with_context(|| format!("reading token shard {}", f.path.display()))?;
                *open = Some((k, file));
            }
            let file = &mut open.as_mut().expect("opened").1;
            let before = out.len();
            shard::read_at(file, f.header.width, at - f.start, take, buf, out)
                .with_context(|| format!("reading token shard {}", f.path.display()))?;
            check_ids(&out[before..], self.vocab, &format!("token shard {}", f.path.display()))?;
            (at, left) = (at + take as u64, left - take);
        }
        Ok(())
    }
}

/// The checked header of the shard `path`.
pub fn read_header(path: &Path) -> Result<ShardHeader> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading token shard {}", path.display()))?;
    ShardHeader::read(path, &mut f)
}

/// Whether `path` is a file that starts as a token shard does.
pub fn is_shard(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == shard::MAGIC
}

/// The manifest `taylorcal tokenize` writes beside its shards.
pub const MANIFEST: &str = "shards.json";

/// Whether `name` is a file `taylorcal tokenize` writes.
pub fn is_shard_dir_file(name: &str) -> bool {
    name == MANIFEST || (name.starts_with("shard_") && name.ends_with(".bin"))
}

fn shard_name(i: usize) -> String {
    format!("shard_{i:05}.bin")
}

/// What `--train` names: text or JSONL files, or token shards (files, or directories
/// `taylorcal tokenize` wrote, whose manifest lists them).
pub enum TrainFiles {
    Text(Vec<PathBuf>),
    Shards(Vec<PathBuf>),
}

impl TrainFiles {
    /// Sort `paths` into texts and shards; a mix of both is refused.
    pub fn of(paths: &[PathBuf]) -> Result<TrainFiles> {
        let (mut texts, mut shards) = (vec![], vec![]);
        for p in paths {
            if p.is_dir() {
                shards.extend(manifest_shards(p)?);
            } else if is_shard(p) {
                shards.push(p.clone());
            } else {
                texts.push(p.clone());
            }
        }
        match (texts.is_empty(), shards.is_empty()) {
            (false, false) => bail!(
                "--train mixes text files ({}) and token shards ({}): tokenize the text too (`taylorcal tokenize`), or pass only text",
                texts[0].display(),
                shards[0].display()
            ),
            (true, false) => Ok(TrainFiles::Shards(shards)),
            _ => Ok(TrainFiles::Text(texts)),
        }
    }
}

/// The shards the manifest of the directory `dir` lists, in order.
fn manifest_shards(dir: &Path) -> Result<Vec<PathBuf>> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("{} is a directory without {MANIFEST}: not a shard directory `taylorcal tokenize` wrote", dir.display())
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let shards = v["shards"].as_array().with_context(|| format!("{} has no 'shards' list", path.display()))?;
    shards
        .iter()
        .map(|s| {
            let name = s["file"].as_str().filter(|n| is_shard_dir_file(n) && *n != MANIFEST);
            name.map(|n| dir.join(n)).with_context(|| format!("{} lists a shard without a valid 'file' name", path.display()))
        })
        .collect()
}

/// Refuse shards made from the evaluation text (`eval_fingerprint`: [`fingerprint::of_files`]
/// of it, `eval_name` in the message): a model evaluated on text it trained on measures nothing.
pub fn check_disjoint(set: &ShardSet, eval_fingerprint: &str, eval_name: &str) -> Result<()> {
    let fp = u64::from_str_radix(eval_fingerprint, 16).context("an evaluation fingerprint")?;
    if let Some((p, _)) = set.headers().find(|(_, h)| h.sources.contains(&fp)) {
        bail!(
            "token shard {} was made from the evaluation text ({eval_name}): training on it would make the evaluation \
             meaningless; tokenize other text for training, or evaluate on another --eval text",
            p.display()
        );
    }
    Ok(())
}

/// A fingerprint of the shards' contents from their headers (what `--resume` compares).
pub fn shards_fingerprint(set: &ShardSet) -> String {
    let mut fp = fingerprint::Fingerprint::default();
    for (_, h) in set.headers() {
        fp.u32s([h.content as u32, (h.content >> 32) as u32, h.tokens as u32, (h.tokens >> 32) as u32]);
    }
    fp.hex()
}

/// A JSON Lines file: one object a line with a `text` string, each such text a document
/// (tokenised in [`CHUNK`]-byte pieces, followed by `eos` where the tokenizer has one);
/// blank lines and blank texts are skipped.
pub struct JsonlSource<'a> {
    tok: &'a tokenizers::Tokenizer,
    name: String,
    lines: std::io::BufReader<std::fs::File>,
    line_no: usize,
    eos: Option<u32>,
    docs: usize,
}

impl<'a> JsonlSource<'a> {
    pub fn file(tok: &'a tokenizers::Tokenizer, path: &Path, eos: Option<u32>) -> Result<JsonlSource<'a>> {
        let f = std::fs::File::open(path).with_context(|| format!("reading JSONL file {}", path.display()))?;
        let name = format!("JSONL file {}", path.display());
        Ok(JsonlSource { tok, name, lines: std::io::BufReader::new(f), line_no: 0, eos, docs: 0 })
    }
}

impl TokenSource for JsonlSource<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn next_piece(&mut self, out: &mut Vec<u32>) -> Result<bool> {
        let mut line = String::new();
        loop {
            line.clear();
            self.line_no += 1;
            let n = self.lines.read_line(&mut line).with_context(|| format!("{} line {}: not UTF-8 text", self.name, self.line_no))?;
            if n == 0 {
                ensure!(self.docs > 0, "{} holds no document (no line with a non-blank \"text\")", self.name);
                return Ok(false);
            }
            if line.trim().is_empty() {
                continue;
            }
            let at = || format!("{} line {}", self.name, self.line_no);
            let v: serde_json::Value = serde_json::from_str(&line).with_context(|| format!("{}: not JSON", at()))?;
            let text = match v.get("text") {
                Some(serde_json::Value::String(t)) => t,
                Some(_) => bail!("{}: the \"text\" field is not a string", at()),
                None if v.is_object() => bail!("{}: the object has no \"text\" field", at()),
                None => bail!("{}: not a JSON object", at()),
            };
            if text.trim().is_empty() {
                continue;
            }
            let mut src = TextSource::new(self.tok, at(), text.as_bytes(), CHUNK)?;
            while src.next_piece(out)? {}
            out.extend(self.eos);
            self.docs += 1;
            return Ok(true);
        }
    }
}

impl<'a> TokenSource for Box<dyn TokenSource + 'a> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn next_piece(&mut self, out: &mut Vec<u32>) -> Result<bool> {
        (**self).next_piece(out)
    }
}

/// A text or, by its `.jsonl` extension, a JSONL file (documents followed by `eos`).
pub fn source_file<'a>(tok: &'a tokenizers::Tokenizer, path: &Path, eos: Option<u32>) -> Result<Box<dyn TokenSource + 'a>> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl")) {
        Ok(Box::new(JsonlSource::file(tok, path, eos)?))
    } else {
        Ok(Box::new(TextSource::file(tok, path)?))
    }
}

/// One shard `tokenize` wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardInfo {
    pub file: String,
    pub tokens: u64,
}

/// Tokenise `inputs` (text files, each one document, and JSONL files, see [`JsonlSource`])
/// into shards of at most `shard_tokens` tokens in `out` (an existing directory), each
/// document followed by `eos` where the tokenizer has one, and write their manifest.
/// Memory stays bounded: text is read and written piece by piece.
pub fn tokenize_to_shards(
    tok: &tokenizers::Tokenizer,
    eos: Option<u32>,
    inputs: &[PathBuf],
    out: &Path,
    shard_tokens: u64,
) -> Result<Vec<ShardInfo>> {
    ensure!(shard_tokens >= 1, "--shard-tokens must be at least 1");
    let (vocab, width) = (shard::vocab_fingerprint(tok), shard::width_for(tok.get_vocab_size(true)));
    let mut done: Vec<ShardInfo> = vec![];
    let mut cur: Option<ShardWriter> = None;
    let finish = |w: ShardWriter, done: &mut Vec<ShardInfo>| -> Result<()> {
        let h = w.finish()?;
        done.push(ShardInfo { file: shard_name(done.len()), tokens: h.tokens });
        Ok(())
    };
    let mut piece = vec![];
    for path in inputs {
        let fp = u64::from_str_radix(&fingerprint::of_files(&[path])?, 16).expect("hex");
        if cur.as_ref().is_some_and(|w| w.sources().len() == shard::MAX_SOURCES) {
            finish(cur.take().expect("some"), &mut done)?;
        }
        if let Some(w) = &mut cur {
            w.add_source(fp);
        }
        let jsonl = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
        let mut src = source_file(tok, path, eos)?;
        let mut more = true;
        while more {
            piece.clear();
            more = src.next_piece(&mut piece)?;
            if !more && !jsonl {
                piece.extend(eos);
            }
            let mut rest = &piece[..];
            while !rest.is_empty() {
                if cur.is_none() {
                    let mut w = ShardWriter::create(&out.join(shard_name(done.len())), width, vocab, eos)?;
                    w.add_source(fp);
                    cur = Some(w);
                }
                let w = cur.as_mut().expect("some");
                let take = rest.len().min((shard_tokens - w.tokens()) as usize);
                w.write(&rest[..take])?;
                rest = &rest[take..];
                if w.tokens() == shard_tokens {
                    finish(cur.take().expect("some"), &mut done)?;
                }
            }
        }
    }
    if let Some(w) = cur {
        finish(w, &mut done)?;
    }
    let total: u64 = done.iter().map(|s| s.tokens).sum();
    let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let manifest = serde_json::json!({
        "format": "taylorcal token shards", "version": shard::VERSION, "tokens": total, "token_bytes": width,
        "eos": eos, "sources": names, "shards": done,
    });
    crate::io::hf::write_atomic(&out.join(MANIFEST), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    Ok(done)
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
