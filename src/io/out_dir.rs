//! The output directory of a command that saves (`--out`): which directories a command may
//! write into, and an advisory lock held for the whole run.
//!
//! A command writes into `--out` only if it does not exist, is empty, or already holds
//! taylorcal output of the same kind (a checkpoint for convert and distill; only the
//! report's own files for ablate and recovery; an export export recognises as its own).
//! Anything else is refused before any work starts unless `force` is given; even then only
//! the files the command writes are replaced and every other file is left alone (the
//! writers never delete a directory). The input model is never a valid output: `--out` may
//! not be it, lie inside it or contain it.
use super::checkpoint::{self, INTERNAL_PREFIX};
use super::hf;
use anyhow::{bail, Context as _, Result};
use std::fs::{File, TryLockError};
use std::path::{Component, Path, PathBuf};

/// The lock file inside an output directory, held (advisory lock) while a command writes.
pub const LOCK_FILE: &str = ".taylorcal.lock";

/// What a command writes into its output directory.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A checkpoint (convert, distill): an existing checkpoint may be written over.
    Checkpoint,
    /// Report files (ablate, recovery): a directory holding only files whose names the
    /// function accepts may be written over.
    Report(fn(&str) -> bool),
    /// A model directory of common file names (export): a directory the function
    /// recognises as this command's earlier output may be written over.
    Model(fn(&Path) -> bool),
}

/// A claimed output directory: it exists, passed the checks of [`claim`], and this process
/// holds its lock until the value is dropped.
pub struct OutDir {
    _lock: File,
}

/// Check that `dir` may receive output of `kind` (see the module docs; `inputs` are the
/// model files or directories the command reads), create it, take its lock and, for a
/// checkpoint, finish or clean what a killed run left there.
pub fn claim(dir: &Path, kind: Kind, inputs: &[&Path], force: bool) -> Result<OutDir> {
    check(dir, kind, inputs, force)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening the lock file {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use by another taylorcal run (it holds the lock {}); wait for it to finish or choose another --out",
            dir.display(),
            lock_path.display()
        ),
        Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", lock_path.display())),
    }
    if let Kind::Checkpoint = kind {
        checkpoint::recover(dir)?;
    }
    // the temporary files of atomic writes that a crash interrupted
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?.flatten() {
        if hf::is_tmp_name(&e.file_name().to_string_lossy()) && e.path().is_file() {
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(OutDir { _lock: lock })
}

/// Check, before any work, that a command may write the single file `file` (a report such
/// as `select --out`): it is no directory, no input nor inside one, and where it exists,
/// `ours` recognises it as this command's output: no other file is ever written over.
pub fn check_file(file: &Path, inputs: &[&Path], ours: impl Fn(&Path) -> bool) -> Result<()> {
    if file.is_dir() {
        bail!("{} is a directory; give a file name", file.display());
    }
    if let Some(input) = overlapping_input(&canonical(file)?, inputs) {
        bail!("{} would write over the input {}; choose a path outside it", file.display(), input.display());
    }
    if file.exists() && !ours(file) {
        bail!("{} exists and was not written by this command; choose another path, or remove it first", file.display());
    }
    Ok(())
}

/// The checks of [`claim`], which change nothing on disk (a command may run them before it
/// reads its input, and claim after).
pub fn check(dir: &Path, kind: Kind, inputs: &[&Path], force: bool) -> Result<()> {
    if !matches!(dir.components().next_back(), Some(Component::Normal(_))) {
        bail!("--out {} names no directory of its own; give a new directory's name, e.g. --out student", dir.display());
    }
    if dir.exists() && !dir.is_dir() {
        bail!("--out {} exists and is not a directory", dir.display());
    }
    let target = canonical(dir)?;
    if std::env::current_dir().ok().and_then(|d| d.canonicalize().ok()).is_some_and(|cwd| cwd == target) {
        bail!("--out {} is the current directory; give a new directory's name, e.g. --out student", dir.display());
    }
    if let Some(input) = overlapping_input(&target, inputs) {
        bail!(
            "--out {} would write over the input model {}; choose a directory outside it (and not containing it)",
            dir.display(),
            input.display()
        );
    }
    if !dir.exists() || force {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    let mut foreign = vec![];
    for e in entries {
        let name = e.with_context(|| format!("listing {}", dir.display()))?.file_name().to_string_lossy().into_owned();
        if !name.starts_with(INTERNAL_PREFIX) {
            foreign.push(name);
        }
    }
    let ours = match kind {
        Kind::Checkpoint => foreign.is_empty() || checkpoint::is_checkpoint(dir),
        Kind::Report(owns) => foreign.iter().all(|n| owns(n)),
        Kind::Model(ours) => foreign.is_empty() || ours(dir),
    };
    if !ours {
        let what = match kind {
            Kind::Checkpoint => "is not a taylorcal checkpoint",
            Kind::Report(_) | Kind::Model(_) => "holds files this command did not write",
        };
        foreign.sort();
        let shown: Vec<&str> = foreign.iter().take(3).map(String::as_str).collect();
        bail!(
            "--out {} {what} (it holds {}{}); choose another --out, or pass --force to write into it anyway \
             (--force replaces only the files this command writes and leaves every other file alone)",
            dir.display(),
            shown.join(", "),
            if foreign.len() > shown.len() { ", ..." } else { "" }
        );
    }
    Ok(())
}

/// The first input (resolved) that is `target`, contains it or lies inside it.
fn overlapping_input(target: &Path, inputs: &[&Path]) -> Option<PathBuf> {
    inputs.iter().filter_map(|i| i.canonicalize().ok()).find(|i| target == i || target.starts_with(i) || i.starts_with(target))
}

/// `path` with every link and `..` resolved, for a path that may not exist yet: its deepest
/// existing ancestor canonicalised, the rest appended.
fn canonical(path: &Path) -> Result<PathBuf> {
    let path = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir()?.join(path) };
    let mut rest = vec![];
    let mut base = path.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            return Ok(rest.iter().rev().fold(c, |acc: PathBuf, part| match part {
                Component::ParentDir => acc.parent().map(Path::to_path_buf).unwrap_or(acc),
                Component::CurDir => acc,
                other => acc.join(other),
            }));
        }
        match (base.parent(), base.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                base = parent;
            }
            _ => return Ok(path.clone()),
        }
    }
}
