//! The hybrid student on disk: kept softmax layers and Gated DeltaNet (gdn_v4) layers. A
//! checkpoint is a directory with `model.safetensors`, `config.json` (the teacher's Llama
//! fields + `"model_type": "taylorcal_hybrid"`, `attn_layers`, GDN settings),
//! `tokenizer.json`, `report.json` and, for a distillation run, the optimizer state and
//! curves, all side by side as other tools expect them.
//!
//! # Crash safety
//! At every instant one complete checkpoint is found at the path the user gave, on any
//! file system that renames atomically (Linux, macOS, Windows alike). A write:
//! 1. finishes or removes what a killed write left ([`recover`]);
//! 2. writes every file, and a manifest naming them, into `dir/.taylorcal-staging` and
//!    flushes them (fsync of files and directory);
//! 3. renames the staging directory to `dir/.taylorcal-commit`: this one atomic rename is
//!    the commit. Before it a load reads the previous checkpoint; after it, the new one
//!    (files named by the manifest are read from the commit directory while they are there);
//! 4. removes the previous checkpoint's files the new one lacks, moves each file into place
//!    with one rename, then drops the manifest and the commit directory. Each step can be
//!    repeated, so the next write (or a command claiming the directory) finishes it.
//!
//! This keeps the flat layout (no generation subdirectories and pointer file: every
//! existing checkpoint and reader keeps working) and, unlike swapping whole directories,
//! never replaces `dir` itself: files in it that are not the checkpoint's are left alone,
//! and a lock file inside it ([`super::out_dir`]) stays the same file for the whole run.
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
        ensure!(
            v["model_type"] == MODEL_TYPE,
            "{} is not a taylorcal hybrid checkpoint (model_type {}; a student's is {MODEL_TYPE}, or gated_deltanet or student for \
             an exported one)",
            path.display(),
            v["model_type"]
        );
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

/// Checks that `tensors` hold every `expected` tensor (name, shape: [`expected_tensors`], or
/// an exported layout's names for them) with its shape; `source` starts the error message.
pub fn check_tensors(
    expected: impl IntoIterator<Item = (String, Vec<usize>)>,
    tensors: &HashMap<String, HostTensor>,
    source: &str,
) -> Result<()> {
    for (name, shape) in expected {
        match tensors.get(&name) {
            None => bail!("{source}: missing tensor {name}"),
            Some(t) if t.shape != shape => bail!("{source}: tensor {name} has shape {:?}, expected {shape:?}", t.shape),
            _ => {}
        }
    }
    Ok(())
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

/// Files a checkpoint always or sometimes holds; a write removes those the new checkpoint
/// lacks (a stale `tokenizer.json` or optimizer state would otherwise be loaded with it).
pub const CHECKPOINT_FILES: [&str; 5] = ["model.safetensors", "config.json", "tokenizer.json", "report.json", OPTIMIZER_FILE];
pub use super::hf::INTERNAL_PREFIX;
/// Where a write puts the new checkpoint's files until they are all on disk.
const STAGING: &str = ".taylorcal-staging";
/// The staging directory once committed: it holds the checkpoint a load finds.
const COMMIT: &str = ".taylorcal-commit";
/// Inside the staging / commit directory: the names of the new checkpoint's files.
const MANIFEST: &str = ".taylorcal-manifest.json";

/// The steps of a checkpoint write after which [`save_checkpoint_hooked`] runs its hook, in
/// order (tests stop a write at each one to play a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveStep<'a> {
    /// Every file of the new checkpoint is written and flushed into the staging directory;
    /// a crash up to here leaves the previous checkpoint in force.
    Staged,
    /// The staging directory was renamed to the commit directory: from here on a load finds
    /// the new checkpoint.
    Committed,
    /// A file of the previous checkpoint that the new one lacks was removed.
    Removed(&'a str),
    /// One file was moved from the commit directory into place.
    Moved(&'a str),
    /// Every file is in place and the manifest is gone; the empty commit directory remains.
    Published,
}

/// Write a checkpoint into `dir` (created if missing) so that a crash at any instant leaves
/// one complete checkpoint there: see the module docs. Files in `dir` that are not the
/// checkpoint's are left alone.
pub fn save_checkpoint(dir: &Path, ck: &Checkpoint) -> Result<()> {
    save_checkpoint_hooked(dir, ck, &mut |_| Ok(()))
}

/// As [`save_checkpoint`], running `before_publish` once every file is staged, before the
/// commit (tests use it to fail mid-way).
pub fn save_checkpoint_with(dir: &Path, ck: &Checkpoint, before_publish: impl FnOnce() -> Result<()>) -> Result<()> {
    let mut before_publish = Some(before_publish);
    save_checkpoint_hooked(dir, ck, &mut |step| match (step, before_publish.take()) {
        (SaveStep::Staged, Some(f)) => f(),
        _ => Ok(()),
    })
}

/// As [`save_checkpoint`], running `hook` after each [`SaveStep`]. An error from the hook
/// before the commit removes the staged files (and `dir`, if this call created it and it is
/// empty); after the commit it leaves the commit for the next load or write to finish.
pub fn save_checkpoint_hooked(dir: &Path, ck: &Checkpoint, hook: &mut dyn FnMut(SaveStep) -> Result<()>) -> Result<()> {
    for (name, _) in &ck.files {
        ensure!(
            !name.is_empty()
                && !name.contains(['/', '\\'])
                && !name.starts_with(INTERNAL_PREFIX)
                && !CHECKPOINT_FILES.contains(&name.as_str()),
            "a checkpoint cannot hold an extra file named {name:?}"
        );
    }
    let created = !dir.exists();
    if created {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        sync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
    }
    recover(dir)?;
    let staging = dir.join(STAGING);
    let staged = stage(&staging, ck).and_then(|()| hook(SaveStep::Staged));
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        if created {
            let _ = std::fs::remove_dir(dir);
        }
        return Err(e);
    }
    let commit = dir.join(COMMIT);
    std::fs::rename(&staging, &commit).with_context(|| format!("renaming {} to {}", staging.display(), commit.display()))?;
    sync_dir(dir)?;
    hook(SaveStep::Committed)?;
    publish(dir, hook)
}

/// Write every file of `ck` into `staging`, with the manifest, and flush them to disk.
fn stage(staging: &Path, ck: &Checkpoint) -> Result<()> {
    std::fs::create_dir(staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut names = vec!["model.safetensors".to_string(), "config.json".into()];
    hf::write_safetensors(&staging.join("model.safetensors"), &ck.tensors)?;
    hf::write_atomic(&staging.join("config.json"), serde_json::to_string_pretty(&ck.config.to_json())?.as_bytes())?;
    if let Some(tok) = &ck.tokenizer {
        let text = tok.to_string(false).map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?;
        hf::write_atomic(&staging.join("tokenizer.json"), text.as_bytes())?;
        names.push("tokenizer.json".into());
    }
    hf::write_atomic(&staging.join("report.json"), serde_json::to_string_pretty(&ck.report)?.as_bytes())?;
    names.push("report.json".into());
    if let Some(opt) = &ck.optimizer {
        hf::write_safetensors(&staging.join(OPTIMIZER_FILE), opt)?;
        names.push(OPTIMIZER_FILE.into());
    }
    for (name, bytes) in &ck.files {
        hf::write_atomic(&staging.join(name), bytes)?;
        names.push(name.clone());
    }
    // every file was flushed by its atomic write; the directory's entries are flushed here
    hf::write_atomic(&staging.join(MANIFEST), serde_json::to_string(&names)?.as_bytes())?;
    sync_dir(staging)
}

/// Move the committed files of `dir` into place (after removing the previous checkpoint's
/// files the new one lacks), then drop the manifest and the commit directory. Every step can
/// be repeated, so a write killed half-way is finished by the next [`recover`].
fn publish(dir: &Path, hook: &mut dyn FnMut(SaveStep) -> Result<()>) -> Result<()> {
    let commit = dir.join(COMMIT);
    let names = read_manifest(&commit)?.with_context(|| format!("{} has no manifest", commit.display()))?;
    for old in CHECKPOINT_FILES.into_iter().filter(|n| !names.iter().any(|m| m == n)) {
        let path = dir.join(old);
        if path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("removing the previous {}", path.display()))?;
            hook(SaveStep::Removed(old))?;
        }
    }
    for name in &names {
        let (from, to) = (commit.join(name), dir.join(name));
        if from.is_file() {
            std::fs::rename(&from, &to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
            hook(SaveStep::Moved(name))?;
        }
    }
    sync_dir(dir)?;
    let manifest = commit.join(MANIFEST);
    std::fs::remove_file(&manifest).with_context(|| format!("removing {}", manifest.display()))?;
    hook(SaveStep::Published)?;
    std::fs::remove_dir_all(&commit).with_context(|| format!("removing {}", commit.display()))?;
    sync_dir(dir)
}

/// Finish what a killed checkpoint write left in `dir`: a committed checkpoint is moved
/// into place, an uncommitted staging directory is removed. Nothing else is touched; a
/// missing `dir` is fine. Every write starts with it; a command calls it when it claims its
/// output directory.
pub fn recover(dir: &Path) -> Result<()> {
    let commit = dir.join(COMMIT);
    if commit.join(MANIFEST).is_file() {
        publish(dir, &mut |_| Ok(())).with_context(|| format!("finishing the interrupted checkpoint write in {}", dir.display()))?;
    } else if commit.is_dir() {
        // the manifest goes only after every file was moved: nothing of the checkpoint is left here
        std::fs::remove_dir_all(&commit).with_context(|| format!("removing {}", commit.display()))?;
    }
    let staging = dir.join(STAGING);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing the unfinished {}", staging.display()))?;
    }
    Ok(())
}

/// The names in a commit (or staging) directory's manifest; `None` without one.
fn read_manifest(commit: &Path) -> Result<Option<Vec<String>>> {
    let path = commit.join(MANIFEST);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("{} is not a list of names", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Flush a directory's entries to disk (Unix; elsewhere a directory cannot be opened as a
/// file, and renames are flushed with the file system's own journal, best effort).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|f| f.sync_all()).with_context(|| format!("flushing {}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Where the files of the checkpoint in a directory are: in place, or, while a write that
/// committed is not finished, in its commit directory (then its manifest names the files).
struct Files {
    dir: PathBuf,
    pending: Option<Vec<String>>,
}

impl Files {
    fn of(dir: &Path) -> Files {
        Files { dir: dir.to_path_buf(), pending: read_manifest(&dir.join(COMMIT)).ok().flatten() }
    }

    /// The path of `name` in the checkpoint, if it holds that file.
    fn get(&self, name: &str) -> Option<PathBuf> {
        if let Some(names) = &self.pending {
            if !names.iter().any(|n| n == name) {
                return None;
            }
            let committed = self.dir.join(COMMIT).join(name);
            if committed.is_file() {
                return Some(committed);
            }
        }
        Some(self.dir.join(name)).filter(|p| p.is_file())
    }

    /// As [`Files::get`], for a file every checkpoint holds: where it should be when missing
    /// (so the error names it).
    fn required(&self, name: &str) -> PathBuf {
        self.get(name).unwrap_or_else(|| self.dir.join(name))
    }
}

/// Whether `dir` holds a taylorcal checkpoint (its `config.json` says so).
pub fn is_checkpoint(dir: &Path) -> bool {
    Files::of(dir).get("config.json").and_then(|p| std::fs::read_to_string(p).ok()).is_some_and(|t| t.contains(MODEL_TYPE))
}

/// Read the checkpoint in `dir`, checking every tensor's name and shape.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let files = Files::of(dir);
    let cpath = files.required("config.json");
    let text = std::fs::read_to_string(&cpath).with_context(|| format!("reading {}", cpath.display()))?;
    let config = HybridConfig::from_json(&text, &cpath)?;
    let tensors = hf::read_safetensors(&files.required("model.safetensors"))?;
    check_tensors(expected_tensors(&config), &tensors, &dir.display().to_string())?;
    let tokenizer = files.get("tokenizer.json").map(|p| super::hf::load_tokenizer_json(&p)).transpose()?;
    let report = files
        .get("report.json")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let optimizer = files.get(OPTIMIZER_FILE).map(|p| hf::read_safetensors(&p)).transpose()?;
    Ok(Checkpoint { config, tensors, tokenizer, report, optimizer, files: vec![] })
}
