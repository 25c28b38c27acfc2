//! Token shards (src/io/shard.rs, src/data.rs): text and JSONL tokenised into shards read
//! back token for token; a shard stream visits every token once per epoch with buffers
//! that do not grow with the corpus; a run killed on a shard stream resumes at the same
//! token (bit-identical weights); other tokenizers, bad JSONL lines and shards made from the
//! evaluation text are refused by name.
use crate::common::student::{tiny_pair, toks};
use crate::common::tiny::tiny_tokenizer;
use crate::common::*;
use std::path::{Path, PathBuf};
use taylorcal::data::{self, ShardSet, TokenStream, TrainFiles};
use taylorcal::io::fingerprint;
use taylorcal::io::shard::{self, ShardWriter};
use taylorcal::io::{checkpoint, Arch};
use taylorcal::nn::decoder::Decoder;
use taylorcal::train::distill::{self, DistillOpts, Hooks, RunInputs, Setup};

/// Shards of `ids` in `dir`, `per` tokens each, made with `tok`'s vocabulary.
fn write_shards(dir: &Path, ids: &[u32], per: usize, tok: &tokenizers::Tokenizer) -> Vec<PathBuf> {
    ids.chunks(per)
        .enumerate()
        .map(|(i, c)| {
            let p = dir.join(format!("s{i}.bin"));
            let mut w = ShardWriter::create(&p, 4, shard::vocab_fingerprint(tok), None).unwrap();
            w.write(c).unwrap();
            w.finish().unwrap();
            p
        })
        .collect()
}

#[test]
fn text_and_jsonl_round_trip_through_shards() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer();
    let text = word_text(dir.path());
    let jsonl = dir.path().join("docs.jsonl");
    let docs = ["the cat sat", "hello world 12", "", "then the mat"];
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({ "text": d, "id": 1 }).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n\n").unwrap();
    let out = dir.path().join("shards");
    std::fs::create_dir(&out).unwrap();
    let eos = Some(3);
    let shards = data::tokenize_to_shards(&tok, eos, &[text.clone(), jsonl.clone()], &out, 500).unwrap();
    let enc = |s: &str| tok.encode(s, false).unwrap().get_ids().to_vec();
    let mut want = enc(&std::fs::read_to_string(&text).unwrap());
    want.push(3);
    for d in docs.iter().filter(|d| !d.is_empty()) {
        want.extend(enc(d));
        want.push(3);
    }
    assert!(want.len() > 1000, "{} tokens", want.len());
    assert_eq!(shards.len(), want.len().div_ceil(500));
    assert_eq!(shards.iter().map(|s| s.tokens).sum::<u64>(), want.len() as u64);
    let TrainFiles::Shards(paths) = TrainFiles::of(std::slice::from_ref(&out)).unwrap() else { panic!("not shards") };
    let (mut got, mut buf) = (vec![], vec![]);
    for p in &paths {
        let h = data::read_header(p).unwrap();
        assert_eq!((h.width, h.eos, h.vocab), (2, eos, shard::vocab_fingerprint(&tok)));
        let mut f = std::fs::File::open(p).unwrap();
        shard::read_at(&mut f, h.width, 0, h.tokens as usize, &mut buf, &mut got).unwrap();
    }
    assert_eq!(got, want, "the shards hold the documents' tokens, each followed by EOS");
    // the middle shard holds tokens of both files; the sources are the files' fingerprints
    let fp = |p: &Path| u64::from_str_radix(&fingerprint::of_files(&[p]).unwrap(), 16).unwrap();
    let last = data::read_header(paths.last().unwrap()).unwrap();
    assert_eq!(last.sources, vec![fp(&text), fp(&jsonl)]);
    // a truncated shard and a file of text are refused by name
    let cut = dir.path().join("cut.bin");
    let bytes = std::fs::read(&paths[0]).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    let err = format!("{:#}", data::read_header(&cut).unwrap_err());
    assert!(err.contains("cut.bin") && err.contains("truncated"), "{err}");
    let err = format!("{:#}", data::read_header(&text).unwrap_err());
    assert!(err.contains("text.txt") && err.contains("no token shard"), "{err}");
    assert!(matches!(TrainFiles::of(std::slice::from_ref(&text)).unwrap(), TrainFiles::Text(_)));
    let err = format!("{:#}", TrainFiles::of(&[text.clone(), paths[0].clone()]).err().unwrap());
    assert!(err.contains("mixes"), "{err}");
}

#[test]
fn bad_jsonl_lines_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer();
    let out = dir.path().join("o");
    std::fs::create_dir(&out).unwrap();
    for (body, what) in [
        ("{\"text\": \"the cat\"}\n{\"text\": 5}\n", "line 2: the \"text\" field is not a string"),
        ("{\"text\": \"the cat\"}\n\n{\"txt\": \"a\"}\n", "line 3: the object has no \"text\" field"),
        ("{\"text\": \"the\"\n", "line 1: not JSON"),
        ("[1, 2]\n", "line 1: not a JSON object"),
        ("\n{\"text\": \" \"}\n", "holds no document"),
    ] {
        let f = dir.path().join("bad.jsonl");
        std::fs::write(&f, body).unwrap();
        let err = format!("{:#}", data::tokenize_to_shards(&tok, None, &[f], &out, 100).unwrap_err());
        assert!(err.contains("bad.jsonl") && err.contains(what), "{body:?}: {err}");
    }
}

/// Every token of a shard set many batches long is read once per epoch (the tail shorter
/// than a sequence aside), in another order each epoch; the stream's resident bytes are the
/// same for a corpus 100 times larger.
#[test]
fn a_shard_stream_yields_each_token_once_per_epoch_with_bounded_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer();
    let (seq, n) = (7, 1003usize);
    let ids: Vec<u32> = (0..n as u32).collect();
    let paths = write_shards(dir.path(), &ids, 100, &tok);
    let s = TokenStream::shards(ShardSet::open(&paths, &tok, 1 << 20).unwrap(), seq, 5).unwrap();
    assert_eq!(s.len(), n / seq);
    let epoch = |e: usize| {
        let mut out = vec![];
        for j in 0..s.len() {
            s.sequence(e * s.len() + j, &mut out).unwrap();
        }
        out
    };
    let (a, b) = (epoch(0), epoch(1));
    for e in [&a, &b] {
        let mut sorted = e.clone();
        sorted.sort();
        assert_eq!(sorted, (0..(n / seq * seq) as u32).collect::<Vec<_>>(), "each token once per epoch");
        assert!(e.chunks(seq).all(|c| c.windows(2).all(|w| w[1] == w[0] + 1)), "sequences are consecutive tokens");
    }
    assert_ne!(a, b, "epochs are shuffled differently");
    let again = TokenStream::shards(ShardSet::open(&paths, &tok, 1 << 20).unwrap(), seq, 5).unwrap();
    assert_eq!(epoch(0), {
        let mut o = vec![];
        (0..s.len()).for_each(|j| again.sequence(j, &mut o).unwrap());
        o
    });
    // a corpus 100 times larger, in as many shards: the same buffers
    let big_dir = tempfile::tempdir().unwrap();
    let big: Vec<u32> = (0..100 * n as u32).collect();
    let big_paths = write_shards(big_dir.path(), &big, 100 * 100, &tok);
    let bs = TokenStream::shards(ShardSet::open(&big_paths, &tok, 1 << 20).unwrap(), seq, 5).unwrap();
    let mut out = vec![];
    for i in 0..3 * bs.len() {
        out.clear();
        bs.sequence(i * 97, &mut out).unwrap();
    }
    let in_memory = TokenStream::new(&big, seq, 5).unwrap().resident_bytes();
    eprintln!("resident bytes: {} tokens {}, {} tokens {}, in memory {in_memory}", n, s.resident_bytes(), 100 * n, bs.resident_bytes());
    assert!(bs.resident_bytes() <= s.resident_bytes() + 64, "{} vs {}", bs.resident_bytes(), s.resident_bytes());
    assert!(bs.resident_bytes() < 2048, "{}", bs.resident_bytes());
    // ids past the model's vocabulary, and another tokenizer's shards, are refused by name
    let err = format!("{:#}", {
        let small = TokenStream::shards(ShardSet::open(&paths, &tok, 500).unwrap(), seq, 5).unwrap();
        (0..small.len()).try_for_each(|j| small.sequence(j, &mut vec![])).unwrap_err()
    });
    assert!(err.contains("token shard") && err.contains("vocabulary has 500 ids"), "{err}");
    let mut other = tiny_tokenizer();
    other.add_tokens(&[tokenizers::AddedToken::from("zebra", false)]);
    let err = format!("{:#}", ShardSet::open(&paths, &other, 1 << 20).err().unwrap());
    assert!(err.contains("s0.bin") && err.contains("another tokenizer"), "{err}");
}

#[test]
fn shards_made_from_the_evaluation_text_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer();
    let (text, other) = (word_text(dir.path()), dir.path().join("other.txt"));
    std::fs::write(&other, "hello world then the cat").unwrap();
    let out = dir.path().join("o");
    std::fs::create_dir(&out).unwrap();
    data::tokenize_to_shards(&tok, None, &[other.clone(), text.clone()], &out, 1 << 20).unwrap();
    let TrainFiles::Shards(paths) = TrainFiles::of(&[out]).unwrap() else { panic!() };
    let set = ShardSet::open(&paths, &tok, 1 << 20).unwrap();
    let err = data::check_disjoint(&set, &fingerprint::of_files(&[&text]).unwrap(), "--eval text.txt").unwrap_err().to_string();
    assert!(err.contains("shard_00000.bin") && err.contains("evaluation text (--eval text.txt)"), "{err}");
    data::check_disjoint(&set, &fingerprint::of_bytes(data::brown::EVAL.text.as_bytes()), "brown").unwrap();
    let copy = dir.path().join("eval.txt");
    std::fs::write(&copy, data::brown::EVAL.text).unwrap();
    assert_eq!(fingerprint::of_files(&[&copy]).unwrap(), fingerprint::of_bytes(data::brown::EVAL.text.as_bytes()));
}

/// A stage 2 run on a shard stream (sequences spanning shards, more than one epoch)
/// killed after a step past its first checkpoint and resumed from disk ends with the
/// weights and curve of the unbroken run: it continues at the same token.
#[test]
fn a_killed_shard_run_resumes_at_the_same_token() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![0], 80);
    let g = gpu();
    let tok = tiny_tokenizer();
    let teacher = Decoder::new(g, &files).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ids = toks(24 * 5 + 11, files.config.vocab_size, 81);
    let paths = write_shards(dir.path(), &ids, 37, &tok);
    let data = TokenStream::shards(ShardSet::open(&paths, &tok, files.config.vocab_size).unwrap(), 24, 5).unwrap();
    let eval_ids = toks(24, files.config.vocab_size, 82);
    let eval: Vec<&[u32]> = vec![&eval_ids];
    fn setup<'a>(
        (teacher, data, eval): (&'a Decoder, &'a TokenStream, &'a [&'a [u32]]),
        student: &'a Decoder,
        ck: &'a checkpoint::Checkpoint,
        out: Option<&'a Path>,
    ) -> Setup<'a> {
        let (config, meta, inputs) = (&ck.config, serde_json::json!({}), RunInputs::default());
        Setup { gpu: gpu(), teacher, student, config, tokenizer: None, data, eval, out, meta, inputs }
    }
    let shared = (&teacher, &data, &eval[..]);
    let mut o = DistillOpts::for_stage(2);
    (o.tokens, o.seq_len, o.batch, o.seed, o.lr, o.lr_rest) = (8 * 2 * 24, 24, 2, 3, 1e-3, 3e-4);
    (o.checkpoint_every, o.eval_every) = (2, 3);
    let straight = Decoder::from_checkpoint(g, &ck).unwrap();
    let rep_a = distill::distill(&setup(shared, &straight, &ck, None), &o, None, &mut Hooks::default()).unwrap();
    let want = straight.to_host(g).unwrap();
    let out = dir.path().join("run");
    let first = Decoder::from_checkpoint(g, &ck).unwrap();
    let err = distill::distill(&setup(shared, &first, &ck, Some(&out)), &o, None, &mut Hooks { progress: None, kill_after: Some(5) })
        .unwrap_err();
    assert!(err.to_string().contains("killed"), "{err}");
    let saved = checkpoint::load_checkpoint(&out).unwrap();
    let state = distill::resume_state(&saved, &o).unwrap();
    assert_eq!(state.step, 4);
    let resumed = Decoder::from_checkpoint(g, &saved).unwrap();
    let rep_b = distill::distill(&setup(shared, &resumed, &saved, Some(&out)), &o, Some(state), &mut Hooks::default()).unwrap();
    let got = resumed.to_host(g).unwrap();
    for (name, t) in &want {
        assert_eq!(t.data, got[name].data, "{name} differs after resume");
    }
    for (a, b) in rep_a.curve.iter().zip(&rep_b.curve) {
        assert_eq!((a.step, a.loss, a.eval_ppl), (b.step, b.loss, b.eval_ppl), "curves differ");
    }
    assert_eq!(rep_a.curve.len(), rep_b.curve.len());
}
