use super::context::Gpu;
use anyhow::Result;

/// GPU timestamps around passes, when the adapter has TIMESTAMP_QUERY; otherwise
/// callers fall back to wall-clock time around a synchronised submission.
pub struct GpuTimer {
    pub(crate) set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    pub(crate) capacity: u32,
    pub(crate) next: u32,
    /// The entry point of each timed dispatch, in order.
    pub labels: Vec<&'static str>,
}

impl GpuTimer {
    /// `None` when the adapter has no timestamp queries.
    pub fn new(gpu: &Gpu, capacity: u32) -> Option<GpuTimer> {
        // a query set holds at most 4096 queries (two per timed pass)
        let capacity = capacity.min(2048);
        if !gpu.info.timestamp_query {
            return None;
        }
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity * 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp-resolve"),
            size: capacity as u64 * 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(GpuTimer { set, resolve, capacity, next: 0, labels: vec![] })
    }

    pub fn reset(&mut self) {
        self.next = 0;
        self.labels.clear();
    }

    /// Total seconds per kernel entry point, largest first.
    pub fn by_label(&mut self, gpu: &Gpu) -> Result<Vec<(&'static str, f64, usize)>> {
        let times = self.read(gpu)?;
        let mut acc: Vec<(&'static str, f64, usize)> = vec![];
        for (l, t) in self.labels.iter().zip(times) {
            match acc.iter_mut().find(|a| a.0 == *l) {
                Some(a) => {
                    a.1 += t;
                    a.2 += 1
                }
                None => acc.push((l, t, 1)),
            }
        }
        acc.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(acc)
    }

    /// Durations in seconds of every pass timed since the last reset, in order.
    pub fn read(&mut self, gpu: &Gpu) -> Result<Vec<f64>> {
        let n = self.next;
        if n == 0 {
            return Ok(vec![]);
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.resolve_query_set(&self.set, 0..n * 2, &self.resolve, 0);
        gpu.queue.submit([enc.finish()]);
        let t = super::Tensor { buf: std::sync::Arc::new(self.resolve.clone()), shape: vec![n as usize * 4], dtype: super::DType::U32 };
        let raw = gpu.read_raw(&t)?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok((0..n as usize).map(|i| ticks[2 * i + 1].wrapping_sub(ticks[2 * i]) as f64 * period).collect())
    }
}
