use super::context::Gpu;
use super::options::ShaderChecks;
use super::tensor::Tensor;
use super::timer::GpuTimer;
use anyhow::Result;
use std::sync::Arc;

/// A compute entry point of a shader file, specialised by `const` overrides.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub shader: &'static str,
    pub entry: &'static str,
    pub consts: Vec<(&'static str, u32)>,
    /// Compile with `enable f16;` and `alias WT = f16;` (f16 weight storage).
    pub f16: bool,
}

impl Kernel {
    pub fn new(shader: &'static str, entry: &'static str) -> Kernel {
        Kernel { shader, entry, consts: vec![], f16: false }
    }
    pub fn with(mut self, name: &'static str, value: u32) -> Kernel {
        self.consts.push((name, value));
        self
    }
    pub fn f16(mut self, on: bool) -> Kernel {
        self.f16 = on;
        self
    }
    fn key(&self) -> String {
        format!("{}:{}:{:?}:{}", self.shader, self.entry, self.consts, self.f16)
    }
}

/// A storage binding: a whole tensor or a byte range of its buffer.
#[derive(Clone, Debug)]
pub struct Binding {
    pub buf: Arc<wgpu::Buffer>,
    pub offset: u64,
    pub size: Option<u64>,
}

impl From<&Tensor> for Binding {
    fn from(t: &Tensor) -> Binding {
        Binding { buf: t.buf.clone(), offset: 0, size: None }
    }
}

impl Tensor {
    /// Bind rows `[row0, row0 + nrows)` of this tensor viewed as `[rows, cols]`, rounded up
    /// to 16 bytes within the buffer (whose size is a multiple of 16, as the offsets
    /// `row_split` picks are) so kernels may read the binding as vec4s.
    pub fn rows_binding(&self, row0: usize, nrows: usize) -> Binding {
        let row_bytes = (self.cols() * self.dtype.size()) as u64;
        let offset = row0 as u64 * row_bytes;
        let size = (nrows as u64 * row_bytes).div_ceil(16) * 16;
        Binding { buf: self.buf.clone(), offset, size: Some(size.max(16).min(self.buf.size() - offset)) }
    }
}

/// Workgroup counts for `n` groups, folded into 2-D when `n` exceeds the per-dimension limit.
/// Shaders recover the linear id as `wid.x + wid.y * nwg.x`.
pub fn grid(gpu: &Gpu, n: u32) -> [u32; 3] {
    let max = gpu.limits.max_compute_workgroups_per_dimension.max(1);
    if n <= max {
        [n.max(1), 1, 1]
    } else {
        let y = n.div_ceil(max);
        [n.div_ceil(y), y, 1]
    }
}

const UNIFORM_CHUNK: u64 = 1 << 16;

/// Dispatches a batch records before it submits what it has and goes on in a new command
/// buffer: the GPU starts on the first ones while the host records (and wgpu encodes) the
/// rest, instead of waiting for the whole batch. Queue order keeps every dependency.
const FLUSH_EVERY: usize = 256;

impl ShaderChecks {
    /// The checks wgpu builds into a trusted shader module for this choice.
    fn runtime_checks(self) -> wgpu::ShaderRuntimeChecks {
        match self {
            ShaderChecks::Full => wgpu::ShaderRuntimeChecks::checked(),
            ShaderChecks::Bounds => {
                // SAFETY: see `Gpu::pipeline`
                let mut c = unsafe { wgpu::ShaderRuntimeChecks::all(false) };
                c.bounds_checks = true;
                c
            }
            // SAFETY: see `Gpu::pipeline`; `none` is a developer's choice for timing
            ShaderChecks::None => wgpu::ShaderRuntimeChecks::unchecked(),
        }
    }
}

impl Gpu {
    pub(crate) fn pipeline(&self, k: &Kernel) -> Arc<(wgpu::ComputePipeline, wgpu::BindGroupLayout)> {
        let key = k.key();
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let shaders = self.shaders.get_or_init(|| super::ShaderSources::resolve(self.options().shader_dir.as_deref()));
        let src = super::specialise(shaders.get(k.shader), &k.consts, k.f16);
        let desc = wgpu::ShaderModuleDescriptor { label: Some(k.shader), source: wgpu::ShaderSource::Wgsl(src.into()) };
        // SAFETY: the shaders are this crate's own (or a developer's override of them, see
        // `GpuOptions::shader_dir`): every loop is bounded by its uniform parameters, no integer
        // division has a zero divisor, and with `ShaderChecks::Bounds` (the default) wgpu
        // still keeps every array access in bounds.
        let module = unsafe { self.device.create_shader_module_trusted(desc, self.options().shader_checks.runtime_checks()) };
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.entry),
            layout: None,
            module: &module,
            entry_point: Some(k.entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &[], zero_initialize_workgroup_memory: false },
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let p = Arc::new((pipeline, layout));
        self.pipelines.lock().unwrap().insert(key, p.clone());
        p
    }

    /// Start recording a batch of dispatches, submitted together by `Batch::submit`.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            gpu: self,
            enc: Some(self.device.create_command_encoder(&Default::default())),
            pass: None,
            uniforms: vec![],
            staged: vec![],
            used: UNIFORM_CHUNK,
            timer: None,
            recorded: 0,
        }
    }

    /// Record with `f`, submit, return.
    pub fn run(&self, f: impl FnOnce(&mut Batch) -> Result<()>) -> Result<()> {
        let mut b = self.batch();
        f(&mut b)?;
        b.submit();
        Ok(())
    }
}

/// Records dispatches into one command encoder. Kernel parameters go into pooled
/// uniform buffers (binding 0 of every kernel); storage buffers are bindings 1..n.
pub struct Batch<'g> {
    pub gpu: &'g Gpu,
    enc: Option<wgpu::CommandEncoder>,
    /// The open compute pass untimed dispatches share (one pass for a run of dispatches
    /// saves the per-pass cost; WebGPU orders and synchronises dispatches within a pass).
    pass: Option<wgpu::ComputePass<'static>>,
    uniforms: Vec<wgpu::Buffer>,
    /// the parameters of the last uniform buffer's dispatches, written to it in one
    /// `write_buffer` when the buffer is full or the batch is submitted
    staged: Vec<u8>,
    used: u64,
    timer: Option<&'g mut GpuTimer>,
    /// dispatches recorded since the last submission
    recorded: usize,
}

impl<'g> Batch<'g> {
    /// Time every following dispatch with GPU timestamps (one entry per dispatch).
    pub fn time_with(&mut self, timer: &'g mut GpuTimer) {
        self.timer = Some(timer);
    }

    fn params(&mut self, bytes: &[u8]) -> (usize, u64) {
        let align = self.gpu.limits.min_uniform_buffer_offset_alignment as u64;
        let len = (bytes.len() as u64).max(16).div_ceil(16) * 16;
        if self.used + len > UNIFORM_CHUNK {
            self.write_params();
            let buf = self.gpu.uniform_pool.lock().unwrap().pop().unwrap_or_else(|| {
                self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: UNIFORM_CHUNK,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            });
            self.uniforms.push(buf);
            self.used = 0;
        }
        let off = self.used;
        self.staged.resize(off as usize, 0);
        self.staged.extend_from_slice(bytes);
        self.staged.resize((off + len) as usize, 0);
        self.used = (off + len).div_ceil(align) * align;
        (self.uniforms.len() - 1, off)
    }

    /// Write the staged parameters to the last uniform buffer (queue writes land before
    /// the submission that reads them).
    fn write_params(&mut self) {
        if let (Some(buf), false) = (self.uniforms.last(), self.staged.is_empty()) {
            self.gpu.queue.write_buffer(buf, 0, &self.staged);
        }
        self.staged.clear();
    }

    /// Record one dispatch of `kernel` with `params` (a `#[repr(C)]` Pod struct matching the
    /// shader's uniform) and storage `bindings` in order.
    pub fn dispatch<P: bytemuck::Pod>(&mut self, kernel: &Kernel, params: &P, bindings: &[Binding], groups: [u32; 3]) {
        if self.recorded == FLUSH_EVERY {
            self.finish();
            self.enc = Some(self.gpu.device.create_command_encoder(&Default::default()));
            self.used = UNIFORM_CHUNK;
        }
        self.recorded += 1;
        let pipeline = self.gpu.pipeline(kernel);
        let (pipeline, layout) = (&pipeline.0, &pipeline.1);
        let (ui, uoff) = self.params(bytemuck::bytes_of(params));
        let ubuf = &self.uniforms[ui];
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: ubuf,
                offset: uoff,
                size: wgpu::BufferSize::new((std::mem::size_of::<P>() as u64).max(16).div_ceil(16) * 16),
            }),
        }];
        for (i, b) in bindings.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &b.buf,
                    offset: b.offset,
                    size: b.size.and_then(wgpu::BufferSize::new),
                }),
            });
        }
        let bg = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(kernel.entry), layout, entries: &entries });
        let timestamp_writes = match self.timer.as_deref_mut() {
            Some(t) if t.next < t.capacity => {
                let i = t.next;
                t.next += 1;
                t.labels.push(kernel.entry);
                let (query_set, q) = t.slot(i);
                Some(wgpu::ComputePassTimestampWrites {
                    query_set,
                    beginning_of_pass_write_index: Some(q),
                    end_of_pass_write_index: Some(q + 1),
                })
            }
            Some(t) => {
                t.untimed += 1;
                None
            }
            None => None,
        };
        if timestamp_writes.is_some() {
            // a timed dispatch gets a pass of its own (timestamps are per pass)
            self.pass = None;
            let enc = self.enc.as_mut().expect("batch already submitted");
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.entry), timestamp_writes });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            return;
        }
        if self.pass.is_none() {
            let enc = self.enc.as_mut().expect("batch already submitted");
            self.pass = Some(
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("batch"), timestamp_writes: None }).forget_lifetime(),
            );
        }
        let pass = self.pass.as_mut().expect("open pass");
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Copy `bytes` from one buffer to another inside the batch.
    pub fn copy(&mut self, src: &Tensor, src_off: u64, dst: &Tensor, dst_off: u64, bytes: u64) {
        self.pass = None;
        self.enc.as_mut().unwrap().copy_buffer_to_buffer(&src.buf, src_off, &dst.buf, dst_off, bytes);
    }

    /// Zero a tensor inside the batch.
    pub fn clear(&mut self, t: &Tensor) {
        self.pass = None;
        self.enc.as_mut().unwrap().clear_buffer(&t.buf, 0, Some(t.bytes()));
    }

    /// Submit everything recorded; the uniform buffers go back to the pool.
    pub fn submit(mut self) -> wgpu::SubmissionIndex {
        self.finish()
    }

    fn finish(&mut self) -> wgpu::SubmissionIndex {
        self.pass = None;
        self.write_params();
        let enc = self.enc.take().expect("batch already submitted");
        let idx = self.gpu.queue.submit([enc.finish()]);
        self.gpu.uniform_pool.lock().unwrap().append(&mut self.uniforms);
        self.recorded = 0;
        idx
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.enc.is_some() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shader_checks_parse_and_map_to_wgpu_checks() {
        assert_eq!(ShaderChecks::parse("full"), Some(ShaderChecks::Full));
        assert_eq!(ShaderChecks::parse("bounds"), Some(ShaderChecks::Bounds));
        assert_eq!(ShaderChecks::parse("none"), Some(ShaderChecks::None));
        assert_eq!(ShaderChecks::parse("Bounds"), None);
        assert_eq!(ShaderChecks::parse(""), None);
        let full = ShaderChecks::Full.runtime_checks();
        assert!(full.bounds_checks && full.force_loop_bounding && full.int_div_checks);
        // the default keeps array bounds and drops the loop counters and division guards
        let b = ShaderChecks::Bounds.runtime_checks();
        assert!(b.bounds_checks && !b.force_loop_bounding && !b.int_div_checks);
        let n = ShaderChecks::None.runtime_checks();
        assert!(!n.bounds_checks && !n.force_loop_bounding && !n.int_div_checks);
    }
}
