//! The `convert`, `ablate` and `select` subcommands: the teacher and layout from
//! [`conv_setup`], one library call, the output.
use super::args::{ConvArgs, Preset, TeacherArgs};
use super::setup::{conv_setup, select_setup};
use super::{claim_out, gpu, progress, resolve_model};
use anyhow::{Context as _, Result};
use indicatif::HumanDuration;
use serde_json::json;
use std::path::Path;
use taylorcal::calibrate::convert::{self, ConvertOpts};
use taylorcal::calibrate::resumable;
use taylorcal::calibrate::strategy::Strategy;
use taylorcal::experiments::ablate;
use taylorcal::io::hf;
use taylorcal::io::out_dir::{self, Kind};
use taylorcal::select::Selection;

/// `taylorcal convert`: convert with `strategy`, evaluate, save the checkpoint in `out`
/// (claimed first: `force` as --force), each converted layer as it is done; `resume`
/// continues the conversion a killed run left there.
pub fn convert(conv: &ConvArgs, strategy: &str, out: &Path, force: bool, resume: bool, json: bool) -> Result<()> {
    let strategy = Strategy::parse(strategy)?;
    conv.check()?;
    resumable::check_out(out, resume, force)?;
    let _out = claim_out(out, Kind::Checkpoint, &resolve_model(&conv.teacher)?, &[], force)?;
    let g = gpu()?;
    let cpu = g.info.device_type == "Cpu";
    eprintln!(
        "taylorcal convert: {} on adapter {} ({}, {}); output {}",
        strategy.name(),
        g.info.name,
        g.info.backend,
        g.info.device_type,
        out.display()
    );
    let setup = conv_setup(conv)?;
    let o = ConvertOpts { strategy, ..setup.opts.clone() };
    let windows = setup.eval_windows()?;
    let n_gdn = setup.hc.gdn_layers().len();
    let quick = Preset::Quick.opts();
    let faster = if o.align.steps > quick.align.steps || o.capture_windows > quick.capture_windows {
        "faster: --preset quick, or fewer --steps (e.g. --steps 50; the reference is 300)".to_string()
    } else {
        // already as light as the quick preset
        format!("faster: fewer --steps (this run: {}), or a machine with a GPU", o.align.steps)
    };
    if cpu && strategy.phase2() {
        eprintln!(
            "warning: {} is a CPU adapter (software rendering): {n_gdn} layers x {} alignment steps run far slower than on a \
             GPU (SmolLM2 at the reference settings: 7 to 30 h on 2 cores); the estimated time follows after the first steps; {faster}",
            g.info.name, o.align.steps
        );
    }
    let pb = progress::work((n_gdn * convert::layer_units(strategy, &o.align)) as u64, "layer-steps");
    let mut estimated = false;
    let mut progress = |p: convert::Progress| {
        pb.set_length(p.total as u64);
        pb.update(p.done as u64, p.what.to_string());
        if !estimated {
            if let Some(left) = pb.remaining() {
                estimated = true;
                let line = format!("estimated time left: {} ({} of {} layer-steps to go)", HumanDuration(left), p.total - p.done, p.total);
                pb.println(&if cpu { format!("warning: {line} on a CPU adapter; {faster}") } else { line });
            }
        }
    };
    let mut hooks = resumable::Hooks { progress: Some(&mut progress), kill_after: None };
    let (timings, eval) =
        resumable::convert_and_save(&setup.inputs(g, &windows)?, &o, Some(setup.tokenizer.clone()), out, resume, &mut hooks)?;
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
    let pb = progress::work(0, "layer-steps");
    let report = ablate::ablate(&setup.inputs(g, &windows)?, &setup.opts, |p| {
        pb.set_length(p.total as u64);
        pb.update(p.done as u64, p.what.to_string());
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
