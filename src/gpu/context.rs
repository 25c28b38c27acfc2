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

/// The one GPU context: instance, adapter, device, queue, limits, pipeline cache.
pub struct Gpu {
    pub adapter: wgpu::Adapter,
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
    /// Largest binding the kernels use; the adapter's limit, or lower via
    /// `TAYLORCAL_MAX_BINDING` (bytes) to exercise tensor splitting in tests.
    pub max_binding: u64,
    pub(crate) pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    pub(crate) uniform_pool: Mutex<Vec<wgpu::Buffer>>,
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
    /// Create a context on the best adapter: `WGPU_ADAPTER_NAME` (substring, case-insensitive)
    /// if set, else the highest-performance one (discrete > integrated > virtual > CPU).
    /// `WGPU_BACKEND` (vulkan, metal, dx12, gl) restricts the backends searched.
    pub fn new() -> Result<Gpu> {
        pollster::block_on(Self::new_async())
    }

    /// One context shared by everything in this process (tests, CLI): creating devices
    /// is slow on software Vulkan.
    pub fn shared() -> Result<&'static Gpu> {
        static GPU: OnceLock<std::result::Result<Gpu, String>> = OnceLock::new();
        GPU.get_or_init(|| Gpu::new().map_err(|e| format!("{e:#}"))).as_ref().map_err(|e| anyhow!("{e}"))
    }

    async fn new_async() -> Result<Gpu> {
        let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapters = instance.enumerate_adapters(backends).await;
        let wanted = std::env::var("WGPU_ADAPTER_NAME").ok().map(|s| s.to_lowercase());
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
            None => bail!("WGPU_ADAPTER_NAME={:?} matches none of the adapters found: {}", wanted.unwrap_or_default(), seen.join("; ")),
        };
        let ainfo = adapter.get_info();
        let afeat = adapter.features();
        let wanted_features = wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let features = afeat & wanted_features;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("taylorcal"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .with_context(|| format!("requesting a device on adapter '{}'", ainfo.name))?;
        let max_binding = match std::env::var("TAYLORCAL_MAX_BINDING") {
            Ok(v) => v
                .parse::<u64>()
                .with_context(|| format!("TAYLORCAL_MAX_BINDING={v:?} is not a byte count"))?
                .clamp(256, limits.max_storage_buffer_binding_size),
            Err(_) => limits.max_storage_buffer_binding_size,
        };
        let info = GpuInfo {
            name: ainfo.name.clone(),
            backend: format!("{:?}", ainfo.backend),
            device_type: format!("{:?}", ainfo.device_type),
            driver: ainfo.driver.clone(),
            driver_info: ainfo.driver_info.clone(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroup: features.contains(wgpu::Features::SUBGROUP),
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
        Ok(Gpu {
            adapter,
            device,
            queue,
            info,
            features,
            limits,
            max_binding,
            pipelines: Mutex::new(HashMap::new()),
            uniform_pool: Mutex::new(Vec::new()),
        })
    }

    /// Block until all submitted work is done.
    pub fn sync(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| anyhow!("GPU poll failed: {e}"))?;
        Ok(())
    }
}
