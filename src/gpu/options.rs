//! The settings of a GPU context, as one value: which adapter, the binding limit, how
//! kernels are compiled and the kernel choices tests and tuning force. The library reads
//! them from [`Gpu::options`](super::Gpu::options), never from the environment; the CLI
//! fills them from `WGPU_*` / `TAYLORCAL_*` variables (README, "Environment").
use std::path::PathBuf;

/// Default workgroup-memory budget of the delta rule's state passes, in bytes
/// ([`GpuOptions::delta_state_smem`]).
pub const DEFAULT_STATE_SMEM: usize = 32768;

/// Everything a [`Gpu`](super::Gpu) is created with. `GpuOptions::default()` is the
/// product's behaviour; every other value is a developer's or a test's choice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// Take the best adapter whose name contains this (case-insensitive); `None`: the
    /// highest-performance one (discrete > integrated > virtual > CPU). CLI: `WGPU_ADAPTER_NAME`.
    pub adapter_name: Option<String>,
    /// The backends searched for adapters (default: Vulkan, Metal, DX12). CLI: `WGPU_BACKEND`.
    pub backends: wgpu::Backends,
    /// Bind at most this many bytes of a tensor at once (clamped to [256, the adapter's
    /// limit]); lower than the adapter's limit it makes the split paths run anywhere (tests).
    /// `None`: the adapter's limit. CLI: `TAYLORCAL_MAX_BINDING`.
    pub max_binding: Option<u64>,
    /// The run-time checks wgpu builds into the kernels. CLI: `TAYLORCAL_SHADER_CHECKS`.
    pub shader_checks: ShaderChecks,
    /// Kernel tuning: a file `NAME.wgsl` in this directory replaces the built-in shader or
    /// include of that name (read at the context's first pipeline), so a built binary can
    /// time shader variants. CLI: `TAYLORCAL_SHADER_DIR`.
    pub shader_dir: Option<PathBuf>,
    /// Force the kernel of `ops::matmul::linear` (where the adapter can run it), so tests
    /// can cover every kernel on one machine; `None`: the adapter's best. CLI: `TAYLORCAL_MATMUL`.
    pub matmul: Option<MatmulKernel>,
    /// Workgroup-memory budget (bytes) of the delta rule's state passes' default tiles
    /// (`ops::delta::DeltaTiles::auto`). CLI: `TAYLORCAL_DELTA_SMEM`.
    pub delta_state_smem: usize,
    /// Force the rows per workgroup of the attention kernels, forward and backward (16 or
    /// 64), so tests cover both tile heights; `None`: chosen by shape.
    pub attention_rows: Option<usize>,
    /// Force the output tile of the `ops::mma` products (64 or 128) where the caller leaves
    /// it to the shape; `None`: `ops::mma::Tile::auto`. CLI: `TAYLORCAL_MMA_TILE`.
    pub mma_tile: Option<usize>,
    /// Whether the attention of callers that read no statistics, and its backward, run on
    /// the matrix units (`ops::attention::attention_out`, `attention_backward_auto`) where
    /// they can: `None` means yes. CLI: `TAYLORCAL_ATTENTION_MMA` (0 or 1).
    pub attention_mma: Option<bool>,
    /// Never use cooperative matrices (tensor cores), even where the adapter lists them:
    /// the `ops::mma` kernels take their fallback path (how tests compare both on one GPU).
    /// CLI: `TAYLORCAL_NO_COOP`.
    pub no_coop: bool,
    /// The operands of the matrix products (`ops::matmul`, `ops::matmul_grad`): `None`
    /// picks [`Precision::auto`]. CLI: `--precision`.
    pub precision: Option<Precision>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            adapter_name: None,
            backends: wgpu::Backends::PRIMARY,
            max_binding: None,
            shader_checks: ShaderChecks::default(),
            shader_dir: None,
            matmul: None,
            delta_state_smem: DEFAULT_STATE_SMEM,
            attention_rows: None,
            mma_tile: None,
            attention_mma: None,
            no_coop: false,
            precision: None,
        }
    }
}

/// The operands of the matrix products. Accumulation is f32 either way, and so are the
/// master weights, the optimizer's moments, the residual stream, norms, softmax statistics,
/// the GDN scan and every loss: only the operands of the linear layers' products (forward
/// and both gradients, the LM heads included) are rounded to f16, through the `ops::mma`
/// kernels (tensor cores where the adapter has them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F16,
    F32,
}

impl Precision {
    /// `f16` or `f32`.
    pub fn parse(s: &str) -> Option<Precision> {
        match s.to_lowercase().as_str() {
            "f16" => Some(Precision::F16),
            "f32" => Some(Precision::F32),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F16 => "f16",
            Precision::F32 => "f32",
        }
    }

    /// The default: f16 on a GPU with SHADER_F16; f32 elsewhere, CPU adapters (lavapipe)
    /// included, whose lanes gain no speed from f16 operands and only lose precision.
    pub fn auto(shader_f16: bool, device_type: &str) -> Precision {
        if shader_f16 && device_type != "Cpu" {
            Precision::F16
        } else {
            Precision::F32
        }
    }
}

/// The run-time checks wgpu builds into the kernels ([`GpuOptions::shader_checks`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShaderChecks {
    /// every check wgpu offers, including a counter in every loop (wgpu's `force_loop_bounding`)
    /// and guarded integer division (`full`)
    Full,
    /// array bounds only (`bounds`, the default): the loop counters and the division guards
    /// cost instructions in every inner loop and keep the driver from unrolling it
    #[default]
    Bounds,
    /// none (`none`): out-of-bounds accesses are undefined, for timing only
    None,
}

impl ShaderChecks {
    /// `full`, `bounds` or `none`.
    pub fn parse(s: &str) -> Option<ShaderChecks> {
        match s {
            "full" => Some(ShaderChecks::Full),
            "bounds" => Some(ShaderChecks::Bounds),
            "none" => Some(ShaderChecks::None),
            _ => None,
        }
    }
}

/// The kernel behind `ops::matmul::linear`; all compute the same thing with the same
/// bindings. Defined with the options that can force one ([`GpuOptions::matmul`]); the
/// kernels themselves are in `ops::matmul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// shaders/matmul.wgsl: workgroup-memory tiles and a register tile per invocation, on
    /// any adapter; 128 x 128 output tiles for large outputs (and on CPU adapters), else 64 x 64.
    Tiled,
    /// shaders/matmul.wgsl with 64 x 64 tiles (4 x 4 per invocation), whatever the shape.
    Tiled64,
    /// shaders/matmul.wgsl with 128 x 128 tiles (8 x 8 per invocation), whatever the shape.
    Tiled128,
    /// shaders/matmul_sg.wgsl: one 8-lane subgroup per 64 x 64 output tile, X shared between
    /// lanes by subgroupShuffle. For CPU adapters (lavapipe), where every non-constant load
    /// is a loop over the SIMD lanes and loads per FMA decide the speed.
    Subgroup,
    /// shaders/matvec.wgsl: one workgroup per output column, for at most
    /// `ops::matmul::MATVEC_MAX_ROWS` rows (decoding), where a 64-row tile would be mostly padding.
    Matvec,
    /// `ops::mma`: f16 operands, f32 accumulation, on tensor cores where the adapter has
    /// them (needs SHADER_F16); the kernel of [`Precision::F16`], for the gradients too.
    Mma,
}

impl MatmulKernel {
    /// `tiled`, `tiled64`, `tiled128`, `subgroup` (or `sg`), `matvec` or `mma`, in any case.
    pub fn parse(s: &str) -> Option<MatmulKernel> {
        match s.to_lowercase().as_str() {
            "tiled" => Some(MatmulKernel::Tiled),
            "tiled64" => Some(MatmulKernel::Tiled64),
            "tiled128" => Some(MatmulKernel::Tiled128),
            "subgroup" | "sg" => Some(MatmulKernel::Subgroup),
            "matvec" => Some(MatmulKernel::Matvec),
            "mma" => Some(MatmulKernel::Mma),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_kernel_names_parse_in_any_case() {
        assert_eq!(MatmulKernel::parse("tiled"), Some(MatmulKernel::Tiled));
        assert_eq!(MatmulKernel::parse("Tiled64"), Some(MatmulKernel::Tiled64));
        assert_eq!(MatmulKernel::parse("TILED128"), Some(MatmulKernel::Tiled128));
        assert_eq!(MatmulKernel::parse("sg"), Some(MatmulKernel::Subgroup));
        assert_eq!(MatmulKernel::parse("subgroup"), Some(MatmulKernel::Subgroup));
        assert_eq!(MatmulKernel::parse("matvec"), Some(MatmulKernel::Matvec));
        assert_eq!(MatmulKernel::parse("tiled32"), None);
    }

    #[test]
    fn precision_is_f16_on_gpus_with_shader_f16_only() {
        assert_eq!(Precision::auto(true, "DiscreteGpu"), Precision::F16);
        assert_eq!(Precision::auto(true, "IntegratedGpu"), Precision::F16);
        assert_eq!(Precision::auto(false, "DiscreteGpu"), Precision::F32);
        assert_eq!(Precision::auto(true, "Cpu"), Precision::F32);
        assert_eq!(Precision::parse("F16"), Some(Precision::F16));
        assert_eq!(Precision::parse("bf16"), None);
    }

    #[test]
    fn defaults_are_the_products_behaviour() {
        let o = GpuOptions::default();
        assert_eq!(o.shader_checks, ShaderChecks::Bounds);
        assert_eq!(o.backends, wgpu::Backends::PRIMARY);
        assert_eq!(o.delta_state_smem, 32768);
        assert!(o.adapter_name.is_none() && o.max_binding.is_none() && o.shader_dir.is_none());
        assert!(o.matmul.is_none() && o.attention_rows.is_none() && o.precision.is_none());
    }
}
