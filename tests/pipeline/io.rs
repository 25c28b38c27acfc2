//! File formats (src/io): the model loaders (GGUF dequantisation and Q/K un-permutation,
//! Hugging Face safetensors in f32/f16/bf16, sharded, the GGUF byte-level BPE tokenizer,
//! RoPE scaling from config.json and GGUF metadata, clear errors on bad input) and the hybrid checkpoint format (io/checkpoint.rs: round
//! trip, atomic writes, config checks). Everything runs on small random models generated
//! here.
use half::f16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use taylorcal::calibrate::init::init_student;
use taylorcal::io::checkpoint::{self, Checkpoint, HybridConfig};
use taylorcal::io::config::RopeScaling;
use taylorcal::io::gguf::tokenizer_from_gguf;
use taylorcal::io::gguf::{self, write_gguf, GgmlType, GgufFile, GgufTensorData, GgufValue};
use taylorcal::io::hf::{self, save_hf_dir};
use taylorcal::io::{load_model, Arch, HostTensor, ModelConfig};

use crate::common::student::{bare_checkpoint, tiny_hybrid};
use crate::common::tiny::*;

// ---------------------------------------------------------------------------
// helpers

fn assert_close(name: &str, got: &[f32], want: &[f32], rel_tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel_tol * w.abs() + 1e-30, "{name}[{i}]: got {g}, want {w}");
    }
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

pub(crate) fn assert_mentions(msg: &str, parts: &[&str]) {
    eprintln!("error message: {msg}");
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} should mention {p:?}");
    }
}

fn truncate(path: &Path, len: usize) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..len]).unwrap();
}

// ---------------------------------------------------------------------------
// GGUF quantisation round trips

/// Straightforward dequantisation of one tensor's raw bytes, written from the format
/// description independently of the loader. Returns values and per-element block scale.
fn reference_dequant(ty: GgmlType, bytes: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let h = |b: &[u8], at: usize| f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
    let (mut xs, mut scales) = (Vec::new(), Vec::new());
    let block_bytes = match ty {
        GgmlType::Q4_0 => 18,
        GgmlType::Q4_1 => 20,
        GgmlType::Q8_0 => 34,
        _ => unreachable!(),
    };
    for b in bytes.chunks(block_bytes) {
        let d = h(b, 0);
        for e in 0..32 {
            let x = match ty {
                GgmlType::Q8_0 => d * (b[2 + e] as i8) as f32,
                GgmlType::Q4_0 | GgmlType::Q4_1 => {
                    let qs = if ty == GgmlType::Q4_0 { &b[2..] } else { &b[4..] };
                    let nibble = if e < 16 { qs[e] & 15 } else { qs[e - 16] >> 4 };
                    if ty == GgmlType::Q4_0 {
                        (nibble as f32 - 8.0) * d
                    } else {
                        nibble as f32 * d + h(b, 2)
                    }
                }
                _ => unreachable!(),
            };
            xs.push(x);
            scales.push(d.abs());
        }
    }
    (xs, scales)
}

/// Quantises random blocks of very different magnitudes, loads them back, and checks
/// (a) the loader equals the reference dequantisation bit for bit and (b) every value is
/// within `err_in_scales` block scales of the original.
fn check_quant_round_trip(ty: GgmlType, wrap: fn(Vec<f32>) -> GgufTensorData, err_in_scales: f32) {
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, cols) = (5, 96);
    let mut x = Vec::new();
    for _ in 0..rows * cols / 32 {
        let scale = 10f32.powf(rng.random_range(-2.0..1.5)); // d stays in f16's normal range
        let offset = if ty == GgmlType::Q4_1 { rng.random_range(-1.0..1.0) * scale } else { 0.0 };
        x.extend(random_vec(&mut rng, 32, scale).into_iter().map(|v| v + offset));
    }
    x[0..32].iter_mut().for_each(|v| *v = 0.25); // a constant block (d = 0 for Q4_1)
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.gguf");
    write_gguf(&path, &[], &[("t".into(), vec![rows, cols], wrap(x.clone()))]).unwrap();

    let file = GgufFile::open(&path).unwrap();
    let info = file.tensor_info("t").unwrap();
    assert_eq!(info.ty, ty);
    assert_eq!(info.shape(), vec![rows, cols]);
    assert_eq!(info.dims, vec![cols, rows]);
    let got = file.tensor_f32(info).unwrap();
    let (want, scales) = reference_dequant(ty, file.tensor_bytes(info).unwrap());
    assert_eq!(got, want, "{ty:?}: loader differs from the reference dequantisation");
    for i in 0..x.len() {
        let bound = err_in_scales * scales[i] + 1e-3 * x[i].abs() + 1e-7;
        assert!((got[i] - x[i]).abs() <= bound, "{ty:?}[{i}]: {} vs {} (block scale {})", got[i], x[i], scales[i]);
    }
}

#[test]
fn gguf_q8_0_round_trip() {
    check_quant_round_trip(GgmlType::Q8_0, GgufTensorData::Q8_0, 0.5 + 0.07);
}

#[test]
fn gguf_q4_1_round_trip() {
    check_quant_round_trip(GgmlType::Q4_1, GgufTensorData::Q4_1, 0.5 + 0.01);
}

#[test]
fn gguf_q4_0_round_trip() {
    // the largest positive value may clip from +8 to +7 scales: error up to one scale
    check_quant_round_trip(GgmlType::Q4_0, GgufTensorData::Q4_0, 1.0 + 0.01);
}

#[test]
fn gguf_quantisers_match_ggml_reference_values() {
    // Q8_0 of 0..31: d = 31/127, q = round(x/d)
    let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let b = gguf::quantize_q8_0(&x);
    assert_eq!(b.len(), 34);
    assert_eq!(f16::from_le_bytes([b[0], b[1]]), f16::from_f32(31.0 / 127.0));
    assert_eq!(b[2 + 31] as i8, 127);
    assert_eq!(b[2 + 10] as i8, (10.0f32 * (127.0 / 31.0)).round() as i8);
    // Q4_1 of 0..31: d = 31/15, m = 0; element 0 low nibble of byte 0, element 16 its high nibble
    let b = gguf::quantize_q4_1(&x);
    assert_eq!(b.len(), 20);
    assert_eq!(b[4] & 15, 0);
    assert_eq!(b[4] >> 4, ((16.0f32 * 15.0 / 31.0) + 0.5) as u8);
    assert_eq!(b[4 + 15] >> 4, 15);
    // Q4_0: d = max/-8 keeps the sign of the largest-magnitude value
    let y: Vec<f32> = (0..32).map(|i| i as f32 - 24.0).collect(); // -24 is the max magnitude
    let b = gguf::quantize_q4_0(&y);
    assert_eq!(f16::from_le_bytes([b[0], b[1]]).to_f32(), 3.0);
    assert_eq!(b[2] & 15, 0); // -24 / 3 + 8 = 0
}

#[test]
fn gguf_float_tensor_types() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = random_vec(&mut rng, 3 * 10, 2.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.gguf");
    let tensors = [
        ("a".to_string(), vec![3, 10], GgufTensorData::F32(x.clone())),
        ("b".to_string(), vec![3, 10], GgufTensorData::F16(x.clone())),
        ("c".to_string(), vec![3, 10], GgufTensorData::BF16(x.clone())),
    ];
    let meta = [("general.alignment".to_string(), GgufValue::U32(64))];
    write_gguf(&path, &meta, &tensors).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let get = |n: &str| file.tensor_f32(file.tensor_info(n).unwrap()).unwrap();
    assert_eq!(get("a"), x);
    assert_close("f16", &get("b"), &x, 1.0 / 2048.0);
    assert_close("bf16", &get("c"), &x, 1.0 / 256.0);
}

// ---------------------------------------------------------------------------
// llama.cpp's Q/K permutation

#[test]
fn permute_rows_matches_numpy_and_inverts() {
    let mut rng = StdRng::seed_from_u64(11);
    let (n_head, hd, cols) = (3, 8, 5);
    let w = random_vec(&mut rng, n_head * hd * cols, 1.0);
    let permuted = gguf::permute_rows(&w, n_head, hd, cols);
    assert_eq!(permuted, numpy_permute(&w, n_head, hd, cols));
    assert_ne!(permuted, w);
    assert_eq!(gguf::unpermute_rows(&permuted, n_head, hd, cols), w);
}

#[test]
fn gguf_llama_qk_rows_come_back_in_hf_order() {
    let cfg = tiny_config(Arch::Llama);
    let tensors = random_tensors(&cfg, 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-llama.gguf");
    write_model_gguf(&path, &cfg, "llama", &tensors, GgufTensorData::F32, vec![]);

    let loaded = load_model(&path).unwrap();
    assert_eq!(loaded.config, cfg);
    assert_eq!(loaded.tensors.len(), tensors.len());
    for (name, t) in &tensors {
        assert_eq!(&loaded.tensors[name], t, "{name} differs after the GGUF round trip");
    }
    assert!(loaded.tokenizer.is_none());
    assert!(loaded.source.contains("tokenizer not loaded"), "{}", loaded.source);
}

#[test]
fn gguf_llama_quantised_and_tied() {
    // Q8_0 blocks run along rows, so permuting rows commutes with quantisation: the loaded
    // Q/K must equal the dequantised HF-order weights exactly.
    let mut cfg = tiny_config(Arch::Llama);
    cfg.tie_word_embeddings = true;
    let tensors = random_tensors(&cfg, 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny-q8.gguf");
    write_model_gguf(&path, &cfg, "llama", &tensors, GgufTensorData::Q8_0, vec![]);
    let loaded = load_model(&path).unwrap();
    assert!(loaded.config.tie_word_embeddings);
    assert!(!loaded.tensors.contains_key("lm_head.weight"));

    let name = "model.layers.1.self_attn.k_proj.weight";
    let t = &tensors[name];
    let expected = gguf::dequantize(GgmlType::Q8_0, &gguf::quantize_q8_0(&t.data), t.numel()).unwrap();
    assert_eq!(loaded.tensors[name].data, expected);
    let max_err = loaded.tensors[name].data.iter().zip(&t.data).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(max_err <= 0.6 * 0.5 / 127.0, "{name}: Q8_0 error {max_err} (values lie in [-0.5, 0.5])");
}

#[test]
fn gguf_qwen_tensors_are_not_permuted() {
    for (arch, name) in [(Arch::Qwen2, "qwen2"), (Arch::Qwen3, "qwen3")] {
        let cfg = tiny_config(arch);
        let tensors = random_tensors(&cfg, 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("{name}.gguf"));
        write_model_gguf(&path, &cfg, name, &tensors, GgufTensorData::F32, vec![]);
        let loaded = load_model(&path).unwrap();
        assert_eq!(loaded.config.arch, arch);
        assert_eq!(loaded.config.attention_bias, arch == Arch::Qwen2);
        assert_eq!(loaded.config.qk_norm, arch == Arch::Qwen3);
        for (n, t) in &tensors {
            assert_eq!(&loaded.tensors[n], t, "{name}: {n}");
        }
    }
}

/// Rotate-half RoPE (Hugging Face): pairs (i, i + hd/2) share frequency i.
fn rope_rotate_half(x: &[f64], hd: usize, pos: f64, theta: f64) -> Vec<f64> {
    let half = hd / 2;
    let mut out = x.to_vec();
    for head in (0..x.len()).step_by(hd) {
        for i in 0..half {
            let a = pos * theta.powf(-2.0 * i as f64 / hd as f64);
            let (x0, x1) = (x[head + i], x[head + i + half]);
            out[head + i] = x0 * a.cos() - x1 * a.sin();
            out[head + i + half] = x1 * a.cos() + x0 * a.sin();
        }
    }
    out
}

/// Interleaved RoPE (llama.cpp "NORM" mode): pairs (2i, 2i + 1) share frequency i.
fn rope_interleaved(x: &[f64], hd: usize, pos: f64, theta: f64) -> Vec<f64> {
    let mut out = x.to_vec();
    for head in (0..x.len()).step_by(hd) {
        for i in 0..hd / 2 {
            let a = pos * theta.powf(-2.0 * i as f64 / hd as f64);
            let (x0, x1) = (x[head + 2 * i], x[head + 2 * i + 1]);
            out[head + 2 * i] = x0 * a.cos() - x1 * a.sin();
            out[head + 2 * i + 1] = x0 * a.sin() + x1 * a.cos();
        }
    }
    out
}

fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
    w.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn numpy_unpermute(w: &[f64], n_head: usize, hd: usize) -> Vec<f64> {
    let mut out = w.to_vec();
    let p: Vec<usize> = numpy_permute(&(0..w.len()).collect::<Vec<_>>(), n_head, hd, 1);
    for (dst, &src) in p.iter().enumerate() {
        out[src] = w[dst];
    }
    out
}

/// Why the loader un-permutes: llama.cpp stores Q/K rows permuted so that its interleaved
/// RoPE reproduces Hugging Face's rotate-half RoPE. After un-permuting, rotate-half on the
/// loaded weights gives exactly what llama.cpp computes.
#[test]
fn rope_on_unpermuted_weights_matches_llama_cpp() {
    let mut rng = StdRng::seed_from_u64(5);
    let (n_head, hd, d, theta) = (3, 16, 24, 10000.0);
    let w_hf: Vec<f64> = (0..n_head * hd * d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let x: Vec<f64> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
    let w_gguf = numpy_permute(&w_hf, n_head, hd, d);

    for pos in [0.0, 1.0, 7.0, 123.0] {
        let hf = rope_rotate_half(&matvec(&w_hf, &x), hd, pos, theta);
        let llama_cpp = rope_interleaved(&matvec(&w_gguf, &x), hd, pos, theta);
        let back = numpy_unpermute(&llama_cpp, n_head, hd);
        for i in 0..hf.len() {
            assert!((hf[i] - back[i]).abs() < 1e-12, "pos {pos} row {i}: {} vs {}", hf[i], back[i]);
        }
        // without un-permuting, rotate-half on GGUF-order rows is wrong
        let wrong = rope_rotate_half(&matvec(&w_gguf, &x), hd, pos, theta);
        let wrong = numpy_unpermute(&wrong, n_head, hd);
        if pos > 0.0 {
            let diff: f64 = wrong.iter().zip(&hf).map(|(a, b)| (a - b).abs()).sum();
            assert!(diff > 1e-3, "pos {pos}: the permutation should matter");
        }
    }
    // and the loader's f32 un-permutation is that same map
    let w32: Vec<f32> = w_gguf.iter().map(|&v| v as f32).collect();
    let un = gguf::unpermute_rows(&w32, n_head, hd, d);
    assert!(un.iter().zip(&w_hf).all(|(a, &b)| *a == b as f32));
}

// ---------------------------------------------------------------------------
// Hugging Face directories

#[test]
fn hf_dir_f32_round_trip() {
    let cfg = tiny_config(Arch::Llama);
    let tensors = random_tensors(&cfg, 6);
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(dir.path(), &cfg, &tensors, None).unwrap();
    let loaded = load_model(dir.path()).unwrap();
    assert_eq!(loaded.config, cfg);
    assert_eq!(loaded.tensors, tensors);
    assert!(loaded.tokenizer.is_none());
    let json = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(json.contains("\"model_type\": \"llama\""), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["rms_norm_eps"].as_f64(), Some(1e-5), "written as the f32's shortest decimal");
}

#[test]
fn hf_config_defaults_and_variants() {
    let p = Path::new("/x/config.json");
    let base = r#""hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 96, "vocab_size": 100, "rms_norm_eps": 1e-6"#;
    let cfg = hf::parse_hf_config(&format!(r#"{{"model_type": "mistral", {base}, "eos_token_id": [7, 8]}}"#), p).unwrap();
    assert_eq!(cfg.arch, Arch::Llama);
    assert_eq!((cfg.num_key_value_heads, cfg.head_dim), (4, 16));
    assert_eq!((cfg.rope_theta, cfg.max_position_embeddings), (10000.0, 2048));
    assert!(!cfg.tie_word_embeddings && !cfg.attention_bias && !cfg.qk_norm);
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id), (None, Some(7)));
    let q2 = hf::parse_hf_config(&format!(r#"{{"model_type": "qwen2", {base}}}"#), p).unwrap();
    assert!(q2.attention_bias && q2.arch == Arch::Qwen2);
    let q3 = hf::parse_hf_config(&format!(r#"{{"model_type": "qwen3", {base}, "head_dim": 32}}"#), p).unwrap();
    assert!(q3.qk_norm && q3.head_dim == 32 && !q3.attention_bias);
    let llama_bias = hf::parse_hf_config(&format!(r#"{{"model_type": "llama", {base}, "attention_bias": true}}"#), p).unwrap();
    assert!(llama_bias.attention_bias);
}

#[test]
fn hf_dir_f16_and_bf16() {
    let cfg = tiny_config(Arch::Qwen2);
    let tensors = random_tensors(&cfg, 8);
    for (dtype, tol) in [(Dtype::F16, 1.0 / 2048.0), (Dtype::BF16, 1.0 / 256.0)] {
        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(dir.path(), &cfg, &HashMap::new(), None).unwrap();
        write_safetensors_as(&dir.path().join("model.safetensors"), &tensors, dtype);
        let loaded = load_model(dir.path()).unwrap();
        assert_eq!(loaded.config, cfg);
        for (name, t) in &tensors {
            assert_eq!(loaded.tensors[name].shape, t.shape);
            assert_close(name, &loaded.tensors[name].data, &t.data, tol);
        }
    }
}

#[test]
fn hf_dir_sharded() {
    let cfg = tiny_config(Arch::Qwen3);
    let tensors = random_tensors(&cfg, 9);
    let dir = tempfile::tempdir().unwrap();
    let shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    write_sharded_hf_dir(dir.path(), &cfg, &tensors, shards, [Dtype::F32, Dtype::BF16], &[]);
    let loaded = load_model(dir.path()).unwrap();
    for (name, t) in &tensors {
        assert_close(name, &loaded.tensors[name].data, &t.data, 1.0 / 256.0);
    }
}

// ---------------------------------------------------------------------------
// GGUF tokenizer (byte-level BPE)

#[test]
fn gguf_byte_level_bpe_tokenizer() {
    let meta: HashMap<String, GgufValue> = tiny_tokenizer_metadata().into_iter().collect();
    let tok = tokenizer_from_gguf(&meta, "test").unwrap();
    let text = "<|im_start|>hello the world 12 éè!";
    let enc = tok.encode(text, false).unwrap();
    let pieces = enc.get_tokens();
    assert_eq!(enc.get_ids()[0], 1, "special token kept whole: {pieces:?}");
    assert!(pieces.contains(&"Ġthe".to_string()), "{pieces:?}");
    assert!(pieces.contains(&"he".to_string()), "{pieces:?}");
    assert!(pieces.contains(&"ll".to_string()), "{pieces:?}");
    assert!(!pieces.contains(&"12".to_string()), "digits must stay single: {pieces:?}");
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello the world 12 éè!");

    // written with a model to GGUF, and re-saved as tokenizer.json in an HF dir
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), true);
    let loaded = load_model(&path).unwrap();
    assert_eq!(loaded.config.vocab_size, TINY_VOCAB_WITH_TOKENIZER);
    let gguf_tok = loaded.tokenizer.expect("tokenizer from GGUF");
    assert_eq!(gguf_tok.encode(text, false).unwrap().get_ids(), enc.get_ids());

    let hf_dir = dir.path().join("hf");
    save_hf_dir(&hf_dir, &loaded.config, &loaded.tensors, Some(&gguf_tok)).unwrap();
    let reloaded = load_model(&hf_dir).unwrap();
    let hf_tok = reloaded.tokenizer.expect("tokenizer.json");
    assert_eq!(hf_tok.encode(text, false).unwrap().get_ids(), enc.get_ids());
}

// ---------------------------------------------------------------------------
// bad input: every error names the file and the problem

fn saved_hf_dir(dir: &Path) -> PathBuf {
    let cfg = tiny_config(Arch::Llama);
    save_hf_dir(dir, &cfg, &random_tensors(&cfg, 12), None).unwrap();
    dir.to_path_buf()
}

// 3 special tokens, the 256 byte-level characters and 6 merges (the tiny tokenizer below).

/// A tiny Q8_0 llama GGUF, optionally with the tiny tokenizer (metadata before tensors).

#[test]
fn error_truncated_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_hf_dir(tmp.path());
    let file = dir.join("model.safetensors");
    let len = std::fs::metadata(&file).unwrap().len() as usize;
    truncate(&file, len / 2);
    let msg = err_text(load_model(&dir));
    assert_mentions(&msg, &[&file.display().to_string(), "truncated"]);
}

#[test]
fn error_truncated_gguf_tensor_data() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tiny_gguf(tmp.path(), false);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    truncate(&path, len - 100);
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &[&path.display().to_string(), "truncated", "tensor '"]);
}

#[test]
fn error_truncated_gguf_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tiny_gguf(tmp.path(), true);
    // the token list starts after the model hyper-parameters: cut inside it
    truncate(&path, 1000);
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &[&path.display().to_string(), "truncated", "metadata 'tokenizer.ggml"]);
}

#[test]
fn gguf_every_truncation_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tiny_gguf(tmp.path(), true);
    let bytes = std::fs::read(&path).unwrap();
    let cut = tmp.path().join("cut.gguf");
    for len in (0..bytes.len()).step_by(37).chain([bytes.len() - 1]) {
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let msg = err_text(load_model(&cut));
        assert!(msg.contains("cut.gguf"), "len {len}: {msg}");
    }
}

#[test]
fn error_gguf_absurd_array_length() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("absurd.gguf");
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    b.extend(5u64.to_le_bytes());
    b.extend(b"huge!");
    b.extend(9u32.to_le_bytes()); // array
    b.extend(8u32.to_le_bytes()); // of strings
    b.extend(u64::MAX.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["absurd.gguf", "metadata 'huge!'", "truncated or corrupt"]);
}

#[test]
fn error_gguf_unsupported_tensor_type() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let path = tmp.path().join("iq4xs.gguf");
    let mut list: Vec<_> =
        random_tensors(&cfg, 14).into_iter().map(|(n, t)| (gguf_name(&n), t.shape, GgufTensorData::F32(t.data))).collect();
    list.iter_mut().find(|(n, _, _)| n == "blk.0.ffn_up.weight").unwrap().2 =
        GgufTensorData::Raw { type_id: 23, bytes: vec![0; 96 * 64 / 256 * 136] };
    write_gguf(&path, &gguf_metadata(&cfg, "llama"), &list).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["iq4xs.gguf", "blk.0.ffn_up.weight", "IQ4_XS", "not supported", "Q4_K"]);
}

#[test]
fn gguf_with_a_k_quant_tensor_loads_its_values() {
    // a Q4_K_M-style file: one weight in Q4_K among f32 ones (rows of whole super-blocks:
    // hidden size 256, as real models' 1536 .. 4096)
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig { hidden_size: 256, head_dim: 64, ..tiny_config(Arch::Llama) };
    let path = tmp.path().join("q4k.gguf");
    let mut list: Vec<_> =
        random_tensors(&cfg, 15).into_iter().map(|(n, t)| (gguf_name(&n), t.shape, GgufTensorData::F32(t.data))).collect();
    let entry = list.iter_mut().find(|(n, _, _)| n == "blk.0.ffn_up.weight").unwrap();
    let numel: usize = entry.1.iter().product();
    let mut r = StdRng::seed_from_u64(93);
    let (mut bytes, mut want) = (vec![], vec![]);
    for _ in 0..numel / 256 {
        let (b, w) = k45_block(&mut r, false);
        bytes.extend(b);
        want.extend(w);
    }
    entry.2 = GgufTensorData::Raw { type_id: 12, bytes };
    write_gguf(&path, &gguf_metadata(&cfg, "llama"), &list).unwrap();
    let files = load_model(&path).unwrap();
    let got = &files.tensors["model.layers.0.mlp.up_proj.weight"].data;
    let want: Vec<f32> = want.iter().map(|&x| x as f32).collect();
    assert_close("Q4_K ffn_up", got, &want, 1e-6);
}

#[test]
fn error_config_missing_hidden_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_hf_dir(tmp.path());
    let config = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&config, json.to_string()).unwrap();
    let msg = err_text(load_model(&dir));
    assert_mentions(&msg, &[&config.display().to_string(), "hidden_size", "missing"]);
}

#[test]
fn error_unsupported_architecture_hf() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = saved_hf_dir(tmp.path());
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"llama\"", "\"gpt2\"");
    std::fs::write(&config, text).unwrap();
    let msg = err_text(load_model(&dir));
    assert_mentions(&msg, &[&config.display().to_string(), "unsupported architecture 'gpt2'", "llama, mistral, qwen2, qwen3"]);
}

#[test]
fn error_unsupported_architecture_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("gpt2.gguf");
    let cfg = tiny_config(Arch::Llama);
    write_gguf(&path, &gguf_metadata(&cfg, "gpt2"), &[]).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["gpt2.gguf", "unsupported architecture 'gpt2'"]);
}

#[test]
fn error_missing_tensor_and_wrong_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let mut tensors = random_tensors(&cfg, 15);
    tensors.remove("model.layers.1.mlp.down_proj.weight");
    tensors.insert("model.norm.weight".into(), HostTensor::new(vec![63], vec![1.0; 63]));
    save_hf_dir(tmp.path(), &cfg, &tensors, None).unwrap();
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(
        &msg,
        &[
            &tmp.path().display().to_string(),
            "missing tensor 'model.layers.1.mlp.down_proj.weight'",
            "'model.norm.weight' has shape [63], expected [64]",
        ],
    );
}

#[test]
fn error_missing_model_path() {
    let msg = err_text(load_model(Path::new("/definitely/not/here/model.gguf")));
    assert_mentions(&msg, &["model path '/definitely/not/here/model.gguf' does not exist"]);
}

#[test]
fn load_model_finds_the_single_gguf_in_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    tiny_gguf(tmp.path(), false);
    assert_eq!(load_model(tmp.path()).unwrap().config.num_hidden_layers, 2);
    std::fs::copy(tmp.path().join("tiny.gguf"), tmp.path().join("other.gguf")).unwrap();
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &["2 .gguf files", "other.gguf", "tiny.gguf"]);
}

// ---------------------------------------------------------------------------
// bad input, bounded: sizes checked before anything is sized from them, duplicate and
// overlapping tensors refused, shards confined to the model directory. On main the
// huge-count cases aborted the process ("memory allocation of N bytes failed").

/// The tiny llama model as GGUF tensors (F32), under GGUF names.
fn gguf_tensor_list(seed: u64) -> Vec<(String, Vec<usize>, GgufTensorData)> {
    gguf_f32_list(&random_tensors(&tiny_config(Arch::Llama), seed))
}

/// The tiny llama GGUF with metadata `llama.{key}` replaced by `value`.
fn gguf_with_metadata(dir: &Path, key: &str, value: GgufValue) -> PathBuf {
    gguf_with(dir, &[(key, value)], vec![])
}

/// The tiny llama GGUF with each metadata `llama.{key}` set to its value and `tensors` added.
fn gguf_with(dir: &Path, keys: &[(&str, GgufValue)], tensors: Vec<(String, Vec<usize>, GgufTensorData)>) -> PathBuf {
    let path = dir.join("bad.gguf");
    let keys: Vec<_> = keys.iter().map(|(k, v)| (format!("llama.{k}"), v.clone())).collect();
    let mut meta: Vec<_> =
        gguf_metadata(&tiny_config(Arch::Llama), "llama").into_iter().filter(|(k, _)| keys.iter().all(|(n, _)| n != k)).collect();
    meta.extend(keys);
    let mut list = gguf_tensor_list(16);
    list.extend(tensors);
    write_gguf(&path, &meta, &list).unwrap();
    path
}

/// The tiny Hugging Face directory with `config.json` fields set to the values given.
fn hf_with_config(dir: &Path, fields: &[(&str, serde_json::Value)]) -> PathBuf {
    saved_hf_dir(dir);
    let config = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    for (field, value) in fields {
        json[field] = value.clone();
    }
    std::fs::write(&config, json.to_string()).unwrap();
    config
}

/// Aborted the process on main (the tensor list of 2^32-1 layers).
#[test]
fn error_gguf_huge_block_count() {
    let tmp = tempfile::tempdir().unwrap();
    let path = gguf_with_metadata(tmp.path(), "block_count", GgufValue::U32(u32::MAX));
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &[&path.display().to_string(), "llama.block_count", "4294967295", "more than taylorcal accepts"]);
}

/// Loaded on main; the decoder then sized its RoPE tables from it and aborted.
#[test]
fn error_gguf_huge_context_length() {
    let tmp = tempfile::tempdir().unwrap();
    let path = gguf_with_metadata(tmp.path(), "context_length", GgufValue::U32(u32::MAX));
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &[&path.display().to_string(), "llama.context_length", "4294967295"]);
}

/// Aborted the process on main (the tensor list of 10^12 layers).
#[test]
fn error_config_huge_layer_count() {
    let tmp = tempfile::tempdir().unwrap();
    let config = hf_with_config(tmp.path(), &[("num_hidden_layers", serde_json::json!(1_000_000_000_000u64))]);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &[&config.display().to_string(), "num_hidden_layers", "1000000000000"]);
}

/// Loaded on main; the decoder then sized its RoPE tables from it and aborted.
#[test]
fn error_config_huge_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let config = hf_with_config(tmp.path(), &[("max_position_embeddings", serde_json::json!(1u64 << 40))]);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &[&config.display().to_string(), "max_position_embeddings", &(1u64 << 40).to_string()]);
    // within the per-field bound, but with head_dim past the RoPE tables' bound
    let fields = [("max_position_embeddings", serde_json::json!(1 << 22)), ("head_dim", serde_json::json!(128))];
    let config = hf_with_config(tmp.path(), &fields);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &[&config.display().to_string(), "max_position_embeddings x head_dim", "RoPE"]);
}

/// heads x head_dim overflowed usize on main (a panic in debug builds).
#[test]
fn error_config_heads_times_head_dim_overflow() {
    let tmp = tempfile::tempdir().unwrap();
    let heads = serde_json::json!(1u64 << 33);
    let fields = [("num_attention_heads", heads.clone()), ("num_key_value_heads", heads), ("head_dim", serde_json::json!(1u64 << 32))];
    let config = hf_with_config(tmp.path(), &fields);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &[&config.display().to_string(), "num_attention_heads", "more than taylorcal accepts"]);
}

/// Sizes within their bounds that still describe far more weights than the files hold.
#[test]
fn error_config_larger_than_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let fields = [("num_hidden_layers", serde_json::json!(1000)), ("intermediate_size", serde_json::json!(1 << 20))];
    let config = hf_with_config(tmp.path(), &fields);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &[&config.display().to_string(), "weights, more than", "bytes of model files"]);
}

/// A metadata array of more values than the whole file may hold: on main it was read,
/// at 32 bytes of memory per byte of file.
#[test]
fn error_gguf_too_many_metadata_values() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("values.gguf");
    let n = (1usize << 24) + 1;
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // metadata entries
    b.extend(4u64.to_le_bytes());
    b.extend(b"many");
    b.extend(9u32.to_le_bytes()); // array
    b.extend(0u32.to_le_bytes()); // of u8
    b.extend((n as u64).to_le_bytes());
    b.resize(b.len() + n, 7);
    std::fs::write(&path, &b).unwrap();
    let msg = err_text(GgufFile::open(&path));
    assert_mentions(&msg, &["values.gguf", "metadata 'many'", "more than taylorcal accepts"]);
}

/// On main the second copy silently replaced the first.
#[test]
fn error_gguf_duplicate_tensor_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("dup.gguf");
    let mut list = gguf_tensor_list(17);
    list.push(("output_norm.weight".into(), vec![64], GgufTensorData::F32(vec![2.0; 64])));
    write_gguf(&path, &gguf_metadata(&tiny_config(Arch::Llama), "llama"), &list).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["dup.gguf", "tensor 'output_norm.weight' appears twice"]);

    // two spellings of one layer number name the same tensor
    let mut list = gguf_tensor_list(17);
    list.push(("blk.01.ffn_up.weight".into(), vec![96, 64], GgufTensorData::F32(vec![0.5; 96 * 64])));
    write_gguf(&path, &gguf_metadata(&tiny_config(Arch::Llama), "llama"), &list).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["dup.gguf", "'blk.1.ffn_up.weight' and 'blk.01.ffn_up.weight'", "model.layers.1.mlp.up_proj.weight"]);

    // metadata keys, likewise
    let mut meta = gguf_metadata(&tiny_config(Arch::Llama), "llama");
    meta.push(("llama.block_count".into(), GgufValue::U32(1)));
    write_gguf(&path, &meta, &gguf_tensor_list(17)).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["dup.gguf", "metadata 'llama.block_count' appears twice"]);
}

/// The byte offset of tensor `name`'s data offset field in a GGUF file's tensor infos.
fn gguf_offset_field(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend(name.as_bytes());
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims + 4
}

/// On main two tensors reading the same bytes were accepted.
#[test]
fn error_gguf_overlapping_tensor_data() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("overlap.gguf");
    write_gguf(&path, &gguf_metadata(&tiny_config(Arch::Llama), "llama"), &gguf_tensor_list(18)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let (gate, up) = (gguf_offset_field(&bytes, "blk.0.ffn_gate.weight"), gguf_offset_field(&bytes, "blk.0.ffn_up.weight"));
    // ffn_up's data starts 4 bytes into ffn_gate's (same shape: they overlap but for 4 bytes)
    let gate_offset = u64::from_le_bytes(bytes[gate..gate + 8].try_into().unwrap());
    bytes[up..up + 8].copy_from_slice(&(gate_offset + 4).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = err_text(load_model(&path));
    assert_mentions(&msg, &["overlap.gguf", "'blk.0.ffn_gate.weight' and 'blk.0.ffn_up.weight' overlap"]);
}

/// Refused on main too: the safetensors crate requires each tensor to start where the
/// previous one ends.
#[test]
fn error_safetensors_overlapping_tensor_data() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("overlap.safetensors");
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 24]);
    std::fs::write(&path, &bytes).unwrap();
    let msg = err_text(hf::read_safetensors(&path));
    assert_mentions(&msg, &["overlap.safetensors", "invalid offset"]);
}

/// The tiny Qwen3 model split over two shards named `shard_names`, holding every tensor
/// once and `extra` tensors in the second shard too, with an index naming them.
fn sharded_hf_dir(dir: &Path, shard_names: [&str; 2], extra: &[&str]) {
    let cfg = tiny_config(Arch::Qwen3);
    write_sharded_hf_dir(dir, &cfg, &random_tensors(&cfg, 19), shard_names, [Dtype::F32, Dtype::F32], extra);
}

/// On main the copy in the later shard silently replaced the other.
#[test]
fn error_hf_tensor_in_two_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    sharded_hf_dir(tmp.path(), ["a.safetensors", "b.safetensors"], &[name, "model.norm.weight"]);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(&msg, &["is stored twice", "a.safetensors", "b.safetensors"]);
    assert!(msg.contains(name) || msg.contains("model.norm.weight"), "{msg}");
}

/// On main the index could send the loader to any file.
#[test]
fn error_hf_shard_outside_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    sharded_hf_dir(&dir, ["a.safetensors", "b.safetensors"], &[]);
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::rename(dir.join("b.safetensors"), tmp.path().join("b.safetensors")).unwrap();
    let outside = tmp.path().join("b.safetensors").display().to_string();
    for name in ["../b.safetensors", "sub/../../b.safetensors", outside.as_str()] {
        std::fs::write(&index, text.replace("\"b.safetensors\"", &serde_json::Value::from(name).to_string())).unwrap();
        let msg = err_text(load_model(&dir));
        assert_mentions(&msg, &[&index.display().to_string(), &format!("shard '{name}' is not a file inside the model directory")]);
    }
}

/// The Hugging Face cache's layout: every file of a snapshot is a link into a blob store
/// outside it. Links are followed (only the names an index gives are confined).
#[cfg(unix)]
#[test]
fn hf_shards_linked_from_a_blob_store_load() {
    let tmp = tempfile::tempdir().unwrap();
    let (snapshot, blobs) = (tmp.path().join("snapshots/abc"), tmp.path().join("blobs"));
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir(&blobs).unwrap();
    sharded_hf_dir(&snapshot, ["a.safetensors", "b.safetensors"], &[]);
    for shard in ["a.safetensors", "b.safetensors"] {
        std::fs::rename(snapshot.join(shard), blobs.join(shard)).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(shard), snapshot.join(shard)).unwrap();
    }
    assert_eq!(load_model(&snapshot).unwrap().config.num_hidden_layers, 2);
}

// ---------------------------------------------------------------------------
// RoPE scaling from config.json and GGUF metadata (the formulas: tests/kernels/rope.rs)

/// Llama-3.2-3B's `rope_scaling`.
fn llama_3_2_scaling() -> RopeScaling {
    RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }
}

fn yarn(factor: f64, original: usize, beta_fast: f64, beta_slow: f64, attention_factor: f64) -> RopeScaling {
    let original_max_position_embeddings = original;
    RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, truncate: true }
}

/// The tiny llama's config.json with `rope_scaling` set to `v`, parsed.
fn hf_rope(v: serde_json::Value) -> anyhow::Result<Option<RopeScaling>> {
    let mut json = hf::hf_config_json(&tiny_config(Arch::Llama));
    json["rope_scaling"] = v;
    hf::parse_hf_config(&json.to_string(), Path::new("/x/config.json")).map(|c| c.rope_scaling)
}

#[test]
fn hf_config_rope_scaling_types() {
    use serde_json::json;
    // Llama-3.2-3B's config.json
    let llama3 = json!({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"});
    assert_eq!(hf_rope(llama3).unwrap(), Some(llama_3_2_scaling()));
    assert_eq!(hf_rope(json!({"rope_type": "linear", "factor": 4})).unwrap(), Some(RopeScaling::Linear { factor: 4.0 }));
    // Qwen2.5's documented long-context block, with the older `type` key: betas 32 / 1 and
    // attention factor 0.1 ln 4 + 1 by default
    let qwen = json!({"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"});
    assert_eq!(hf_rope(qwen).unwrap(), Some(yarn(4.0, 32768, 32.0, 1.0, 0.1 * 4f64.ln() + 1.0)));
    // given values win; without original_max_position_embeddings, max_position_embeddings (256)
    let given = json!({"rope_type": "yarn", "factor": 8.0, "beta_fast": 16, "beta_slow": 2, "attention_factor": 1.5});
    assert_eq!(hf_rope(given).unwrap(), Some(yarn(8.0, 256, 16.0, 2.0, 1.5)));
    let m = |k: f64| 0.1 * k * 8f64.ln() + 1.0;
    let deepseek = json!({"rope_type": "yarn", "factor": 8.0, "mscale": 0.5, "mscale_all_dim": 1.0, "truncate": false});
    let Some(RopeScaling::Yarn { attention_factor, truncate, .. }) = hf_rope(deepseek).unwrap() else { panic!("not yarn") };
    assert!((attention_factor - m(0.5) / m(1.0)).abs() < 1e-15 && !truncate);
    // default, null: plain RoPE
    assert_eq!(hf_rope(json!({"rope_type": "default"})).unwrap(), None);
    assert_eq!(hf_rope(serde_json::Value::Null).unwrap(), None);
    // transformers 5's `rope_parameters`, rope_theta inside
    let mut json = hf::hf_config_json(&tiny_config(Arch::Llama));
    let obj = json.as_object_mut().unwrap();
    obj.remove("rope_theta");
    obj.remove("rope_scaling");
    obj.insert("rope_parameters".into(), json!({"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}));
    let cfg = hf::parse_hf_config(&json.to_string(), Path::new("/x/config.json")).unwrap();
    assert_eq!((cfg.rope_theta, cfg.rope_scaling), (500000.0, Some(RopeScaling::Linear { factor: 2.0 })));
}

#[test]
fn error_hf_rope_scaling_unsupported_incomplete_or_invalid() {
    use serde_json::json;
    let tmp = tempfile::tempdir().unwrap();
    let config = hf_with_config(tmp.path(), &[("rope_scaling", json!({"rope_type": "dynamic", "factor": 2.0}))]);
    let msg = err_text(load_model(tmp.path()));
    assert_mentions(
        &msg,
        &[&config.display().to_string(), "unsupported rope_scaling.rope_type 'dynamic'", "default, linear, llama3, yarn"],
    );
    let msg = err_text(hf_rope(json!({"type": "su", "factor": 2.0})));
    assert_mentions(&msg, &["/x/config.json", "rope_scaling.type 'su'"]);
    // Phi-3's longrope (short and long factors differ) is refused
    let phi = json!({"rope_type": "longrope", "short_factor": vec![1.0; 8], "long_factor": vec![2.0; 8], "factor": 4.0});
    assert_mentions(&err_text(hf_rope(phi)), &["/x/config.json", "rope_scaling.rope_type 'longrope'", "short_factor and long_factor"]);
    let no_low = json!({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    assert_mentions(&err_text(hf_rope(no_low)), &["/x/config.json", "missing", "'rope_scaling.low_freq_factor'"]);
    assert_mentions(&err_text(hf_rope(json!({"rope_type": "yarn"}))), &["missing", "'rope_scaling.factor'"]);
    let text = err_text(hf_rope(json!({"rope_type": "linear", "factor": "four"})));
    assert_mentions(&text, &["'rope_scaling.factor'", "must be a number", "\"four\""]);
    assert_mentions(&err_text(hf_rope(json!("llama3"))), &["'rope_scaling'", "an object"]);
    let zero = json!({"rope_type": "linear", "factor": 0.0});
    assert_mentions(&err_text(hf_rope(zero)), &["/x/config.json", "rope_scaling.factor must be a positive number, got 0"]);
    let inverted = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0,
        "original_max_position_embeddings": 8192});
    assert_mentions(&err_text(hf_rope(inverted)), &["rope_scaling.high_freq_factor must be more than low_freq_factor"]);
}

/// Each scaling survives config.json writing and reading (per-frequency divisors as the
/// `longrope` form transformers applies identically).
#[test]
fn hf_dir_round_trip_keeps_rope_scaling() {
    let factors: Vec<f32> = (0..8).map(|i| 1.0 + i as f32 * 1.37).collect();
    for s in [
        llama_3_2_scaling(),
        RopeScaling::Linear { factor: 4.0 },
        yarn(4.0, 32768, 32.0, 1.0, 0.1 * 4f64.ln() + 1.0),
        RopeScaling::FreqFactors { factors },
    ] {
        let cfg = ModelConfig { rope_scaling: Some(s), ..tiny_config(Arch::Llama) };
        assert_eq!(hf_round_trip(&cfg, &random_tensors(&cfg, 3)).config, cfg);
    }
    let json = hf::hf_config_json(&ModelConfig { rope_scaling: Some(llama_3_2_scaling()), ..tiny_config(Arch::Llama) });
    assert_eq!(json["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(json["rope_scaling"]["original_max_position_embeddings"], 8192);
}

#[test]
fn gguf_rope_scaling_metadata_and_freq_factors() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, u, s) = (GgufValue::F32, GgufValue::U32, |v: &str| GgufValue::String(v.into()));
    let scaling = |keys: &[(&str, GgufValue)], tensors| load_model(&gguf_with(tmp.path(), keys, tensors)).unwrap().config.rope_scaling;
    assert_eq!(scaling(&[], vec![]), None);
    assert_eq!(scaling(&[("rope.scaling.type", s("none")), ("rope.scaling.factor", f(4.0))], vec![]), None);
    let linear = Some(RopeScaling::Linear { factor: 4.0 });
    assert_eq!(scaling(&[("rope.scaling.type", s("linear")), ("rope.scaling.factor", f(4.0))], vec![]), linear);
    // no type: linear, as llama.cpp reads it; the older key name; factor 1: none
    assert_eq!(scaling(&[("rope.scale_linear", f(4.0))], vec![]), linear);
    assert_eq!(scaling(&[("rope.scaling.factor", f(1.0))], vec![]), None);
    // what llama.cpp's converter writes for Qwen2.5's yarn block, then with every key
    let qwen = [("rope.scaling.type", s("yarn")), ("rope.scaling.factor", f(4.0)), ("rope.scaling.original_context_length", u(32768))];
    assert_eq!(scaling(&qwen, vec![]), Some(yarn(4.0, 32768, 32.0, 1.0, 0.1 * 4f64.ln() + 1.0)));
    let mut all = qwen.to_vec();
    all.extend([
        ("rope.scaling.yarn_beta_fast", f(16.0)),
        ("rope.scaling.yarn_beta_slow", f(2.0)),
        ("rope.scaling.yarn_attn_factor", f(1.5)),
    ]);
    assert_eq!(scaling(&all, vec![]), Some(yarn(4.0, 32768, 16.0, 2.0, 1.5)));
    // Llama 3.x as llama.cpp converts it: no scaling metadata, a rope_freqs.weight [head_dim / 2]
    let factors: Vec<f32> = (0..8).map(|i| 1.0 + i as f32 * 4.4).collect();
    let freqs = |v: &[f32]| vec![("rope_freqs.weight".to_string(), vec![v.len()], GgufTensorData::F32(v.to_vec()))];
    assert_eq!(scaling(&[], freqs(&factors)), Some(RopeScaling::FreqFactors { factors: factors.clone() }));

    let error = |keys: &[(&str, GgufValue)], tensors| {
        let path = gguf_with(tmp.path(), keys, tensors);
        (path.display().to_string(), err_text(load_model(&path)))
    };
    let (path, msg) = error(&[("rope.scaling.type", s("longrope"))], vec![]);
    assert_mentions(&msg, &[&path, "unsupported RoPE scaling 'longrope'", "llama.rope.scaling.type", "none, linear, yarn"]);
    let (path, msg) = error(&[("rope.scaling.type", s("yarn"))], vec![]);
    assert_mentions(&msg, &[&path, "llama.rope.scaling.factor", "missing"]);
    let (path, msg) = error(&[], freqs(&factors[..6]));
    assert_mentions(&msg, &[&path, "rope_freqs.weight has 6 values, expected head_dim / 2 = 8"]);
    let (_, msg) = error(&[], freqs(&[1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]));
    assert_mentions(&msg, &["rope_freqs.weight holds 0", "positive"]);
    let (_, msg) = error(&[("rope.scaling.type", s("yarn")), ("rope.scaling.factor", f(4.0))], freqs(&factors));
    assert_mentions(&msg, &["rope_freqs.weight tensor together with yarn RoPE scaling is not supported"]);
    let (_, msg) = error(&qwen.iter().cloned().chain([("rope.scaling.yarn_beta_fast", f(-1.0))]).collect::<Vec<_>>(), vec![]);
    assert_mentions(&msg, &["llama.rope.scaling.yarn_beta_fast", "must be a positive number, got -1"]);
}

/// Configurations and checkpoints written before `rope_scaling` existed still load; a
/// checkpoint keeps the teacher's scaling.
#[test]
fn configs_without_rope_scaling_still_load_and_checkpoints_keep_it() {
    let cfg = tiny_config(Arch::Qwen2);
    let mut v = serde_json::to_value(&cfg).unwrap();
    assert!(v.get("rope_scaling").is_none(), "none is not written");
    v.as_object_mut().unwrap().remove("rope_scaling");
    assert_eq!(serde_json::from_value::<ModelConfig>(v).unwrap(), cfg);
    let scaled = ModelConfig { rope_scaling: Some(llama_3_2_scaling()), ..cfg };
    assert_eq!(serde_json::from_value::<ModelConfig>(serde_json::to_value(&scaled).unwrap()).unwrap(), scaled);

    let (mut hybrid, teacher) = tiny_hybrid(vec![1], 42);
    let tensors = init_student(&hybrid, &teacher, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    hybrid.base.rope_scaling = Some(yarn(4.0, 64, 32.0, 1.0, 1.25));
    checkpoint::save_checkpoint(&out, &bare_checkpoint(hybrid.clone(), tensors.clone(), serde_json::json!({}))).unwrap();
    assert_eq!(checkpoint::load_checkpoint(&out).unwrap().config, hybrid);
    // an older checkpoint's config.json has no rope_scaling
    let config = out.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("rope_scaling");
    std::fs::write(&config, json.to_string()).unwrap();
    hybrid.base.rope_scaling = None;
    assert_eq!(checkpoint::load_checkpoint(&out).unwrap().config, hybrid);
}

// ---------------------------------------------------------------------------
// the hybrid checkpoint format

#[test]
fn checkpoint_round_trips() {
    let (cfg, teacher) = tiny_hybrid(vec![1], 41);
    let tensors = init_student(&cfg, &teacher, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let ck = bare_checkpoint(cfg.clone(), tensors.clone(), serde_json::json!({"strategy": "naive"}));
    checkpoint::save_checkpoint(&out, &ck).unwrap();
    assert!(checkpoint::is_checkpoint(&out));
    let back = checkpoint::load_checkpoint(&out).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.tensors, tensors);
    assert_eq!(back.report["strategy"], "naive");
    let text = std::fs::read_to_string(out.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["model_type"], "taylorcal_hybrid");
    assert_eq!(v["attn_layers"], serde_json::json!([1]));
    for k in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "gdn_use_silu",
        "gdn_norm_eps",
        "gdn_chunk_size",
    ] {
        assert!(!v[k].is_null(), "config.json lacks {k}");
    }
}

#[test]
fn interrupted_write_leaves_no_half_checkpoint() {
    let (cfg, teacher) = tiny_hybrid(vec![1], 41);
    let tensors = init_student(&cfg, &teacher, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let ck = bare_checkpoint(cfg.clone(), tensors, serde_json::json!({"v": 1}));
    // first write fails after the files were written, before publishing: nothing appears
    let r = checkpoint::save_checkpoint_with(&out, &ck, || anyhow::bail!("simulated crash"));
    assert!(r.is_err());
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary files left behind");
    // a good checkpoint, then a failed overwrite: the old one survives intact
    checkpoint::save_checkpoint(&out, &ck).unwrap();
    let ck2 = Checkpoint { report: serde_json::json!({"v": 2}), ..ck };
    assert!(checkpoint::save_checkpoint_with(&out, &ck2, || anyhow::bail!("simulated crash")).is_err());
    assert_eq!(checkpoint::load_checkpoint(&out).unwrap().report["v"], 1);
    checkpoint::save_checkpoint(&out, &ck2).unwrap();
    assert_eq!(checkpoint::load_checkpoint(&out).unwrap().report["v"], 2);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn bad_kept_layer_is_a_clear_error() {
    let (cfg, _) = tiny_hybrid(vec![1], 41);
    let e = HybridConfig::new(cfg.base.clone(), vec![0, 9]).unwrap_err().to_string();
    assert!(e.contains("kept layer 9") && e.contains("2 layers"), "{e}");
}

// ---------------------------------------------------------------------------------------
// K-quants and Q5_0 / Q5_1: blocks packed here from known codes, scales and minimums the
// way ggml's quantize_row_*_ref lays them out (a packing written apart from the loader's
// unpacking), dequantised by the loader, and compared with the values the codes stand
// for, computed in f64.

/// Known codes for a block: `n` values below `levels`, varied and covering both ends.
fn codes(r: &mut StdRng, n: usize, levels: u32) -> Vec<u32> {
    let mut c: Vec<u32> = (0..n).map(|_| r.random_range(0..levels)).collect();
    (c[0], c[1]) = (0, levels - 1);
    c
}

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn f16_round(v: f32) -> f64 {
    f16::from_f32(v).to_f64()
}

/// The loader's values against `want` (f64): f32 rounding of products of a few terms.
fn check_block(what: &str, ty: GgmlType, bytes: &[u8], want: &[f64]) {
    let got = gguf::dequantize(ty, bytes, want.len()).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(((*g as f64) - w).abs() <= 1e-6 * scale, "{what}: element {i}: {g} != {w}");
    }
}

#[test]
fn gguf_q5_0_and_q5_1_decode_their_codes() {
    let mut r = StdRng::seed_from_u64(90);
    for with_min in [false, true] {
        let mut bytes = vec![];
        let mut want = vec![];
        for _ in 0..3 {
            let q = codes(&mut r, 32, 32);
            let (d, m) = (r.random_range(0.01..0.2f32), r.random_range(-1.0..1.0f32));
            bytes.extend(f16_bytes(d));
            if with_min {
                bytes.extend(f16_bytes(m));
            }
            // qh: bit j holds the fifth bit of element j (elements 0..32)
            let qh: u32 = (0..32).map(|j| (q[j] >> 4) << j).sum();
            bytes.extend(qh.to_le_bytes());
            bytes.extend((0..16).map(|j| ((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4)) as u8));
            let (d, m) = (f16_round(d), f16_round(m));
            want.extend(q.iter().map(|&c| if with_min { c as f64 * d + m } else { (c as f64 - 16.0) * d }));
        }
        let ty = if with_min { GgmlType::Q5_1 } else { GgmlType::Q5_0 };
        check_block(&ty.name(), ty, &bytes, &want);
    }
}

#[test]
fn gguf_q2_k_and_q3_k_decode_their_codes() {
    let mut r = StdRng::seed_from_u64(91);
    // element e of a super-block: 2 low bits in byte 32 (e / 128) + e % 32, bits 2 ((e % 128) / 32)
    let qs_of = |q: &[u32]| -> Vec<u8> {
        let mut qs = vec![0u8; 64];
        for (e, &c) in q.iter().enumerate() {
            qs[32 * (e / 128) + e % 32] |= ((c & 3) as u8) << (2 * ((e % 128) / 32));
        }
        qs
    };
    let (mut b2, mut w2, mut b3, mut w3) = (vec![], vec![], vec![], vec![]);
    for _ in 0..2 {
        // Q2_K: 16 groups of 16, a 4-bit scale and min each
        let q = codes(&mut r, 256, 4);
        let (sc, mn) = (codes(&mut r, 16, 16), codes(&mut r, 16, 16));
        let (d, dmin) = (r.random_range(0.01..0.1f32), r.random_range(0.01..0.1f32));
        b2.extend((0..16).map(|j| (sc[j] | (mn[j] << 4)) as u8));
        b2.extend(qs_of(&q));
        b2.extend(f16_bytes(d));
        b2.extend(f16_bytes(dmin));
        let (d, dmin) = (f16_round(d), f16_round(dmin));
        w2.extend((0..256).map(|e| d * sc[e / 16] as f64 * q[e] as f64 - dmin * mn[e / 16] as f64));
        // Q3_K: 3-bit codes (value code - 4; high bit in hmask[e % 32], bit e / 32) and
        // 6-bit scales (value scale - 32) packed as ggml's quantize_row_q3_K_ref does
        let q = codes(&mut r, 256, 8);
        let s = codes(&mut r, 16, 64);
        let d = r.random_range(0.01..0.1f32);
        let mut hm = vec![0u8; 32];
        for (e, &c) in q.iter().enumerate() {
            hm[e % 32] |= ((c >> 2) as u8) << (e / 32);
        }
        let mut packed = [0u8; 12];
        for (j, &l) in s.iter().enumerate() {
            if j < 8 {
                packed[j] = (l & 0xF) as u8;
            } else {
                packed[j - 8] |= ((l & 0xF) << 4) as u8;
            }
            packed[j % 4 + 8] |= ((l >> 4) << (2 * (j / 4))) as u8;
        }
        b3.extend(hm);
        b3.extend(qs_of(&q));
        b3.extend(packed);
        b3.extend(f16_bytes(d));
        let d = f16_round(d);
        w3.extend((0..256).map(|e| d * (s[e / 16] as f64 - 32.0) * (q[e] as f64 - 4.0)));
    }
    check_block("Q2_K", GgmlType::Q2K, &b2, &w2);
    check_block("Q3_K", GgmlType::Q3K, &b3, &w3);
}

/// A Q4_K (Q5_K with `fifth`) super-block from random codes, scales and minimums, packed as
/// ggml's quantize_row_q4_K_ref / q5_K_ref lay them out (8 groups of 32, a 6-bit scale and
/// min each), and the 256 values it stands for.
fn k45_block(r: &mut StdRng, fifth: bool) -> (Vec<u8>, Vec<f64>) {
    let q = codes(r, 256, if fifth { 32 } else { 16 });
    let (sc, mn) = (codes(r, 8, 64), codes(r, 8, 64));
    let (d, dmin) = (r.random_range(0.001..0.01f32), r.random_range(0.001..0.01f32));
    let mut scales = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j] as u8, mn[j] as u8);
        if j < 4 {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            scales[j - 4] |= (ls >> 4) << 6;
            scales[j] |= (lm >> 4) << 6;
        }
    }
    let mut bytes = vec![];
    bytes.extend(f16_bytes(d));
    bytes.extend(f16_bytes(dmin));
    bytes.extend(scales);
    let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 32]);
    for g in 0..4 {
        for l in 0..32 {
            let (a, b) = (q[64 * g + l], q[64 * g + l + 32]);
            ql[32 * g + l] = ((a & 0xF) | ((b & 0xF) << 4)) as u8;
            qh[l] |= (((a >> 4) << (2 * g)) | ((b >> 4) << (2 * g + 1))) as u8;
        }
    }
    if fifth {
        bytes.extend(qh);
    }
    bytes.extend(ql);
    let (d, dmin) = (f16_round(d), f16_round(dmin));
    (bytes, (0..256).map(|e| d * sc[e / 32] as f64 * q[e] as f64 - dmin * mn[e / 32] as f64).collect())
}

#[test]
fn gguf_q4_k_q5_k_and_q6_k_decode_their_codes() {
    let mut r = StdRng::seed_from_u64(92);
    for fifth in [false, true] {
        let (mut bytes, mut want) = (vec![], vec![]);
        for _ in 0..2 {
            let (b, w) = k45_block(&mut r, fifth);
            bytes.extend(b);
            want.extend(w);
        }
        let ty = if fifth { GgmlType::Q5K } else { GgmlType::Q4K };
        check_block(&ty.name(), ty, &bytes, &want);
    }
    // Q6_K: 6-bit codes (value code - 32), 16 signed 8-bit scales
    let (mut bytes, mut want) = (vec![], vec![]);
    for _ in 0..2 {
        let q = codes(&mut r, 256, 64);
        let sc: Vec<i8> = (0..16).map(|j| if j == 0 { -128 } else { r.random_range(-128..=127i32) as i8 }).collect();
        let d = r.random_range(0.0001..0.001f32);
        let (mut ql, mut qh) = (vec![0u8; 128], vec![0u8; 64]);
        for half in 0..2 {
            let (j, ql, qh) = (128 * half, &mut ql[64 * half..], &mut qh[32 * half..]);
            for l in 0..32 {
                let c = |k: usize| q[j + l + k];
                ql[l] = ((c(0) & 0xF) | ((c(64) & 0xF) << 4)) as u8;
                ql[l + 32] = ((c(32) & 0xF) | ((c(96) & 0xF) << 4)) as u8;
                qh[l] = ((c(0) >> 4) | ((c(32) >> 4) << 2) | ((c(64) >> 4) << 4) | ((c(96) >> 4) << 6)) as u8;
            }
        }
        bytes.extend(ql);
        bytes.extend(qh);
        bytes.extend(sc.iter().map(|&s| s as u8));
        bytes.extend(f16_bytes(d));
        let d = f16_round(d);
        want.extend((0..256).map(|e| d * sc[e / 16] as f64 * (q[e] as f64 - 32.0)));
    }
    check_block("Q6_K", GgmlType::Q6K, &bytes, &want);
}

#[test]
fn gguf_k_quant_sizes_are_checked() {
    // a K-quant row must be whole super-blocks of 256, and the data exactly their bytes
    let e = gguf::dequantize(GgmlType::Q4K, &[0u8; 144], 128).unwrap_err().to_string();
    assert!(e.contains("256"), "{e}");
    let e = gguf::dequantize(GgmlType::Q6K, &[0u8; 200], 256).unwrap_err().to_string();
    assert!(e.contains("210") && e.contains("200"), "{e}");
}
