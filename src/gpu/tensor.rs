use super::context::Gpu;
use anyhow::{anyhow, bail, Result};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    U32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// A GPU buffer with a row-major shape. Cloning shares the buffer.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buf: Arc<wgpu::Buffer>,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    /// Number of rows when viewed as `[rows, last_dim]`.
    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }
    pub fn cols(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Whether both tensors are views of one buffer.
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
    /// The same buffer under another shape with the same element count.
    pub fn reshape(&self, shape: &[usize]) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), self.numel(), "reshape {:?} -> {shape:?}", self.shape);
        Tensor { buf: self.buf.clone(), shape: shape.to_vec(), dtype: self.dtype }
    }
}

const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Gpu {
    fn check_size(&self, bytes: u64, shape: &[usize]) -> Result<()> {
        if bytes > self.limits.max_buffer_size {
            bail!("tensor {shape:?} needs {bytes} bytes, more than this adapter's max_buffer_size ({})", self.limits.max_buffer_size);
        }
        Ok(())
    }

    /// An uninitialised (zero-filled by wgpu) tensor.
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // a whole number of 16 bytes (at least 16), so copies and bindings are valid and
        // kernels may read any tensor as vec4s (shaders/mma_common.wgsl)
        let bytes = ((n * dtype.size()).max(16) as u64).div_ceil(16) * 16;
        self.check_size(bytes, shape)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor { label: None, size: bytes, usage: USAGE, mapped_at_creation: false });
        Ok(Tensor { buf: Arc::new(buf), shape: shape.to_vec(), dtype })
    }

    pub fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        self.empty(shape, DType::F32)
    }

    fn upload_bytes(&self, shape: &[usize], dtype: DType, data: &[u8]) -> Result<Tensor> {
        let t = self.empty(shape, dtype)?;
        if !data.is_empty() {
            if data.len().is_multiple_of(4) {
                self.queue.write_buffer(&t.buf, 0, data);
            } else {
                let mut padded = data.to_vec();
                padded.resize(data.len().div_ceil(4) * 4, 0);
                self.queue.write_buffer(&t.buf, 0, &padded);
            }
        }
        Ok(t)
    }

    pub fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "upload shape {shape:?}");
        self.upload_bytes(shape, DType::F32, bytemuck::cast_slice(data))
    }

    pub fn upload_u32(&self, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "upload shape {shape:?}");
        self.upload_bytes(shape, DType::U32, bytemuck::cast_slice(data))
    }

    /// Store f32 data as f16 (needs SHADER_F16 to be read by kernels).
    pub fn upload_f16(&self, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        self.upload_bytes(shape, DType::F16, bytemuck::cast_slice(&h))
    }

    /// Overwrite a tensor's contents from the host.
    pub fn write(&self, t: &Tensor, data: &[f32]) {
        assert_eq!(t.dtype, DType::F32);
        assert!(data.len() <= t.numel());
        self.queue.write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
    }

    /// Copy a tensor back to the host (waits for the GPU).
    pub fn read_raw(&self, t: &Tensor) -> Result<Vec<u8>> {
        let size = t.buf.size();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&t.buf, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.sync()?;
        rx.recv().map_err(|_| anyhow!("readback callback never ran"))?.map_err(|e| anyhow!("mapping the readback buffer failed: {e}"))?;
        let bytes = slice.get_mapped_range().map_err(|e| anyhow!("reading the mapped buffer failed: {e:?}"))?.to_vec();
        staging.unmap();
        Ok(bytes[..t.numel() * t.dtype.size()].to_vec())
    }

    /// Submit `b` with copies of the f32 tensors `ts` recorded at its end, and start mapping
    /// them; [`PendingRead::wait`] then waits for this submission only, so the host can
    /// record (and submit) the next work first.
    pub fn submit_and_read(&self, mut b: super::Batch, ts: &[&Tensor]) -> Result<PendingRead> {
        let sizes: Vec<u64> = ts.iter().map(|t| t.bytes().div_ceil(4) * 4).collect();
        let total: u64 = sizes.iter().sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pending-read"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dst = Tensor { buf: Arc::new(staging), shape: vec![total as usize / 4], dtype: DType::F32 };
        let mut off = 0;
        for (t, &n) in ts.iter().zip(&sizes) {
            assert_eq!(t.dtype, DType::F32, "submit_and_read: f32 tensors only");
            b.copy(t, 0, &dst, off, n);
            off += n;
        }
        let index = b.submit();
        let (tx, rx) = std::sync::mpsc::channel();
        dst.buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        Ok(PendingRead { staging: dst.buf, index, lens: ts.iter().map(|t| t.numel()).collect(), rx })
    }

    pub fn read(&self, t: &Tensor) -> Result<Vec<f32>> {
        let raw = self.read_raw(t)?;
        Ok(match t.dtype {
            DType::F32 => bytemuck::cast_slice(&raw).to_vec(),
            DType::F16 => bytemuck::cast_slice::<u8, half::f16>(&raw).iter().map(|h| h.to_f32()).collect(),
            DType::U32 => bytemuck::cast_slice::<u8, u32>(&raw).iter().map(|&u| u as f32).collect(),
        })
    }

    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        assert_eq!(t.dtype, DType::U32);
        Ok(bytemuck::cast_slice(&self.read_raw(t)?).to_vec())
    }

    /// Rows per binding so that a `[rows, row_elems]` tensor is split into bindings no larger
    /// than `max_binding`, each starting at a storage-offset-aligned byte offset.
    /// With several row sizes (tensors split along the same rows) every binding fits and aligns.
    pub fn rows_per_binding(&self, row_bytes: &[u64]) -> usize {
        let align = self.limits.min_storage_buffer_offset_alignment as u64;
        let mut step = 1;
        let mut max_rows = u64::MAX;
        for &rb in row_bytes {
            let rb = rb.max(1);
            // the row step whose byte size is a multiple of the alignment (a power of two)
            step = step.max(align / gcd(rb, align));
            max_rows = max_rows.min(self.max_binding / rb);
        }
        ((max_rows / step) * step).max(step) as usize
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Tensors on their way to the host ([`Gpu::submit_and_read`]).
pub struct PendingRead {
    staging: Arc<wgpu::Buffer>,
    index: wgpu::SubmissionIndex,
    lens: Vec<usize>,
    rx: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

impl PendingRead {
    /// Wait for the submission that carried the copies (not for later ones); one vector per
    /// tensor, in order.
    pub fn wait(self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let wait = wgpu::PollType::Wait { submission_index: Some(self.index), timeout: None };
        gpu.device.poll(wait).map_err(|e| anyhow!("GPU poll failed: {e}"))?;
        self.rx
            .recv()
            .map_err(|_| anyhow!("readback callback never ran"))?
            .map_err(|e| anyhow!("mapping the readback buffer failed: {e}"))?;
        let slice = self.staging.slice(..);
        let raw = slice.get_mapped_range().map_err(|e| anyhow!("reading the mapped buffer failed: {e:?}"))?;
        let all: &[f32] = bytemuck::cast_slice(&raw);
        let mut out = vec![];
        let mut off = 0;
        for &n in &self.lens {
            out.push(all[off..off + n].to_vec());
            off += n;
        }
        drop(raw);
        self.staging.unmap();
        Ok(out)
    }
}
