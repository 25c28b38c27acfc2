//! Token efficiency: initialise students with several strategies, distil each (optional
//! stage 1, then stage 2) until its evaluation perplexity is within R x the teacher's, and
//! compare the tokens each needed — the paper's "fewer distillation tokens" claim.
use crate::calibrate::convert::{self, ConvertOpts, Strategy};
use crate::data::TokenStream;
use crate::eval::perplexity_windows;
use crate::gpu::Gpu;
use crate::io::checkpoint::HybridConfig;
use crate::io::HostTensor;
use crate::nn::decoder::Decoder;
use crate::train::distill::{self, CurvePoint, DistillOpts, DistillReport, Hooks, Setup};
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;

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
        s
    }
}

/// The first stage-2 evaluation at or below `target`: its tokens.
pub fn tokens_to_target(r: &DistillReport, target: f64) -> Option<usize> {
    if r.initial_ppl.is_some_and(|p| p <= target) {
        return Some(0);
    }
    r.curve.iter().find(|c| c.eval_ppl.is_some_and(|p| p <= target)).map(|c| c.tokens)
}

/// Everything recovery needs from the caller.
pub struct Inputs<'a> {
    pub gpu: &'a Gpu,
    pub teacher: &'a Decoder,
    pub teacher_tensors: &'a HashMap<String, HostTensor>,
    pub config: &'a HybridConfig,
    pub calib: &'a [u32],
    pub data: &'a TokenStream,
    pub eval: &'a [&'a [u32]],
}

/// Run every strategy (see the module docs); `progress(strategy, stage, point)`;
/// `done(report so far)` after each strategy (so a long run leaves results as it goes).
pub fn recovery(
    inp: &Inputs,
    o: &RecoveryOpts,
    mut progress: impl FnMut(&str, u8, &CurvePoint),
    mut done: impl FnMut(&RecoveryReport) -> Result<()>,
) -> Result<RecoveryReport> {
    let g = inp.gpu;
    let teacher_ppl = perplexity_windows(g, inp.teacher, inp.eval)?.ppl;
    let target_ppl = teacher_ppl * o.target_ratio;
    let mut rep = RecoveryReport { teacher_ppl, target_ratio: o.target_ratio, target_ppl, runs: vec![], adapter: g.info.name.clone() };
    for &strategy in &o.strategies {
        let co = ConvertOpts { strategy, ..o.convert.clone() };
        let (tensors, _, _) = convert::convert(g, inp.config, inp.teacher, inp.teacher_tensors, inp.calib, &co, |_| {})?;
        let student = Decoder::build(g, &inp.config.base, &tensors, strategy.name(), |l| inp.config.is_gdn(l))?;
        drop(tensors);
        let init_ppl = perplexity_windows(g, &student, inp.eval)?.ppl;
        let setup = Setup {
            gpu: g,
            teacher: inp.teacher,
            student: &student,
            config: inp.config,
            tokenizer: None,
            data: inp.data,
            eval: inp.eval,
            out: None,
            meta: serde_json::Value::Null,
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
        done(&rep)?;
    }
    Ok(rep)
}
