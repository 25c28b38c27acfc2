//! The `distill` and `recovery` subcommands (argument handling and output only; the work
//! is in `taylorcal::train`).
use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use taylorcal::calibrate::convert::Strategy;
use taylorcal::data::TokenStream;
use taylorcal::experiments::recovery::{self, RecoveryOpts};
use taylorcal::gpu::Gpu;
use taylorcal::io;
use taylorcal::nn::decoder::Decoder;
use taylorcal::train::distill::{self, CurvePoint, DistillOpts, Hooks, Setup};

/// Settings shared by `distill` and `recovery`.
#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    /// Tokens per training sequence
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Sequences per optimizer step (gradients accumulated over them)
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Peak learning rate (stage 1: all trained parameters, default 1e-3; stage 2: GDN and
    /// kept softmax attention blocks, default 1e-4)
    #[arg(long)]
    pub lr: Option<f32>,
    /// Stage 2: peak learning rate of embeddings, norms and MLPs (default 7e-6)
    #[arg(long)]
    pub lr_rest: Option<f32>,
    /// Warmup steps (default: 5% of the steps)
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Training text files (default: the built-in Brown training split); repeatable
    #[arg(long = "train")]
    pub train: Vec<PathBuf>,
    /// Evaluate every N optimizer steps (0: at the start and the end only)
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Recompute activations layer by layer in the backward (stage 2): less GPU memory
    #[arg(long)]
    pub recompute: bool,
}

impl TrainArgs {
    pub fn opts(&self, stage: u8, tokens: usize, seed: u64) -> DistillOpts {
        let mut o = DistillOpts::for_stage(stage);
        o.tokens = tokens;
        o.seq_len = self.seq_len;
        o.batch = self.batch;
        if let Some(lr) = self.lr {
            o.lr = lr;
        }
        if let Some(lr) = self.lr_rest {
            o.lr_rest = lr;
        }
        o.warmup = self.warmup;
        o.seed = seed;
        o.eval_every = self.eval_every;
        o.recompute = self.recompute;
        o
    }

    /// The training token stream: the given files (or the Brown training split), packed.
    pub fn stream(&self, tok: &tokenizers::Tokenizer, seed: u64) -> Result<TokenStream> {
        let mut ids = vec![];
        if self.train.is_empty() {
            ids = taylorcal::data::tokenize_or(tok, None, taylorcal::data::brown::TRAIN, usize::MAX)?;
        }
        for f in &self.train {
            ids.extend(taylorcal::data::tokenize_file(tok, f, usize::MAX)?);
        }
        TokenStream::new(&ids, self.seq_len, seed)
    }
}

fn bar(steps: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(steps);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] step {pos}/{len} {msg}").unwrap().progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn point_msg(prefix: &str, c: &CurvePoint, last_ppl: &mut Option<f64>) -> String {
    if c.eval_ppl.is_some() {
        *last_ppl = c.eval_ppl;
    }
    let tps = if c.seconds > 0.0 { c.tokens as f64 / c.seconds } else { 0.0 };
    let ppl = last_ppl.map(|p| format!("  eval ppl {p:.2}")).unwrap_or_default();
    format!("{prefix}loss {:.4}  {tps:.0} tok/s{ppl}", c.loss)
}

fn eval_ids(tok: &tokenizers::Tokenizer, eval: Option<&Path>, windows: usize) -> Result<Vec<u32>> {
    taylorcal::data::tokenize_or(tok, eval, taylorcal::data::brown::EVAL, windows * crate::WINDOW)
}

#[allow(clippy::too_many_arguments)]
pub fn distill_cmd(
    gpu: &Gpu,
    student_dir: Option<PathBuf>,
    teacher_spec: &str,
    stage: u8,
    tokens: usize,
    seed: u64,
    args: &TrainArgs,
    eval: Option<PathBuf>,
    eval_windows: usize,
    checkpoint_every: usize,
    out: PathBuf,
    resume: bool,
    json_out: bool,
) -> Result<()> {
    let mut opts = args.opts(stage, tokens, seed);
    opts.checkpoint_every = checkpoint_every;
    opts.check()?;
    let (ck, state) = if resume {
        ensure!(io::checkpoint::is_checkpoint(&out), "--resume: {} holds no checkpoint of an earlier run", out.display());
        let ck = io::checkpoint::load_checkpoint(&out)?;
        let st = distill::resume_state(&ck, &opts).with_context(|| format!("resuming from {}", out.display()))?;
        (ck, Some(st))
    } else {
        let dir = student_dir.context("distill needs --student DIR (a checkpoint written by `taylorcal convert`), or --resume")?;
        ensure!(io::checkpoint::is_checkpoint(&dir), "{} is not a taylorcal checkpoint (run `taylorcal convert` first)", dir.display());
        (io::checkpoint::load_checkpoint(&dir)?, None)
    };
    let tpath = io::fetch::resolve_model(teacher_spec, &super::env::cache_dir_from_env())?;
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
    drop(files.tensors);
    let student = Decoder::from_checkpoint(gpu, &ck)?;
    let data = args.stream(&tokenizer, seed)?;
    let eval_tokens = eval_ids(&tokenizer, eval.as_deref(), eval_windows)?;
    let windows = taylorcal::data::windows(&eval_tokens, crate::WINDOW, eval_windows, "the evaluation text")?;
    let meta = json!({ "teacher": files.source, "student_from": ck.report.get("strategy"), "attn_layers": ck.config.attn_layers, "adapter": gpu.info.name });
    let setup = Setup {
        gpu,
        teacher: &teacher,
        student: &student,
        config: &ck.config,
        tokenizer: Some(&tokenizer),
        data: &data,
        eval: &windows,
        out: Some(&out),
        meta,
    };
    let pb = bar(opts.steps() as u64, &format!("stage {stage}"));
    if let Some(s) = &state {
        pb.set_position(s.step as u64);
    }
    let mut last_ppl = None;
    let mut progress = |c: &CurvePoint| {
        pb.set_position(c.step as u64);
        pb.set_message(point_msg(&format!("stage {stage}  "), c, &mut last_ppl));
    };
    let report = distill::distill(&setup, &opts, state, &mut Hooks { progress: Some(&mut progress), kill_after: None })?;
    pb.finish_and_clear();
    let summary = json!({
        "out": out, "stage": stage, "steps": report.steps, "tokens": report.tokens, "initial_ppl": report.initial_ppl,
        "final_ppl": report.final_ppl, "tokens_per_s": report.tokens_per_s, "train_seconds": report.train_seconds,
        "train_buffer_bytes": report.train_buffer_bytes, "sequences": data.len(), "adapter": gpu.info.name,
    });
    if json_out {
        println!("{summary}");
    } else {
        println!(
            "stage {stage}: {} steps, {} tokens in {:.1} s ({:.0} tokens/s); eval ppl {} -> {}",
            report.steps,
            report.tokens,
            report.train_seconds,
            report.tokens_per_s,
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

pub struct RecoveryArgs {
    pub strategies: Vec<String>,
    pub target_ratio: f64,
    pub max_tokens: usize,
    pub stage1_tokens: usize,
    pub out: PathBuf,
    pub json: bool,
}

pub fn recovery_cmd(gpu: &Gpu, conv: &crate::ConvArgs, train: &TrainArgs, r: &RecoveryArgs) -> Result<()> {
    let setup = crate::conv_setup(conv)?;
    let strategies = r.strategies.iter().map(|s| Strategy::parse(s)).collect::<Result<Vec<_>>>()?;
    ensure!(!strategies.is_empty(), "--strategies is empty");
    ensure!(r.target_ratio >= 1.0, "--target-ppl-ratio must be at least 1 (got {})", r.target_ratio);
    let data = train.stream(&setup.tokenizer, conv.seed)?;
    let windows = setup.eval_windows()?;
    let stage1 = (r.stage1_tokens > 0).then(|| train.opts(1, r.stage1_tokens, conv.seed)).map(|mut o| {
        // stage 1 trains GDN layers only, at the reference's 1e-3 unless --lr says otherwise
        o.lr = train.lr.unwrap_or(1e-3);
        o
    });
    let o = RecoveryOpts {
        strategies,
        stage1,
        stage2: train.opts(2, r.max_tokens, conv.seed),
        target_ratio: r.target_ratio,
        convert: crate::conv_opts(conv, &setup.hc.attn_layers, Strategy::TaylorCalibrate)?,
    };
    let inputs = recovery::Inputs {
        gpu,
        teacher: &setup.teacher,
        teacher_tensors: &setup.files.tensors,
        config: &setup.hc,
        calib: &setup.calib,
        data: &data,
        eval: &windows,
    };
    let pb = bar(0, "recovery");
    let mut last_ppl = None;
    let mut cur = String::new();
    std::fs::create_dir_all(&r.out).with_context(|| format!("creating {}", r.out.display()))?;
    let write = |rep: &recovery::RecoveryReport| -> Result<String> {
        let ratio = rep.ratio("naive", "taylor-calibrate").or_else(|| rep.ratio("zero-gate", "taylor-calibrate"));
        let mut md = rep.markdown();
        if let Some((x, lower)) = ratio {
            md += &format!("\ntokens to target, naive (or zero-gate) / taylor-calibrate: {}{x:.2}x\n", if lower { ">= " } else { "" });
        }
        let mut summary = serde_json::to_value(rep)?;
        summary["teacher"] = json!(setup.files.source);
        summary["attn_layers"] = json!(setup.hc.attn_layers);
        summary["ratio_vs_taylor_calibrate"] = json!(ratio.map(|(x, lower)| json!({ "ratio": x, "lower_bound": lower })));
        std::fs::write(r.out.join("recovery.md"), &md)?;
        std::fs::write(r.out.join("recovery.json"), serde_json::to_string_pretty(&summary)?)?;
        std::fs::write(r.out.join("recovery.svg"), rep.chart_svg())?;
        for run in &rep.runs {
            if let Some(s1) = &run.stage1 {
                std::fs::write(r.out.join(format!("{}_stage1.csv", run.strategy)), distill::curve_csv(&s1.curve))?;
            }
            std::fs::write(r.out.join(format!("{}_stage2.csv", run.strategy)), distill::curve_csv(&run.stage2.curve))?;
        }
        Ok(if r.json { summary.to_string() } else { md })
    };
    let rep = recovery::recovery(
        &inputs,
        &o,
        |s, stage, c| {
            let key = format!("{s} stage {stage}");
            if key != cur {
                cur = key;
                last_ppl = None;
                let steps = if stage == 1 { o.stage1.as_ref().map(|x| x.steps()).unwrap_or(0) } else { o.stage2.steps() };
                pb.set_length(steps as u64);
            }
            pb.set_position(c.step as u64);
            pb.set_message(point_msg(&format!("{cur}  "), c, &mut last_ppl));
        },
        |rep| write(rep).map(|_| ()),
    )?;
    pb.finish_and_clear();
    let text = write(&rep)?;
    if r.json {
        println!("{text}");
    } else {
        print!("{text}");
        println!("written to {}", r.out.display());
    }
    Ok(())
}
