//! The `convert`, `ablate` and `select` subcommands: the teacher and layout from
//! [`conv_setup`], one library call, the output.
use super::args::{ConvArgs, TeacherArgs};
use super::setup::{conv_setup, select_setup};
use super::{claim_out, gpu, progress, resolve_model};
use anyhow::{Context as _, Result};
use serde_json::json;
use std::path::Path;
use taylorcal::calibrate::convert::{self, ConvertOpts};
use taylorcal::calibrate::strategy::Strategy;
use taylorcal::experiments::ablate;
use taylorcal::io::hf;
use taylorcal::io::out_dir::{self, Kind};
use taylorcal::select::Selection;

/// `taylorcal convert`: convert with `strategy`, evaluate, save the checkpoint in `out`
/// (claimed first: `force` as --force).
pub fn convert(conv: &ConvArgs, strategy: &str, out: &Path, force: bool, json: bool) -> Result<()> {
    let strategy = Strategy::parse(strategy)?;
    conv.check()?;
    let _out = claim_out(out, Kind::Checkpoint, &resolve_model(&conv.teacher)?, &[], force)?;
    let setup = conv_setup(conv)?;
    let g = gpu()?;
    let o = ConvertOpts { strategy, ..setup.opts.clone() };
    let windows = setup.eval_windows()?;
    let n_gdn = setup.hc.gdn_layers().len();
    let pb = progress::bar(n_gdn as u64, strategy.name());
    let (timings, eval) = convert::convert_and_save(&setup.inputs(g, &windows)?, &o, Some(setup.tokenizer.clone()), out, |m| {
        if m.ends_with("done") {
            pb.inc(1);
        }
        pb.set_message(m.to_string());
    })?;
    pb.finish_and_clear();
    if json {
        println!(
            "{}",
            json!({ "out": out, "strategy": strategy.name(), "student_ppl": eval.student_ppl, "teacher_ppl": eval.teacher_ppl, "timings_s": timings })
        );
    } else {
        println!(
            "converted {} layers to GDN with {} (kept softmax layers {:?}) in {:.1} s",
            n_gdn,
            strategy.name(),
            setup.hc.attn_layers,
            timings.total
        );
        println!(
            "  teacher pass + statistics {:.1} s, phase 1 {:.1} s, phase 2 {:.1} s",
            timings.teacher_pass_and_statistics, timings.phase1, timings.phase2
        );
        println!("saved {}", out.display());
        println!(
            "evaluation perplexity ({} windows of {} tokens): student {:.2}, teacher {:.2}",
            eval.windows, eval.window_tokens, eval.student_ppl, eval.teacher_ppl
        );
    }
    Ok(())
}

/// `taylorcal ablate`: every strategy from one teacher pass; the report written to `out`
/// (claimed first: `force` as --force).
pub fn ablate(conv: &ConvArgs, out: &Path, force: bool, json: bool) -> Result<()> {
    conv.check()?;
    let _out = claim_out(out, Kind::Report(ablate::Ablation::is_report_file), &resolve_model(&conv.teacher)?, &[], force)?;
    let setup = conv_setup(conv)?;
    let g = gpu()?;
    let windows = setup.eval_windows()?;
    let pb = progress::bar(ablate::runs(setup.opts.value_scale).len() as u64, "strategies");
    let report = ablate::ablate(&setup.inputs(g, &windows)?, &setup.opts, |done, label| {
        pb.set_position(done as u64);
        pb.set_message(label.to_string());
    })?;
    pb.finish_and_clear();
    report.write(out)?;
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.markdown());
        println!("written to {}", out.display());
    }
    Ok(())
}

/// `taylorcal select`: run --policy and print (and with `out`, write) its selection.
pub fn select(conv: &TeacherArgs, out: Option<&Path>, json: bool) -> Result<()> {
    anyhow::ensure!(conv.policy.is_some(), "select needs --policy (uniform, ar, ga-s2) and --num-keep");
    conv.check()?;
    // the report's and the chart's paths, checked before any work
    let paths = match out {
        Some(out) => {
            let teacher = resolve_model(&conv.teacher)?;
            let inputs: Vec<&Path> =
                [Some(teacher.as_path()), conv.calib.as_deref(), conv.eval.eval.as_deref()].into_iter().flatten().collect();
            let (report, chart) = Selection::report_paths(out)?;
            for p in [&report, &chart] {
                out_dir::check_file(p, &inputs, Selection::is_own_output).with_context(|| format!("--out {}", out.display()))?;
            }
            Some((report, chart))
        }
        None => None,
    };
    let setup = select_setup(conv)?;
    let s = setup.selection.as_ref().expect("a policy was given");
    let mut report = serde_json::to_value(s)?;
    report["teacher"] = json!(setup.files.source);
    if let Some((json_path, chart)) = &paths {
        hf::write_atomic(json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        hf::write_atomic(chart, s.chart_svg().as_bytes())?;
    }
    if json {
        println!("{report}");
    } else {
        println!("{} keeps layers {:?} ({:.1} s); score = {}", s.policy.name(), s.keep, s.seconds, s.policy.score_meaning());
        for (l, v) in s.scores.iter().enumerate() {
            println!("layer {l:3}  {v:12.4}{}", if s.keep.contains(&l) { "  kept" } else { "" });
        }
    }
    Ok(())
}
