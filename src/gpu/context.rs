use super::options::{GpuOptions, Precision};
use super::ShaderSources;
use anyhow::{anyhow, bail, Context as _, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What the chosen adapter is and can do; printed by `taylorcal info`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub shader_f16: bool,
    pub subgroup: bool,
    /// Cooperative matrices of 16 x 16 x 16 with f16 operands and f32 accumulators (tensor
    /// cores), which the `ops::mma` kernels use; false on adapters without them or with
    /// subgroups of varying size, and when [`GpuOptions::no_coop`] is set.
    pub coop16: bool,
    /// Every cooperative-matrix shape the adapter lists, as "MxNxK A->C" (e.g. "16x16x16 f16->f32").
    pub coop_shapes: Vec<String>,
    /// The matrix products' operands: [`GpuOptions::precision`] or [`Precision::auto`].
    pub precision: Precision,
    pub timestamp_query: bool,
    pub timestamp_inside_passes: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_storage_buffers_per_shader_stage: u32,
    pub min_subgroup_size: u32,
    pub max_subgroup_size: u32,
}

/// A GPU context: adapter, device, queue, limits, the options it was created with, and
/// everything cached per device (pipelines, shader sources, uniform buffers, a dummy buffer).
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Largest binding the kernels use; the adapter's limit, or lower through
    /// [`GpuOptions::max_binding`] to exercise tensor splitting in tests.
    pub max_binding: u64,
    options: GpuOptions,
    /// Each kernel's pipeline and its bind group layout (looked up once, not per dispatch).
    pub(crate) pipelines: Mutex<HashMap<String, Arc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)>>>,
    pub(crate) uniform_pool: Mutex<Vec<wgpu::Buffer>>,
    /// Every shader's source, resolved at the first pipeline from `options.shader_dir`.
    pub(crate) shaders: OnceLock<ShaderSources>,
    /// A 16-byte buffer bound where a kernel's optional input is absent.
    pub(crate) dummy: Arc<wgpu::Buffer>,
}

fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    }
}

impl Gpu {
    /// Create a context with `opts`: on the best adapter among `opts.backends` (the
    /// highest-performance one, discrete > integrated > virtual > CPU, whose name contains
    /// `opts.adapter_name` if that is set).
    pub fn new(opts: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::new_async(opts))
    }

    /// One context per distinct [`GpuOptions`], shared by everything in this process (tests,
    /// CLI): creating devices is slow on software Vulkan. A failure is kept and returned to
    /// every later caller with the same options.
    pub fn shared_with(opts: GpuOptions) -> Result<&'static Gpu> {
        type Entry = (GpuOptions, &'static std::result::Result<Gpu, String>);
        static GPUS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
        let mut all = GPUS.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = match all.iter().find(|(o, _)| *o == opts) {
            Some((_, g)) => *g,
            None => {
                // leaked on purpose: a shared context lives as long as the process
                let g: &'static _ = Box::leak(Box::new(Gpu::new(opts.clone()).map_err(|e| format!("{e:#}"))));
                all.push((opts, g));
                g
            }
        };
        gpu.as_ref().map_err(|e| anyhow!("{e}"))
    }

    /// The shared context with the default options ([`Gpu::shared_with`]).
    pub fn shared() -> Result<&'static Gpu> {
        Self::shared_with(GpuOptions::default())
    }

    /// The options this context was created with.
    pub fn options(&self) -> &GpuOptions {
        &self.options
    }

    async fn new_async(opts: GpuOptions) -> Result<Gpu> {
        let backends = opts.backends;
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        let wanted = opts.adapter_name.as_ref().map(|s| s.to_lowercase());
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        let adapter = adapters
            .into_iter()
            .filter(|a| wanted.as_ref().is_none_or(|w| a.get_info().name.to_lowercase().contains(w)))
            .max_by_key(|a| rank(a.get_info().device_type));
        let adapter = match adapter {
            Some(a) => a,
            None if seen.is_empty() => bail!(
                "no GPU adapter found (backends {backends:?}). Install a Vulkan, Metal or DX12 \
                 driver; on Linux without a GPU install Mesa's software Vulkan \
                 (`apt-get install mesa-vulkan-drivers`)"
            ),
            None => bail!(
                "the adapter name filter {:?} (WGPU_ADAPTER_NAME in the CLI) matches none of the adapters found: {}",
                wanted.unwrap_or_default(),
                seen.join("; ")
            ),
        };
        let ainfo = adapter.get_info();
        let afeat = adapter.features();
        let wanted_features = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        // tensor cores: the one cooperative-matrix shape the kernels use (16 x 16 x 16, f16
        // operands, f32 accumulators), on adapters of one fixed subgroup size (the kernels'
        // workgroups are a whole number of subgroups)
        let coop_props =
            if afeat.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) { adapter.cooperative_matrix_properties() } else { vec![] };
        let coop16 = afeat.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
            && afeat.contains(wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP)
            && ainfo.subgroup_min_size == ainfo.subgroup_max_size
            && !opts.no_coop
            && coop_props.iter().any(|c| {
                use wgpu::CooperativeScalarType::{F16, F32};
                (c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type) == (16, 16, 16, F16, F32)
            });
        let features =
            (afeat & wanted_features) | if coop16 { wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX } else { wgpu::Features::empty() };
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("taylorcal"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: the only experimental feature requested is cooperative matrices, used
                // by kernels that are checked against their f64 references on every adapter
                // that runs them (tests/kernels/mma.rs)
                experimental_features: if coop16 {
                    unsafe { wgpu::ExperimentalFeatures::enabled() }
                } else {
                    wgpu::ExperimentalFeatures::disabled()
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .with_context(|| format!("requesting a device on adapter '{}'", ainfo.name))?;
        let max_binding =
            opts.max_binding.map_or(limits.max_storage_buffer_binding_size, |b| b.clamp(256, limits.max_storage_buffer_binding_size)) / 16
                * 16;
        let shader_f16 = features.contains(wgpu::Features::SHADER_F16);
        let device_type = format!("{:?}", ainfo.device_type);
        if opts.precision == Some(Precision::F16) && !shader_f16 {
            bail!("precision f16 needs 16-bit floats in shaders (SHADER_F16), which adapter '{}' lacks: use f32", ainfo.name);
        }
        let info = GpuInfo {
            name: ainfo.name.clone(),
            backend: format!("{:?}", ainfo.backend),
            precision: opts.precision.unwrap_or(Precision::auto(shader_f16, &device_type)),
            device_type,
            driver: ainfo.driver.clone(),
            driver_info: ainfo.driver_info.clone(),
            shader_f16,
            subgroup: features.contains(wgpu::Features::SUBGROUP),
            coop16,
            coop_shapes: coop_props
                .iter()
                .map(|c| format!("{}x{}x{} {:?}->{:?}", c.m_size, c.n_size, c.k_size, c.ab_type, c.cr_type).to_lowercase())
                .collect(),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamp_inside_passes: features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
            min_subgroup_size: ainfo.subgroup_min_size,
            max_subgroup_size: ainfo.subgroup_max_size,
        };
        let dummy = Arc::new(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        }));
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            features,
            limits,
            max_binding,
            options: opts,
            pipelines: Mutex::new(HashMap::new()),
            uniform_pool: Mutex::new(Vec::new()),
            shaders: OnceLock::new(),
            dummy,
        })
    }

    /// Every precision choice of this context's kernels, for report.json: the matrix products'
    /// operands and kernel ([`GpuInfo::precision`]); everything else is f32.
    pub fn precision_report(&self) -> serde_json::Value {
        let kernel = match (self.info.precision, self.info.coop16) {
            (Precision::F16, true) => "mma, cooperative matrices (tensor cores)",
            (Precision::F16, false) => "mma, workgroup tiles",
            (Precision::F32, _) => "f32 tiled",
        };
        serde_json::json!({
            "precision": self.info.precision,
            "matmul_operands": self.info.precision,
            "matmul_kernel": kernel,
            "accumulation": "f32",
            "master_weights": "f32",
            "optimizer_moments": "f32",
            "activations_norms_softmax_losses": "f32",
            "attention": if self.info.precision == Precision::F16 && self.info.coop16 && self.options.attention_mma != Some(false) {
                "on the matrix units for head dims up to 128 (the forward where no statistics are read: training, evaluation, generation; the backward): q, k, v, dO (scaled by a power of two from max |dO|), probabilities and their gradients f16; scores, softmax, delta and sums f32; the forward with statistics (calibration) f32"
            } else {
                "f32"
            },
            "gdn_scan": "f32",
            "gradient_scaling": "per tensor: dy scaled by a power of two from max |dy| before its f16 rounding, the product scaled back (no global loss scale, no skipped steps)",
        })
    }

    /// Block until all submitted work is done.
    pub fn sync(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("GPU poll failed: {e}"))?;
        Ok(())
    }
}
