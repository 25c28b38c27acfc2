//! The hybrid student on disk: kept softmax layers and Gated DeltaNet (gdn_v4) layers. A checkpoint is a directory with `model.safetensors`,
//! `config.json` (the teacher's Llama fields + `"model_type": "taylorcal_hybrid"`,
//! `attn_layers`, GDN settings), `tokenizer.json` and `report.json`, written into a
//! temporary directory and renamed into place, so a crash never leaves half a checkpoint.
use super::{hf, weights, HostTensor, ModelConfig};
use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const MODEL_TYPE: &str = "taylorcal_hybrid";
/// The optimizer state inside a checkpoint directory of a distillation run.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Clone, Debug, PartialEq)]
pub struct HybridConfig {
    pub base: ModelConfig,
    /// Layers that keep softmax attention (sorted); every other layer is GDN.
    pub attn_layers: Vec<usize>,
    pub gdn_use_silu: bool,
    pub gdn_norm_eps: f32,
    pub gdn_chunk_size: usize,
}

impl HybridConfig {
    pub fn new(base: ModelConfig, mut attn_layers: Vec<usize>) -> Result<HybridConfig> {
        attn_layers.sort_unstable();
        attn_layers.dedup();
        if let Some(&bad) = attn_layers.iter().find(|&&l| l >= base.num_hidden_layers) {
            bail!(
                "kept layer {bad} does not exist: the teacher has {} layers (0..={})",
                base.num_hidden_layers,
                base.num_hidden_layers - 1
            );
        }
        Ok(HybridConfig { base, attn_layers, gdn_use_silu: true, gdn_norm_eps: 1e-5, gdn_chunk_size: 64 })
    }

    pub fn is_gdn(&self, layer: usize) -> bool {
        !self.attn_layers.contains(&layer)
    }

    pub fn gdn_layers(&self) -> Vec<usize> {
        (0..self.base.num_hidden_layers).filter(|&l| self.is_gdn(l)).collect()
    }

    pub fn to_json(&self) -> Value {
        let mut v = hf::hf_config_json(&self.base);
        let o = v.as_object_mut().expect("config object");
        o.insert("teacher_model_type".into(), o["model_type"].clone());
        o.insert("model_type".into(), json!(MODEL_TYPE));
        o.insert("architectures".into(), json!(["TaylorcalHybridForCausalLM"]));
        o.insert("attn_layers".into(), json!(self.attn_layers));
        o.insert("gdn_use_silu".into(), json!(self.gdn_use_silu));
        o.insert("gdn_norm_eps".into(), json!(self.gdn_norm_eps));
        o.insert("gdn_chunk_size".into(), json!(self.gdn_chunk_size));
        o.insert("qk_norm".into(), json!(self.base.qk_norm));
        v
    }

    /// Parse a hybrid `config.json` (`path` for error messages).
    pub fn from_json(text: &str, path: &Path) -> Result<HybridConfig> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        ensure!(v["model_type"] == MODEL_TYPE, "{} is not a taylorcal hybrid checkpoint (model_type {})", path.display(), v["model_type"]);
        let mut base_json = v.clone();
        base_json["model_type"] = v.get("teacher_model_type").cloned().unwrap_or(json!("llama"));
        let mut base = hf::parse_hf_config(&base_json.to_string(), path)?;
        base.qk_norm = v["qk_norm"].as_bool().unwrap_or(base.qk_norm);
        let layers = v["attn_layers"].as_array().with_context(|| format!("missing required field 'attn_layers' in {}", path.display()))?;
        let attn_layers = layers
            .iter()
            .map(|x| x.as_u64().map(|u| u as usize).with_context(|| format!("{}: attn_layers holds a non-integer {x}", path.display())))
            .collect::<Result<Vec<_>>>()?;
        let mut cfg = HybridConfig::new(base, attn_layers).with_context(|| format!("in {}", path.display()))?;
        cfg.gdn_use_silu = v["gdn_use_silu"].as_bool().unwrap_or(true);
        cfg.gdn_norm_eps = v["gdn_norm_eps"].as_f64().unwrap_or(1e-5) as f32;
        cfg.gdn_chunk_size = v["gdn_chunk_size"].as_u64().unwrap_or(64) as usize;
        Ok(cfg)
    }
}

/// `model.layers.{i}.attn.{name}` (flash-linear-attention's GatedDeltaNet naming).
pub fn gdn_name(layer: usize, name: &str) -> String {
    format!("model.layers.{layer}.attn.{name}")
}

/// Where a GDN parameter stands in phase 2 alignment (per-layer MSE against the teacher's
/// attention output): which learning rate it trains with, or that it stays frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlignGroup {
    /// The q, k, v projections (phase 2's `lr_qkv`).
    Qkv,
    /// The gates: the a, b, g projections, A_log and dt_bias (phase 2's `lr_gates`).
    Gates,
    /// Frozen in alignment: the output projection and the output norm's weight.
    Frozen,
}

/// One parameter of a Gated DeltaNet block.
#[derive(Clone, Copy, Debug)]
pub struct GdnParam {
    /// flash-linear-attention's name, stored as `model.layers.{l}.attn.{name}` ([`gdn_name`]).
    pub name: &'static str,
    /// The shape for (hidden size D, heads H, head dim d).
    pub shape: fn(usize, usize, usize) -> Vec<usize>,
    /// Its group in phase 2 alignment.
    pub group: AlignGroup,
}

impl GdnParam {
    /// The shape for hidden size `hidden`, `heads` heads of dim `head_dim`.
    pub fn shape(&self, hidden: usize, heads: usize, head_dim: usize) -> Vec<usize> {
        (self.shape)(hidden, heads, head_dim)
    }
}

/// The ten parameters of a GDN block, in the order of the block's tensor type
/// (`nn::gdn::GdnTensors`): Wq, Wk, Wv [H d, D]; Wa, Wb [H, D]; Wg [H d, D]; Wo [D, H d];
/// A_log, dt_bias [H]; w_norm [d].
pub const GDN_PARAMS: [GdnParam; 10] = {
    use AlignGroup::{Frozen, Gates, Qkv};
    [
        GdnParam { name: "q_proj.weight", shape: |dm, h, d| vec![h * d, dm], group: Qkv },
        GdnParam { name: "k_proj.weight", shape: |dm, h, d| vec![h * d, dm], group: Qkv },
        GdnParam { name: "v_proj.weight", shape: |dm, h, d| vec![h * d, dm], group: Qkv },
        GdnParam { name: "a_proj.weight", shape: |dm, h, _| vec![h, dm], group: Gates },
        GdnParam { name: "b_proj.weight", shape: |dm, h, _| vec![h, dm], group: Gates },
        GdnParam { name: "g_proj.weight", shape: |dm, h, d| vec![h * d, dm], group: Gates },
        GdnParam { name: "o_proj.weight", shape: |dm, h, d| vec![dm, h * d], group: Frozen },
        GdnParam { name: "A_log", shape: |_, h, _| vec![h], group: Gates },
        GdnParam { name: "dt_bias", shape: |_, h, _| vec![h], group: Gates },
        GdnParam { name: "o_norm.weight", shape: |_, _, d| vec![d], group: Frozen },
    ]
};

/// Every tensor name and shape a hybrid checkpoint must hold.
pub fn expected_tensors(cfg: &HybridConfig) -> Vec<(String, Vec<usize>)> {
    let c = &cfg.base;
    let (dm, h, d) = (c.hidden_size, c.num_attention_heads, c.head_dim);
    let mut v: Vec<(String, Vec<usize>)> =
        weights::expected_tensors(c).into_iter().filter(|(n, _)| !(n.contains(".self_attn.") && cfg.is_gdn(layer_of(n)))).collect();
    for l in cfg.gdn_layers() {
        v.extend(GDN_PARAMS.iter().map(|p| (gdn_name(l, p.name), p.shape(dm, h, d))));
    }
    v
}

fn layer_of(name: &str) -> usize {
    name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|s| s.parse().ok()).unwrap_or(usize::MAX)
}

pub struct Checkpoint {
    pub config: HybridConfig,
    pub tensors: HashMap<String, HostTensor>,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub report: Value,
    /// Optimizer state of a distillation run (AdamW moments), saved as
    /// `optimizer.safetensors` so `--resume` continues exactly.
    pub optimizer: Option<HashMap<String, HostTensor>>,
    /// Further small files written into the directory (e.g. curve.csv, curve.svg).
    pub files: Vec<(String, Vec<u8>)>,
}

/// Write a checkpoint directory atomically: everything goes into `<dir>.tmp-<pid>` first,
/// which is renamed over `dir` only when complete (an older `dir` is replaced).
pub fn save_checkpoint(dir: &Path, ck: &Checkpoint) -> Result<()> {
    save_checkpoint_with(dir, ck, || Ok(()))
}

/// As [`save_checkpoint`], running `before_publish` between writing and renaming (tests
/// use it to fail mid-way).
pub fn save_checkpoint_with(dir: &Path, ck: &Checkpoint, before_publish: impl FnOnce() -> Result<()>) -> Result<()> {
    let tmp = sibling(dir, &format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = (|| {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        hf::write_safetensors(&tmp.join("model.safetensors"), &ck.tensors)?;
        hf::write_atomic(&tmp.join("config.json"), serde_json::to_string_pretty(&ck.config.to_json())?.as_bytes())?;
        if let Some(tok) = &ck.tokenizer {
            let text = tok.to_string(false).map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?;
            hf::write_atomic(&tmp.join("tokenizer.json"), text.as_bytes())?;
        }
        hf::write_atomic(&tmp.join("report.json"), serde_json::to_string_pretty(&ck.report)?.as_bytes())?;
        if let Some(opt) = &ck.optimizer {
            hf::write_safetensors(&tmp.join(OPTIMIZER_FILE), opt)?;
        }
        for (name, bytes) in &ck.files {
            hf::write_atomic(&tmp.join(name), bytes)?;
        }
        before_publish()?;
        let old = sibling(dir, &format!(".old-{}", std::process::id()));
        if dir.exists() {
            std::fs::rename(dir, &old).with_context(|| format!("moving the previous {} aside", dir.display()))?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "checkpoint".into());
    name.push(suffix);
    dir.with_file_name(name)
}

pub fn is_checkpoint(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json")).is_ok_and(|t| t.contains(MODEL_TYPE))
}

pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let cpath = dir.join("config.json");
    let text = std::fs::read_to_string(&cpath).with_context(|| format!("reading {}", cpath.display()))?;
    let config = HybridConfig::from_json(&text, &cpath)?;
    let tensors = hf::read_safetensors(&dir.join("model.safetensors"))?;
    for (name, shape) in expected_tensors(&config) {
        match tensors.get(&name) {
            None => bail!("{}: missing tensor {name}", dir.display()),
            Some(t) if t.shape != shape => bail!("{}: tensor {name} has shape {:?}, expected {shape:?}", dir.display(), t.shape),
            _ => {}
        }
    }
    let tok_path = dir.join("tokenizer.json");
    let tokenizer = if tok_path.is_file() { Some(super::hf::load_tokenizer_json(&tok_path)?) } else { None };
    let report = std::fs::read_to_string(dir.join("report.json")).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer = if opt_path.is_file() { Some(hf::read_safetensors(&opt_path)?) } else { None };
    Ok(Checkpoint { config, tensors, tokenizer, report, optimizer, files: vec![] })
}
