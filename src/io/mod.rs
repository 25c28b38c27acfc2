//! File formats only: model descriptions (config), GGUF, safetensors / Hugging Face
//! directories, tokenizers, fetching the default teacher, and taylorcal's own checkpoint
//! directory with the rules for an output directory (`out_dir`), the student's exported
//! layouts for Python tools (`export`), content fingerprints (`fingerprint`) and token shards (`shard`). Nothing here touches the GPU; everything returns host tensors under
//! Hugging Face Llama names.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod dtype;
pub mod export;
pub mod fetch;
pub mod fingerprint;
pub mod gguf;
pub mod hf;
pub mod out_dir;
pub mod shard;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use weights::{HostTensor, ModelFiles};

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

fn is_gguf_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The `.gguf` files directly inside `dir`, sorted.
fn gguf_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file() && is_gguf_name(p)).collect();
    files.sort();
    Ok(files)
}

/// Loads a model from a Hugging Face directory (`config.json` + safetensors), a `.gguf`
/// file, or a directory holding exactly one `.gguf` file.
pub fn load_model(path: &Path) -> Result<ModelFiles> {
    if !path.exists() {
        bail!("model path '{}' does not exist", path.display());
    }
    if path.is_file() {
        if is_gguf_name(path) {
            return gguf::load_gguf(path);
        }
        if path.file_name().is_some_and(|n| n == "config.json") {
            return hf::load_hf_dir(path.parent().unwrap_or(Path::new(".")));
        }
        bail!("model path '{}' is neither a .gguf file nor a Hugging Face model directory", path.display());
    }
    if path.join("config.json").is_file() {
        return hf::load_hf_dir(path);
    }
    match gguf_files_in(path)?.as_slice() {
        [one] => gguf::load_gguf(one),
        [] => bail!("model directory '{}' has no config.json and no .gguf file", path.display()),
        many => bail!(
            "model directory '{}' has no config.json and {} .gguf files ({}); pass one of them",
            path.display(),
            many.len(),
            many.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Whether `dir` holds a hybrid student: a taylorcal checkpoint, or a student exported for
/// Python tools ([`export::Format`], by config.json's model_type).
pub fn is_student(dir: &Path) -> bool {
    checkpoint::is_checkpoint(dir) || export::format_of(dir).is_some()
}

/// Reads the hybrid student in `dir`, a taylorcal checkpoint or an export in either layout
/// (the model directory every command taking a student reads).
pub fn load_student(dir: &Path) -> Result<checkpoint::Checkpoint> {
    match export::format_of(dir) {
        Some(_) => export::load_export(dir),
        None => checkpoint::load_checkpoint(dir),
    }
}
