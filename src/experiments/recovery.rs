//! Token efficiency: initialise students with several strategies, distil each (optional
//! stage 1, then stage 2) until its evaluation perplexity is within R x the teacher's, and
//! compare the tokens each needed — the paper's "fewer distillation tokens" claim.
use crate::calibrate::convert::{self, ConvertOpts, Inputs};
use crate::calibrate::strategy::Strategy;
use crate::data::TokenStream;
use crate::eval::perplexity_windows;
use crate::io::hf::write_atomic;
use crate::nn::decoder::Decoder;
use crate::train::distill::{self, CurvePoint, DistillOpts, DistillReport, Hooks, Setup};
use anyhow::{ensure, Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;

pub struct RecoveryOpts {
    pub strategies: Vec<Strategy>,
    /// Stage 1 tokens before stage 2 (0: straight to stage 2).
    pub stage1: Option<DistillOpts>,
    /// Stage 2 settings; `tokens` is the budget per strategy, `eval_every` the cadence
    /// at which the target is checked.
    pub stage2: DistillOpts,
    /// Target: evaluation perplexity <= ratio x the teacher's.
    pub target_ratio: f64,
    pub convert: ConvertOpts,
}

impl RecoveryOpts {
    /// Reject settings no recovery run can use (before anything is loaded), naming the
    /// command line's option.
    pub fn check(&self) -> Result<()> {
        ensure!(!self.strategies.is_empty(), "--strategies is empty");
        ensure!(
            self.target_ratio >= 1.0 && self.target_ratio.is_finite(),
            "--target-ppl-ratio must be a number >= 1 (got {})",
            self.target_ratio
        );
        // stage 2's --tokens is recovery's --max-tokens
        ensure!(self.stage2.tokens >= 1, "--max-tokens must be at least 1");
        if let Some(s1) = &self.stage1 {
            s1.check().context("stage 1")?;
        }
        self.stage2.check().context("stage 2")?;
        self.convert.check()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StrategyRun {
    pub strategy: &'static str,
    pub init_ppl: f64,
    pub stage1: Option<DistillReport>,
    pub stage2: DistillReport,
    /// Stage 2 tokens until the target was first met (None: not within the budget).
    pub tokens_to_target: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    /// Where the teacher came from.
    pub teacher: String,
    pub attn_layers: Vec<usize>,
    pub teacher_ppl: f64,
    pub target_ratio: f64,
    pub target_ppl: f64,
    pub runs: Vec<StrategyRun>,
    pub adapter: String,
}

impl RecoveryReport {
    /// tokens(a) / tokens(b) to the target; a lower bound (budget / tokens(b)) when `a` never
    /// reached it. None when `b` did not reach it.
    pub fn ratio(&self, a: &str, b: &str) -> Option<(f64, bool)> {
        let find = |n: &str| self.runs.iter().find(|r| r.strategy == n);
        let (ra, rb) = (find(a)?, find(b)?);
        let tb = rb.tokens_to_target? as f64;
        match ra.tokens_to_target {
            Some(ta) => Some((ta as f64 / tb, false)),
            None => Some((ra.stage2.tokens as f64 / tb, true)),
        }
    }

    /// The headline: tokens to the target of naive (or, without it, zero-gate) over
    /// taylor-calibrate's, as [`RecoveryReport::ratio`].
    pub fn headline_ratio(&self) -> Option<(f64, bool)> {
        self.ratio("naive", "taylor-calibrate").or_else(|| self.ratio("zero-gate", "taylor-calibrate"))
    }

    /// Evaluation perplexity vs cumulative distillation tokens: stage 1 and stage 2 of every
    /// strategy, and the target line.
    pub fn chart_svg(&self) -> String {
        let mut series = vec![];
        let mut max_tokens = 0.0f64;
        for r in &self.runs {
            let mut offset = 0.0;
            let pts = |curve: &[CurvePoint], init: Option<f64>, off: f64| -> Vec<(f64, f64)> {
                init.map(|p| (off, p))
                    .into_iter()
                    .chain(curve.iter().filter_map(|c| c.eval_ppl.map(|p| (off + c.tokens as f64, p))))
                    .collect()
            };
            if let Some(s1) = &r.stage1 {
                series.push((format!("{} stage 1", r.strategy), pts(&s1.curve, Some(r.init_ppl), 0.0)));
                offset = s1.tokens as f64;
            }
            let start = r.stage2.initial_ppl;
            let p2 = pts(&r.stage2.curve, start, offset);
            max_tokens = max_tokens.max(p2.last().map(|p| p.0).unwrap_or(0.0));
            series.push((format!("{} stage 2", r.strategy), p2));
        }
        series.push((format!("target {:.2}x teacher", self.target_ratio), vec![(0.0, self.target_ppl), (max_tokens, self.target_ppl)]));
        crate::report::line_chart_svg(
            "Evaluation perplexity during distillation",
            "distillation tokens (stage 1, then stage 2)",
            &series,
            true,
        )
    }

    /// The table of every strategy's perplexities and tokens to the target, then the
    /// headline ratio where there is one.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "teacher ppl {:.2}; target {:.2} ({}x)\n\n| strategy | init ppl | after stage 1 | final ppl | stage 2 tokens to target |\n| --- | --- | --- | --- | --- |\n",
            self.teacher_ppl, self.target_ppl, self.target_ratio
        );
        for r in &self.runs {
            let s1 = r.stage1.as_ref().and_then(|x| x.final_ppl).map(crate::report::fmt).unwrap_or_else(|| "-".into());
            let fin = r.stage2.final_ppl.map(crate::report::fmt).unwrap_or_else(|| "-".into());
            let tt = r.tokens_to_target.map(|t| t.to_string()).unwrap_or_else(|| format!("> {}", r.stage2.tokens));
            s += &format!("| {} | {} | {s1} | {fin} | {tt} |\n", r.strategy, crate::report::fmt(r.init_ppl));
        }
        if let Some((x, lower)) = self.headline_ratio() {
            s += &format!("\ntokens to target, naive (or zero-gate) / taylor-calibrate: {}{x:.2}x\n", if lower { ">= " } else { "" });
        }
        s
    }

    /// The whole report as JSON, with the headline ratio (`ratio_vs_taylor_calibrate`).
    pub fn json(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("a recovery report serialises");
        v["ratio_vs_taylor_calibrate"] = json!(self.headline_ratio().map(|(x, lower)| json!({ "ratio": x, "lower_bound": lower })));
        v
    }

    /// The summary files [`RecoveryReport::write`] writes first, in its order.
    pub const FILES: [&'static str; 3] = ["recovery.md", "recovery.json", "recovery.svg"];

    /// Whether `name` is one of the files [`RecoveryReport::write`] may write (an output
    /// directory holding only these may be written over).
    pub fn is_report_file(name: &str) -> bool {
        Self::FILES.contains(&name)
            || Strategy::ALL.iter().any(|s| [1, 2].iter().any(|stage| name == format!("{}_stage{stage}.csv", s.name())))
    }

    /// Write recovery.md, recovery.json, recovery.svg and every run's curves
    /// (`<strategy>_stage1.csv`, `<strategy>_stage2.csv`) into `dir`, each atomically: a
    /// reader sees the previous file or the new one, never a part.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let contents = [self.markdown(), serde_json::to_string_pretty(&self.json())?, self.chart_svg()];
        for (name, text) in Self::FILES.iter().zip(contents) {
            write_atomic(&dir.join(name), text.as_bytes())?;
        }
        for run in &self.runs {
            if let Some(s1) = &run.stage1 {
                write_atomic(&dir.join(format!("{}_stage1.csv", run.strategy)), distill::curve_csv(&s1.curve).as_bytes())?;
            }
            write_atomic(&dir.join(format!("{}_stage2.csv", run.strategy)), distill::curve_csv(&run.stage2.curve).as_bytes())?;
        }
        Ok(())
    }
}

/// The first stage-2 evaluation at or below `target`: its tokens.
pub fn tokens_to_target(r: &DistillReport, target: f64) -> Option<usize> {
    if r.initial_ppl.is_some_and(|p| p <= target) {
        return Some(0);
    }
    r.curve.iter().find(|c| c.eval_ppl.is_some_and(|p| p <= target)).map(|c| c.tokens)
}

/// Run every strategy (see the module docs), distilling on `data`; `progress(strategy,
/// stage, point)`. With `out`, the report so far is written there
/// ([`RecoveryReport::write`]) after each strategy, so a long run leaves results as it goes.
pub fn recovery(
    inp: &Inputs,
    data: &TokenStream,
    o: &RecoveryOpts,
    out: Option<&Path>,
    mut progress: impl FnMut(&str, u8, &CurvePoint),
) -> Result<RecoveryReport> {
    o.check()?;
    inp.check()?;
    for d in o.stage1.iter().chain([&o.stage2]) {
        d.check_context(inp.teacher.rope.max_pos)?;
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let g = inp.gpu;
    let teacher_ppl = perplexity_windows(g, inp.teacher, inp.eval)?.ppl;
    let target_ppl = teacher_ppl * o.target_ratio;
    let mut rep = RecoveryReport {
        teacher: inp.teacher_source.to_string(),
        attn_layers: inp.config.attn_layers.clone(),
        teacher_ppl,
        target_ratio: o.target_ratio,
        target_ppl,
        runs: vec![],
        adapter: g.info.name.clone(),
    };
    for &strategy in &o.strategies {
        let co = ConvertOpts { strategy, ..o.convert.clone() };
        let tensors = convert::convert(g, inp.config, inp.teacher, inp.teacher_tensors, inp.calib, &co, |_| {})?.tensors;
        let student = Decoder::build(g, &inp.config.base, &tensors, strategy.name(), |l| inp.config.is_gdn(l))?;
        drop(tensors);
        let init_ppl = perplexity_windows(g, &student, inp.eval)?.ppl;
        let setup = Setup {
            gpu: g,
            teacher: inp.teacher,
            student: &student,
            config: inp.config,
            tokenizer: None,
            data,
            eval: inp.eval,
            out: None,
            meta: serde_json::Value::Null,
            // nothing is checkpointed (no `out`), so no resume compares them
            inputs: Default::default(),
        };
        let stage1 = match &o.stage1 {
            Some(s1) => {
                let mut p = |c: &CurvePoint| progress(strategy.name(), 1, c);
                Some(distill::distill(&setup, s1, None, &mut Hooks { progress: Some(&mut p), kill_after: None })?)
            }
            None => None,
        };
        let s2 = DistillOpts { target_ppl: Some(target_ppl), ..o.stage2.clone() };
        let mut p = |c: &CurvePoint| progress(strategy.name(), 2, c);
        let stage2 = distill::distill(&setup, &s2, None, &mut Hooks { progress: Some(&mut p), kill_after: None })?;
        let tt = tokens_to_target(&stage2, target_ppl);
        rep.runs.push(StrategyRun { strategy: strategy.name(), init_ppl, stage1, stage2, tokens_to_target: tt });
        if let Some(dir) = out {
            rep.write(dir)?;
        }
    }
    Ok(rep)
}
