//! The environment variables the program reads (README, "Environment"), turned into the
//! library's option values: the GPU context's [`GpuOptions`], phase 1's research knobs and
//! the model cache directory (and a private XDG_RUNTIME_DIR when it is unset). Nothing else
//! in the crate reads or sets the environment. Written against `taylorcal::` paths only, so
//! the examples, benchmarks and tests include this file too.
use anyhow::{anyhow, bail, Context as _, Result};
use std::path::PathBuf;
use std::str::FromStr;
use taylorcal::calibrate::phase1::{Phase1Component, Phase1Knobs};
use taylorcal::gpu::{GpuOptions, MatmulKernel, ShaderChecks};

/// The value of `name`; `None` when unset, an error when it is not UTF-8.
fn var(name: &str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => bail!("{name}={v:?} is not valid UTF-8"),
    }
}

/// The value of `name` parsed as `T` (`what` names the expected kind in the error).
fn parsed<T: FromStr>(name: &str, what: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    var(name)?.map(|v| v.trim().parse::<T>().map_err(|e| anyhow!("{name}={v:?} is not {what}: {e}"))).transpose()
}

/// [`GpuOptions`] from `WGPU_ADAPTER_NAME`, `WGPU_BACKEND`, `TAYLORCAL_MAX_BINDING`,
/// `TAYLORCAL_SHADER_CHECKS`, `TAYLORCAL_SHADER_DIR`, `TAYLORCAL_MATMUL`,
/// `TAYLORCAL_DELTA_SMEM`, `TAYLORCAL_ATTENTION_MMA`, `TAYLORCAL_MMA_TILE` and
/// `TAYLORCAL_NO_COOP`; the default for each one unset.
pub fn gpu_options_from_env() -> Result<GpuOptions> {
    let d = GpuOptions::default();
    let backends = match var("WGPU_BACKEND")? {
        Some(v) => {
            let b = wgpu::Backends::from_comma_list(&v);
            if b.is_empty() {
                bail!("WGPU_BACKEND={v:?} names no backend (a comma list of vulkan, metal, dx12, gl)");
            }
            b
        }
        None => d.backends,
    };
    let shader_checks = match var("TAYLORCAL_SHADER_CHECKS")? {
        Some(v) => {
            ShaderChecks::parse(v.trim()).with_context(|| format!("TAYLORCAL_SHADER_CHECKS={v:?} is not one of full, bounds, none"))?
        }
        None => d.shader_checks,
    };
    let matmul = match var("TAYLORCAL_MATMUL")? {
        Some(v) => Some(
            MatmulKernel::parse(v.trim())
                .with_context(|| format!("TAYLORCAL_MATMUL={v:?}: expected tiled, tiled64, tiled128, subgroup or matvec"))?,
        ),
        None => None,
    };
    Ok(GpuOptions {
        adapter_name: var("WGPU_ADAPTER_NAME")?,
        backends,
        max_binding: parsed("TAYLORCAL_MAX_BINDING", "a byte count")?,
        shader_checks,
        shader_dir: std::env::var_os("TAYLORCAL_SHADER_DIR").map(PathBuf::from),
        matmul,
        delta_state_smem: parsed("TAYLORCAL_DELTA_SMEM", "a byte count")?.unwrap_or(d.delta_state_smem),
        attention_rows: d.attention_rows,
        attention_mma: var("TAYLORCAL_ATTENTION_MMA")?.map(|v| v.trim() != "0"),
        mma_tile: match parsed::<usize>("TAYLORCAL_MMA_TILE", "a tile size")? {
            Some(t) if t != 64 && t != 128 => bail!("TAYLORCAL_MMA_TILE={t}: the mma tiles are 64 and 128"),
            t => t,
        },
        no_coop: var("TAYLORCAL_NO_COOP")?.is_some_and(|v| v.trim() != "0"),
        // a command-line option (`--precision`), not an environment variable
        precision: None,
    })
}

/// Phase 1's research knobs from `TAYLORCAL_PHASE1_SKIP` (a comma list of decay, beta,
/// sigma, gate), `TAYLORCAL_SIGMA_FIXED` and `TAYLORCAL_GATE_SCALE` (numbers); none set:
/// the method.
pub fn phase1_knobs_from_env() -> Result<Phase1Knobs> {
    let skip = match var("TAYLORCAL_PHASE1_SKIP")? {
        Some(v) => Phase1Component::parse_list(&v).context("TAYLORCAL_PHASE1_SKIP")?,
        None => vec![],
    };
    Ok(Phase1Knobs {
        skip,
        sigma_fixed: parsed("TAYLORCAL_SIGMA_FIXED", "a number")?,
        gate_scale: parsed("TAYLORCAL_GATE_SCALE", "a number")?,
    })
}

/// Where the default teacher is cached: `TAYLORCAL_CACHE`, else
/// [`taylorcal::io::fetch::default_cache_dir`].
pub fn cache_dir_from_env() -> PathBuf {
    std::env::var_os("TAYLORCAL_CACHE").map(PathBuf::from).unwrap_or_else(taylorcal::io::fetch::default_cache_dir)
}

/// An empty directory made for this process as its `XDG_RUNTIME_DIR`, removed on drop.
pub struct RuntimeDir(PathBuf);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// When `XDG_RUNTIME_DIR` is unset or not an absolute path, point it at a new private
/// (mode 0700) empty directory. Mesa's Vulkan device-select layer looks for a Wayland
/// display while wgpu sets up its instance, and libwayland prints "error: XDG_RUNTIME_DIR
/// is invalid or not set in the environment." for each look without one; in the empty
/// directory it finds no display, silently, as before. Sets an environment variable: call
/// before any other thread starts. `None` when the variable is fine or no directory could
/// be made (the message then stays).
pub fn private_runtime_dir() -> Option<RuntimeDir> {
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| PathBuf::from(d).is_absolute()) || !cfg!(unix) {
        return None;
    }
    let dir = std::env::temp_dir().join(format!("taylorcal-runtime-{}", std::process::id()));
    // left by an earlier process of this id: only an empty directory is removed
    let _ = std::fs::remove_dir(&dir);
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).ok()?;
    std::env::set_var("XDG_RUNTIME_DIR", &dir);
    Some(RuntimeDir(dir))
}
