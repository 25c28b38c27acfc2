//! `convert`: teacher pass (activations captured, attention statistics streamed), then per
//! converted layer the chosen strategy: naive copy, zero/small output gate, phase 1 closed
//! form, phase 2 alignment, or both (Taylor-Calibrate); the evaluation of the student against
//! the teacher and its checkpoint with `report.json` (which `super::resumable::convert_and_save`
//! writes, each converted layer saved as it is done so that a killed run resumes).
use super::capture::{capture, Capture};
use super::init::scale_output_gate;
use super::phase1::{phase1_layer, Phase1Knobs, Phase1Report, ValueScale};
use super::phase2::{align_layer, AlignOpts, AlignReport};
use super::strategy::Strategy;
use crate::data;
use crate::eval::perplexity_windows;
use crate::gpu::Gpu;
use crate::io::checkpoint::{Checkpoint, HybridConfig};
use crate::io::HostTensor;
use crate::nn::decoder::Decoder;
use anyhow::{ensure, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// Everything `convert` reports about one converted layer.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerReport {
    pub layer: usize,
    pub phase1: Option<Phase1Report>,
    pub alignment: Option<AlignReport>,
}

/// Where a conversion stands, for a progress display: `done` of `total` units of work and
/// what runs now. A unit is one evaluation of phase 2's alignment loss ([`layer_units`] per
/// converted layer, phase 1 before the first), or a whole layer for a strategy without
/// phase 2: the work whose time grows with the model and the settings.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    pub what: &'a str,
}

/// The [`Progress`] units of one converted layer with `strategy` and `align`.
pub fn layer_units(strategy: Strategy, align: &AlignOpts) -> usize {
    if strategy.phase2() {
        align.steps + 1
    } else {
        1
    }
}

/// Apply `strategy` to a naive student's tensors (from `init_student`), layer by layer.
#[allow(clippy::too_many_arguments)] // the device, the student, the capture and the method's four settings
pub fn apply_strategy(
    gpu: &Gpu,
    hc: &HybridConfig,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    strategy: Strategy,
    align: &AlignOpts,
    value_scale: ValueScale,
    knobs: &Phase1Knobs,
    mut progress: impl FnMut(Progress),
) -> Result<(Vec<LayerReport>, f64, f64)> {
    let o = ConvertOpts { strategy, align: align.clone(), value_scale, phase1_knobs: knobs.clone(), ..Default::default() };
    convert_layers(gpu, hc, tensors, cap, &o, 0, &mut progress, &mut |_, _, _| Ok(()))
}

/// A hook run after each converted layer, given its report, the student's tensors after it
/// and the time so far (`T`).
type AfterLayer<'a, T> = dyn FnMut(&LayerReport, &HashMap<String, HostTensor>, T) -> Result<()> + 'a;

/// [`apply_strategy`] with the settings of `o`, from the `start`-th converted layer on (the
/// earlier ones are converted already), running `after_layer` after each layer. Returns the
/// reports of the layers converted here and their phase 1 and phase 2 seconds.
#[allow(clippy::too_many_arguments)] // apply_strategy's, plus where to start and the hook
fn convert_layers(
    gpu: &Gpu,
    hc: &HybridConfig,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    o: &ConvertOpts,
    start: usize,
    progress: &mut dyn FnMut(Progress),
    after_layer: &mut AfterLayer<[f64; 2]>,
) -> Result<(Vec<LayerReport>, f64, f64)> {
    let (strategy, align) = (o.strategy, &o.align);
    let layers = hc.gdn_layers();
    anyhow::ensure!(layers == cap.layers, "capture does not cover the converted layers");
    ensure!(start <= layers.len(), "{start} converted layers done, but the student converts {}", layers.len());
    match strategy {
        Strategy::ZeroGate => scale_output_gate(tensors, &layers[start..], 0.0),
        Strategy::SmallGate => scale_output_gate(tensors, &layers[start..], 0.02),
        _ => {}
    }
    let units = layer_units(strategy, align);
    let total = layers.len() * units;
    let (mut t1, mut t2) = (0.0, 0.0);
    let mut reports = vec![];
    for (li, &l) in layers.iter().enumerate().skip(start) {
        let base = li * units;
        let mut r = LayerReport { layer: l, ..Default::default() };
        if strategy.phase1() {
            let t = Instant::now();
            r.phase1 = Some(phase1_layer(gpu, tensors, cap, li, o.value_scale, &o.phase1_knobs)?);
            t1 += t.elapsed().as_secs_f64();
        }
        if strategy.phase2() {
            let t = Instant::now();
            r.alignment = Some(align_layer(gpu, tensors, cap, li, align, |s, loss| {
                let what = format!("layer {l} step {s}/{} loss {loss:.3e}", align.steps);
                progress(Progress { done: base + s + 1, total, what: &what })
            })?);
            t2 += t.elapsed().as_secs_f64();
        }
        progress(Progress { done: base + units, total, what: &format!("layer {l} done") });
        after_layer(&r, tensors, [t1, t2])?;
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
    /// Phase 1's value scale (default: linear, TAU 0.25; `Fit` is docs/method.md's method as written)
    pub value_scale: ValueScale,
    /// Phase 1's research knobs (default: none, the method).
    pub phase1_knobs: Phase1Knobs,
    pub seed: u64,
}

impl Default for ConvertOpts {
    fn default() -> Self {
        ConvertOpts {
            keep: vec![],
            strategy: Strategy::TaylorCalibrate,
            seq_len: data::WINDOW,
            calib_tokens: 1024,
            capture_windows: 4,
            align: AlignOpts::default(),
            value_scale: ValueScale::default(),
            phase1_knobs: Phase1Knobs::default(),
            seed: 0,
        }
    }
}

impl ConvertOpts {
    /// Settings for CPU and other slow adapters (the CLI's `--preset quick`): 50 alignment
    /// steps per layer on 1 captured window instead of 300 on 4, about 1/24 of phase 2's work,
    /// which dominates a conversion's time; the rest as the reference.
    pub fn quick() -> Self {
        ConvertOpts { capture_windows: 1, align: AlignOpts { steps: 50, ..Default::default() }, ..Default::default() }
    }

    /// Calibration windows of `seq_len` tokens the teacher pass reads: enough for
    /// `calib_tokens`, and at least the `capture_windows` whose activations are captured.
    pub fn calib_windows(&self) -> usize {
        self.calib_tokens.div_ceil(self.seq_len).max(self.capture_windows)
    }

    /// Reject settings no conversion can use (before anything is loaded).
    pub fn check(&self) -> Result<()> {
        ensure!(self.seq_len >= 2, "the window length must be at least 2 tokens (got {})", self.seq_len);
        ensure!(self.capture_windows >= 1, "--capture-windows must be at least 1");
        self.align.check()
    }

    /// The [`ConvertOpts::calib_windows`] windows of the calibration tokens.
    pub fn calib_windows_of<'a>(&self, calib: &'a [u32]) -> Result<Vec<&'a [u32]>> {
        data::windows(calib, self.seq_len, self.calib_windows(), "the calibration text")
    }
}

/// Timings of a conversion by phase, in seconds (a resumed conversion's include the time
/// the interrupted runs spent).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    pub teacher_pass_and_statistics: f64,
    pub phase1: f64,
    pub phase2: f64,
    pub total: f64,
}

/// A converted student: its tensors, the report of every converted layer, the timings.
pub struct Conversion {
    pub tensors: HashMap<String, HostTensor>,
    /// The reports of the layers converted by this run.
    pub layers: Vec<LayerReport>,
    /// The reports of the layers an interrupted run converted before (resumed), as it
    /// recorded them: they come first.
    pub earlier: Vec<Value>,
    pub timings: Timings,
}

/// What an interrupted conversion left to continue from ([`super::resumable`]): the tensors of
/// the layers it converted, their reports and the time it spent.
#[derive(Default)]
pub struct Earlier {
    pub tensors: HashMap<String, HostTensor>,
    pub layers: Vec<Value>,
    pub timings: Timings,
}

/// Teacher pass + strategy: the student's tensors and the report of every converted layer.
pub fn convert(
    gpu: &Gpu,
    hc: &HybridConfig,
    teacher: &Decoder,
    teacher_tensors: &HashMap<String, HostTensor>,
    calib: &[u32],
    o: &ConvertOpts,
    mut progress: impl FnMut(Progress),
) -> Result<Conversion> {
    let inp = (gpu, hc, teacher, teacher_tensors, calib);
    convert_from(inp, o, Earlier::default(), &mut progress, &mut |_, _, _| Ok(()))
}

/// [`convert`] continuing what an interrupted run converted (`earlier`: its layers' tensors
/// replace the naive student's), with `after_layer` run after each layer converted here
/// (given the timings so far, the earlier ones included). A layer depends only on the
/// teacher, the calibration tokens, the settings and its own naive tensors, so the result
/// is the one an unbroken run gets.
pub(super) fn convert_from(
    (gpu, hc, teacher, teacher_tensors, calib): (&Gpu, &HybridConfig, &Decoder, &HashMap<String, HostTensor>, &[u32]),
    o: &ConvertOpts,
    earlier: Earlier,
    progress: &mut dyn FnMut(Progress),
    after_layer: &mut AfterLayer<Timings>,
) -> Result<Conversion> {
    o.check()?;
    let t0 = Instant::now();
    let mut tensors = super::init::init_student(hc, teacher_tensors, o.seed)?;
    let (start, gdn) = (earlier.layers.len(), hc.gdn_layers());
    for (name, t) in earlier.tensors {
        let naive = tensors.get_mut(&name).with_context(|| format!("the student has no tensor {name}"))?;
        ensure!(naive.shape == t.shape, "tensor {name} has shape {:?}, the student's is {:?}", t.shape, naive.shape);
        *naive = t;
    }
    let needs_teacher = (o.strategy.phase1() || o.strategy.phase2()) && start < gdn.len();
    let cap = if needs_teacher {
        let windows = o.calib_windows_of(calib)?;
        let nwin = windows.len();
        let (done, total) = (start * layer_units(o.strategy, &o.align), gdn.len() * layer_units(o.strategy, &o.align));
        capture(gpu, teacher, &gdn, &windows, o.capture_windows, |i| {
            progress(Progress { done, total, what: &format!("teacher pass: window {i}/{nwin}") })
        })?
    } else {
        Capture::empty(gdn)
    };
    let was = earlier.timings;
    let teacher_s = was.teacher_pass_and_statistics + cap.seconds;
    let timings = |[t1, t2]: [f64; 2]| Timings {
        teacher_pass_and_statistics: teacher_s,
        phase1: was.phase1 + t1,
        phase2: was.phase2 + t2,
        total: was.total + t0.elapsed().as_secs_f64(),
    };
    let (layers, t1, t2) =
        convert_layers(gpu, hc, &mut tensors, &cap, o, start, progress, &mut |r, t, secs| after_layer(r, t, timings(secs)))?;
    Ok(Conversion { tensors, layers, earlier: earlier.layers, timings: timings([t1, t2]) })
}

/// What a conversion reads besides its settings: the teacher, the student's layout, the
/// calibration tokens and the evaluation windows, and for the reports where they came from.
/// `convert_and_save`, the ablation and the recovery experiment share it.
pub struct Inputs<'a> {
    pub gpu: &'a Gpu,
    pub teacher: &'a Decoder,
    /// The teacher's host tensors (the naive student copies them).
    pub teacher_tensors: &'a HashMap<String, HostTensor>,
    /// Where the teacher came from (the model files' description), for the reports.
    pub teacher_source: &'a str,
    /// The student's layout: the layers that keep softmax attention.
    pub config: &'a HybridConfig,
    /// The retained-layer policy's selection when one chose the kept layers, as its reports
    /// write it (`select` builds on this module, so it arrives serialised).
    pub selection: Option<Value>,
    /// Calibration tokens, cut into [`ConvertOpts::calib_windows`] windows.
    pub calib: &'a [u32],
    /// Evaluation windows of [`ConvertOpts::seq_len`] tokens.
    pub eval: &'a [&'a [u32]],
}

impl Inputs<'_> {
    /// Reject inputs no report can be made of (before any work): no evaluation window.
    pub fn check(&self) -> Result<()> {
        ensure!(!self.eval.is_empty(), "--eval-windows must be at least 1: the students are scored on them");
        Ok(())
    }
}

/// The evaluation of a converted student beside its teacher's.
#[derive(Clone, Debug, Serialize)]
pub struct ConvertEval {
    pub windows: usize,
    pub window_tokens: usize,
    pub student_ppl: f64,
    pub teacher_ppl: f64,
}

impl Conversion {
    /// The student's and the teacher's evaluation perplexity on `inp.eval`.
    pub fn evaluate(&self, inp: &Inputs, o: &ConvertOpts) -> Result<ConvertEval> {
        let (g, hc) = (inp.gpu, inp.config);
        let student = Decoder::build(g, &hc.base, &self.tensors, "student", |l| hc.is_gdn(l))?;
        let student_ppl = perplexity_windows(g, &student, inp.eval)?.ppl;
        let teacher_ppl = perplexity_windows(g, inp.teacher, inp.eval)?.ppl;
        Ok(ConvertEval { windows: inp.eval.len(), window_tokens: o.seq_len, student_ppl, teacher_ppl })
    }

    /// The checkpoint's `report.json`: the teacher, the settings, the selection, the
    /// timings, every converted layer's report and the evaluation.
    pub fn report_json(&self, inp: &Inputs, o: &ConvertOpts, eval: &ConvertEval) -> Value {
        json!({
            "teacher": inp.teacher_source, "strategy": o.strategy.name(), "attn_layers": inp.config.attn_layers,
            "calib_tokens": o.calib_tokens.max(o.capture_windows * o.seq_len), "capture_windows": o.capture_windows,
            "align": o.align, "value_scale": o.value_scale.name(), "seed": o.seed,
            "selection": inp.selection,
            "timings_s": self.timings, "layers": self.layer_reports(),
            "eval": eval,
            "adapter": inp.gpu.info.name,
            "precision": inp.gpu.precision_report(),
        })
    }

    /// Every converted layer's report, in order: the earlier runs' as they recorded them, then this run's.
    fn layer_reports(&self) -> Vec<Value> {
        let this = self.layers.iter().map(|r| serde_json::to_value(r).expect("a report serialises"));
        self.earlier.iter().cloned().chain(this).collect()
    }

    /// The student as a checkpoint: layout, tensors, tokenizer and report.
    pub fn checkpoint(self, config: &HybridConfig, tokenizer: Option<tokenizers::Tokenizer>, report: Value) -> Checkpoint {
        Checkpoint { config: config.clone(), tensors: self.tensors, tokenizer, report, optimizer: None, files: vec![] }
    }
}
