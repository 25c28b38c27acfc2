//! The strategy ablation: one teacher pass captures the converted layers, then each of the
//! six initialisation strategies (and, where the value scale is not docs/method.md's fitted
//! sigma, taylor-calibrate with the fitted sigma as a seventh row) starts from the naive
//! student and is evaluated beside the teacher.
use crate::calibrate::convert::{self, ConvertOpts, Inputs, Progress};
use crate::calibrate::init::init_student;
use crate::calibrate::phase1::ValueScale;
use crate::calibrate::strategy::Strategy;
use crate::eval::perplexity_windows;
use crate::io::hf::write_atomic;
use crate::nn::decoder::Decoder;
use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// One strategy's row.
#[derive(Clone, Debug, Serialize)]
pub struct AblationRow {
    /// The strategy's name, with `(sigma <scale>)` where its value scale is not the run's.
    pub strategy: String,
    /// Phase 1's value scale (None for strategies without phase 1).
    pub value_scale: Option<String>,
    pub ppl: f64,
    pub nll: f64,
    /// Wall time of the strategy (phase 1 + phase 2 + bookkeeping).
    pub seconds: f64,
    pub phase1_s: f64,
    pub phase2_s: f64,
}

/// The evaluation windows the rows were scored on.
#[derive(Clone, Debug, Serialize)]
pub struct EvalWindows {
    pub windows: usize,
    pub window_tokens: usize,
}

/// The ablation's report: the setting, the teacher's perplexity and a row per strategy.
#[derive(Clone, Debug, Serialize)]
pub struct Ablation {
    pub teacher: String,
    pub attn_layers: Vec<usize>,
    /// Tokens the attention statistics streamed over.
    pub calib_tokens: usize,
    pub value_scale: String,
    pub seed: u64,
    /// Phase 2 steps per layer.
    pub steps: usize,
    /// The retained-layer policy's selection, when one chose the kept layers.
    pub selection: Option<Value>,
    pub eval: EvalWindows,
    pub teacher_ppl: f64,
    pub strategies: Vec<AblationRow>,
    /// Wall time of the teacher pass.
    pub capture_s: f64,
    pub total_s: f64,
    pub adapter: String,
}

/// The runs of an ablation with value scale `vs`: the six strategies with it, and where it
/// is not the fitted sigma, taylor-calibrate with the fitted sigma too.
pub fn runs(vs: ValueScale) -> Vec<(Strategy, ValueScale)> {
    let mut runs: Vec<(Strategy, ValueScale)> = Strategy::ALL.iter().map(|&s| (s, vs)).collect();
    if vs != ValueScale::Fit {
        runs.push((Strategy::TaylorCalibrate, ValueScale::Fit));
    }
    runs
}

/// Run the ablation (see the module docs) with the settings of `o` (its strategy is not
/// used); `progress` counts the units of work ([`convert::Progress`]) of all the [`runs`].
pub fn ablate(inp: &Inputs, o: &ConvertOpts, mut progress: impl FnMut(Progress)) -> Result<Ablation> {
    o.check()?;
    inp.check()?;
    let (g, hc) = (inp.gpu, inp.config);
    let cwin = o.calib_windows_of(inp.calib)?;
    let t0 = Instant::now();
    let cap = crate::calibrate::capture::capture(g, inp.teacher, &hc.gdn_layers(), &cwin, o.capture_windows, |_| {})?;
    let teacher_ppl = perplexity_windows(g, inp.teacher, inp.eval)?.ppl;
    let runs = runs(o.value_scale);
    let units = |s| hc.gdn_layers().len() * convert::layer_units(s, &o.align);
    let total = runs.iter().map(|&(s, _)| units(s)).sum();
    let mut rows = vec![];
    let mut before = 0;
    for &(s, vs) in &runs {
        let label = if vs == o.value_scale { s.name().to_string() } else { format!("{} (sigma {})", s.name(), vs.name()) };
        progress(Progress { done: before, total, what: &label });
        let mut tensors = init_student(hc, inp.teacher_tensors, o.seed)?;
        let t = Instant::now();
        let (_, phase1_s, phase2_s) = convert::apply_strategy(g, hc, &mut tensors, &cap, s, &o.align, vs, &o.phase1_knobs, |p| {
            progress(Progress { done: before + p.done, total, what: &format!("{label}: {}", p.what) })
        })?;
        before += units(s);
        let seconds = t.elapsed().as_secs_f64();
        let student = Decoder::build(g, &hc.base, &tensors, s.name(), |l| hc.is_gdn(l))?;
        let r = perplexity_windows(g, &student, inp.eval)?;
        rows.push(AblationRow {
            strategy: label,
            value_scale: s.phase1().then(|| vs.name()),
            ppl: r.ppl,
            nll: r.nll,
            seconds,
            phase1_s,
            phase2_s,
        });
    }
    Ok(Ablation {
        teacher: inp.teacher_source.to_string(),
        attn_layers: hc.attn_layers.clone(),
        calib_tokens: cap.stat_tokens,
        value_scale: o.value_scale.name(),
        seed: o.seed,
        steps: o.align.steps,
        selection: inp.selection.clone(),
        eval: EvalWindows { windows: inp.eval.len(), window_tokens: o.seq_len },
        teacher_ppl,
        strategies: rows,
        capture_s: cap.seconds,
        total_s: t0.elapsed().as_secs_f64(),
        adapter: g.info.name.clone(),
    })
}

impl Ablation {
    /// The table: evaluation perplexity per strategy and its gain over the naive copy.
    pub fn markdown(&self) -> String {
        let naive = self.strategies.first().map_or(f64::NAN, |r| r.ppl);
        let mut md =
            format!("| strategy | eval ppl | vs naive |\n| --- | --- | --- |\n| teacher | {} | |\n", crate::report::fmt(self.teacher_ppl));
        for r in &self.strategies {
            md += &format!("| {} | {} | {:.1}x |\n", r.strategy, crate::report::fmt(r.ppl), naive / r.ppl);
        }
        md
    }

    /// The whole report as JSON.
    pub fn json(&self) -> Value {
        serde_json::to_value(self).expect("an ablation serialises")
    }

    /// Evaluation perplexity of the teacher and each strategy as a bar chart.
    pub fn svg(&self) -> String {
        let mut chart = vec![("teacher".to_string(), self.teacher_ppl)];
        chart.extend(self.strategies.iter().map(|r| (r.strategy.clone(), r.ppl)));
        crate::report::bar_chart_svg("Evaluation perplexity by initialisation strategy", &chart)
    }

    /// Whether `name` is one of the files [`Ablation::write`] writes (an output directory
    /// holding only these may be written over).
    pub fn is_report_file(name: &str) -> bool {
        Self::FILES.contains(&name)
    }

    /// The files [`Ablation::write`] writes, in its order.
    pub const FILES: [&'static str; 3] = ["ablation.md", "ablation.json", "ablation.svg"];

    /// Write ablation.md, ablation.json and ablation.svg into `dir` (created if missing),
    /// each atomically: a reader sees the previous file or the new one, never a part.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let contents = [self.markdown(), serde_json::to_string_pretty(&self.json())?, self.svg()];
        for (name, text) in Self::FILES.iter().zip(contents) {
            write_atomic(&dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_the_fitted_sigma_only_where_it_is_not_the_scale() {
        let linear = ValueScale::default();
        let r = runs(linear);
        assert_eq!(r.len(), Strategy::ALL.len() + 1);
        assert_eq!(r.last(), Some(&(Strategy::TaylorCalibrate, ValueScale::Fit)));
        assert!(r[..Strategy::ALL.len()].iter().all(|&(_, vs)| vs == linear));
        assert_eq!(runs(ValueScale::Fit).len(), Strategy::ALL.len());
    }

    #[test]
    fn markdown_compares_each_strategy_with_the_naive_copy() {
        let row = |strategy: &str, ppl| AblationRow {
            strategy: strategy.into(),
            value_scale: None,
            ppl,
            nll: f64::ln(ppl),
            seconds: 0.0,
            phase1_s: 0.0,
            phase2_s: 0.0,
        };
        let a = Ablation {
            teacher: "t".into(),
            attn_layers: vec![0],
            calib_tokens: 256,
            value_scale: "fit".into(),
            seed: 0,
            steps: 1,
            selection: None,
            eval: EvalWindows { windows: 1, window_tokens: 256 },
            teacher_ppl: 12.5,
            strategies: vec![row("naive", 2000.0), row("taylor-calibrate", 40.0)],
            capture_s: 0.0,
            total_s: 0.0,
            adapter: "a".into(),
        };
        assert_eq!(
            a.markdown(),
            "| strategy | eval ppl | vs naive |\n| --- | --- | --- |\n| teacher | 12.50 | |\n| naive | 2000 | 1.0x |\n| taylor-calibrate | 40.00 | 50.0x |\n"
        );
        assert!(a.svg().contains("taylor-calibrate"));
        assert_eq!(a.json()["strategies"][1]["ppl"], 40.0);
    }
}
