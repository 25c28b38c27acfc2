use super::context::Gpu;
use anyhow::Result;

/// Timed passes per query set (a query set holds at most 4096 queries, two per pass).
pub(crate) const PER_SET: u32 = 2048;

/// GPU timestamps around passes, when the adapter has TIMESTAMP_QUERY; otherwise
/// callers fall back to wall-clock time around a synchronised submission.
pub struct GpuTimer {
    /// query set s times passes s PER_SET ..
    sets: Vec<wgpu::QuerySet>,
    resolve: wgpu::Buffer,
    pub(crate) capacity: u32,
    pub(crate) next: u32,
    /// The entry point of each timed dispatch, in order.
    pub labels: Vec<&'static str>,
    /// Dispatches recorded past the capacity (not timed) since the last reset.
    pub untimed: u32,
}

impl GpuTimer {
    /// Room for `capacity` timed passes (at most 16,384); `None` when the adapter has no
    /// timestamp queries.
    pub fn new(gpu: &Gpu, capacity: u32) -> Option<GpuTimer> {
        let capacity = capacity.clamp(1, 8 * PER_SET);
        if !gpu.info.timestamp_query {
            return None;
        }
        let sets = (0..capacity.div_ceil(PER_SET))
            .map(|_| {
                gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: PER_SET * 2,
                })
            })
            .collect();
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp-resolve"),
            size: capacity.div_ceil(PER_SET) as u64 * PER_SET as u64 * 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(GpuTimer { sets, resolve, capacity, next: 0, labels: vec![], untimed: 0 })
    }

    /// The query set and first query index of timed pass i.
    pub(crate) fn slot(&self, i: u32) -> (&wgpu::QuerySet, u32) {
        (&self.sets[(i / PER_SET) as usize], 2 * (i % PER_SET))
    }

    pub fn reset(&mut self) {
        self.next = 0;
        self.untimed = 0;
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
        for (s, set) in self.sets.iter().enumerate() {
            let first = s as u32 * PER_SET;
            if first < n {
                enc.resolve_query_set(set, 0..(n - first).min(PER_SET) * 2, &self.resolve, first as u64 * 16);
            }
        }
        gpu.queue.submit([enc.finish()]);
        let t = super::Tensor { buf: std::sync::Arc::new(self.resolve.clone()), shape: vec![n as usize * 4], dtype: super::DType::U32 };
        let raw = gpu.read_raw(&t)?;
        let ticks: &[u64] = bytemuck::cast_slice(&raw);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok((0..n as usize).map(|i| ticks[2 * i + 1].wrapping_sub(ticks[2 * i]) as f64 * period).collect())
    }
}
