//! Loads a GGUF model (default: the SmolLM2-135M-Instruct teacher, from the model cache as
//! the CLI finds it, fetched there on first use) and prints what the loader made of it:
//! config, tensors, a tokenisation round trip and weight statistics.
//!
//!     cargo run --example inspect_gguf -- [smollm2 | path/to/model.gguf]
use anyhow::{anyhow, Result};
use taylorcal::io::gguf::permute_rows;
use taylorcal::io::{fetch, load_model, HostTensor, ModelFiles};

/// The CLI's environment reader (cache directory); this program uses part of it.
#[allow(dead_code)]
#[path = "../src/cli/env.rs"]
mod env;

const SAMPLE: &str = "Hello world! 12345 The quick brown fox.";

/// (min, mean, max) of a slice.
fn stats(x: &[f32]) -> (f32, f32, f32) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    (min, x.iter().sum::<f32>() / x.len() as f32, max)
}

fn row_norms(t: &HostTensor) -> Vec<f32> {
    let cols = t.shape[1];
    t.data.chunks(cols).map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).collect()
}

fn main() -> Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| fetch::DEFAULT_TEACHER.into());
    let path = fetch::resolve_model(&spec, &env::cache_dir_from_env())?;
    let start = std::time::Instant::now();
    let model = load_model(&path)?;
    println!("loaded {} in {:.2?}", model.source, start.elapsed());
    println!("{:#?}", model.config);

    let mut names: Vec<&String> = model.tensors.keys().collect();
    names.sort_by_key(|n| (n.starts_with("model.layers.") as u8, n.to_string()));
    let params: usize = model.tensors.values().map(HostTensor::numel).sum();
    println!("{} tensors, {params} parameters; shapes (layer 0 shown, other layers alike):", names.len());
    for n in names.iter().filter(|n| !n.starts_with("model.layers.") || n.starts_with("model.layers.0.")) {
        println!("  {n:50} {:?}", model.tensors[*n].shape);
    }

    let tok = model.tokenizer.as_ref().ok_or_else(|| anyhow!("no tokenizer in {}", path.display()))?;
    let enc = tok.encode(SAMPLE, false).map_err(|e| anyhow!("encode: {e}"))?;
    let decoded = tok.decode(enc.get_ids(), false).map_err(|e| anyhow!("decode: {e}"))?;
    println!("text:    {SAMPLE:?}");
    println!("ids:     {:?}", enc.get_ids());
    println!("tokens:  {:?}", enc.get_tokens());
    println!("decoded: {decoded:?}  (round trip {})", if decoded == SAMPLE { "ok" } else { "MISMATCH" });
    let chat = tok.encode("<|im_start|>user\nHi<|im_end|>", false).map_err(|e| anyhow!("encode: {e}"))?;
    println!("chat ids: {:?}", chat.get_ids());

    println!("weight statistics (min / mean / max):");
    let embed = &model.tensors["model.embed_tokens.weight"];
    println!("  embed row L2 norms           {:?}", stats(&row_norms(embed)));
    for l in [0, model.config.num_hidden_layers / 2, model.config.num_hidden_layers - 1] {
        for w in ["input_layernorm", "post_attention_layernorm"] {
            let t = &model.tensors[&format!("model.layers.{l}.{w}.weight")];
            println!("  layer {l:2} {w:26} {:?}", stats(&t.data));
        }
        for w in ["self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"] {
            let t = &model.tensors[&format!("model.layers.{l}.{w}.weight")];
            println!("  layer {l:2} {w:18} row norms {:?}", stats(&row_norms(t)));
        }
    }
    println!("  final norm                   {:?}", stats(&model.tensors["model.norm.weight"].data));
    rope_pair_check(&model);
    Ok(())
}

/// Mean relative difference of the row norms of rows that RoPE rotates together
/// (rotate-half pairs i, i + hd/2 within a head). Trained weights give both rows of a pair
/// similar norms, so this is small when Q/K are in Hugging Face order and larger when the
/// rows are still in llama.cpp's interleaved order.
fn pair_mismatch(norms: &[f32], hd: usize) -> f32 {
    let pairs: Vec<f32> =
        norms.chunks(hd).flat_map(|h| (0..hd / 2).map(move |i| (h[i] - h[i + hd / 2]).abs() / (h[i] + h[i + hd / 2]))).collect();
    pairs.iter().sum::<f32>() / pairs.len() as f32
}

fn rope_pair_check(model: &ModelFiles) {
    let cfg = &model.config;
    println!("RoPE pair row-norm mismatch (small = rows paired correctly), mean over layers:");
    for (proj, heads) in [("q_proj", cfg.num_attention_heads), ("k_proj", cfg.num_key_value_heads)] {
        let (mut as_loaded, mut if_not_unpermuted) = (0.0, 0.0);
        for l in 0..cfg.num_hidden_layers {
            let t = &model.tensors[&format!("model.layers.{l}.self_attn.{proj}.weight")];
            let gguf_order = HostTensor::new(t.shape.clone(), permute_rows(&t.data, heads, cfg.head_dim, t.shape[1]));
            as_loaded += pair_mismatch(&row_norms(t), cfg.head_dim);
            if_not_unpermuted += pair_mismatch(&row_norms(&gguf_order), cfg.head_dim);
        }
        let n = cfg.num_hidden_layers as f32;
        println!("  {proj}: HF order (as loaded) {:.3}   GGUF order (not un-permuted) {:.3}", as_loaded / n, if_not_unpermuted / n);
    }
}
