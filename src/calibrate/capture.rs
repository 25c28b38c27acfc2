//! The teacher pass of calibration: one forward over the calibration windows that streams
//! the per-head attention statistics out of the fused attention kernel (no T x T matrix)
//! and captures, for each converted layer, its input, its attention output and context.
use crate::gpu::{Batch, Gpu, Tensor};
use crate::nn::decoder::{AttnActs, Decoder, ForwardOpts};
use crate::ops;
use anyhow::Result;
use serde::Serialize;
use std::time::Instant;

/// Per-layer, per-head mean attention distance and entropy, averaged over query rows.
#[derive(Clone, Debug, Serialize)]
pub struct LayerStats {
    pub distance: Vec<f32>,
    pub entropy: Vec<f32>,
}

/// Attention statistics from the fused kernel over `windows` (each one sequence from
/// position 0), averaged over all query rows of all windows.
pub fn attention_stats(gpu: &Gpu, teacher: &Decoder, windows: &[&[u32]]) -> Result<Vec<LayerStats>> {
    Ok(capture(gpu, teacher, &[], windows, 0, |_| {})?.stats)
}

/// What the teacher pass leaves for each converted layer: on the GPU, the teacher-forced
/// input (normed hidden state), the attention output after W_o (the alignment target) and
/// the attention context before W_o, over the first `seqs.0` windows; on the host, the
/// attention statistics averaged over every calibration window.
pub struct Capture {
    pub seqs: (usize, usize),
    pub layers: Vec<usize>,
    pub x: Vec<Tensor>,
    pub target: Vec<Tensor>,
    pub context: Vec<Tensor>,
    /// Mean attention distance and entropy per head, for every layer of the teacher.
    pub stats: Vec<LayerStats>,
    /// Calibration tokens the statistics saw.
    pub stat_tokens: usize,
    pub seconds: f64,
}

/// One teacher pass over `windows` (each its own sequence): statistics from all of them,
/// activations of `layers` from the first `capture` windows (which must share one length).
pub fn capture(
    gpu: &Gpu,
    teacher: &Decoder,
    layers: &[usize],
    windows: &[&[u32]],
    capture: usize,
    mut progress: impl FnMut(usize),
) -> Result<Capture> {
    let t0 = Instant::now();
    let c = &teacher.cfg;
    let (h, d, dm) = (c.num_attention_heads, c.head_dim, c.hidden_size);
    anyhow::ensure!(!windows.is_empty() && windows.iter().all(|w| !w.is_empty()), "no calibration tokens");
    let cap = capture.min(windows.len());
    let t = windows[0].len();
    anyhow::ensure!(windows[..cap].iter().all(|w| w.len() == t), "captured windows differ in length");
    let n = cap * t;
    let mk = |w| layers.iter().map(|_| gpu.zeros(&[n, w])).collect::<Result<Vec<_>>>();
    let (x, target, context) = (mk(dm)?, mk(dm)?, mk(h * d)?);
    let sums: Vec<Tensor> = (0..c.num_hidden_layers).map(|_| gpu.zeros(&[h * 2])).collect::<Result<_>>()?;
    let cache = teacher.kv_cache(gpu, windows.iter().map(|w| w.len()).max().unwrap_or(1))?;
    for (wi, w) in windows.iter().enumerate() {
        let ids = teacher.upload_ids(gpu, w)?;
        let mut hook = |b: &mut Batch, a: AttnActs| -> Result<()> {
            // per-layer sums accumulate on the GPU across windows; read once at the end
            ops::gdn_act::colsum(b, a.stats, &sums[a.layer], wi > 0);
            if let (true, Some(li)) = (wi < cap, layers.iter().position(|&l| l == a.layer)) {
                let off = (wi * t * dm * 4) as u64;
                b.copy(a.normed, 0, &x[li], off, (t * dm * 4) as u64);
                b.copy(a.output, 0, &target[li], off, (t * dm * 4) as u64);
                b.copy(a.context, 0, &context[li], (wi * t * h * d * 4) as u64, (t * h * d * 4) as u64);
            }
            Ok(())
        };
        let mut b = gpu.batch();
        teacher.forward(&mut b, &cache, &ids, 0, ForwardOpts { hook: Some(&mut hook), ..Default::default() })?;
        b.submit();
        progress(wi + 1);
    }
    let acc: Vec<f64> = sums.iter().map(|s| gpu.read(s)).collect::<Result<Vec<_>>>()?.into_iter().flatten().map(|v| v as f64).collect();
    let rows: usize = windows.iter().map(|w| w.len()).sum();
    let per = |l: usize, k: usize| (0..h).map(|hh| (acc[(l * h + hh) * 2 + k] / rows as f64) as f32).collect::<Vec<_>>();
    Ok(Capture {
        seqs: (cap, t),
        layers: layers.to_vec(),
        stats: (0..c.num_hidden_layers).map(|l| LayerStats { distance: per(l, 0), entropy: per(l, 1) }).collect(),
        x,
        target,
        context,
        stat_tokens: rows,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

impl Capture {
    /// No teacher data: for strategies that need none.
    pub fn empty(layers: Vec<usize>) -> Capture {
        Capture { seqs: (0, 0), layers, x: vec![], target: vec![], context: vec![], stats: vec![], stat_tokens: 0, seconds: 0.0 }
    }

    /// The same capture restricted to `layers` (each one it covers); tensors are shared.
    pub fn subset(&self, layers: &[usize]) -> Result<Capture> {
        let idx = layers
            .iter()
            .map(|l| self.layers.iter().position(|x| x == l).ok_or_else(|| anyhow::anyhow!("the capture does not cover layer {l}")))
            .collect::<Result<Vec<_>>>()?;
        let pick = |v: &Vec<Tensor>| if v.is_empty() { vec![] } else { idx.iter().map(|&i| v[i].clone()).collect() };
        Ok(Capture {
            seqs: self.seqs,
            layers: layers.to_vec(),
            x: pick(&self.x),
            target: pick(&self.target),
            context: pick(&self.context),
            stats: self.stats.clone(),
            stat_tokens: self.stat_tokens,
            seconds: self.seconds,
        })
    }
}
