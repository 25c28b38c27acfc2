//! Tiny random Llama-family models for tests: configs, weights, and GGUF files written
//! the way llama.cpp's converter writes them (an independent Q/K permutation).
#![allow(dead_code)]
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use taylorcal::io::gguf::{write_gguf, GgufTensorData, GgufValue};
use taylorcal::io::hf::save_hf_dir;
use taylorcal::io::weights::expected_tensors;
use taylorcal::io::{load_model, Arch, HostTensor, ModelConfig, ModelFiles};

pub fn tiny_config(arch: Arch) -> ModelConfig {
    ModelConfig {
        arch,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        intermediate_size: 96,
        vocab_size: 100,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        tie_word_embeddings: false,
        attention_bias: arch == Arch::Qwen2,
        qk_norm: arch == Arch::Qwen3,
        max_position_embeddings: 256,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        rope_scaling: None,
    }
}

pub fn random_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
}

/// Every tensor the config implies, random (norm weights near 1, like real ones).
pub fn random_tensors(cfg: &ModelConfig, seed: u64) -> HashMap<String, HostTensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    expected_tensors(cfg)
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            let mut data = random_vec(&mut rng, n, 0.5);
            if name.contains("norm") {
                data.iter_mut().for_each(|x| *x = 1.0 + 0.2 * *x);
            }
            (name, HostTensor::new(shape, data))
        })
        .collect()
}

/// `tensors` saved as a Hugging Face directory (in a temporary directory) and loaded back,
/// as the CLI would load a teacher.
pub fn hf_round_trip(cfg: &ModelConfig, tensors: &HashMap<String, HostTensor>) -> ModelFiles {
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(dir.path(), cfg, tensors, None).unwrap();
    load_model(dir.path()).unwrap()
}

/// Independent inverse of the loader's name map (Hugging Face -> GGUF).
pub fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (base, suffix) = rest.rsplit_once('.').unwrap();
    let g = match base {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("no GGUF name for {other}"),
    };
    format!("blk.{layer}.{g}.{suffix}")
}

/// llama.cpp's converter permutation, written as numpy does it:
/// `w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(w.shape)`, i.e.
/// out[h, i, s, c] = in[h, s, i, c] with out indexed (n_head, hd/2, 2, cols).
pub fn numpy_permute<T: Copy>(w: &[T], n_head: usize, hd: usize, cols: usize) -> Vec<T> {
    let half = hd / 2;
    let mut out = w.to_vec();
    for h in 0..n_head {
        for i in 0..half {
            for s in 0..2 {
                for c in 0..cols {
                    out[((h * half + i) * 2 + s) * cols + c] = w[((h * 2 + s) * half + i) * cols + c];
                }
            }
        }
    }
    out
}

pub fn gguf_metadata(cfg: &ModelConfig, arch: &str) -> Vec<(String, GgufValue)> {
    let u = |v: usize| GgufValue::U32(v as u32);
    vec![
        ("general.architecture".into(), GgufValue::String(arch.into())),
        (format!("{arch}.block_count"), u(cfg.num_hidden_layers)),
        (format!("{arch}.context_length"), u(cfg.max_position_embeddings)),
        (format!("{arch}.embedding_length"), u(cfg.hidden_size)),
        (format!("{arch}.feed_forward_length"), u(cfg.intermediate_size)),
        (format!("{arch}.attention.head_count"), u(cfg.num_attention_heads)),
        (format!("{arch}.attention.head_count_kv"), u(cfg.num_key_value_heads)),
        (format!("{arch}.rope.freq_base"), GgufValue::F32(cfg.rope_theta)),
        (format!("{arch}.attention.layer_norm_rms_epsilon"), GgufValue::F32(cfg.rms_norm_eps)),
        (format!("{arch}.vocab_size"), u(cfg.vocab_size)),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
    ]
}

/// Writes `tensors` (Hugging Face names and order) as a GGUF file the way llama.cpp's
/// converter would: GGUF names, Q/K rows permuted for llama, 1-D tensors in F32.
pub fn write_model_gguf(
    path: &Path,
    cfg: &ModelConfig,
    arch: &str,
    tensors: &HashMap<String, HostTensor>,
    quant: fn(Vec<f32>) -> GgufTensorData,
    extra_metadata: Vec<(String, GgufValue)>,
) {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let list: Vec<_> = names
        .into_iter()
        .map(|name| {
            let t = &tensors[name];
            let mut data = t.data.clone();
            if arch == "llama" {
                let cols = if t.shape.len() == 2 { t.shape[1] } else { 1 };
                if name.contains("q_proj") {
                    data = numpy_permute(&data, cfg.num_attention_heads, cfg.head_dim, cols);
                } else if name.contains("k_proj") {
                    data = numpy_permute(&data, cfg.num_key_value_heads, cfg.head_dim, cols);
                }
            }
            let encoded = if t.shape.len() == 1 { GgufTensorData::F32(data) } else { quant(data) };
            (gguf_name(name), t.shape.clone(), encoded)
        })
        .collect();
    let mut metadata = gguf_metadata(cfg, arch);
    metadata.extend(extra_metadata);
    write_gguf(path, &metadata, &list).unwrap();
}

/// `tensors` as a list of f32 GGUF tensors (GGUF names, sorted, rows as given).
pub fn gguf_f32_list(tensors: &HashMap<String, HostTensor>) -> Vec<(String, Vec<usize>, GgufTensorData)> {
    let mut list: Vec<_> = tensors.iter().map(|(n, t)| (gguf_name(n), t.shape.clone(), GgufTensorData::F32(t.data.clone()))).collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list
}

/// Writes `tensors` as a safetensors file of `dtype` (f32, f16 or bf16).
pub fn write_safetensors_as(path: &Path, tensors: &HashMap<String, HostTensor>, dtype: safetensors::Dtype) {
    use safetensors::Dtype;
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes = match dtype {
                Dtype::F16 => t.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                Dtype::BF16 => t.data.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                _ => t.data.iter().flat_map(|&v| v.to_le_bytes()).collect(),
            };
            (n.clone(), t.shape.clone(), bytes)
        })
        .collect();
    let views = encoded.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap()));
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// `dir` as a Hugging Face directory of `cfg` whose `tensors` lie in two shards named
/// `shards` (alternately, in name order), written as `dtypes`, with the index naming them;
/// `extra` tensors go into the second shard as well (the index does not name them there).
pub fn write_sharded_hf_dir(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &HashMap<String, HostTensor>,
    shards: [&str; 2],
    dtypes: [safetensors::Dtype; 2],
    extra: &[&str],
) {
    save_hf_dir(dir, cfg, &HashMap::new(), None).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let mut parts = [HashMap::new(), HashMap::new()];
    let mut weight_map = serde_json::Map::new();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        parts[i % 2].insert(name.clone(), tensors[name].clone());
        weight_map.insert(name.clone(), shards[i % 2].into());
    }
    for name in extra {
        parts[1].insert(name.to_string(), tensors[*name].clone());
    }
    for i in 0..2 {
        write_safetensors_as(&dir.join(shards[i]), &parts[i], dtypes[i]);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// Vocabulary size of the tiny byte-level tokenizer below.
pub const TINY_VOCAB_WITH_TOKENIZER: usize = 265;

pub fn tiny_tokenizer_metadata() -> Vec<(String, GgufValue)> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from).to_vec();
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let merges = ["h e", "Ġ t", "Ġt he", "l l", "1 2", "o r"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    let types: Vec<GgufValue> = (0..tokens.len()).map(|i| GgufValue::I32(if i < 3 { 3 } else { 1 })).collect();
    let strings = |v: Vec<String>| GgufValue::Array(v.into_iter().map(GgufValue::String).collect());
    vec![
        ("tokenizer.ggml.model".into(), GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), strings(tokens)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(merges.map(String::from).to_vec())),
    ]
}

pub fn tiny_gguf(dir: &Path, with_tokenizer: bool) -> PathBuf {
    tiny_gguf_named(&dir.join("tiny.gguf"), tiny_config(Arch::Llama), with_tokenizer)
}

/// As [`tiny_gguf`] with the tokenizer and `layers` layers, written to
/// `dir/tiny-{layers}-layers.gguf` (a conversion of several layers).
pub fn tiny_gguf_layers(dir: &Path, layers: usize) -> PathBuf {
    let cfg = ModelConfig { num_hidden_layers: layers, ..tiny_config(Arch::Llama) };
    tiny_gguf_named(&dir.join(format!("tiny-{layers}-layers.gguf")), cfg, true)
}

fn tiny_gguf_named(path: &Path, mut cfg: ModelConfig, with_tokenizer: bool) -> PathBuf {
    let mut extra = Vec::new();
    if with_tokenizer {
        cfg.vocab_size = TINY_VOCAB_WITH_TOKENIZER;
        extra = tiny_tokenizer_metadata();
    }
    write_model_gguf(path, &cfg, "llama", &random_tensors(&cfg, 13), GgufTensorData::Q8_0, extra);
    path.to_path_buf()
}

/// The byte-level tokenizer of [`tiny_tokenizer_metadata`] ([`TINY_VOCAB_WITH_TOKENIZER`] ids).
pub fn tiny_tokenizer() -> tokenizers::Tokenizer {
    let meta: HashMap<String, GgufValue> = tiny_tokenizer_metadata().into_iter().collect();
    taylorcal::io::gguf::tokenizer_from_gguf(&meta, "tiny").unwrap()
}

/// `dir/mismatched`: a Hugging Face directory whose model has 100 embedding rows but whose
/// tokenizer.json is the tiny tokenizer of 265 ids (spaces, line breaks and merges are ids
/// past 100; the letters a..z other than e, h, l, o and r give ids below it).
pub fn mismatched_hf_dir(dir: &Path) -> PathBuf {
    let cfg = tiny_config(Arch::Llama);
    assert!(cfg.vocab_size < TINY_VOCAB_WITH_TOKENIZER);
    let out = dir.join("mismatched");
    save_hf_dir(&out, &cfg, &random_tensors(&cfg, 17), Some(&tiny_tokenizer())).unwrap();
    out
}
