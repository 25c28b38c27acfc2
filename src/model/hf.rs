//! Hugging Face checkpoints: `config.json` + `model.safetensors` (or sharded with
//! `model.safetensors.index.json`) + optional `tokenizer.json`; plus the tensor-set
//! validation every loader shares.
use super::config::{Arch, ModelConfig};
use super::dtype::FloatDtype;
use super::tokenizer::load_tokenizer_json;
use super::weights::{HostTensor, ModelFiles};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// config.json

/// Typed access to the fields of a JSON object, with errors naming the field and file.
struct JsonFields<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl JsonFields<'_> {
    /// The field's value, treating an explicit `null` as absent.
    fn get(&self, name: &str) -> Option<&Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, name: &str, expected: &str) -> anyhow::Error {
        anyhow!(
            "field '{name}' in {} must be {expected}, got {}",
            self.path.display(),
            self.get(name).map_or("null".into(), |v| v.to_string())
        )
    }

    fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().and_then(|x| usize::try_from(x).ok()).map(Some).ok_or_else(|| self.wrong_type(name, "a non-negative integer"))
            }
        }
    }

    fn req_usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?.ok_or_else(|| self.missing(name))
    }

    fn opt_f32(&self, name: &str) -> Result<Option<f32>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| self.wrong_type(name, "a number")),
        }
    }

    fn req_f32(&self, name: &str) -> Result<f32> {
        self.opt_f32(name)?.ok_or_else(|| self.missing(name))
    }

    fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong_type(name, "true or false")),
        }
    }

    fn req_str(&self, name: &str) -> Result<&str> {
        match self.get(name) {
            None => Err(self.missing(name)),
            Some(v) => v.as_str().ok_or_else(|| self.wrong_type(name, "a string")),
        }
    }

    /// A token id that may be given as a single integer or a list (first entry wins).
    fn opt_token_id(&self, name: &str) -> Result<Option<u32>> {
        let v = match self.get(name) {
            None => return Ok(None),
            Some(Value::Array(list)) => match list.first() {
                None => return Ok(None),
                Some(first) => first,
            },
            Some(v) => v,
        };
        v.as_u64().and_then(|x| u32::try_from(x).ok()).map(Some).ok_or_else(|| self.wrong_type(name, "a token id or a list of token ids"))
    }

    fn missing(&self, name: &str) -> anyhow::Error {
        anyhow!("missing required field '{name}' in {}", self.path.display())
    }
}

fn arch_from_model_type(model_type: &str, path: &Path) -> Result<Arch> {
    match model_type {
        "llama" | "mistral" => Ok(Arch::Llama),
        "qwen2" => Ok(Arch::Qwen2),
        "qwen3" => Ok(Arch::Qwen3),
        other => bail!("unsupported architecture '{other}' in {} (supported: llama, mistral, qwen2, qwen3)", path.display()),
    }
}

fn model_type_of(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Llama => ("llama", "LlamaForCausalLM"),
        Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
    }
}

/// Parses a Hugging Face `config.json` (text in `json`, `path_for_errors` names it in errors).
pub fn parse_hf_config(json: &str, path_for_errors: &Path) -> Result<ModelConfig> {
    let path = path_for_errors;
    let value: Value = serde_json::from_str(json).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let obj = value.as_object().ok_or_else(|| anyhow!("{} must contain a JSON object", path.display()))?;
    let f = JsonFields { obj, path };

    let arch = arch_from_model_type(f.req_str("model_type")?, path)?;
    let hidden_size = f.req_usize("hidden_size")?;
    let num_hidden_layers = f.req_usize("num_hidden_layers")?;
    let num_attention_heads = f.req_usize("num_attention_heads")?;
    let intermediate_size = f.req_usize("intermediate_size")?;
    let vocab_size = f.req_usize("vocab_size")?;
    let rms_norm_eps = f.req_f32("rms_norm_eps")?;
    let attention_bias = match arch {
        Arch::Qwen2 => true,
        Arch::Llama | Arch::Qwen3 => f.opt_bool("attention_bias")?.unwrap_or(false),
    };
    let cfg = ModelConfig {
        arch,
        hidden_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads),
        head_dim: f.opt_usize("head_dim")?.unwrap_or_else(|| default_head_dim(hidden_size, num_attention_heads)),
        intermediate_size,
        vocab_size,
        rms_norm_eps,
        rope_theta: f.opt_f32("rope_theta")?.unwrap_or(10000.0),
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        qk_norm: arch == Arch::Qwen3,
        max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(2048),
        bos_token_id: f.opt_token_id("bos_token_id")?,
        eos_token_id: f.opt_token_id("eos_token_id")?,
    };
    check_config(&cfg, &path.display().to_string())?;
    Ok(cfg)
}

/// `hidden / heads`, or 0 when `heads` is 0 (which `check_config` then reports).
pub(crate) fn default_head_dim(hidden: usize, heads: usize) -> usize {
    hidden.checked_div(heads).unwrap_or(0)
}

/// Rejects configurations the teacher forward cannot run (zero sizes, heads that do not
/// group, odd head_dim for RoPE, non-positive epsilon).
pub fn check_config(cfg: &ModelConfig, source: &str) -> Result<()> {
    let sizes = [
        ("hidden_size", cfg.hidden_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("num_key_value_heads", cfg.num_key_value_heads),
        ("head_dim", cfg.head_dim),
        ("intermediate_size", cfg.intermediate_size),
        ("vocab_size", cfg.vocab_size),
    ];
    if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
        bail!("{source}: {name} must be positive, got 0");
    }
    if !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads) {
        bail!(
            "{source}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
            cfg.num_attention_heads,
            cfg.num_key_value_heads
        );
    }
    if !cfg.head_dim.is_multiple_of(2) {
        bail!("{source}: head_dim must be even for RoPE, got {}", cfg.head_dim);
    }
    if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite()) {
        bail!("{source}: rms_norm_eps must be a positive number, got {}", cfg.rms_norm_eps);
    }
    if !(cfg.rope_theta > 0.0 && cfg.rope_theta.is_finite()) {
        bail!("{source}: rope_theta must be a positive number, got {}", cfg.rope_theta);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The tensor set a config implies (shared with GGUF)

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

// ---------------------------------------------------------------------------
// safetensors

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

fn float_dtype(dtype: Dtype) -> Option<FloatDtype> {
    match dtype {
        Dtype::F32 => Some(FloatDtype::F32),
        Dtype::F16 => Some(FloatDtype::F16),
        Dtype::BF16 => Some(FloatDtype::BF16),
        _ => None,
    }
}

/// Reads the tensors of one safetensors file whose names pass `keep`, converted to f32.
pub fn read_safetensors_filtered(path: &Path, keep: impl Fn(&str) -> bool) -> Result<HashMap<String, HostTensor>> {
    let map = map_file(path)?;
    let st = SafeTensors::deserialize(&map)
        .map_err(|e| anyhow!("{} is not a valid safetensors file (truncated or corrupt?): {e}", path.display()))?;
    let mut out = HashMap::new();
    for (name, view) in st.iter().filter(|(name, _)| keep(name)) {
        let dtype = float_dtype(view.dtype()).ok_or_else(|| {
            anyhow!("{}: tensor '{name}' has dtype {:?}; supported dtypes are F32, F16, BF16", path.display(), view.dtype())
        })?;
        let data = dtype.decode(view.data());
        out.insert(name.to_string(), HostTensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Reads every tensor of a safetensors file (F32/F16/BF16) as f32.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, HostTensor>> {
    read_safetensors_filtered(path, |_| true)
}

/// A `HostTensor` seen by the safetensors serialiser as F32 (no copy on little-endian hosts).
struct F32View<'a>(&'a HostTensor);

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
        } else {
            Cow::Owned(FloatDtype::F32.encode(&self.0.data))
        }
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * 4
    }
}

/// Writes `tensors` as an f32 safetensors file, atomically (temporary file + rename).
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, HostTensor>) -> Result<()> {
    let tmp = tmp_path(path);
    let views = tensors.iter().map(|(k, t)| (k.clone(), F32View(t)));
    safetensors::serialize_to_file(views, None, &tmp).map_err(|e| anyhow!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// The safetensors files of a directory: `model.safetensors`, or the shards an index names.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        bail!("{}: found neither model.safetensors nor model.safetensors.index.json", dir.display());
    }
    let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
    let value: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
    let weight_map =
        value.get("weight_map").and_then(Value::as_object).ok_or_else(|| anyhow!("{} has no 'weight_map' object", index.display()))?;
    let mut files = BTreeSet::new();
    for (tensor, file) in weight_map {
        let file = file.as_str().ok_or_else(|| anyhow!("{}: weight_map entry '{tensor}' is not a file name", index.display()))?;
        files.insert(file.to_string());
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads a Hugging Face model directory (see the module docs).
pub fn load_hf_dir(dir: &Path) -> Result<ModelFiles> {
    let config_path = dir.join("config.json");
    let json = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = parse_hf_config(&json, &config_path)?;

    let wanted: BTreeSet<String> = expected_tensors(&config).into_iter().map(|(n, _)| n).collect();
    let mut tensors = HashMap::new();
    for file in safetensors_files(dir)? {
        tensors.extend(read_safetensors_filtered(&file, |n| wanted.contains(n))?);
    }
    let source = format!("Hugging Face model {}", dir.display());
    validate_tensors(&config, &tensors, &source)?;

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = match tokenizer_path.is_file() {
        true => Some(load_tokenizer_json(&tokenizer_path)?),
        false => None,
    };
    Ok(ModelFiles { config, tensors, tokenizer, source })
}

/// A JSON number holding the f32's shortest decimal form (1e-5, not 9.99999974e-6).
fn json_f32(x: f32) -> Value {
    x.to_string().parse::<f64>().map_or(Value::Null, |v| json!(v))
}

/// The Hugging Face `config.json` describing `cfg`.
pub fn hf_config_json(cfg: &ModelConfig) -> Value {
    let (model_type, class) = model_type_of(cfg.arch);
    json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": json_f32(cfg.rms_norm_eps),
        "rope_theta": json_f32(cfg.rope_theta),
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    })
}

/// Writes a Hugging Face directory: `config.json`, `model.safetensors` (f32) and, if given,
/// `tokenizer.json`. Files are written atomically; the directory is created if needed.
pub fn save_hf_dir(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: &HashMap<String, HostTensor>,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config = serde_json::to_string_pretty(&hf_config_json(cfg))?;
    write_atomic(&dir.join("config.json"), config.as_bytes())?;
    write_safetensors(&dir.join("model.safetensors"), tensors)?;
    if let Some(tok) = tokenizer {
        let text = tok.to_string(false).map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
        write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
    }
    Ok(())
}
