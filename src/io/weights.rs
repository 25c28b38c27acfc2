//! Host-side weights: every loader returns tensors under Hugging Face Llama names,
//! dequantised to f32, rows in Hugging Face order (GGUF's permuted Q/K rows undone).
//! Also what every loader shares: the config checks, the tensor set a config implies and
//! its validation, and read-only file maps.
use super::config::ModelConfig;
use anyhow::{bail, Context as _, Result};
use std::collections::HashMap;
use std::path::Path;

/// A dense row-major f32 tensor on the host. `shape` is in PyTorch order:
/// a linear layer's weight is `[out_features, in_features]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape/data mismatch");
        Self { shape, data }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Everything a loader produces: config, tensors by Hugging Face name, tokenizer if the source has one.
pub struct ModelFiles {
    pub config: ModelConfig,
    pub tensors: HashMap<String, HostTensor>,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// Human-readable description of where it came from (path, format).
    pub source: String,
}

/// `hidden / heads`, or 0 when `heads` is 0 (which `check_config` then reports).
pub(crate) fn default_head_dim(hidden: usize, heads: usize) -> usize {
    hidden.checked_div(heads).unwrap_or(0)
}

/// The sizes a model file declares, by field name, each with the largest value taylorcal
/// accepts. They are checked before anything is sized from them: a corrupt or hostile file
/// gets an error, never an allocation that aborts the process. Each bound is far above
/// every released model of the supported families (the largest, Llama 3.1 405B: 126
/// layers, hidden 16384, 128 heads, FFN 53248; vocabularies up to about 262k; contexts up
/// to Qwen2.5-1M's 1,010,000 positions).
fn bounded_sizes(cfg: &ModelConfig) -> [(&'static str, usize, usize); 8] {
    [
        ("hidden_size", cfg.hidden_size, 1 << 16),
        ("num_hidden_layers", cfg.num_hidden_layers, 1 << 10),
        ("num_attention_heads", cfg.num_attention_heads, 1 << 10),
        ("num_key_value_heads", cfg.num_key_value_heads, 1 << 10),
        ("head_dim", cfg.head_dim, 1 << 10),
        ("intermediate_size", cfg.intermediate_size, 1 << 20),
        ("vocab_size", cfg.vocab_size, 1 << 24),
        ("max_position_embeddings", cfg.max_position_embeddings, 1 << 22),
    ]
}

/// The decoder's RoPE tables hold `max_position_embeddings x head_dim` f32 values (cos and
/// sin, half the dims each, computed in f64 first); this caps them at 1 GiB.
pub const MAX_ROPE_TABLE: usize = 1 << 28;

/// Rejects configurations the teacher forward cannot run (zero sizes, sizes past their
/// bounds, heads that do not group, odd head_dim for RoPE, non-positive epsilon). `field`
/// turns a config field's name into the one the file uses (GGUF metadata keys).
pub fn check_config_fields(cfg: &ModelConfig, source: &str, field: &dyn Fn(&str) -> String) -> Result<()> {
    for (name, v, max) in bounded_sizes(cfg) {
        // max_position_embeddings may be 0 (as before): the decoder then builds one position
        if v == 0 && name != "max_position_embeddings" {
            bail!("{source}: {} must be positive, got 0", field(name));
        }
        if v > max {
            bail!("{source}: {} is {v}, more than taylorcal accepts ({max})", field(name));
        }
    }
    if cfg.max_position_embeddings.checked_mul(cfg.head_dim).is_none_or(|n| n > MAX_ROPE_TABLE) {
        bail!(
            "{source}: {} x {} ({} x {}) is more than taylorcal accepts for its RoPE tables ({MAX_ROPE_TABLE})",
            field("max_position_embeddings"),
            field("head_dim"),
            cfg.max_position_embeddings,
            cfg.head_dim
        );
    }
    if !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads) {
        bail!(
            "{source}: {} ({}) must be a multiple of {} ({})",
            field("num_attention_heads"),
            cfg.num_attention_heads,
            field("num_key_value_heads"),
            cfg.num_key_value_heads
        );
    }
    if !cfg.head_dim.is_multiple_of(2) {
        bail!("{source}: {} must be even for RoPE, got {}", field("head_dim"), cfg.head_dim);
    }
    if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite()) {
        bail!("{source}: {} must be a positive number, got {}", field("rms_norm_eps"), cfg.rms_norm_eps);
    }
    if !(cfg.rope_theta > 0.0 && cfg.rope_theta.is_finite()) {
        bail!("{source}: {} must be a positive number, got {}", field("rope_theta"), cfg.rope_theta);
    }
    if let Some((name, problem)) = cfg.rope_scaling.as_ref().and_then(|s| s.invalid_field(cfg.head_dim)) {
        bail!("{source}: {} {problem}", field(name));
    }
    Ok(())
}

/// [`check_config_fields`] under the config's own field names (`config.json`'s).
pub fn check_config(cfg: &ModelConfig, source: &str) -> Result<()> {
    check_config_fields(cfg, source, &|name| name.to_string())
}

/// Rejects a configuration whose tensors could not fit in `file_bytes` of model files even
/// at one bit per weight (less than any format stores), before anything is sized from it.
/// Call after [`check_config`] (its bounds keep the counting below from overflowing).
pub fn check_fits(cfg: &ModelConfig, source: &str, file_bytes: u64) -> Result<()> {
    let params: u64 = expected_tensors(cfg).iter().map(|(_, shape)| shape.iter().map(|&d| d as u64).product::<u64>()).sum();
    if params.div_ceil(8) > file_bytes {
        bail!("{source}: the configuration implies {params} weights, more than {file_bytes} bytes of model files can hold");
    }
    Ok(())
}

/// Every tensor the configuration needs, by Hugging Face name, with its PyTorch-order shape.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (d, hd, ff, v) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size);
    let q_rows = cfg.num_attention_heads * hd;
    let kv_rows = cfg.num_key_value_heads * hd;
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, d]), ("model.norm.weight".to_string(), vec![d])];
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, d]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}.");
        let mut push = |name: &str, shape: Vec<usize>| out.push((format!("{p}{name}"), shape));
        push("input_layernorm.weight", vec![d]);
        push("post_attention_layernorm.weight", vec![d]);
        push("self_attn.q_proj.weight", vec![q_rows, d]);
        push("self_attn.k_proj.weight", vec![kv_rows, d]);
        push("self_attn.v_proj.weight", vec![kv_rows, d]);
        push("self_attn.o_proj.weight", vec![d, q_rows]);
        if cfg.attention_bias {
            push("self_attn.q_proj.bias", vec![q_rows]);
            push("self_attn.k_proj.bias", vec![kv_rows]);
            push("self_attn.v_proj.bias", vec![kv_rows]);
        }
        if cfg.qk_norm {
            push("self_attn.q_norm.weight", vec![hd]);
            push("self_attn.k_norm.weight", vec![hd]);
        }
        push("mlp.gate_proj.weight", vec![ff, d]);
        push("mlp.up_proj.weight", vec![ff, d]);
        push("mlp.down_proj.weight", vec![d, ff]);
    }
    out
}

/// Checks the config is usable and every tensor it implies is present with the right shape.
/// `source` (a file or directory) starts every error message.
pub fn validate_tensors(cfg: &ModelConfig, tensors: &HashMap<String, HostTensor>, source: &str) -> Result<()> {
    check_config(cfg, source)?;
    let mut problems = Vec::new();
    for (name, shape) in expected_tensors(cfg) {
        match tensors.get(&name) {
            None => problems.push(format!("missing tensor '{name}' (expected shape {shape:?})")),
            Some(t) if t.shape != shape => problems.push(format!("tensor '{name}' has shape {:?}, expected {shape:?}", t.shape)),
            Some(t) if t.data.iter().any(|x| !x.is_finite()) => problems.push(format!("tensor '{name}' contains NaN or infinite values")),
            Some(_) => {}
        }
    }
    match problems.len() {
        0 => Ok(()),
        n => {
            let shown = problems.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
            let more = if n > 5 { format!(" (and {} more)", n - 5) } else { String::new() };
            bail!("{source}: {shown}{more}")
        }
    }
}

/// Memory-maps a file read-only, with errors naming it.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().with_context(|| format!("cannot stat {}", path.display()))?.len();
    if len == 0 {
        bail!("{} is empty", path.display());
    }
    // SAFETY: the map is read-only; a file changed underneath us while mapped is outside
    // what any loader can defend against (same contract as safetensors/llama.cpp).
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))
}
