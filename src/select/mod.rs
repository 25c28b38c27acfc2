//! Retained-layer policies: which layers of the teacher keep softmax attention.
//! - uniform: every k-th layer from 0;
//! - AR: bypass each teacher attention layer alone (output zeroed, residual kept) and keep
//!   the layers whose removal raises the evaluation perplexity most;
//! - GA-S2: for each layer, a Taylor-initialised student that keeps only that softmax layer;
//!   keep the layers whose students have the lowest zero-shot perplexity. One teacher pass
//!   captures every layer; each candidate reuses it restricted to its converted layers.
use crate::calibrate::convert;
use crate::calibrate::init::init_student;
use crate::calibrate::phase2::AlignOpts;
use crate::calibrate::strategy::Strategy;
use crate::eval;
use crate::gpu::Gpu;
use crate::io::checkpoint::HybridConfig;
use crate::io::HostTensor;
use crate::nn::decoder::Decoder;
use anyhow::{bail, ensure, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    Uniform,
    Ar,
    GaS2,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Uniform, Policy::Ar, Policy::GaS2];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Uniform => "uniform",
            Policy::Ar => "ar",
            Policy::GaS2 => "ga-s2",
        }
    }

    pub fn parse(s: &str) -> Result<Policy> {
        match Policy::ALL.iter().find(|p| p.name() == s) {
            Some(p) => Ok(*p),
            None => bail!("unknown policy '{s}' (choose from {})", Policy::ALL.map(|p| p.name()).join(", ")),
        }
    }

    /// What a layer's score means (for reports).
    pub fn score_meaning(self) -> &'static str {
        match self {
            Policy::Uniform => "none (index-based)",
            Policy::Ar => "perplexity increase when the layer's attention is bypassed (higher = keep)",
            Policy::GaS2 => "perplexity of the taylor-init student keeping only this softmax layer (lower = keep)",
        }
    }
}

/// The outcome of a policy: kept layers (sorted) and every layer's score. It serialises as
/// the reports write it: the policy's name, the kept layers, the scores, what a score means
/// (`score`), the teacher's perplexity and the wall time.
#[derive(Clone, Debug)]
pub struct Selection {
    pub policy: Policy,
    pub keep: Vec<usize>,
    /// Per layer: AR the perplexity increase, GA-S2 the student perplexity, uniform NaN.
    pub scores: Vec<f64>,
    /// The intact teacher's evaluation perplexity (AR), NaN otherwise.
    pub teacher_ppl: f64,
    /// Wall time of the selection, teacher pass included.
    pub seconds: f64,
}

impl Serialize for Selection {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = ser.serialize_struct("Selection", 6)?;
        st.serialize_field("policy", self.policy.name())?;
        st.serialize_field("keep", &self.keep)?;
        st.serialize_field("scores", &self.scores)?;
        st.serialize_field("score", self.policy.score_meaning())?;
        st.serialize_field("teacher_ppl", &self.teacher_ppl)?;
        st.serialize_field("seconds", &self.seconds)?;
        st.end()
    }
}

/// What the title of every [`Selection::chart_svg`] holds (how a chart select wrote is
/// recognised).
const CHART_TITLE: &str = "per-layer score: ";

impl Selection {
    /// Every layer's score as a bar chart, the kept layers highlighted (SVG).
    pub fn chart_svg(&self) -> String {
        let title = format!("{} {CHART_TITLE}{}", self.policy.name(), self.policy.score_meaning());
        crate::report::layer_chart_svg(&title, &self.scores, &self.keep)
    }

    /// Where a report written to `out` goes: the JSON report at `out` and its chart beside it
    /// (`out` with `.svg` for its `.json`, else `out` + `.svg`), never one path. An `out`
    /// ending in `.svg` is refused: it names the chart's place, not the report's.
    pub fn report_paths(out: &Path) -> Result<(PathBuf, PathBuf)> {
        let ext = out.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        ensure!(
            ext.as_deref() != Some("svg"),
            "--out {} ends in .svg: give the JSON report's path (e.g. selection.json); its chart is written beside it as .svg",
            out.display()
        );
        let chart = match ext.as_deref() {
            Some("json") => out.with_extension("svg"),
            _ => {
                let mut name = out.as_os_str().to_os_string();
                name.push(".svg");
                PathBuf::from(name)
            }
        };
        Ok((out.to_path_buf(), chart))
    }

    /// Whether `path` holds a report or chart that select wrote (the only files it writes
    /// over): a JSON selection or an SVG with its chart's title, of a report's size.
    pub fn is_own_output(path: &Path) -> bool {
        let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= 1 << 20);
        let Some(text) = small.then(|| std::fs::read_to_string(path).ok()).flatten() else {
            return false;
        };
        if text.starts_with("<svg") {
            return text.contains(CHART_TITLE);
        }
        serde_json::from_str::<serde_json::Value>(&text)
            .is_ok_and(|v| ["policy", "keep", "scores", "score"].iter().all(|k| v.get(k).is_some()))
    }
}

/// Softmax layers kept when neither a policy nor a list chooses them: every 4th from 0.
pub const DEFAULT_KEEP_EVERY: usize = 4;

/// The layers of a `num_layers`-layer teacher that keep softmax attention: a policy's
/// `selection` when there is one, else the `keep` list, else every `keep_every`-th layer
/// from 0 ([`DEFAULT_KEEP_EVERY`] when not given).
pub fn kept_layers(
    num_layers: usize,
    selection: Option<&Selection>,
    keep: Option<&[usize]>,
    keep_every: Option<usize>,
) -> Result<Vec<usize>> {
    Ok(match (selection, keep) {
        (Some(s), _) => s.keep.clone(),
        (None, Some(k)) => k.to_vec(),
        (None, None) => {
            let every = keep_every.unwrap_or(DEFAULT_KEEP_EVERY);
            ensure!(every > 0, "--keep-every must be at least 1");
            (0..num_layers).step_by(every).collect()
        }
    })
}

fn check_n(num_layers: usize, n: usize) -> Result<()> {
    ensure!(n > 0, "the number of layers to keep must be at least 1");
    ensure!(n <= num_layers, "cannot keep {n} layers: the teacher has only {num_layers}");
    Ok(())
}

/// Every k-th layer from 0, `n` of them, k = max(1, num_layers / n).
pub fn uniform(num_layers: usize, n: usize) -> Result<Vec<usize>> {
    check_n(num_layers, n)?;
    let k = (num_layers / n).max(1);
    Ok((0..n).map(|i| i * k).collect())
}

/// The `n` best layers by score (`higher` = higher is better; NaN ranks last, ties by
/// lower index), sorted ascending.
pub fn top_n(scores: &[f64], n: usize, higher: bool) -> Result<Vec<usize>> {
    check_n(scores.len(), n)?;
    let key = |s: f64| match (s.is_nan(), higher) {
        (true, _) => f64::INFINITY,
        (false, true) => -s,
        (false, false) => s,
    };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| key(scores[a]).total_cmp(&key(scores[b])).then(a.cmp(&b)));
    let mut keep = idx[..n].to_vec();
    keep.sort_unstable();
    Ok(keep)
}

/// What the scoring policies read: the teacher, its host tensors (GA-S2 builds students
/// from them), evaluation windows, and calibration windows (GA-S2's teacher pass).
pub struct Inputs<'a> {
    pub teacher: &'a Decoder,
    pub tensors: &'a HashMap<String, HostTensor>,
    pub eval: &'a [&'a [u32]],
    pub calib: &'a [&'a [u32]],
    /// Calibration windows whose activations are captured (phase 1's value scale).
    pub capture_windows: usize,
    /// Phase 1's value scale for GA-S2's taylor-init candidates.
    pub value_scale: crate::calibrate::phase1::ValueScale,
    /// Phase 1's research knobs for GA-S2's taylor-init candidates (default: none).
    pub phase1_knobs: crate::calibrate::phase1::Phase1Knobs,
    pub seed: u64,
}

/// Run `policy`; `progress(done, total)` after each scored layer.
pub fn select(gpu: &Gpu, policy: Policy, n: usize, inp: &Inputs, progress: impl FnMut(usize, usize)) -> Result<Selection> {
    let layers = inp.teacher.cfg.num_hidden_layers;
    match policy {
        Policy::Uniform => {
            Ok(Selection { policy, keep: uniform(layers, n)?, scores: vec![f64::NAN; layers], teacher_ppl: f64::NAN, seconds: 0.0 })
        }
        Policy::Ar => ar(gpu, inp.teacher, n, inp.eval, progress),
        Policy::GaS2 => ga_s2(gpu, n, inp, progress),
    }
}

/// AR: bypass each layer's attention alone; score = perplexity increase over the teacher.
pub fn ar(gpu: &Gpu, teacher: &Decoder, n: usize, eval: &[&[u32]], mut progress: impl FnMut(usize, usize)) -> Result<Selection> {
    let t0 = Instant::now();
    let layers = teacher.cfg.num_hidden_layers;
    check_n(layers, n)?;
    let base = eval::perplexity_windows(gpu, teacher, eval)?.ppl;
    let mut scores = Vec::with_capacity(layers);
    for l in 0..layers {
        scores.push(eval::perplexity_windows_skipping(gpu, teacher, eval, &[l])?.ppl - base);
        progress(l + 1, layers);
    }
    Ok(Selection { policy: Policy::Ar, keep: top_n(&scores, n, true)?, scores, teacher_ppl: base, seconds: t0.elapsed().as_secs_f64() })
}

/// GA-S2: one teacher pass over every layer, then per layer a taylor-init student keeping
/// only that layer as softmax; score = its evaluation perplexity.
pub fn ga_s2(gpu: &Gpu, n: usize, inp: &Inputs, mut progress: impl FnMut(usize, usize)) -> Result<Selection> {
    let t0 = Instant::now();
    let cfg = &inp.teacher.cfg;
    let layers = cfg.num_hidden_layers;
    check_n(layers, n)?;
    let all: Vec<usize> = (0..layers).collect();
    let cap = crate::calibrate::capture::capture(gpu, inp.teacher, &all, inp.calib, inp.capture_windows, |_| {})?;
    let mut scores = Vec::with_capacity(layers);
    for l in 0..layers {
        let hc = HybridConfig::new(cfg.clone(), vec![l])?;
        let mut tensors = init_student(&hc, inp.tensors, inp.seed)?;
        convert::apply_strategy(
            gpu,
            &hc,
            &mut tensors,
            &cap.subset(&hc.gdn_layers())?,
            Strategy::TaylorInit,
            &AlignOpts::default(),
            inp.value_scale,
            &inp.phase1_knobs,
            |_| {},
        )?;
        let student = Decoder::build(gpu, cfg, &tensors, "ga-s2 candidate", |j| hc.is_gdn(j))?;
        scores.push(eval::perplexity_windows(gpu, &student, inp.eval)?.ppl);
        progress(l + 1, layers);
    }
    Ok(Selection {
        policy: Policy::GaS2,
        keep: top_n(&scores, n, false)?,
        scores,
        teacher_ppl: f64::NAN,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
