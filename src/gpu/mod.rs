//! The GPU runtime: a context (adapter, device, queue, limits, features, and the
//! [`GpuOptions`] it was created with), tensors, a pipeline cache keyed by shader +
//! constants, command batches, readback and timestamps.

mod context;
mod kernel;
mod options;
mod tensor;
mod timer;

pub use context::{Gpu, GpuInfo};
pub use kernel::{grid, Batch, Binding, Kernel};
pub use options::{GpuOptions, MatmulKernel, Precision, ShaderChecks, DEFAULT_STATE_SMEM};
pub use tensor::{DType, PendingRead, Tensor};
pub use timer::GpuTimer;

use std::path::Path;

/// Every WGSL file of the crate, by name (the file stem under `shaders/`).
/// Tests validate each of them with naga and translate them to SPIR-V, MSL and HLSL.
pub const SHADERS: &[(&str, &str)] = &[
    ("elementwise", include_str!("../../shaders/elementwise.wgsl")),
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    ("matmul_naive", include_str!("../../shaders/matmul_naive.wgsl")),
    ("matvec", include_str!("../../shaders/matvec.wgsl")),
    ("matmul_sg", include_str!("../../shaders/matmul_sg.wgsl")),
    ("rmsnorm", include_str!("../../shaders/rmsnorm.wgsl")),
    ("rope", include_str!("../../shaders/rope.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    ("attention_bwd", include_str!("../../shaders/attention_bwd.wgsl")),
    ("delta_chunk", include_str!("../../shaders/delta_chunk.wgsl")),
    ("delta_state", include_str!("../../shaders/delta_state.wgsl")),
    ("delta_out", include_str!("../../shaders/delta_out.wgsl")),
    ("delta_bwd", include_str!("../../shaders/delta_bwd.wgsl")),
    ("delta_step", include_str!("../../shaders/delta_step.wgsl")),
    ("nll", include_str!("../../shaders/nll.wgsl")),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("matmul_grad", include_str!("../../shaders/matmul_grad.wgsl")),
    ("gdn_act", include_str!("../../shaders/gdn_act.wgsl")),
    ("gated_norm", include_str!("../../shaders/gated_norm.wgsl")),
    ("kl", include_str!("../../shaders/kl.wgsl")),
    ("mma_tile", include_str!("../../shaders/mma_tile.wgsl")),
    ("mma_absmax", include_str!("../../shaders/mma_absmax.wgsl")),
    ("mma_coop", include_str!("../../shaders/mma_coop.wgsl")),
    ("attn_mma_tile", include_str!("../../shaders/attn_mma_tile.wgsl")),
    ("attn_mma_coop", include_str!("../../shaders/attn_mma_coop.wgsl")),
    ("attn_bwd_mma_tile", include_str!("../../shaders/attn_bwd_mma_tile.wgsl")),
    ("attn_bwd_mma_coop", include_str!("../../shaders/attn_bwd_mma_coop.wgsl")),
];

/// Files that shaders pull in with a `// #include NAME` line (not shaders of their own).
pub const INCLUDES: &[(&str, &str)] = &[
    ("delta_common", include_str!("../../shaders/delta_common.wgsl")),
    ("mma_common", include_str!("../../shaders/mma_common.wgsl")),
    ("attn_mma_common", include_str!("../../shaders/attn_mma_common.wgsl")),
    ("attn_bwd_mma_common", include_str!("../../shaders/attn_bwd_mma_common.wgsl")),
    ("attn_mma_frag_tile", include_str!("../../shaders/attn_mma_frag_tile.wgsl")),
];

/// `src` with every line starting `// #include NAME` replaced by the included file.
pub fn resolve_includes(src: &str) -> String {
    resolve_includes_from(src, None)
}

fn override_source(dir: Option<&Path>, name: &str) -> Option<String> {
    let path = dir?.join(format!("{name}.wgsl"));
    let src = std::fs::read_to_string(&path).ok()?;
    eprintln!("taylorcal: shader '{name}' from {} (shader directory override)", path.display());
    Some(src)
}

fn resolve_includes_from(src: &str, dir: Option<&Path>) -> String {
    let mut out = String::with_capacity(src.len());
    for line in src.lines() {
        match line.strip_prefix("// #include ") {
            Some(rest) => {
                let name = rest.split_whitespace().next().unwrap_or("");
                let inc = INCLUDES.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("unknown shader include '{name}'"));
                match override_source(dir, name) {
                    Some(o) => out.push_str(&o),
                    None => out.push_str(inc.1),
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Every shader's source with its includes resolved: the built-in files, except where a
/// directory ([`GpuOptions::shader_dir`]) holds `NAME.wgsl`, which replaces the shader or
/// include of that name. Each [`Gpu`] resolves its own at its first pipeline.
pub(crate) struct ShaderSources(Vec<(&'static str, String)>);

impl ShaderSources {
    /// The sources, with the files in `dir` (if any) in place of the built-in ones.
    pub(crate) fn resolve(dir: Option<&Path>) -> ShaderSources {
        ShaderSources(
            SHADERS
                .iter()
                .map(|(n, s)| {
                    let src = override_source(dir, n).unwrap_or_else(|| s.to_string());
                    (*n, resolve_includes_from(&src, dir))
                })
                .collect(),
        )
    }

    /// The source of a shader by name; panics on an unknown name (a programming error, not input).
    pub(crate) fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, s)| s.as_str()).unwrap_or_else(|| panic!("unknown shader '{name}'"))
    }
}

/// Replace the value of `const NAME: TYPE = VALUE;` declarations in a WGSL source,
/// so every shader file stays valid WGSL on its own while the host picks tile sizes.
/// A `enable f16;` directive is put first when `f16` is true and the source asks for
/// it through `alias WT = f32; // f16-switch`.
pub fn specialise(src: &str, consts: &[(&str, u32)], f16: bool) -> String {
    let mut out = String::with_capacity(src.len() + 32);
    // a shader that always needs f16 says `enable f16;` itself
    if f16 && !src.lines().any(|l| l.trim() == "enable f16;") {
        out.push_str("enable f16;\n");
    }
    for line in src.lines() {
        let t = line.trim_start();
        let mut replaced = false;
        if let Some(rest) = t.strip_prefix("const ") {
            for (name, value) in consts {
                if let Some(after) = rest.strip_prefix(name) {
                    if let Some(ty) = after.strip_prefix(": ") {
                        let ty = ty.split(' ').next().unwrap_or("u32");
                        out.push_str(&format!("const {name}: {ty} = {value}u;\n"));
                        replaced = true;
                        break;
                    }
                }
            }
        }
        if !replaced && f16 && t.starts_with("alias WT = f32;") {
            out.push_str("alias WT = f16;\n");
            replaced = true;
        }
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shader_dir_overrides_an_include_and_falls_back_without_one() {
        let dir = std::env::temp_dir().join(format!("taylorcal-shader-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = "// #include delta_common\nfn main_body() {}";
        // no file in the directory: the built-in include
        let builtin = resolve_includes_from(src, Some(&dir));
        assert!(builtin.contains("fn low_tile("), "the built-in delta_common was not included");
        assert_eq!(builtin, resolve_includes(src));
        let plain = ShaderSources::resolve(None);
        let empty_dir = ShaderSources::resolve(Some(&dir));
        for (n, _) in SHADERS {
            assert_eq!(empty_dir.get(n), plain.get(n), "{n}: an empty shader directory changed it");
        }
        // a file named after the include replaces it, one named after a shader replaces that
        std::fs::write(dir.join("delta_common.wgsl"), "const MARKER: u32 = 7u;").unwrap();
        std::fs::write(dir.join("kl.wgsl"), "const KL_MARKER: u32 = 8u;").unwrap();
        let over = resolve_includes_from(src, Some(&dir));
        assert!(over.contains("const MARKER: u32 = 7u;") && !over.contains("fn low_tile("), "override not used: {over}");
        assert!(over.contains("fn main_body() {}"));
        assert_eq!(override_source(Some(&dir), "delta_out"), None);
        // two resolutions, with and without the directory, are independent of each other
        let with_dir = ShaderSources::resolve(Some(&dir));
        assert!(with_dir.get("delta_out").contains("const MARKER: u32 = 7u;"), "include override not used by a shader");
        assert_eq!(with_dir.get("kl").trim(), "const KL_MARKER: u32 = 8u;");
        assert!(!plain.get("delta_out").contains("MARKER") && plain.get("delta_out").contains("fn low_tile("));
        assert_eq!(plain.get("kl"), resolve_includes(SHADERS.iter().find(|(n, _)| *n == "kl").unwrap().1));
        assert_eq!(with_dir.get("matmul"), plain.get("matmul"), "a shader without a file in the directory must stay built-in");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
