//! Timing of the chunked gated-delta-rule kernels on the GPU (timestamps summed over the
//! dispatches of one run where the adapter has them, else wall clock), for
//! `taylorcal bench gdn`, the criterion bench and tuning.
use super::bench::{is_cpu_adapter, time_kernel, unit_noise};
use crate::gpu::{Gpu, GpuTimer, Tensor};
use crate::ops::delta::{
    chunk_backward_after_forward, chunk_backward_ws, chunk_forward_ws, DeltaGrads, DeltaInputs, DeltaShape, DeltaTiles, DeltaWorkspace,
};
use anyhow::{bail, Result};
use serde::Serialize;

/// Inputs of one benchmark problem, deterministic pseudo-random data in GDN's regime:
/// q, k in [-1, 1) (normalised in the op), v in [-1, 1), g in [-1, 0), beta in (0, 1).
pub struct DeltaProblem {
    pub shape: DeltaShape,
    pub ws: DeltaWorkspace,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    o: Tensor,
    do_: Tensor,
    grads: Option<DeltaGrads>,
    /// The backward recomputes the forward's intermediates (as after a forward whose
    /// workspace was reused) instead of taking them from the forward just recorded.
    pub recompute: bool,
}

/// Deterministic values in [lo, hi).
fn fill(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    unit_noise(n, seed).map(|u| lo + (hi - lo) * u).collect()
}

impl DeltaProblem {
    pub fn new(gpu: &Gpu, s: &DeltaShape, backward: bool, tiles: Option<DeltaTiles>) -> Result<DeltaProblem> {
        let tiles = tiles.unwrap_or_else(|| DeltaTiles::auto(gpu, s));
        let ws = DeltaWorkspace::with_tiles(gpu, s, backward, tiles)?;
        let (r, dk, dv) = (s.rows(), s.dk, s.dv);
        Ok(DeltaProblem {
            shape: *s,
            q: gpu.upload(&[s.b, s.t, s.h, dk], &fill(r * dk, 1, -1.0, 1.0))?,
            k: gpu.upload(&[s.b, s.t, s.h, dk], &fill(r * dk, 2, -1.0, 1.0))?,
            v: gpu.upload(&[s.b, s.t, s.h, dv], &fill(r * dv, 3, -1.0, 1.0))?,
            g: gpu.upload(&[s.b, s.t, s.h], &fill(r, 4, -1.0, -1e-3))?,
            beta: gpu.upload(&[s.b, s.t, s.h], &fill(r, 5, 0.05, 0.95))?,
            o: gpu.zeros(&[s.b, s.t, s.h, dv])?,
            do_: gpu.upload(&[s.b, s.t, s.h, dv], &fill(r * dv, 6, -1.0, 1.0))?,
            grads: if backward { Some(DeltaGrads::new(gpu, s, false)?) } else { None },
            recompute: false,
            ws,
        })
    }

    /// Record the forward and, when made with `backward`, the backward pass.
    pub fn record(&self, b: &mut crate::gpu::Batch) -> Result<()> {
        let x = DeltaInputs { q: &self.q, k: &self.k, v: &self.v, g: &self.g, beta: &self.beta, h0: None };
        chunk_forward_ws(b, &self.ws, &x, &self.o, None)?;
        if let Some(gr) = &self.grads {
            if self.recompute {
                chunk_backward_ws(b, &self.ws, &x, &self.do_, None, gr)?;
            } else {
                chunk_backward_after_forward(b, &self.ws, &x, &self.do_, None, gr)?;
            }
        }
        Ok(())
    }

    /// The output o (for checks).
    pub fn output(&self) -> &Tensor {
        &self.o
    }
}

fn runs_for(gpu: &Gpu) -> (usize, usize) {
    if is_cpu_adapter(gpu) {
        (1, 3)
    } else {
        (3, 10)
    }
}

/// Median seconds of one chunked forward (or forward + backward, the backward taking the
/// forward's intermediates from the shared workspace) at B, T, H, d (dk = dv = d, in-op L2
/// norm, no initial state), with the default tiles.
pub fn bench_delta(gpu: &Gpu, b: usize, t: usize, h: usize, d: usize, backward: bool) -> Result<f64> {
    let s = DeltaShape::new(b, t, h, d, true);
    let pb = DeltaProblem::new(gpu, &s, backward, None)?;
    let (warmup, runs) = runs_for(gpu);
    let (secs, _) = time_kernel(gpu, warmup, runs, |bt| pb.record(bt).expect("delta rule: recording failed"))?;
    Ok(secs)
}

/// The (B, T, H, d) shapes of `taylorcal bench gdn`: the on a GPU, scaled down on a
/// CPU adapter (lavapipe).
pub fn gdn_shapes(gpu: &Gpu) -> &'static [(usize, usize, usize, usize)] {
    if is_cpu_adapter(gpu) {
        &[(1, 256, 2, 64), (1, 512, 2, 128)]
    } else {
        &[(1, 2048, 16, 64), (4, 4096, 16, 128), (1, 8192, 8, 128)]
    }
}

/// One shape's timing of the chunked scan, forward and forward + backward.
#[derive(Clone, Debug, Serialize)]
pub struct GdnRow {
    /// B, T, H, d
    pub shape: [usize; 4],
    pub fwd_ms: f64,
    pub fwd_bwd_ms: f64,
    pub fwd_tokens_per_s: f64,
    pub fwd_bwd_tokens_per_s: f64,
}

impl GdnRow {
    /// The row as one line of text.
    pub fn text(&self) -> String {
        let [b, t, h, d] = self.shape;
        format!(
            "gdn chunked scan B{b} T{t} H{h} d{d}: forward {:.3} ms ({:.0} tok/s), forward+backward {:.3} ms ({:.0} tok/s)",
            self.fwd_ms, self.fwd_tokens_per_s, self.fwd_bwd_ms, self.fwd_bwd_tokens_per_s
        )
    }
}

/// Time the chunked scan ([`bench_delta`]) forward and forward + backward at every shape of
/// [`gdn_shapes`]; `progress(row)` as each is done.
pub fn bench_gdn(gpu: &Gpu, mut progress: impl FnMut(&GdnRow)) -> Result<Vec<GdnRow>> {
    let mut rows = vec![];
    for &(b, t, h, d) in gdn_shapes(gpu) {
        let fwd = bench_delta(gpu, b, t, h, d, false)?;
        let both = bench_delta(gpu, b, t, h, d, true)?;
        let toks = (b * t) as f64;
        let row = GdnRow {
            shape: [b, t, h, d],
            fwd_ms: fwd * 1e3,
            fwd_bwd_ms: both * 1e3,
            fwd_tokens_per_s: toks / fwd,
            fwd_bwd_tokens_per_s: toks / both,
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

/// Per-kernel GPU seconds (summed over a run's dispatches of that kernel, median over runs)
/// of the forward (+ backward) with the given tiles; needs timestamp queries.
/// With `recompute`, the backward recomputes the forward's intermediates.
pub fn profile_delta(
    gpu: &Gpu,
    s: &DeltaShape,
    backward: bool,
    tiles: Option<DeltaTiles>,
    recompute: bool,
) -> Result<Vec<(&'static str, f64)>> {
    let mut pb = DeltaProblem::new(gpu, s, backward, tiles)?;
    pb.recompute = recompute;
    let (warmup, runs) = runs_for(gpu);
    let Some(mut timer) = GpuTimer::new(gpu, 64) else {
        bail!("adapter {} has no timestamp queries", gpu.info.name);
    };
    for _ in 0..warmup {
        gpu.run(|b| pb.record(b))?;
        gpu.sync()?;
    }
    let mut per: Vec<(&'static str, Vec<f64>)> = vec![];
    for _ in 0..runs {
        timer.reset();
        let mut b = gpu.batch();
        b.time_with(&mut timer);
        pb.record(&mut b)?;
        b.submit();
        for (label, secs, _) in timer.by_label(gpu)? {
            match per.iter_mut().find(|p| p.0 == label) {
                Some(p) => p.1.push(secs),
                None => per.push((label, vec![secs])),
            }
        }
    }
    let mut out: Vec<(&'static str, f64)> = per
        .into_iter()
        .map(|(l, mut v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            (l, v[v.len() / 2])
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(out)
}
