//! Hugging Face checkpoints: `config.json` + `model.safetensors` (or sharded with
//! `model.safetensors.index.json`) + optional `tokenizer.json`; plus the tensor-set
//! validation every loader shares.
use super::config::{Arch, ModelConfig, RopeScaling};
use super::dtype::FloatDtype;
use super::weights::{check_config, check_fits, default_head_dim, expected_tensors, map_file, validate_tensors, HostTensor, ModelFiles};
use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

// ---------------------------------------------------------------------------
// config.json

/// Typed access to the fields of a JSON object, with errors naming the field and file
/// (also the exported students' configs, `super::export`).
pub(crate) struct JsonFields<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    pub(crate) path: &'a Path,
    /// The object's own field name ("" at the top level), prefixed to names in errors.
    pub(crate) scope: &'a str,
}

impl<'a> JsonFields<'a> {
    /// The field's value, treating an explicit `null` as absent.
    pub(crate) fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    /// Whether the object names the field at all (an explicit `null` included).
    pub(crate) fn has(&self, name: &str) -> bool {
        self.obj.contains_key(name)
    }

    /// The field as an object, with errors naming it (None when absent or null).
    pub(crate) fn opt_object(&self, name: &'a str) -> Result<Option<JsonFields<'a>>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                let obj = v.as_object().ok_or_else(|| self.wrong_type(name, "an object"))?;
                Ok(Some(JsonFields { obj, path: self.path, scope: name }))
            }
        }
    }

    /// `name` as errors give it: `rope_scaling.factor` inside `rope_scaling`.
    pub(crate) fn full_name(&self, name: &str) -> String {
        match self.scope {
            "" => name.to_string(),
            scope => format!("{scope}.{name}"),
        }
    }

    pub(crate) fn wrong_type(&self, name: &str, expected: &str) -> anyhow::Error {
        anyhow!(
            "field '{}' in {} must be {expected}, got {}",
            self.full_name(name),
            self.path.display(),
            self.get(name).map_or("null".into(), |v| v.to_string())
        )
    }

    pub(crate) fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => {
                v.as_u64().and_then(|x| usize::try_from(x).ok()).map(Some).ok_or_else(|| self.wrong_type(name, "a non-negative integer"))
            }
        }
    }

    pub(crate) fn req_usize(&self, name: &str) -> Result<usize> {
        self.opt_usize(name)?.ok_or_else(|| self.missing(name))
    }

    pub(crate) fn opt_f64(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.wrong_type(name, "a number")),
        }
    }

    pub(crate) fn req_f64(&self, name: &str) -> Result<f64> {
        self.opt_f64(name)?.ok_or_else(|| self.missing(name))
    }

    pub(crate) fn opt_f32(&self, name: &str) -> Result<Option<f32>> {
        Ok(self.opt_f64(name)?.map(|x| x as f32))
    }

    pub(crate) fn req_f32(&self, name: &str) -> Result<f32> {
        self.opt_f32(name)?.ok_or_else(|| self.missing(name))
    }

    pub(crate) fn opt_bool(&self, name: &str) -> Result<Option<bool>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| self.wrong_type(name, "true or false")),
        }
    }

    pub(crate) fn opt_str(&self, name: &str) -> Result<Option<&'a str>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.wrong_type(name, "a string")),
        }
    }

    pub(crate) fn req_str(&self, name: &str) -> Result<&'a str> {
        self.opt_str(name)?.ok_or_else(|| self.missing(name))
    }

    pub(crate) fn opt_f64_list(&self, name: &str) -> Result<Option<Vec<f64>>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(|list| list.iter().map(Value::as_f64).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.wrong_type(name, "a list of numbers")),
        }
    }

    /// A list of non-negative integers (layer indices).
    pub(crate) fn opt_usize_list(&self, name: &str) -> Result<Option<Vec<usize>>> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .and_then(|list| list.iter().map(|x| x.as_u64().and_then(|u| usize::try_from(u).ok())).collect::<Option<Vec<_>>>())
                .map(Some)
                .ok_or_else(|| self.wrong_type(name, "a list of non-negative integers")),
        }
    }

    /// A token id that may be given as a single integer or a list (first entry wins).
    pub(crate) fn opt_token_id(&self, name: &str) -> Result<Option<u32>> {
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

    pub(crate) fn missing(&self, name: &str) -> anyhow::Error {
        anyhow!("missing required field '{}' in {}", self.full_name(name), self.path.display())
    }
}

pub(crate) fn arch_from_model_type(model_type: &str, path: &Path) -> Result<Arch> {
    match model_type {
        "llama" | "mistral" => Ok(Arch::Llama),
        "qwen2" => Ok(Arch::Qwen2),
        "qwen3" => Ok(Arch::Qwen3),
        other => bail!(
            "unsupported architecture '{other}' in {} (supported: llama, mistral, qwen2, qwen3; students: taylorcal_hybrid, \
             gated_deltanet, student)",
            path.display()
        ),
    }
}

pub(crate) fn model_type_of(arch: Arch) -> (&'static str, &'static str) {
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
    let f = JsonFields { obj, path, scope: "" };

    let arch = arch_from_model_type(f.req_str("model_type")?, path)?;
    let hidden_size = f.req_usize("hidden_size")?;
    let num_hidden_layers = f.req_usize("num_hidden_layers")?;
    let num_attention_heads = f.req_usize("num_attention_heads")?;
    let intermediate_size = f.req_usize("intermediate_size")?;
    let vocab_size = f.req_usize("vocab_size")?;
    let rms_norm_eps = f.req_f32("rms_norm_eps")?;
    let max_position_embeddings = f.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    // transformers 5 keeps rope_theta inside `rope_parameters`
    let nested_theta = match f.get("rope_parameters").and_then(Value::as_object) {
        Some(obj) => JsonFields { obj, path, scope: "rope_parameters" }.opt_f32("rope_theta")?,
        None => None,
    };
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
        rope_theta: f.opt_f32("rope_theta")?.or(nested_theta).unwrap_or(10000.0),
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias,
        qk_norm: arch == Arch::Qwen3,
        max_position_embeddings,
        bos_token_id: f.opt_token_id("bos_token_id")?,
        eos_token_id: f.opt_token_id("eos_token_id")?,
        rope_scaling: parse_rope_scaling(&f, max_position_embeddings)?,
    };
    check_config(&cfg, &path.display().to_string())?;
    Ok(cfg)
}

/// `rope_scaling` (transformers 5 writes the same object as `rope_parameters`): rope_type
/// (or the older `type`) default, linear, llama3 or yarn. `longrope` is read only in the
/// form [`rope_scaling_json`] writes for per-frequency divisors (equal short and long
/// factors, attention factor 1), which is exactly those divisors.
pub(crate) fn parse_rope_scaling(f: &JsonFields, max_position_embeddings: usize) -> Result<Option<RopeScaling>> {
    let Some((scope, v)) = ["rope_scaling", "rope_parameters"].into_iter().find_map(|k| f.get(k).map(|v| (k, v))) else {
        return Ok(None);
    };
    let obj = v.as_object().ok_or_else(|| f.wrong_type(scope, "an object"))?;
    let s = JsonFields { obj, path: f.path, scope };
    let type_key = if s.get("rope_type").is_some() { "rope_type" } else { "type" };
    Ok(Some(match s.opt_str(type_key)?.unwrap_or("default") {
        "default" => return Ok(None),
        "linear" => RopeScaling::Linear { factor: s.req_f64("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: s.req_f64("factor")?,
            low_freq_factor: s.req_f64("low_freq_factor")?,
            high_freq_factor: s.req_f64("high_freq_factor")?,
            original_max_position_embeddings: s.req_usize("original_max_position_embeddings")?,
        },
        "yarn" => {
            let factor = s.req_f64("factor")?;
            let attention_factor = match s.opt_f64("attention_factor")? {
                Some(a) => a,
                None => RopeScaling::yarn_attention_factor(factor, s.opt_f64("mscale")?, s.opt_f64("mscale_all_dim")?),
            };
            // transformers reads `beta_fast or 32`: 0 means the default too
            let or = |v: Option<f64>, default: f64| v.filter(|&b| b != 0.0).unwrap_or(default);
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: s.opt_usize("original_max_position_embeddings")?.unwrap_or(max_position_embeddings),
                beta_fast: or(s.opt_f64("beta_fast")?, 32.0),
                beta_slow: or(s.opt_f64("beta_slow")?, 1.0),
                attention_factor,
                truncate: s.opt_bool("truncate")?.unwrap_or(true),
            }
        }
        "longrope" => {
            let short = s.opt_f64_list("short_factor")?.ok_or_else(|| s.missing("short_factor"))?;
            let long = s.opt_f64_list("long_factor")?.ok_or_else(|| s.missing("long_factor"))?;
            if short != long || s.opt_f64("attention_factor")? != Some(1.0) {
                bail!(
                    "{}: {scope}.{type_key} 'longrope' is supported only with equal short_factor and long_factor and \
                     attention_factor 1 (per-frequency divisors); supported types: default, linear, llama3, yarn",
                    f.path.display()
                );
            }
            RopeScaling::FreqFactors { factors: short.into_iter().map(|x| x as f32).collect() }
        }
        other => bail!("{}: unsupported {scope}.{type_key} '{other}' (supported: default, linear, llama3, yarn)", f.path.display()),
    }))
}

/// The `rope_scaling` object of `scaling` in config.json (null for none). Per-frequency
/// divisors are written as transformers' `longrope` with equal short and long factors and
/// attention factor 1, which applies exactly those divisors at every length.
pub(crate) fn rope_scaling_json(cfg: &ModelConfig) -> Value {
    match &cfg.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::FreqFactors { factors }) => json!({
            "rope_type": "longrope",
            "short_factor": factors,
            "long_factor": factors,
            "factor": 1.0,
            "attention_factor": 1.0,
            "original_max_position_embeddings": cfg.max_position_embeddings,
        }),
        Some(s) => serde_json::to_value(s).expect("RoPE scaling as JSON"),
    }
}

// ---------------------------------------------------------------------------
// tokenizer.json

/// Loads a Hugging Face `tokenizer.json`.
pub fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// safetensors

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

/// A `HostTensor` seen by the safetensors serialiser as `dtype` (F32 borrowed without a
/// copy on little-endian hosts; F16 / BF16 rounded to nearest even).
struct HostView<'a>(&'a HostTensor, FloatDtype);

impl View for HostView<'_> {
    fn dtype(&self) -> Dtype {
        match self.1 {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::BF16 => Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.1 == FloatDtype::F32 && cfg!(target_endian = "little") {
            Cow::Borrowed(bytemuck::cast_slice(&self.0.data))
        } else {
            Cow::Owned(self.1.encode(&self.0.data))
        }
    }
    fn data_len(&self) -> usize {
        self.0.data.len() * self.1.size_bytes()
    }
}

/// Writes `tensors` as an f32 safetensors file, atomically (temporary file + rename).
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, HostTensor>) -> Result<()> {
    write_safetensors_as(path, tensors.iter().map(|(k, t)| (k.clone(), t)), FloatDtype::F32, None)
}

/// Writes `tensors` (name, tensor) as a safetensors file of `dtype` with the header
/// `metadata`, atomically (temporary file + rename).
pub fn write_safetensors_as<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, &'a HostTensor)>,
    dtype: FloatDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let views = tensors.into_iter().map(|(k, t)| (k, HostView(t, dtype)));
    write_via_tmp(path, |tmp| safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| anyhow!("writing {}: {e}", tmp.display())))
}

/// The prefix of every name taylorcal keeps for itself inside an output directory (the
/// staging and commit directories of a checkpoint write, the lock file, the temporary
/// file of an atomic write).
pub const INTERNAL_PREFIX: &str = ".taylorcal";

/// The temporary file beside `path` that an atomic write fills first: named with the
/// prefix of taylorcal's own entries, so a copy a crash leaves behind never makes the
/// directory look like someone else's to the next command (`out_dir`, which removes it).
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(format!("{INTERNAL_PREFIX}{TMP}"));
    name.push(path.file_name().unwrap_or_default());
    path.with_file_name(name)
}

const TMP: &str = "-tmp-";

/// Whether a file name is that of an atomic write's temporary file.
pub fn is_tmp_name(name: &str) -> bool {
    name.strip_prefix(INTERNAL_PREFIX).is_some_and(|rest| rest.starts_with(TMP))
}

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one whole.
/// The bytes are flushed (fsync) before the rename; a failed write removes its temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_tmp(path, |tmp| std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display())))
}

/// `write` fills the temporary file of `path`, which is then flushed (through a writable
/// handle: Windows refuses to flush a read-only one) and renamed over `path`.
fn write_via_tmp(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let written = write(&tmp)
        .and_then(|_| {
            let f = std::fs::OpenOptions::new().write(true).open(&tmp);
            f.and_then(|f| f.sync_all()).with_context(|| format!("flushing {}", tmp.display()))
        })
        .and_then(|_| std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
        files.insert(shard_path(dir, file).with_context(|| format!("{}: weight_map entry '{tensor}'", index.display()))?);
    }
    Ok(files.into_iter().collect())
}

/// A shard file an index names, inside `dir`: a relative path of plain names only (no
/// `..`, no root), so an index cannot send the loader to files elsewhere. Symbolic links
/// inside `dir` are followed: the Hugging Face cache links every file of a snapshot to a
/// blob store outside it.
fn shard_path(dir: &Path, file: &str) -> Result<PathBuf> {
    let rel = Path::new(file);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain || rel.file_name().is_none() {
        bail!("shard '{file}' is not a file inside the model directory");
    }
    Ok(dir.join(rel))
}

/// Loads a Hugging Face model directory (see the module docs).
pub fn load_hf_dir(dir: &Path) -> Result<ModelFiles> {
    let config_path = dir.join("config.json");
    let json = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?;
    let config = parse_hf_config(&json, &config_path)?;
    let files = safetensors_files(dir)?;
    let mut file_bytes = 0u64;
    for file in &files {
        file_bytes += std::fs::metadata(file).with_context(|| format!("cannot open {}", file.display()))?.len();
    }
    check_fits(&config, &config_path.display().to_string(), file_bytes)?;

    let wanted: BTreeSet<String> = expected_tensors(&config).into_iter().map(|(n, _)| n).collect();
    let tensors = read_dir_tensors(dir, |n| wanted.contains(n))?;
    let source = format!("Hugging Face model {}", dir.display());
    validate_tensors(&config, &tensors, &source)?;
    let tokenizer = load_dir_tokenizer(dir)?;
    Ok(ModelFiles { config, tensors, tokenizer, source })
}

/// The tensors whose names pass `keep` of a directory's safetensors files
/// (`model.safetensors`, or the shards its index names), as f32. A tensor two shards both
/// hold is refused (which copy is meant cannot be told).
pub fn read_dir_tensors(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<HashMap<String, HostTensor>> {
    let mut tensors = HashMap::new();
    let mut holder: HashMap<String, PathBuf> = HashMap::new();
    for file in safetensors_files(dir)? {
        for (name, t) in read_safetensors_filtered(&file, &keep)? {
            if let Some(first) = holder.insert(name.clone(), file.clone()) {
                bail!("{}: tensor '{name}' is stored twice, in {} and in {}", dir.display(), first.display(), file.display());
            }
            tensors.insert(name, t);
        }
    }
    Ok(tensors)
}

/// The directory's `tokenizer.json`, if it has one.
pub fn load_dir_tokenizer(dir: &Path) -> Result<Option<tokenizers::Tokenizer>> {
    let path = dir.join("tokenizer.json");
    path.is_file().then(|| load_tokenizer_json(&path)).transpose()
}

/// A JSON number holding the f32's shortest decimal form (1e-5, not 9.99999974e-6).
pub(crate) fn json_f32(x: f32) -> Value {
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
        "rope_scaling": rope_scaling_json(cfg),
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
