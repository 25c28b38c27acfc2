//! `convert`: teacher pass (activations captured, attention statistics streamed), then per
//! converted layer the chosen strategy: naive copy, zero/small output gate, phase 1 closed
//! form, phase 2 alignment, or both (Taylor-Calibrate).
pub use super::phase1::ValueScale;
use super::phase1::{self, Phase1Report};
use crate::eval::LayerStats;
use crate::gpu::{Batch, Gpu, Tensor};
use crate::model::gdn::{self, GdnActs, GdnGrads};
use crate::model::hybrid::{gdn_name, HybridConfig, GDN_NAMES};
use crate::model::teacher::upload_gdn;
use crate::model::teacher::{AttnActs, Decoder, ForwardOpts};
use crate::model::HostTensor;
use crate::ops::{self, optim};
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    Naive,
    ZeroGate,
    SmallGate,
    TaylorInit,
    AlignmentOnly,
    TaylorCalibrate,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::Naive,
        Strategy::ZeroGate,
        Strategy::SmallGate,
        Strategy::TaylorInit,
        Strategy::AlignmentOnly,
        Strategy::TaylorCalibrate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Naive => "naive",
            Strategy::ZeroGate => "zero-gate",
            Strategy::SmallGate => "small-gate",
            Strategy::TaylorInit => "taylor-init",
            Strategy::AlignmentOnly => "alignment-only",
            Strategy::TaylorCalibrate => "taylor-calibrate",
        }
    }

    pub fn parse(s: &str) -> Result<Strategy> {
        match Strategy::ALL.iter().find(|x| x.name() == s) {
            Some(x) => Ok(*x),
            None => bail!("unknown strategy '{s}' (choose from {})", Strategy::ALL.map(|x| x.name()).join(", ")),
        }
    }

    pub fn phase1(self) -> bool {
        matches!(self, Strategy::TaylorInit | Strategy::TaylorCalibrate)
    }

    pub fn phase2(self) -> bool {
        matches!(self, Strategy::AlignmentOnly | Strategy::TaylorCalibrate)
    }
}

/// Phase 2 settings (reference defaults).
#[derive(Clone, Debug, Serialize)]
pub struct AlignOpts {
    pub steps: usize,
    /// for W_q, W_k, W_v
    pub lr_qkv: f32,
    /// for W_a, W_b, W_g, A_log, dt_bias
    pub lr_gates: f32,
    pub weight_decay: f32,
    pub max_norm: f32,
}

impl Default for AlignOpts {
    fn default() -> Self {
        AlignOpts { steps: 300, lr_qkv: 1e-4, lr_gates: 1e-3, weight_decay: 0.01, max_norm: 1.0 }
    }
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
        let ids = gpu.upload_u32(&[w.len()], w)?;
        let mut hook = |b: &mut Batch, a: AttnActs| -> Result<()> {
            // per-layer sums accumulate on the GPU across windows; read once at the end
            ops::act::colsum(b, a.stats, &sums[a.layer], wi > 0);
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

/// The output-gate variants: W_g = 0 (zero-gate) or W_g *= 0.02 (small-gate).
pub fn scale_output_gate(tensors: &mut HashMap<String, HostTensor>, layers: &[usize], factor: f32) {
    for &l in layers {
        tensors.get_mut(&gdn_name(l, "g_proj.weight")).expect("g_proj").data.iter_mut().for_each(|w| *w *= factor);
    }
}

/// Phase 1 components left out, from the research knob `TAYLORCAL_PHASE1_SKIP` (a comma
/// list of `decay`, `beta`, `sigma`, `gate`; unset: none) for component ablations.
pub fn phase1_skips() -> Vec<String> {
    std::env::var("TAYLORCAL_PHASE1_SKIP")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// Phase 1 on converted layer `li` of the capture: decay, write gate, value scale, output gate.
pub fn phase1_layer(
    gpu: &Gpu,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    li: usize,
    value_scale: ValueScale,
) -> Result<Phase1Report> {
    let skip = phase1_skips();
    for s in &skip {
        anyhow::ensure!(
            ["decay", "beta", "sigma", "gate"].contains(&s.as_str()),
            "TAYLORCAL_PHASE1_SKIP: unknown component {s:?} (decay, beta, sigma, gate)"
        );
    }
    let skips = |c: &str| skip.iter().any(|s| s == c);
    let l = cap.layers[li];
    let (dist, ent) = (&cap.stats[l].distance, &cap.stats[l].entropy);
    let heads = dist.len();
    let dm = cap.x[li].cols();
    let set = |t: &mut HashMap<String, HostTensor>, name: &str, v: Vec<f32>| t.get_mut(&gdn_name(l, name)).expect("gdn tensor").data = v;
    let dt_bias = phase1::dt_bias(dist);
    if !skips("decay") {
        set(tensors, "A_log", vec![0.0; heads]);
        set(tensors, "dt_bias", dt_bias.clone());
    }
    let betas = phase1::target_beta(ent);
    if !skips("beta") {
        phase1::rescale_wb(&mut tensors.get_mut(&gdn_name(l, "b_proj.weight")).expect("b_proj").data, dm, &betas);
    }
    // value scale: run the recurrence with the calibrated gates on the teacher-forced input
    let p = upload_gdn(gpu, tensors, l)?;
    let dims = p.dims();
    let acts = GdnActs::new(gpu, dims, cap.seqs, false)?;
    let mut b = gpu.batch();
    gdn::gdn_forward_inputs(&mut b, &p, &cap.x[li], &acts);
    gdn::gdn_scan_forward(&mut b, &p, cap.seqs, &acts)?;
    b.submit();
    let teacher_ctx = gpu.read(&cap.context[li])?;
    let sigma = phase1::value_scale(&teacher_ctx, &gpu.read(&acts.o)?, heads, dims.head_dim);
    // the pre-activation W_v x (before any scale), which the recurrence's inputs came from
    let zv = gpu.read(&acts.zv)?;
    let preact_rms = phase1::head_rms(&zv, heads, dims.head_dim);
    // research knob: TAYLORCAL_SIGMA_FIXED=S applies S to every head (the report keeps
    // the fitted sigma and says what was applied)
    let fixed = std::env::var("TAYLORCAL_SIGMA_FIXED").ok().and_then(|v| v.parse::<f32>().ok());
    let applied = match (fixed, value_scale) {
        _ if skips("sigma") => vec![1.0; heads],
        (Some(f), _) => vec![f; heads],
        (None, ValueScale::Linear { tau }) => phase1::linear_regime_scale(&preact_rms, tau),
        (None, ValueScale::Fit) => sigma.clone(),
    };
    let wv = &mut tensors.get_mut(&gdn_name(l, "v_proj.weight")).expect("v_proj").data;
    for (h, s) in applied.iter().enumerate() {
        wv[h * dims.head_dim * dm..(h + 1) * dims.head_dim * dm].iter_mut().for_each(|w| *w *= s);
    }
    let wv = wv.clone();
    // output gate from the rescaled values SiLU(sigma_h W_v x): W_g = alpha W_v
    let silu_v = phase1::scaled_silu(&zv, &applied, dims.head_dim);
    let mut alpha = phase1::output_gate_alpha(&teacher_ctx, &silu_v);
    // research knob: TAYLORCAL_GATE_SCALE multiplies alpha (the method's 0.01 coefficient)
    if let Some(k) = std::env::var("TAYLORCAL_GATE_SCALE").ok().and_then(|v| v.parse::<f32>().ok()) {
        alpha *= k;
    }
    if !skips("gate") {
        set(tensors, "g_proj.weight", wv.iter().map(|w| w * alpha).collect());
    }
    Ok(Phase1Report {
        distance: dist.clone(),
        entropy: ent.clone(),
        target_beta: betas,
        dt_bias,
        sigma,
        sigma_applied: applied,
        value_preact_rms: preact_rms.iter().map(|r| *r as f32).collect(),
        alpha,
    })
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct AlignReport {
    pub initial_loss: f64,
    pub initial_cosine: f64,
    pub final_loss: f64,
    pub final_cosine: f64,
    pub best_step: usize,
    pub seconds: f64,
}

/// Phase 2 on converted layer `li`: AdamW on MSE(layer(x), teacher output) for `o.steps`
/// steps, W_o and w_norm frozen; the lowest-loss parameters seen are kept.
pub fn align_layer(
    gpu: &Gpu,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    li: usize,
    o: &AlignOpts,
    mut progress: impl FnMut(usize, f64),
) -> Result<AlignReport> {
    let t0 = Instant::now();
    let l = cap.layers[li];
    let p = upload_gdn(gpu, tensors, l)?;
    let dims = p.dims();
    let (x, target) = (&cap.x[li], &cap.target[li]);
    let n = x.numel();
    let acts = GdnActs::new(gpu, dims, cap.seqs, true)?;
    let grads = GdnGrads::zeros(gpu, &p)?;
    let out = gpu.zeros(&x.shape)?;
    let dout = gpu.zeros(&x.shape)?;
    let pt = p.tensors();
    let gt = grads.tensors();
    // trained: wq wk wv (lr_qkv), wa wb wg a_log dt_bias (lr_gates); wo, w_norm frozen
    let trained: Vec<(usize, f32)> = vec![
        (0, o.lr_qkv),
        (1, o.lr_qkv),
        (2, o.lr_qkv),
        (3, o.lr_gates),
        (4, o.lr_gates),
        (5, o.lr_gates),
        (7, o.lr_gates),
        (8, o.lr_gates),
    ];
    let mstate: Vec<(Tensor, Tensor)> =
        trained.iter().map(|&(i, _)| Ok((gpu.zeros(&pt[i].shape)?, gpu.zeros(&pt[i].shape)?))).collect::<Result<_>>()?;
    let best: Vec<Tensor> = trained.iter().map(|&(i, _)| gpu.zeros(&pt[i].shape)).collect::<Result<_>>()?;
    let red_loss = optim::Reducer::new(gpu, n, 1)?;
    let red_norm = optim::Reducer::new(gpu, pt.iter().map(|t| t.numel()).sum(), 1)?;
    let mut rep = AlignReport { initial_loss: f64::NAN, final_loss: f64::INFINITY, ..Default::default() };
    for step in 0..=o.steps {
        let mut b = gpu.batch();
        gdn::gdn_forward(&mut b, &p, x, cap.seqs, &acts, &out)?;
        optim::mse(&mut b, &out, target, &dout, &red_loss, 0);
        b.submit();
        let s = gpu.read(&red_loss.out)?;
        let (loss, cos) = optim::mse_summary([s[0], s[1], s[2], s[3]], n);
        if !loss.is_finite() {
            bail!("layer {l}: alignment loss became {loss} at step {step}");
        }
        if step == 0 {
            rep.initial_loss = loss;
            rep.initial_cosine = cos;
        }
        let mut b = gpu.batch();
        if loss < rep.final_loss {
            rep.final_loss = loss;
            rep.final_cosine = cos;
            rep.best_step = step;
            for (k, &(i, _)) in trained.iter().enumerate() {
                b.copy(pt[i], 0, &best[k], 0, pt[i].bytes());
            }
        }
        progress(step, loss);
        if step == o.steps {
            b.submit();
            break;
        }
        gdn::gdn_backward(&mut b, &p, x, cap.seqs, &acts, &dout, &grads, None, false)?;
        optim::sum_squares(&mut b, &trained.iter().map(|&(i, _)| gt[i]).collect::<Vec<_>>(), &red_norm, 0);
        for (k, &(i, lr)) in trained.iter().enumerate() {
            let ao = optim::AdamW { lr, weight_decay: o.weight_decay, max_norm: o.max_norm, ..Default::default() };
            optim::adamw(&mut b, &ao, step as u32 + 1, pt[i], gt[i], &mstate[k].0, &mstate[k].1, &red_norm);
        }
        b.submit();
    }
    for (k, &(i, _)) in trained.iter().enumerate() {
        tensors.get_mut(&gdn_name(l, GDN_NAMES[i])).expect("gdn tensor").data = gpu.read(&best[k])?;
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    Ok(rep)
}

/// Everything `convert` reports about one converted layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub phase1: Option<Phase1Report>,
    pub alignment: Option<AlignReport>,
}

/// Apply `strategy` to a naive student's tensors (from `init_student`), layer by layer.
#[allow(clippy::too_many_arguments)] // the device, the student, the capture and the method's three settings
pub fn apply_strategy(
    gpu: &Gpu,
    hc: &HybridConfig,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    strategy: Strategy,
    align: &AlignOpts,
    value_scale: ValueScale,
    mut progress: impl FnMut(&str),
) -> Result<(Vec<LayerReport>, f64, f64)> {
    let layers = hc.gdn_layers();
    anyhow::ensure!(layers == cap.layers, "capture does not cover the converted layers");
    match strategy {
        Strategy::ZeroGate => scale_output_gate(tensors, &layers, 0.0),
        Strategy::SmallGate => scale_output_gate(tensors, &layers, 0.02),
        _ => {}
    }
    let (mut t1, mut t2) = (0.0, 0.0);
    let mut reports = vec![];
    for (li, &l) in layers.iter().enumerate() {
        let mut r = LayerReport { layer: l, ..Default::default() };
        if strategy.phase1() {
            let t = Instant::now();
            r.phase1 = Some(phase1_layer(gpu, tensors, cap, li, value_scale)?);
            t1 += t.elapsed().as_secs_f64();
        }
        if strategy.phase2() {
            let t = Instant::now();
            r.alignment = Some(align_layer(gpu, tensors, cap, li, align, |s, loss| {
                progress(&format!("layer {l} step {s}/{} loss {loss:.3e}", align.steps))
            })?);
            t2 += t.elapsed().as_secs_f64();
        }
        progress(&format!("layer {l} done"));
        reports.push(r);
    }
    Ok((reports, t1, t2))
}

/// Everything `taylorcal convert` needs.
#[derive(Clone, Debug)]
pub struct ConvertOpts {
    pub keep: Vec<usize>,
    pub strategy: Strategy,
    /// Tokens per calibration / evaluation window.
    pub seq_len: usize,
    /// Calibration tokens the statistics stream over.
    pub calib_tokens: usize,
    /// Windows of activations captured for phase 1's value scale and phase 2 (reference: 4).
    pub capture_windows: usize,
    pub align: AlignOpts,
    /// Phase 1's value scale (default: linear, TAU 0.25; `Fit` is ALGORITHM.md as written)
    pub value_scale: ValueScale,
    pub seed: u64,
}

impl Default for ConvertOpts {
    fn default() -> Self {
        ConvertOpts {
            keep: vec![],
            strategy: Strategy::TaylorCalibrate,
            seq_len: 256,
            calib_tokens: 1024,
            capture_windows: 4,
            align: AlignOpts::default(),
            value_scale: ValueScale::default(),
            seed: 0,
        }
    }
}

/// Timings of a conversion by phase, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub teacher_pass_and_statistics: f64,
    pub phase1: f64,
    pub phase2: f64,
    pub total: f64,
}

/// Cut `ids` into `n` windows of `len` tokens (error if the text is too short).
pub fn take_windows<'a>(ids: &'a [u32], len: usize, n: usize, what: &str) -> Result<Vec<&'a [u32]>> {
    let w: Vec<&[u32]> = ids.chunks_exact(len).take(n).collect();
    if w.len() < n {
        bail!("{what} has {} tokens: fewer than the {n} windows of {len} tokens asked for", ids.len());
    }
    Ok(w)
}

/// Teacher pass + strategy: the student's tensors and the report of every converted layer.
pub fn convert(
    gpu: &Gpu,
    hc: &HybridConfig,
    teacher: &Decoder,
    teacher_tensors: &HashMap<String, HostTensor>,
    calib: &[u32],
    o: &ConvertOpts,
    mut progress: impl FnMut(&str),
) -> Result<(HashMap<String, HostTensor>, Vec<LayerReport>, Timings)> {
    let t0 = Instant::now();
    let mut tensors = crate::model::hybrid::init_student(hc, teacher_tensors, o.seed)?;
    let needs_teacher = o.strategy.phase1() || o.strategy.phase2();
    let mut timings = Timings::default();
    let reports = if needs_teacher {
        let nwin = o.calib_tokens.div_ceil(o.seq_len).max(o.capture_windows);
        let windows = take_windows(calib, o.seq_len, nwin, "the calibration text")?;
        let cap = capture(gpu, teacher, &hc.gdn_layers(), &windows, o.capture_windows, |i| {
            progress(&format!("teacher pass: window {i}/{nwin}"))
        })?;
        timings.teacher_pass_and_statistics = cap.seconds;
        let (r, t1, t2) = apply_strategy(gpu, hc, &mut tensors, &cap, o.strategy, &o.align, o.value_scale, &mut progress)?;
        timings.phase1 = t1;
        timings.phase2 = t2;
        r
    } else {
        let (r, _, _) =
            apply_strategy(gpu, hc, &mut tensors, &Capture::empty(hc.gdn_layers()), o.strategy, &o.align, o.value_scale, &mut progress)?;
        r
    };
    timings.total = t0.elapsed().as_secs_f64();
    Ok((tensors, reports, timings))
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
