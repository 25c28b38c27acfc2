//! The `distill` and `recovery` subcommands (argument handling and output only; the work
//! is in `taylorcal::train` and `taylorcal::experiments::recovery`).
use super::args::{DistillArgs, RecoveryArgs, TokenizeArgs};
use super::setup::conv_setup;
use super::{claim_out, gpu, progress, resolve_model};
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use std::path::Path;
use taylorcal::calibrate::strategy::Strategy;
use taylorcal::experiments::recovery::{self, RecoveryOpts};
use taylorcal::io::{self, out_dir::Kind};
use taylorcal::nn::decoder::Decoder;
use taylorcal::train::distill::{self, CurvePoint, Hooks, Identity, RunInputs, Setup};

/// The progress bar's message for one point of a loss curve: loss, speed and the latest
/// evaluation perplexity.
fn point_msg(prefix: &str, c: &CurvePoint, last_ppl: &mut Option<f64>) -> String {
    if c.eval_ppl.is_some() {
        *last_ppl = c.eval_ppl;
    }
    let tps = if c.seconds > 0.0 { c.tokens as f64 / c.seconds } else { 0.0 };
    let ppl = last_ppl.map(|p| format!("  eval ppl {p:.2}")).unwrap_or_default();
    format!("{prefix}loss {:.4}  {tps:.0} tok/s{ppl}", c.loss)
}

/// `taylorcal distill`: stage 1 or 2 from a converted student (or --resume), checkpoints
/// and curves in --out.
pub fn distill(a: &DistillArgs) -> Result<()> {
    let gpu = gpu()?;
    let (stage, out) = (a.stage, &a.out);
    let mut opts = a.train.opts(stage, a.tokens, a.seed);
    opts.checkpoint_every = a.checkpoint_every;
    opts.check()?;
    // the checkpoint to start from, checked before --out is claimed (so a bad one creates nothing)
    let from: &Path = if a.resume {
        ensure!(io::checkpoint::is_checkpoint(out), "--resume: {} holds no checkpoint of an earlier run", out.display());
        out
    } else {
        let dir = a.student.as_ref().context("distill needs --student DIR (a checkpoint written by `taylorcal convert`), or --resume")?;
        ensure!(
            io::is_student(dir),
            "{} is not a taylorcal checkpoint, nor a student `taylorcal export` wrote (run `taylorcal convert` first)",
            dir.display()
        );
        dir
    };
    let inputs = if a.resume { vec![] } else { vec![from] };
    let tpath = resolve_model(&a.teacher)?;
    let _out = claim_out(out, Kind::Checkpoint, &tpath, &inputs, a.force)?;
    let ck = if a.resume { io::checkpoint::load_checkpoint(from)? } else { io::load_student(from)? };
    let state =
        if a.resume { Some(distill::resume_state(&ck, &opts).with_context(|| format!("resuming from {}", out.display()))?) } else { None };
    let files = io::load_model(&tpath)?;
    let (tc, sc) = (&files.config, &ck.config.base);
    ensure!(
        tc.vocab_size == sc.vocab_size && tc.hidden_size == sc.hidden_size && tc.num_hidden_layers == sc.num_hidden_layers,
        "the student ({} layers, hidden {}, vocab {}) was not converted from this teacher ({} layers, hidden {}, vocab {})",
        sc.num_hidden_layers,
        sc.hidden_size,
        sc.vocab_size,
        tc.num_hidden_layers,
        tc.hidden_size,
        tc.vocab_size
    );
    let tokenizer =
        ck.tokenizer.clone().or_else(|| files.tokenizer.clone()).context("neither the student nor the teacher has a tokenizer")?;
    let teacher = Decoder::new(gpu, &files)?;
    let teacher_id = Identity::of_model(&files);
    drop(files.tensors);
    let student = Decoder::from_checkpoint(gpu, &ck)?;
    let (eos, sequences) = (files.config.eos_token_id, opts.steps() * opts.batch);
    let data = a.train.stream(&tokenizer, eos, student.vocab(), sequences, a.seed, a.eval.eval.as_deref())?;
    let inputs = RunInputs { train: a.train.identity(&data)?, teacher: teacher_id };
    let eval_tokens = a.eval.tokens(&tokenizer, student.vocab())?;
    let windows = a.eval.windows(&eval_tokens)?;
    let stream =
        json!({ "sequences": data.len(), "resident_bytes": data.resident_bytes(), "shard_tokens": data.shard_set().map(|s| s.tokens()) });
    let meta = json!({ "stream": stream, "teacher": files.source, "student_from": ck.report.get("strategy"), "attn_layers": ck.config.attn_layers, "adapter": gpu.info.name });
    let setup = Setup {
        gpu,
        teacher: &teacher,
        student: &student,
        config: &ck.config,
        tokenizer: Some(&tokenizer),
        data: &data,
        eval: &windows,
        out: Some(out),
        meta,
        inputs,
    };
    let pb = progress::steps(opts.steps() as u64, &format!("stage {stage}"));
    if let Some(s) = &state {
        pb.set_position(s.step as u64);
    }
    let mut last_ppl = None;
    let mut progress = |c: &CurvePoint| {
        pb.update(c.step as u64, point_msg(&format!("stage {stage}  "), c, &mut last_ppl));
    };
    let report = distill::distill(&setup, &opts, state, &mut Hooks { progress: Some(&mut progress), kill_after: None })?;
    pb.finish_and_clear();
    let summary = json!({
        "out": out, "stage": stage, "steps": report.steps, "tokens": report.tokens, "initial_ppl": report.initial_ppl,
        "final_ppl": report.final_ppl, "tokens_per_s": report.tokens_per_s, "steady_tokens_per_s": report.steady_tokens_per_s,
        "train_seconds": report.train_seconds,
        "train_buffer_bytes": report.train_buffer_bytes, "sequences": data.len(), "stream_resident_bytes": data.resident_bytes(), "adapter": gpu.info.name,
    });
    if a.json {
        println!("{summary}");
    } else {
        println!(
            "stage {stage}: {} steps, {} tokens in {:.1} s ({:.0} tokens/s{}); eval ppl {} -> {}",
            report.steps,
            report.tokens,
            report.train_seconds,
            report.tokens_per_s,
            report.steady_tokens_per_s.map(|r| format!(", {r:.0} after the first step")).unwrap_or_default(),
            report.initial_ppl.map(|p| format!("{p:.2}")).unwrap_or("-".into()),
            report.final_ppl.map(|p| format!("{p:.2}")).unwrap_or("-".into())
        );
        println!(
            "training buffers {:.1} MiB; checkpoint, curve.csv and curve.svg in {}",
            report.train_buffer_bytes as f64 / 1048576.0,
            out.display()
        );
    }
    Ok(())
}

/// `taylorcal tokenize`: text and JSONL files into token shards in --out, with the model's
/// tokenizer and end-of-sequence token.
pub fn tokenize(a: &TokenizeArgs) -> Result<()> {
    let path = resolve_model(&a.model.model)?;
    for p in &a.inputs {
        ensure!(p.is_file(), "{} is not a file (tokenize reads text and .jsonl files)", p.display());
    }
    let inputs: Vec<&Path> = a.inputs.iter().map(|p| p.as_path()).collect();
    let _out = claim_out(&a.out, Kind::Report(taylorcal::data::is_shard_dir_file), &path, &inputs, a.force)?;
    let (tokenizer, eos) = if io::is_student(&path) {
        let ck = io::load_student(&path)?;
        (ck.tokenizer.with_context(|| format!("{} has no tokenizer", path.display()))?, ck.config.base.eos_token_id)
    } else {
        let files = io::load_model(&path)?;
        (files.tokenizer.with_context(|| format!("{} has no tokenizer", files.source))?, files.config.eos_token_id)
    };
    let spinner = progress::spinner(format!("tokenizing into {}", a.out.display()));
    let shards = taylorcal::data::tokenize_to_shards(&tokenizer, eos, &a.inputs, &a.out, a.shard_tokens)?;
    spinner.finish_and_clear();
    let tokens: u64 = shards.iter().map(|s| s.tokens).sum();
    if a.json {
        println!("{}", json!({ "out": a.out, "tokens": tokens, "shards": shards, "eos": eos }));
    } else {
        println!("{tokens} tokens in {} shards in {}", shards.len(), a.out.display());
    }
    Ok(())
}

/// `taylorcal recovery`: convert with each strategy and distil until the target; the report
/// (written to --out as it goes) printed at the end.
pub fn recovery(r: &RecoveryArgs) -> Result<()> {
    let (conv, train) = (&r.conv, &r.train);
    let strategies = r.strategies.iter().map(|s| Strategy::parse(s)).collect::<Result<Vec<_>>>()?;
    let stage1 = (r.stage1_tokens > 0).then(|| train.opts(1, r.stage1_tokens, conv.seed)).map(|mut o| {
        // stage 1 trains GDN layers only, at the reference's 1e-3 unless --lr says otherwise;
        // --warmup is stage 2's, at most all of stage 1's steps here
        o.lr = train.lr.unwrap_or(1e-3);
        o.warmup = o.warmup.map(|w| w.min(o.steps()));
        o
    });
    // checked before --out is claimed; the conversion settings get their kept layers below
    let mut o = RecoveryOpts {
        strategies,
        stage1,
        stage2: train.opts(2, r.max_tokens, conv.seed),
        target_ratio: r.target_ppl_ratio,
        convert: conv.opts()?,
    };
    conv.check()?;
    o.check()?;
    let _out = claim_out(&r.out, Kind::Report(recovery::RecoveryReport::is_report_file), &resolve_model(&conv.teacher)?, &[], r.force)?;
    let g = gpu()?;
    let setup = conv_setup(conv)?;
    o.convert = setup.opts.clone();
    // every stage starts at the stream's first sequence: the longer one reads the most
    let sequences = [Some(&o.stage2), o.stage1.as_ref()].into_iter().flatten().map(|s| s.steps() * s.batch).max().unwrap_or(1);
    let eos = setup.files.config.eos_token_id;
    let data = train.stream(&setup.tokenizer, eos, setup.teacher.vocab(), sequences, conv.seed, conv.eval.eval.as_deref())?;
    let windows = setup.eval_windows()?;
    let pb = progress::steps(0, "recovery");
    let mut last_ppl = None;
    let mut cur = String::new();
    let rep = recovery::recovery(&setup.inputs(g, &windows)?, &data, &o, Some(&r.out), |s, stage, c| {
        let key = format!("{s} stage {stage}");
        if key != cur {
            cur = key;
            last_ppl = None;
            let steps = if stage == 1 { o.stage1.as_ref().map(|x| x.steps()).unwrap_or(0) } else { o.stage2.steps() };
            pb.restart(steps as u64);
        }
        pb.update(c.step as u64, point_msg(&format!("{cur}  "), c, &mut last_ppl));
    })?;
    pb.finish_and_clear();
    if r.json {
        println!("{}", rep.json());
    } else {
        print!("{}", rep.markdown());
        println!("written to {}", r.out.display());
    }
    Ok(())
}
