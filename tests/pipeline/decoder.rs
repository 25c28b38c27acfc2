//! The decoder (src/nn/decoder.rs) on tiny random teachers and students: GPU logits equal
//! the f64 CPU reference (src/nn/reference.rs) for a Llama (GQA, tied embeddings), a
//! Qwen2-style model (q/k/v biases, GQA, untied head), a Qwen3-style one (q/k norms), a
//! hybrid student and Llamas with each RoPE scaling; a GGUF copy (permuted Q/K) gives the
//! same logits; KV-cache and recurrent-state decoding equal the full pass (the student's at
//! every position of 300 tokens); perplexity equals the reference NLL; generation stops at
//! EOS and repeats for a seed.
use crate::common::student::{bare_checkpoint, tiny_hybrid};
use crate::common::tiny::*;
use crate::common::*;
use taylorcal::eval;
use taylorcal::io::gguf::GgufTensorData;
use taylorcal::io::{hf::save_hf_dir, load_model, Arch, ModelConfig, ModelFiles};
use taylorcal::nn::decoder::{Decoder, ForwardOpts};
use taylorcal::nn::reference;

/// Logits of every position of `ids` in one pass of `d`.
pub(crate) fn logits(d: &Decoder, ids: &[u32]) -> Vec<f32> {
    let g = gpu();
    let cache = d.kv_cache(g, ids.len()).unwrap();
    let tid = g.upload_u32(&[ids.len()], ids).unwrap();
    let mut b = g.batch();
    let hidden = d.forward(&mut b, &cache, &tid, 0, ForwardOpts::default()).unwrap();
    let logits = d.logits(&mut b, &hidden, 0, ids.len()).unwrap();
    b.submit();
    g.read(&logits).unwrap()
}

/// Logits of every position of `ids` from a teacher built from `files`.
fn gpu_logits(files: &ModelFiles, ids: &[u32]) -> Vec<f32> {
    logits(&Decoder::new(gpu(), files).unwrap(), ids)
}

/// The last position's logits when `toks` is fed through the cache in pieces: a prefill up
/// to `cuts[0]`, then from cut to cut, then the rest.
fn decode_last(d: &Decoder, toks: &[u32], cuts: &[usize]) -> Vec<f32> {
    let g = gpu();
    let cache = d.kv_cache(g, toks.len()).unwrap();
    let mut last = vec![];
    let mut pos = 0;
    for &end in cuts.iter().chain([&toks.len()]) {
        let chunk = &toks[pos..end];
        let tid = g.upload_u32(&[chunk.len()], chunk).unwrap();
        let mut b = g.batch();
        let hidden = d.forward(&mut b, &cache, &tid, pos, ForwardOpts::default()).unwrap();
        let logits = d.logits(&mut b, &hidden, chunk.len() - 1, 1).unwrap();
        b.submit();
        last = g.read(&logits).unwrap();
        pos = end;
    }
    last
}

fn ids(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % vocab) as u32).collect()
}

fn check_arch(arch: Arch, tied: bool, seed: u64) {
    let mut cfg = tiny_config(arch);
    cfg.tie_word_embeddings = tied;
    let files = hf_round_trip(&cfg, &random_tensors(&cfg, seed));
    let toks = ids(37, cfg.vocab_size);
    let got = gpu_logits(&files, &toks);
    let want = reference::forward_logits(&files, &toks);
    assert_close(&format!("{arch:?} logits"), &got, &want, 1e-4);
}

#[test]
fn tiny_llama_gpu_logits_match_cpu_reference() {
    check_arch(Arch::Llama, true, 21);
}

#[test]
fn tiny_qwen2_with_bias_and_gqa_matches_cpu_reference() {
    check_arch(Arch::Qwen2, false, 22);
}

#[test]
fn tiny_qwen3_with_qk_norm_matches_cpu_reference() {
    check_arch(Arch::Qwen3, false, 23);
}

/// A Llama with each RoPE scaling (through config.json and back): GPU logits equal the
/// reference's, and differ from plain RoPE's (the scaling reaches the tables).
#[test]
fn rope_scaled_teachers_match_cpu_reference() {
    use taylorcal::io::config::RopeScaling;
    let plain = tiny_config(Arch::Llama);
    let tensors = random_tensors(&plain, 24);
    let toks = ids(37, plain.vocab_size);
    let unscaled = gpu_logits(&hf_round_trip(&plain, &tensors), &toks);
    let llama3 = RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 64 };
    let yarn = RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 64,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: 1.2,
        truncate: true,
    };
    let factors = RopeScaling::FreqFactors { factors: (0..8).map(|i| 1.0 + i as f32).collect() };
    for s in [llama3, yarn, factors] {
        let cfg = ModelConfig { rope_scaling: Some(s.clone()), ..plain.clone() };
        let files = hf_round_trip(&cfg, &tensors);
        assert_eq!(files.config.rope_scaling, Some(s.clone()));
        let got = gpu_logits(&files, &toks);
        assert_close(&format!("{s:?} logits"), &got, &reference::forward_logits(&files, &toks), 1e-4);
        assert!(rel_err(&got, &f64v(&unscaled)) > 1e-3, "{s:?}: the same logits as plain RoPE");
    }
}

#[test]
fn gguf_with_permuted_qk_gives_the_same_logits_as_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let tensors = random_tensors(&cfg, 24);
    save_hf_dir(dir.path(), &cfg, &tensors, None).unwrap();
    let gguf_path = dir.path().join("tiny.gguf");
    write_model_gguf(&gguf_path, &cfg, "llama", &tensors, GgufTensorData::F32, vec![]);
    let toks = ids(29, cfg.vocab_size);
    let from_hf = gpu_logits(&load_model(dir.path()).unwrap(), &toks);
    let from_gguf = gpu_logits(&load_model(&gguf_path).unwrap(), &toks);
    assert_close("gguf vs safetensors logits", &from_gguf, &f64v(&from_hf), 1e-6);
}

#[test]
fn kv_cache_decoding_matches_full_sequence() {
    // the last position's logits from prefill(T-3) + 3 single-token steps equal one pass over T
    let cfg = tiny_config(Arch::Llama);
    let files = hf_round_trip(&cfg, &random_tensors(&cfg, 25));
    let teacher = Decoder::new(gpu(), &files).unwrap();
    let toks = ids(20, cfg.vocab_size);
    let full = gpu_logits(&files, &toks);
    let last = decode_last(&teacher, &toks, &[17, 18, 19]);
    let v = cfg.vocab_size;
    assert_close("decode vs prefill", &last, &f64v(&full[(toks.len() - 1) * v..]), 1e-5);
}

#[test]
fn perplexity_equals_reference_nll() {
    let cfg = tiny_config(Arch::Qwen2);
    let files = hf_round_trip(&cfg, &random_tensors(&cfg, 26));
    let teacher = Decoder::new(gpu(), &files).unwrap();
    let toks = ids(31, cfg.vocab_size);
    let r = eval::perplexity(gpu(), &teacher, &toks).unwrap();
    let logits = reference::forward_logits(&files, &toks);
    let v = cfg.vocab_size;
    let nll: f64 =
        (0..toks.len() - 1).map(|i| -taylorcal::ops::nll::cpu::log_softmax(&logits[i * v..(i + 1) * v])[toks[i + 1] as usize]).sum::<f64>()
            / (toks.len() - 1) as f64;
    assert_eq!(r.tokens, toks.len());
    assert!((r.nll - nll).abs() <= 1e-4 * nll.abs(), "nll {} vs reference {nll}", r.nll);
}

/// A naive hybrid student of a tiny Qwen2-style teacher, attention kept in `keep`.
fn tiny_student(keep: Vec<usize>, seed: u64) -> taylorcal::io::checkpoint::Checkpoint {
    let (hc, teacher) = tiny_hybrid(keep, seed);
    let tensors = taylorcal::calibrate::init::init_student(&hc, &teacher, seed + 1).unwrap();
    bare_checkpoint(hc, tensors, serde_json::Value::Null)
}

#[test]
fn hybrid_student_gpu_logits_match_cpu_reference() {
    let ck = tiny_student(vec![1], 51);
    let d = Decoder::from_checkpoint(gpu(), &ck).unwrap();
    let toks = ids(70, ck.config.base.vocab_size); // more than one 64-token chunk
    assert_close("hybrid logits", &logits(&d, &toks), &reference::hybrid_logits(&ck, &toks), 1e-4);
}

#[test]
fn hybrid_decoding_with_recurrent_state_matches_full_sequence() {
    let ck = tiny_student(vec![0], 52);
    let d = Decoder::from_checkpoint(gpu(), &ck).unwrap();
    let toks = ids(24, ck.config.base.vocab_size);
    let full = logits(&d, &toks);
    let last = decode_last(&d, &toks, &[20, 21, 22]);
    let v = ck.config.base.vocab_size;
    assert_close("hybrid decode vs prefill", &last, &f64v(&full[(toks.len() - 1) * v..]), 1e-4);
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    use taylorcal::io::checkpoint;
    let ck = tiny_student(vec![1], 53);
    let toks = ids(40, ck.config.base.vocab_size);
    let before = logits(&Decoder::from_checkpoint(gpu(), &ck).unwrap(), &toks);
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save_checkpoint(&dir.path().join("s"), &ck).unwrap();
    let back = checkpoint::load_checkpoint(&dir.path().join("s")).unwrap();
    let after = logits(&Decoder::from_checkpoint(gpu(), &back).unwrap(), &toks);
    assert_eq!(before, after, "logits changed across save/load");
}

/// The student's decode, one token at a time through its KV cache and GDN state, gives the
/// logits of one full prefill pass at every position of 300 tokens (several 64-token chunks
/// of the prefill's scan).
#[test]
fn hybrid_decode_equals_prefill_at_every_position_over_300_tokens() {
    let (mut hc, teacher) = tiny_hybrid(vec![1], 54);
    hc.base.max_position_embeddings = 320;
    let tensors = taylorcal::calibrate::init::init_student(&hc, &teacher, 55).unwrap();
    let ck = bare_checkpoint(hc, tensors, serde_json::Value::Null);
    let d = Decoder::from_checkpoint(gpu(), &ck).unwrap();
    let v = ck.config.base.vocab_size;
    let toks = ids(300, v);
    let full = logits(&d, &toks);
    let g = gpu();
    let cache = d.kv_cache(g, toks.len()).unwrap();
    // K and V of the kept softmax layers grow with the context; a GDN layer's state is H d x d
    let c = &ck.config.base;
    let (kept, gdn) = (ck.config.attn_layers.len() as u64, (c.num_hidden_layers - ck.config.attn_layers.len()) as u64);
    let kv = kept * 2 * 300 * (c.num_key_value_heads * c.head_dim * 4) as u64;
    let state = gdn * (c.num_attention_heads * c.head_dim * c.head_dim * 4) as u64;
    assert!(kept > 0 && gdn > 0);
    assert_eq!(cache.bytes(), (kv, state), "KV-cache and state bytes");
    let mut worst = 0.0f64;
    for (pos, tok) in toks.iter().enumerate() {
        let tid = g.upload_u32(&[1], &[*tok]).unwrap();
        let mut b = g.batch();
        let hidden = d.forward(&mut b, &cache, &tid, pos, ForwardOpts::default()).unwrap();
        let l = d.logits(&mut b, &hidden, 0, 1).unwrap();
        b.submit();
        let step = g.read(&l).unwrap();
        let want = f64v(&full[pos * v..(pos + 1) * v]);
        worst = worst.max(rel_err(&step, &want));
        assert_close(&format!("decode vs prefill at position {pos}"), &step, &want, 1e-4);
    }
    eprintln!("decode vs prefill over 300 positions: worst relative error {worst:.2e}");
}

/// Generation stops at the end-of-sequence id (kept as the last id) and a seeded sampler
/// draws the same tokens on the GPU twice.
#[test]
fn generation_stops_at_eos_and_seeded_sampling_repeats() {
    use taylorcal::eval::{generate_with, SampleOpts, Sampler, StopReason};
    let ck = tiny_student(vec![1], 56);
    let d = Decoder::from_checkpoint(gpu(), &ck).unwrap();
    let prompt = ids(5, ck.config.base.vocab_size);
    let run = |eos: Option<u32>, opts: SampleOpts| generate_with(gpu(), &d, &prompt, 8, eos, &mut Sampler::new(opts), |_| false).unwrap();
    let free = run(None, SampleOpts::default());
    assert_eq!((free.ids.len(), free.stop), (8, StopReason::Length));
    assert_eq!(free.ids, eval::generate(gpu(), &d, &prompt, 8, None, |_| {}).unwrap());
    let eos = free.ids[4];
    let at = free.ids.iter().position(|&t| t == eos).unwrap();
    let stopped = run(Some(eos), SampleOpts::default());
    assert_eq!((&stopped.ids[..], stopped.stop), (&free.ids[..=at], StopReason::Eos));
    let sampled = SampleOpts { temperature: 1.5, top_k: 40, seed: 9, ..Default::default() };
    let (a, b) = (run(None, sampled.clone()), run(None, sampled));
    assert_eq!(a.ids, b.ids);
    let by_string = generate_with(gpu(), &d, &prompt, 8, None, &mut Sampler::new(SampleOpts::default()), |t| t == eos).unwrap();
    assert_eq!((&by_string.ids[..], by_string.stop), (&free.ids[..=at], StopReason::Stop));
}
