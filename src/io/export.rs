//! A hybrid student in the layouts of the Python ecosystem, written ([`save_export`]) and
//! read back ([`load_export`]): flash-linear-attention 0.6.0's `GatedDeltaNetConfig`
//! ([`Format::Fla`], model_type `gated_deltanet`) and the Taylor-Calibrate reference code's
//! `StudentConfig` ([`Format::Reference`], model_type `student`, `student_name: gdn_v4`).
//! Both are Hugging Face directories: `config.json`, `model.safetensors` (f32, f16 or bf16),
//! `tokenizer.json` with a `tokenizer_config.json`, and `generation_config.json`.
//!
//! # The mapping
//! Both layouts name tensors as fla does. taylorcal's checkpoint names the shared and
//! softmax parts as Hugging Face's Llama does and its GDN layers as fla does already
//! ([`exported_name`]):
//!
//! | taylorcal                                             | exported                          |
//! |-------------------------------------------------------|-----------------------------------|
//! | `model.embed_tokens.weight`                           | `model.embeddings.weight`         |
//! | `model.norm.weight`, `lm_head.weight` (untied only)   | the same                          |
//! | `model.layers.{i}.input_layernorm.weight`             | `model.layers.{i}.attn_norm.weight` |
//! | `model.layers.{i}.post_attention_layernorm.weight`    | `model.layers.{i}.mlp_norm.weight`  |
//! | `model.layers.{i}.mlp.{gate,up,down}_proj.weight`     | the same                          |
//! | `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `{q,k,v}_proj.bias`, `{q,k}_norm.weight` | `model.layers.{i}.attn.` + the same |
//! | GDN: `model.layers.{i}.attn.{q,k,v,a,b,g,o}_proj.weight`, `A_log`, `dt_bias`, `o_norm.weight` | the same |
//!
//! No tensor is transformed, in either direction: fla's `GatedDeltaNet` with
//! `use_short_conv: false`, `expand_v: 1`, `use_gate: true` and `allow_neg_eigval: false`
//! computes gdn_v4 exactly (`crate::nn::gdn`): q, k, v are the SiLU of their projections
//! (fla's path without short convolutions), q and k are L2-normalised in the kernel (eps
//! 1e-6) with the scale head_dim^-1/2, beta = sigmoid(b_proj x), g = -exp(A_log)
//! softplus(a_proj x + dt_bias) with the same A_log and dt_bias (no sign, log or scale to
//! undo), and o_norm is the gated RMSNorm with a swish gate from g_proj; every projection is
//! [out, in] with heads major (`(h d)`) on both sides. In kept softmax layers fla's rotary
//! embedding rotates halves as Hugging Face's Llama does (no row permutation), grouped kv
//! heads are shared as in taylorcal, and the MLP is the same SwiGLU.
//!
//! # What fla's layout cannot express ([`check`])
//! q/k norms in kept softmax layers (a Qwen3 teacher's: fla's `Attention` has none), RoPE
//! scaling in them (it applies plain RoPE with `rope_theta`), a head dim other than
//! hidden_size / num_heads in them (it derives its head dim so), and an RMSNorm epsilon
//! other than the GDN output norm's 1e-5 (fla's one `norm_eps` is every norm's). `--to fla`
//! refuses those and points to the reference layout, which carries them all: `qk_norm` with
//! `attn.{q,k}_norm.weight`, `head_dim`, `norm_eps` for the decoder's norms (its GDN output
//! norm keeps fla's default 1e-5), and taylorcal's own fields `rope_scaling` and
//! `teacher_model_type` (a `PretrainedConfig` keeps fields it does not know). The
//! reference's Python code itself applies plain RoPE, and its own epsilon in q/k norms;
//! taylorcal reads the file back exactly.
//!
//! # Reading back
//! A field a config leaves out takes its class's default, as `transformers` would give it
//! (fla: `use_short_conv` true, `expand_v` 2, `head_dim` 256, `norm_eps` 1e-6, ...); then
//! anything taylorcal's student cannot run is refused, naming the file and field.
use super::checkpoint::{self, Checkpoint, HybridConfig, INTERNAL_PREFIX};
use super::config::{Arch, ModelConfig};
use super::dtype::FloatDtype;
use super::hf::{self, JsonFields};
use super::weights::{check_config, default_head_dim};
use super::{fingerprint, HostTensor};
use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::path::Path;

/// An exported layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// flash-linear-attention's `GatedDeltaNetConfig` (model_type `gated_deltanet`).
    Fla,
    /// The Taylor-Calibrate reference code's `StudentConfig` (model_type `student`).
    Reference,
}

impl Format {
    /// `fla` or `reference`.
    pub fn parse(s: &str) -> Option<Format> {
        [Format::Fla, Format::Reference].into_iter().find(|f| f.name() == s)
    }

    /// The name [`Format::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Format::Fla => "fla",
            Format::Reference => "reference",
        }
    }

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Format::Fla => "gated_deltanet",
            Format::Reference => "student",
        }
    }

    fn of_model_type(model_type: &str) -> Option<Format> {
        [Format::Fla, Format::Reference].into_iter().find(|f| f.model_type() == model_type)
    }
}

/// The reference's student attention class taylorcal's GDN layers are.
pub const STUDENT_NAME: &str = "gdn_v4";

/// The files an export writes (and a later export into the same directory replaces).
pub const EXPORT_FILES: [&str; 5] =
    ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"];

/// Beside the files: the fingerprint of the `config.json` the export wrote, so that a later
/// export recognises the directory as its own ([`is_own_export`]) and one a Python tool
/// saved over as not.
fn marker(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("{INTERNAL_PREFIX}-export.json"))
}

/// A taylorcal tensor name as both exported layouts name it (the module docs' table).
pub fn exported_name(name: &str) -> String {
    if name == "model.embed_tokens.weight" {
        return "model.embeddings.weight".into();
    }
    let renames = [(".input_layernorm.", ".attn_norm."), (".post_attention_layernorm.", ".mlp_norm."), (".self_attn.", ".attn.")];
    renames.into_iter().fold(name.to_string(), |n, (from, to)| n.replacen(from, to, 1))
}

/// Refuses what `format` cannot express of a student of `cfg` (see the module docs).
pub fn check(cfg: &HybridConfig, format: Format) -> Result<()> {
    if format == Format::Reference {
        return Ok(());
    }
    let c = &cfg.base;
    let kept = format!("the kept softmax layers {:?}", cfg.attn_layers);
    let what = if cfg.attn_layers.is_empty() {
        None
    } else if c.qk_norm {
        Some(format!("the q/k norms (self_attn.q_norm / k_norm, a Qwen3 teacher's) of {kept}: fla's Attention layer has none"))
    } else if c.rope_scaling.is_some() {
        let s = hf::rope_scaling_json(c);
        Some(format!("the RoPE scaling of {kept} (rope_scaling {s}): fla's Attention layer applies plain RoPE with rope_theta"))
    } else if c.num_attention_heads * c.head_dim != c.hidden_size {
        Some(format!(
            "head_dim {} of {kept} ({} heads, hidden size {}): fla's Attention layer's head dim is hidden_size / num_heads",
            c.head_dim, c.num_attention_heads, c.hidden_size
        ))
    } else {
        None
    };
    let what = what.or_else(|| {
        (c.rms_norm_eps != cfg.gdn_norm_eps).then(|| {
            format!(
                "rms_norm_eps {}: fla's config has one norm_eps for every RMSNorm, and the GDN output norm's is {}",
                c.rms_norm_eps, cfg.gdn_norm_eps
            )
        })
    });
    match what {
        Some(w) => bail!("--to fla cannot express {w}; export with --to reference, whose layout carries it"),
        None => Ok(()),
    }
}

/// What an export of `ck` to `format` writes as tensors: (exported name, tensor), after
/// [`check`] and the checks that every tensor is there, with its shape, and nothing else.
fn exported_tensors(ck: &Checkpoint, format: Format) -> Result<Vec<(String, &HostTensor)>> {
    check(&ck.config, format)?;
    let expected = checkpoint::expected_tensors(&ck.config);
    checkpoint::check_tensors(expected.iter().cloned(), &ck.tensors, "the student")?;
    let names: HashSet<&String> = expected.iter().map(|(n, _)| n).collect();
    if let Some(extra) = ck.tensors.keys().find(|n| !names.contains(n)) {
        bail!("the student holds a tensor {extra} that its configuration has no place for; it cannot be exported as it is");
    }
    ck.tokenizer.as_ref().context("the student has no tokenizer.json; an export needs one (Python tools load it with the model)")?;
    Ok(expected.into_iter().map(|(n, _)| (exported_name(&n), &ck.tensors[&n])).collect())
}

/// Refuses, before anything is written, a student that [`save_export`] cannot export to
/// `format`.
pub fn check_student(ck: &Checkpoint, format: Format) -> Result<()> {
    exported_tensors(ck, format).map(drop)
}

/// config.json of a student of `cfg` in `format`, its tensors stored as `dtype`.
pub fn config_json(cfg: &HybridConfig, format: Format, dtype: FloatDtype) -> Value {
    let c = &cfg.base;
    let mut v = json!({
        "model_type": format.model_type(),
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_heads": c.num_attention_heads,
        "head_dim": c.head_dim,
        "hidden_ratio": 4,
        "intermediate_size": c.intermediate_size,
        "hidden_act": "swish",
        "norm_eps": hf::json_f32(c.rms_norm_eps),
        "max_position_embeddings": c.max_position_embeddings,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "use_cache": true,
        "torch_dtype": dtype.torch_name(),
    });
    let layout = match format {
        Format::Fla => json!({
            "architectures": ["GatedDeltaNetForCausalLM"],
            "attn_mode": "chunk",
            "expand_v": 1,
            "num_v_heads": null,
            "use_gate": true,
            "use_short_conv": false,
            "allow_neg_eigval": false,
            "attn": (!cfg.attn_layers.is_empty()).then(|| json!({
                "layers": cfg.attn_layers,
                "num_heads": c.num_attention_heads,
                "num_kv_heads": c.num_key_value_heads,
                "qkv_bias": c.attention_bias,
                "window_size": null,
                "rope_theta": hf::json_f32(c.rope_theta),
            })),
        }),
        Format::Reference => json!({
            "architectures": ["StudentForCausalLM"],
            "student_name": STUDENT_NAME,
            "keep_full_attention_layers": cfg.attn_layers,
            "num_kv_heads": c.num_key_value_heads,
            "qkv_bias": c.attention_bias,
            "qk_norm": c.qk_norm,
            "window_size": null,
            "rope_theta": hf::json_f32(c.rope_theta),
            // taylorcal's own: what StudentConfig has no field for
            "teacher_model_type": hf::model_type_of(c.arch).0,
            "rope_scaling": hf::rope_scaling_json(c),
        }),
    };
    let obj = v.as_object_mut().expect("an object");
    obj.extend(layout.as_object().expect("an object").clone());
    v
}

/// What [`save_export`] wrote.
#[derive(Clone, Debug)]
pub struct Exported {
    /// Tensors in model.safetensors.
    pub tensors: usize,
    /// Bytes of model.safetensors.
    pub bytes: u64,
    /// Where the Python side computes something else than taylorcal from the files.
    pub warnings: Vec<String>,
}

/// Write `ck` into `dir` (created if missing) in `format`, tensors as `dtype`: the
/// [`EXPORT_FILES`], each atomically, and the marker [`is_own_export`] reads. Files in
/// `dir` that are not the export's are left alone. The caller claims `dir` first
/// (`super::out_dir`).
pub fn save_export(dir: &Path, ck: &Checkpoint, format: Format, dtype: FloatDtype) -> Result<Exported> {
    let tensors = exported_tensors(ck, format)?;
    let tok = ck.tokenizer.as_ref().expect("checked by exported_tensors");
    let c = &ck.config.base;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let n = tensors.len();
    let model = dir.join("model.safetensors");
    hf::write_safetensors_as(&model, tensors, dtype, Some(HashMap::from([("format".to_string(), "pt".to_string())])))?;
    let text = tok.to_string(false).map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
    hf::write_atomic(&dir.join("tokenizer.json"), text.as_bytes())?;
    let token = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
    let tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(c.bos_token_id),
        "eos_token": token(c.eos_token_id),
        "model_max_length": c.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
    });
    let generation: serde_json::Map<String, Value> = [("bos_token_id", c.bos_token_id), ("eos_token_id", c.eos_token_id)]
        .into_iter()
        .filter_map(|(k, v)| Some((k.into(), v?.into())))
        .collect();
    for (name, v) in [
        ("tokenizer_config.json", tok_config),
        ("generation_config.json", Value::Object(generation)),
        ("config.json", config_json(&ck.config, format, dtype)),
    ] {
        hf::write_atomic(&dir.join(name), serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    let mark = json!({ "config.json": fingerprint::of_files(&[dir.join("config.json")])? });
    hf::write_atomic(&marker(dir), mark.to_string().as_bytes())?;
    let mut warnings = vec![];
    if format == Format::Reference && !ck.config.attn_layers.is_empty() && c.rope_scaling.is_some() {
        warnings.push(
            "config.json carries rope_scaling for taylorcal, but the reference's Python code applies plain RoPE in the kept \
             softmax layers: its logits differ from taylorcal's"
                .to_string(),
        );
    }
    let bytes = std::fs::metadata(&model).with_context(|| format!("reading {}", model.display()))?.len();
    Ok(Exported { tensors: n, bytes, warnings })
}

/// Whether `dir` holds an export this program wrote whose config.json nothing has written
/// over since (the check `super::out_dir::Kind::Model` takes for `export --out`).
pub fn is_own_export(dir: &Path) -> bool {
    let mark = std::fs::read_to_string(marker(dir)).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let want = mark.as_ref().and_then(|m| m["config.json"].as_str());
    want.is_some_and(|w| fingerprint::of_files(&[dir.join("config.json")]).is_ok_and(|h| h == w))
}

/// The exported layout of the model in `dir`, by its config.json's model_type (None: no
/// export, or no readable config.json).
pub fn format_of(dir: &Path) -> Option<Format> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Format::of_model_type(v.get("model_type")?.as_str()?)
}

/// Read a student exported in either layout (or saved back by a Python tool in it): the
/// config as a [`HybridConfig`], tensors under taylorcal's names (f32), the tokenizer when
/// there is one. Every tensor the config implies must be there with its shape, and no other.
pub fn load_export(dir: &Path) -> Result<Checkpoint> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
    let obj = v.as_object().ok_or_else(|| anyhow!("{} must contain a JSON object", path.display()))?;
    let f = JsonFields { obj, path: &path, scope: "" };
    let model_type = f.req_str("model_type")?;
    let format = Format::of_model_type(model_type).ok_or_else(|| {
        anyhow!("{}: model_type '{model_type}' is no exported student (gated_deltanet for fla, student for the reference)", path.display())
    })?;
    let config = match format {
        Format::Fla => parse_fla(&f)?,
        Format::Reference => parse_reference(&f)?,
    };
    let source = dir.display().to_string();
    let expected = checkpoint::expected_tensors(&config);
    let mut file = hf::read_dir_tensors(dir, |_| true)?;
    checkpoint::check_tensors(expected.iter().map(|(n, s)| (exported_name(n), s.clone())), &file, &source)?;
    let mut tensors = HashMap::new();
    for (name, _) in expected {
        let t = file.remove(&exported_name(&name)).expect("checked");
        tensors.insert(name, t);
    }
    // transformers ties a saved head to the embeddings
    if config.base.tie_word_embeddings {
        file.remove("lm_head.weight");
    }
    if let Some(extra) = file.keys().min() {
        bail!("{source}: tensor '{extra}' has no place in the {} student its config.json describes", format.name());
    }
    Ok(Checkpoint { config, tensors, tokenizer: hf::load_dir_tokenizer(dir)?, report: Value::Null, optimizer: None, files: vec![] })
}

/// `f`'s field `name`, whose value `value` taylorcal's student cannot run: an error naming
/// the file and field, saying `why`.
fn refuse(f: &JsonFields, name: &str, value: impl Display, why: &str) -> anyhow::Error {
    let default = if f.has(name) { "" } else { " (the default: the field is absent)" };
    anyhow!("{}: {} {value}{default} is not supported: {why}", f.path.display(), f.full_name(name))
}

/// A token id: absent gives `default` (the config class's), null gives none.
fn token_id(f: &JsonFields, name: &str, default: u32) -> Result<Option<u32>> {
    if f.has(name) {
        f.opt_token_id(name)
    } else {
        Ok(Some(default))
    }
}

/// What the two layouts describe each in their own fields, read by [`parse_fla`] and
/// [`parse_reference`].
struct Layout {
    format: Format,
    arch: Arch,
    hidden_size: usize,
    /// (query heads, kv heads, head dim)
    heads: (usize, usize, usize),
    attention_bias: bool,
    qk_norm: bool,
    rope_theta: f32,
    kept: Vec<usize>,
}

/// `l` and the fields both layouts share (with the same defaults in fla's and the
/// reference's config classes) into a checked [`HybridConfig`].
fn hybrid(f: &JsonFields, l: Layout) -> Result<HybridConfig> {
    let hidden_act = f.opt_str("hidden_act")?.unwrap_or("swish");
    if hidden_act != "swish" {
        return Err(refuse(f, "hidden_act", hidden_act, "the MLP is SwiGLU (swish)"));
    }
    let intermediate_size = match f.opt_usize("intermediate_size")? {
        Some(i) => i,
        // fla's GatedMLP (and the reference's StudentMLP): 2/3 of hidden_ratio x hidden, up to a multiple of 256
        None => ((l.hidden_size as f64 * f.opt_f64("hidden_ratio")?.unwrap_or(4.0) * 2.0 / 3.0) as usize).div_ceil(256) * 256,
    };
    let max_position_embeddings = f.opt_usize("max_position_embeddings")?.unwrap_or(2048);
    let base = ModelConfig {
        arch: l.arch,
        hidden_size: l.hidden_size,
        num_hidden_layers: f.opt_usize("num_hidden_layers")?.unwrap_or(if l.format == Format::Fla { 21 } else { 24 }),
        num_attention_heads: l.heads.0,
        num_key_value_heads: l.heads.1,
        head_dim: l.heads.2,
        intermediate_size,
        vocab_size: f.opt_usize("vocab_size")?.unwrap_or(32000),
        rms_norm_eps: f.opt_f32("norm_eps")?.unwrap_or(1e-6),
        rope_theta: l.rope_theta,
        tie_word_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: l.attention_bias,
        qk_norm: l.qk_norm,
        max_position_embeddings,
        bos_token_id: token_id(f, "bos_token_id", 1)?,
        eos_token_id: token_id(f, "eos_token_id", 2)?,
        rope_scaling: match l.format {
            Format::Fla => None,
            Format::Reference => hf::parse_rope_scaling(f, max_position_embeddings)?,
        },
    };
    check_config(&base, &f.path.display().to_string())?;
    let cfg = HybridConfig::new(base, l.kept).with_context(|| format!("in {}", f.path.display()))?;
    if l.format == Format::Fla && cfg.base.rms_norm_eps != cfg.gdn_norm_eps {
        let why = format!("fla applies norm_eps to the GDN output norm too, which is {} in taylorcal's GDN layers", cfg.gdn_norm_eps);
        return Err(refuse(f, "norm_eps", cfg.base.rms_norm_eps, &why));
    }
    Ok(cfg)
}

/// fla's `GatedDeltaNetConfig` (defaults as in fla 0.6.0).
fn parse_fla(f: &JsonFields) -> Result<HybridConfig> {
    let hidden = f.opt_usize("hidden_size")?.unwrap_or(2048);
    let heads = f.opt_usize("num_heads")?.unwrap_or(6);
    let head_dim = f.opt_usize("head_dim")?.unwrap_or(256);
    let expand_v = f.opt_f64("expand_v")?.unwrap_or(2.0);
    if expand_v != 1.0 {
        return Err(refuse(f, "expand_v", expand_v, "taylorcal's GDN value heads are as wide as its key heads (expand_v 1)"));
    }
    if let Some(v) = f.opt_usize("num_v_heads")?.filter(|&v| v != heads) {
        return Err(refuse(f, "num_v_heads", v, "taylorcal's GDN layers have one value head per key head (num_v_heads = num_heads)"));
    }
    for (name, default, want, why) in [
        ("use_short_conv", true, false, "taylorcal's GDN layers have no short convolution (use_short_conv false)"),
        ("use_gate", true, true, "taylorcal's GDN layers have the output gate (use_gate true)"),
        ("allow_neg_eigval", false, false, "taylorcal's write strength is sigmoid(b_proj x), not twice it (allow_neg_eigval false)"),
    ] {
        let v = f.opt_bool(name)?.unwrap_or(default);
        if v != want {
            return Err(refuse(f, name, v, why));
        }
    }
    let (mut kv_heads, mut bias, mut theta, mut kept) = (heads, false, 10000.0, vec![]);
    if let Some(a) = f.opt_object("attn")? {
        kept = a.opt_usize_list("layers")?.ok_or_else(|| a.missing("layers"))?;
        let attn_heads = a.req_usize("num_heads")?;
        kv_heads = a.opt_usize("num_kv_heads")?.unwrap_or(attn_heads);
        bias = a.opt_bool("qkv_bias")?.unwrap_or(false);
        theta = a.opt_f32("rope_theta")?.unwrap_or(10000.0);
        if let Some(w) = a.get("window_size") {
            return Err(refuse(&a, "window_size", w, "taylorcal's softmax layers attend to the whole context"));
        }
        if !kept.is_empty() && (attn_heads != heads || attn_heads * head_dim != hidden) {
            let why = format!(
                "taylorcal's student has one head layout: attn.num_heads must equal num_heads ({heads}) and hidden_size / \
                 attn.num_heads must equal head_dim ({head_dim})"
            );
            return Err(refuse(&a, "num_heads", attn_heads, &why));
        }
    }
    let arch = if bias { Arch::Qwen2 } else { Arch::Llama };
    let l = Layout {
        format: Format::Fla,
        arch,
        hidden_size: hidden,
        heads: (heads, kv_heads, head_dim),
        attention_bias: bias,
        qk_norm: false,
        rope_theta: theta,
        kept,
    };
    hybrid(f, l)
}

/// The reference's `StudentConfig` (defaults as in its config_distilled_student.py), with
/// taylorcal's `teacher_model_type` and `rope_scaling`.
fn parse_reference(f: &JsonFields) -> Result<HybridConfig> {
    let name = f.req_str("student_name")?;
    if name != STUDENT_NAME {
        return Err(refuse(f, "student_name", name, "taylorcal's GDN layers are the reference's gdn_v4"));
    }
    for (field, why) in [
        ("window_size", "taylorcal's softmax layers attend to the whole context"),
        ("num_experts", "taylorcal's MLPs are dense (no mixture of experts)"),
    ] {
        if let Some(v) = f.get(field) {
            return Err(refuse(f, field, v, why));
        }
    }
    if f.opt_bool("force_window_on_all_layers")? == Some(true) {
        return Err(refuse(f, "force_window_on_all_layers", true, "taylorcal's students have GDN layers"));
    }
    let hidden = f.opt_usize("hidden_size")?.unwrap_or(2048);
    let heads = f.opt_usize("num_heads")?.unwrap_or(32);
    let kv_heads = f.opt_usize("num_kv_heads")?.unwrap_or(heads);
    let head_dim = f.opt_usize("head_dim")?.unwrap_or_else(|| default_head_dim(hidden, heads));
    let bias = f.opt_bool("qkv_bias")?.unwrap_or(false);
    let qk_norm = f.opt_bool("qk_norm")?.unwrap_or(false);
    let arch = match f.opt_str("teacher_model_type")? {
        Some(t) => hf::arch_from_model_type(t, f.path).with_context(|| format!("field 'teacher_model_type' in {}", f.path.display()))?,
        None if qk_norm => Arch::Qwen3,
        None if bias => Arch::Qwen2,
        None => Arch::Llama,
    };
    let theta = f.opt_f32("rope_theta")?.unwrap_or(10000.0);
    let kept = f.opt_usize_list("keep_full_attention_layers")?.unwrap_or_default();
    let l = Layout {
        format: Format::Reference,
        arch,
        hidden_size: hidden,
        heads: (heads, kv_heads, head_dim),
        attention_bias: bias,
        qk_norm,
        rope_theta: theta,
        kept,
    };
    hybrid(f, l)
}
