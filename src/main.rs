//! The `taylorcal` command line: thin, every subcommand calls the library.
use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use taylorcal::calibrate::convert::{self, AlignOpts, ConvertOpts, Strategy};
use taylorcal::gpu::Gpu;
use taylorcal::io;
use taylorcal::nn::decoder::Decoder;
use taylorcal::select::{self, Policy, Selection};

mod cli;
use cli::train as cli_train;

#[derive(Parser)]
#[command(
    name = "taylorcal",
    version,
    about = "Turn a pretrained Transformer into a hybrid Gated DeltaNet model with Taylor-Calibrate, on any GPU wgpu drives"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// `smollm2` (the default teacher, fetched on first use), a .gguf file, a Hugging Face directory, or a taylorcal checkpoint directory
    #[arg(long, default_value = io::fetch::DEFAULT_TEACHER)]
    model: String,
}

#[derive(clap::Args)]
struct TextArgs {
    /// Plain-text file to tokenise (no BOS is added)
    #[arg(long)]
    text: PathBuf,
    /// Use at most this many tokens of the text, as one sequence
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
}

#[derive(clap::Args)]
pub(crate) struct ConvArgs {
    /// `smollm2` (default teacher), a .gguf file or a Hugging Face directory
    #[arg(long, default_value = io::fetch::DEFAULT_TEACHER)]
    teacher: String,
    /// Layers that keep softmax attention, e.g. 0,4,8
    #[arg(long, value_delimiter = ',', conflicts_with = "keep_every")]
    keep: Option<Vec<usize>>,
    /// Keep every K-th layer from 0 (the default when neither --keep nor --policy is given: 4)
    #[arg(long)]
    keep_every: Option<usize>,
    /// Choose the kept layers with a retained-layer policy: uniform, ar, ga-s2 (needs --num-keep)
    #[arg(long, conflicts_with_all = ["keep", "keep_every"], requires = "num_keep")]
    policy: Option<String>,
    /// Layers the policy keeps as softmax attention
    #[arg(long, requires = "policy")]
    num_keep: Option<usize>,
    /// Calibration text (default: the built-in Brown calibration split)
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration tokens for the attention statistics (streamed; activations for the
    /// value scale and alignment come from the first --capture-windows windows)
    #[arg(long, default_value_t = 1024)]
    calib_tokens: usize,
    /// Calibration windows of 256 tokens whose activations phase 1's value scale and
    /// phase 2's alignment use (the reference: 4); every alignment step sees all of them
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=4096))]
    capture_windows: u64,
    /// Phase 1's value scale: `linear[:TAU]` (the default: sigma = TAU / RMS(W_v x) per
    /// head, SiLU near its linear regime; TAU 0.25, chosen on the Brown training split) or
    /// `fit` (ALGORITHM.md as written: sigma = <c_T, c_S> / |c_S|^2 from the recurrence's
    /// output, which on SmolLM2 hits its clamp and loses to alignment-only)
    #[arg(long, default_value_t = convert::ValueScale::default(), value_parser = convert::ValueScale::parse)]
    value_scale: convert::ValueScale,
    /// Phase 2 AdamW steps per layer
    #[arg(long, default_value_t = 300)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluation text (default: the built-in Brown evaluation split)
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Evaluation windows of 256 tokens
    #[arg(long, default_value_t = 8)]
    eval_windows: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter, backend, driver, features and key limits
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Mean next-token NLL and perplexity of a model on a text
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        text: TextArgs,
        #[arg(long)]
        json: bool,
    },
    /// Per-layer, per-head mean attention distance and entropy (fused kernel)
    Stats {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        text: TextArgs,
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the kernels (GPU timestamps): GFLOP/s or GB/s per kernel
    Bench {
        /// Only benchmarks whose label contains one of these words (e.g. `matmul`, `attention`);
        /// `gdn` times the chunked delta-rule scan, forward and forward+backward
        what: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Convert a teacher into a hybrid GDN student (Taylor-Calibrate by default), save it,
    /// and report the student's and the teacher's evaluation perplexity
    Convert {
        #[command(flatten)]
        conv: ConvArgs,
        /// Initialisation strategy: naive, zero-gate, small-gate, taylor-init, alignment-only, taylor-calibrate
        #[arg(long, default_value = "taylor-calibrate")]
        strategy: String,
        /// Output checkpoint directory
        #[arg(long, default_value = "student")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run all six strategies from one teacher pass and tabulate evaluation perplexity (plus
    /// taylor-calibrate with the fitted sigma of ALGORITHM.md when --value-scale is not `fit`)
    Ablate {
        #[command(flatten)]
        conv: ConvArgs,
        /// Directory for ablation.md, ablation.json and ablation.svg
        #[arg(long, default_value = "ablation")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Rank the teacher's layers with a retained-layer policy (--policy, --num-keep) and
    /// print the kept layers and every layer's score
    Select {
        #[command(flatten)]
        conv: ConvArgs,
        /// Write the report here as JSON, and a per-layer score chart next to it (.svg)
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Distil a converted student from its teacher on the GPU: stage 1 (per-layer
    /// alignment, converted layers only) or stage 2 (end-to-end KL, every parameter), with
    /// checkpoints, exact --resume, curve.csv and curve.svg in --out
    Distill {
        /// The student checkpoint written by `taylorcal convert` (not needed with --resume)
        #[arg(long)]
        student: Option<PathBuf>,
        /// The teacher it was converted from
        #[arg(long, default_value = io::fetch::DEFAULT_TEACHER)]
        teacher: String,
        /// 1: per-layer alignment; 2: end-to-end KL
        #[arg(long)]
        stage: u8,
        /// Training tokens
        #[arg(long, default_value_t = 1 << 20)]
        tokens: usize,
        #[command(flatten)]
        train: cli_train::TrainArgs,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Evaluation text (default: the built-in Brown evaluation split)
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Evaluation windows of 256 tokens
        #[arg(long, default_value_t = 8)]
        eval_windows: usize,
        /// Write a checkpoint every N steps (and always at the end)
        #[arg(long, default_value_t = 100)]
        checkpoint_every: usize,
        /// Output checkpoint directory (also what --resume continues from)
        #[arg(long)]
        out: PathBuf,
        /// Continue the run whose checkpoint is in --out (same options)
        #[arg(long)]
        resume: bool,
        #[arg(long)]
        json: bool,
    },
    /// Distillation tokens each initialisation needs to reach a perplexity within R x the
    /// teacher's: converts with each strategy, distils (optional stage 1, then stage 2) and
    /// reports the tokens and their ratio, with curves and a chart
    Recovery {
        #[command(flatten)]
        conv: ConvArgs,
        #[command(flatten)]
        train: cli_train::TrainArgs,
        /// Strategies to compare
        #[arg(long, value_delimiter = ',', default_value = "naive,taylor-calibrate")]
        strategies: Vec<String>,
        /// Target: evaluation perplexity <= R x the teacher's
        #[arg(long, default_value_t = 2.0)]
        target_ppl_ratio: f64,
        /// Stage 2 token budget per strategy
        #[arg(long, default_value_t = 1 << 20)]
        max_tokens: usize,
        /// Stage 1 tokens before stage 2 (0: none)
        #[arg(long, default_value_t = 0)]
        stage1_tokens: usize,
        /// Directory for recovery.md, recovery.json, recovery.svg and the curves
        #[arg(long, default_value = "recovery")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Greedy decoding with a KV cache
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The process's GPU context, with the options the environment sets.
fn gpu() -> Result<&'static Gpu> {
    Gpu::shared_with(cli::env::gpu_options_from_env()?)
}

struct Loaded {
    teacher: Decoder,
    tokenizer: tokenizers::Tokenizer,
    eos: Option<u32>,
}

fn load(spec: &str) -> Result<Loaded> {
    let path = io::fetch::resolve_model(spec, &cli::env::cache_dir_from_env())?;
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let loaded = if io::checkpoint::is_checkpoint(&path) {
        let ck = io::checkpoint::load_checkpoint(&path)?;
        let tokenizer = ck.tokenizer.clone().with_context(|| format!("checkpoint {} has no tokenizer.json", path.display()))?;
        Loaded { teacher: Decoder::from_checkpoint(gpu()?, &ck)?, tokenizer, eos: ck.config.base.eos_token_id }
    } else {
        let files = io::load_model(&path)?;
        let tokenizer = files.tokenizer.clone().with_context(|| format!("{} has no tokenizer", files.source))?;
        Loaded { teacher: Decoder::new(gpu()?, &files)?, tokenizer, eos: files.config.eos_token_id }
    };
    spinner.finish_and_clear();
    Ok(loaded)
}

/// Decoder, tokenizer, hybrid layout, calibration and evaluation tokens.
pub(crate) struct ConvSetup {
    files: io::ModelFiles,
    teacher: Decoder,
    tokenizer: tokenizers::Tokenizer,
    hc: io::checkpoint::HybridConfig,
    calib: Vec<u32>,
    eval: Vec<u32>,
    /// --eval-windows
    n_eval: usize,
    /// The policy's ranking when --policy chose the kept layers.
    selection: Option<Selection>,
}

impl ConvSetup {
    /// The evaluation text cut into --eval-windows windows of [`WINDOW`] tokens.
    pub(crate) fn eval_windows(&self) -> Result<Vec<&[u32]>> {
        taylorcal::data::windows(&self.eval, WINDOW, self.n_eval, "the evaluation text")
    }
}

impl ConvArgs {
    /// --capture-windows (parsed as u64 for clap's range check).
    fn capture(&self) -> usize {
        self.capture_windows as usize
    }
}

pub(crate) const WINDOW: usize = 256;

pub(crate) fn conv_setup(a: &ConvArgs) -> Result<ConvSetup> {
    let path = io::fetch::resolve_model(&a.teacher, &cli::env::cache_dir_from_env())?;
    let files = io::load_model(&path)?;
    let tokenizer = files.tokenizer.clone().with_context(|| format!("{} has no tokenizer", files.source))?;
    let layers = files.config.num_hidden_layers;
    let calib = taylorcal::data::tokenize_or(&tokenizer, a.calib.as_deref(), taylorcal::data::brown::CALIBRATION, usize::MAX)?;
    let eval = taylorcal::data::tokenize_or(&tokenizer, a.eval.as_deref(), taylorcal::data::brown::EVAL, a.eval_windows * WINDOW)?;
    let teacher = Decoder::new(gpu()?, &files)?;
    let selection = match (&a.policy, a.num_keep) {
        (Some(p), Some(n)) => Some(run_policy(a, Policy::parse(p)?, n, &teacher, &files.tensors, &calib, &eval)?),
        _ => None,
    };
    let keep = match (&selection, &a.keep, a.keep_every) {
        (Some(s), _, _) => s.keep.clone(),
        (None, Some(k), _) => k.clone(),
        (None, None, every) => {
            let every = every.unwrap_or(4);
            anyhow::ensure!(every > 0, "--keep-every must be at least 1");
            (0..layers).step_by(every).collect()
        }
    };
    let hc = io::checkpoint::HybridConfig::new(files.config.clone(), keep)?;
    Ok(ConvSetup { files, teacher, tokenizer, hc, calib, eval, n_eval: a.eval_windows, selection })
}

/// Run a retained-layer policy on the evaluation (and, for GA-S2, calibration) windows.
fn run_policy(
    a: &ConvArgs,
    policy: Policy,
    n: usize,
    teacher: &Decoder,
    tensors: &std::collections::HashMap<String, io::HostTensor>,
    calib: &[u32],
    eval: &[u32],
) -> Result<Selection> {
    let eval = match policy {
        Policy::Uniform => vec![],
        _ => taylorcal::data::windows(eval, WINDOW, a.eval_windows, "the evaluation text")?,
    };
    let calib = match policy {
        Policy::GaS2 => taylorcal::data::windows(calib, WINDOW, a.calib_tokens.div_ceil(WINDOW).max(a.capture()), "the calibration text")?,
        _ => vec![],
    };
    let inputs = select::Inputs {
        teacher,
        tensors,
        eval: &eval,
        calib: &calib,
        capture_windows: a.capture(),
        value_scale: a.value_scale,
        phase1_knobs: cli::env::phase1_knobs_from_env()?,
        seed: a.seed,
    };
    let pb = bar(teacher.cfg.num_hidden_layers as u64, &format!("{} layer scores", policy.name()));
    let s = select::select(gpu()?, policy, n, &inputs, |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    Ok(s)
}

/// The selection as JSON (kept layers, every layer's score, what the score means).
fn selection_json(s: &Selection) -> serde_json::Value {
    json!({ "policy": s.policy.name(), "keep": s.keep, "scores": s.scores, "score": s.policy.score_meaning(), "teacher_ppl": s.teacher_ppl, "seconds": s.seconds })
}

pub(crate) fn conv_opts(a: &ConvArgs, keep: &[usize], strategy: Strategy) -> Result<ConvertOpts> {
    Ok(ConvertOpts {
        keep: keep.to_vec(),
        strategy,
        seq_len: WINDOW,
        calib_tokens: a.calib_tokens,
        capture_windows: a.capture(),
        align: AlignOpts { steps: a.steps, ..Default::default() },
        value_scale: a.value_scale,
        phase1_knobs: cli::env::phase1_knobs_from_env()?,
        seed: a.seed,
    })
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    pb.set_style(indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").unwrap().progress_chars("=> "));
    pb.set_message(what.to_string());
    pb
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { json } => {
            let info = &gpu()?.info;
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                println!("adapter   {} ({})", info.name, info.device_type);
                println!("backend   {}", info.backend);
                println!("driver    {} {}", info.driver, info.driver_info);
                println!(
                    "features  shader_f16={} subgroup={} timestamp_query={} (inside passes: {})",
                    info.shader_f16, info.subgroup, info.timestamp_query, info.timestamp_inside_passes
                );
                println!(
                    "limits    max_storage_buffer_binding_size={} max_buffer_size={}",
                    info.max_storage_buffer_binding_size, info.max_buffer_size
                );
                println!(
                    "          max_compute_workgroup_storage_size={} max_invocations_per_workgroup={}",
                    info.max_compute_workgroup_storage_size, info.max_compute_invocations_per_workgroup
                );
                println!(
                    "          max_workgroups_per_dimension={} storage_buffers_per_stage={} subgroup_size={}..{}",
                    info.max_compute_workgroups_per_dimension,
                    info.max_storage_buffers_per_shader_stage,
                    info.min_subgroup_size,
                    info.max_subgroup_size
                );
            }
        }
        Cmd::Bench { what, json } if what.first().is_some_and(|w| w == "gdn") => {
            let g = gpu()?;
            let cpu = taylorcal::experiments::bench::is_cpu_adapter(g);
            // the shapes on a GPU; scaled down on a CPU adapter (lavapipe)
            let shapes: &[(usize, usize, usize, usize)] =
                if cpu { &[(1, 256, 2, 64), (1, 512, 2, 128)] } else { &[(1, 2048, 16, 64), (4, 4096, 16, 128), (1, 8192, 8, 128)] };
            let mut rows = vec![];
            for &(b, t, h, d) in shapes {
                let fwd = taylorcal::experiments::bench_gdn::bench_delta(g, b, t, h, d, false)?;
                let both = taylorcal::experiments::bench_gdn::bench_delta(g, b, t, h, d, true)?;
                let toks = (b * t) as f64;
                rows.push(json!({ "shape": [b, t, h, d], "fwd_ms": fwd * 1e3, "fwd_bwd_ms": both * 1e3, "fwd_tokens_per_s": toks / fwd, "fwd_bwd_tokens_per_s": toks / both }));
                if !json {
                    println!(
                        "gdn chunked scan B{b} T{t} H{h} d{d}: forward {:.3} ms ({:.0} tok/s), forward+backward {:.3} ms ({:.0} tok/s)",
                        fwd * 1e3,
                        toks / fwd,
                        both * 1e3,
                        toks / both
                    );
                }
            }
            if json {
                println!("{}", json!({ "adapter": g.info.name, "gdn": rows }));
            }
        }
        Cmd::Bench { what, json } => {
            let g = gpu()?;
            let benches: Vec<_> = taylorcal::experiments::bench::default_suite(g)
                .into_iter()
                .filter(|b| what.is_empty() || what.iter().any(|w| b.label().contains(w.as_str())))
                .collect();
            anyhow::ensure!(!benches.is_empty(), "no benchmark matches {what:?}");
            eprintln!("adapter: {} ({}, {}); {} benchmarks", g.info.name, g.info.backend, g.info.device_type, benches.len());
            let report = taylorcal::experiments::bench::run_suite(g, &benches, |r| {
                if !json {
                    eprintln!("{}", r.row())
                }
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.text());
            }
        }
        Cmd::Convert { conv, strategy, out, json } => {
            let strategy = Strategy::parse(&strategy)?;
            let setup = conv_setup(&conv)?;
            let g = gpu()?;
            let o = conv_opts(&conv, &setup.hc.attn_layers, strategy)?;
            let n_gdn = setup.hc.gdn_layers().len();
            let pb = bar(n_gdn as u64, strategy.name());
            let (tensors, reports, timings) =
                convert::convert(g, &setup.hc, &setup.teacher, &setup.files.tensors, &setup.calib, &o, |m| {
                    if m.ends_with("done") {
                        pb.inc(1);
                    }
                    pb.set_message(m.to_string());
                })?;
            pb.finish_and_clear();
            let windows = setup.eval_windows()?;
            let student = Decoder::build(g, &setup.hc.base, &tensors, "student", |l| setup.hc.is_gdn(l))?;
            let s_eval = taylorcal::eval::perplexity_windows(g, &student, &windows)?;
            let t_eval = taylorcal::eval::perplexity_windows(g, &setup.teacher, &windows)?;
            let report = json!({
                "teacher": setup.files.source, "strategy": strategy.name(), "attn_layers": setup.hc.attn_layers,
                "calib_tokens": o.calib_tokens.max(o.capture_windows * WINDOW), "capture_windows": o.capture_windows,
                "align": o.align, "value_scale": o.value_scale.name(), "seed": o.seed,
                "selection": setup.selection.as_ref().map(selection_json),
                "timings_s": timings, "layers": reports,
                "eval": { "windows": windows.len(), "window_tokens": WINDOW, "student_ppl": s_eval.ppl, "teacher_ppl": t_eval.ppl },
                "adapter": g.info.name,
            });
            let ck = io::checkpoint::Checkpoint {
                config: setup.hc.clone(),
                tensors,
                tokenizer: Some(setup.tokenizer.clone()),
                report: report.clone(),
                optimizer: None,
                files: vec![],
            };
            io::checkpoint::save_checkpoint(&out, &ck)?;
            if json {
                println!(
                    "{}",
                    json!({ "out": out, "strategy": strategy.name(), "student_ppl": s_eval.ppl, "teacher_ppl": t_eval.ppl, "timings_s": timings })
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
                    "evaluation perplexity ({} windows of {WINDOW} tokens): student {:.2}, teacher {:.2}",
                    windows.len(),
                    s_eval.ppl,
                    t_eval.ppl
                );
            }
        }
        Cmd::Ablate { conv, out, json } => {
            let setup = conv_setup(&conv)?;
            let g = gpu()?;
            let o = conv_opts(&conv, &setup.hc.attn_layers, Strategy::TaylorCalibrate)?;
            let windows = setup.eval_windows()?;
            let nwin = o.calib_tokens.div_ceil(WINDOW).max(o.capture_windows);
            let cwin = taylorcal::data::windows(&setup.calib, WINDOW, nwin, "the calibration text")?;
            let t0 = std::time::Instant::now();
            let cap = convert::capture(g, &setup.teacher, &setup.hc.gdn_layers(), &cwin, o.capture_windows, |_| {})?;
            let t_eval = taylorcal::eval::perplexity_windows(g, &setup.teacher, &windows)?;
            let mut rows = vec![];
            // the six strategies with the chosen value scale; where that is not ALGORITHM.md's
            // fitted sigma, taylor-calibrate with the fitted sigma too, as a seventh row
            let mut runs: Vec<(Strategy, convert::ValueScale)> = Strategy::ALL.iter().map(|&s| (s, o.value_scale)).collect();
            if o.value_scale != convert::ValueScale::Fit {
                runs.push((Strategy::TaylorCalibrate, convert::ValueScale::Fit));
            }
            let pb = bar(runs.len() as u64, "strategies");
            for &(s, vs) in &runs {
                let label = if vs == o.value_scale { s.name().to_string() } else { format!("{} (sigma {})", s.name(), vs.name()) };
                pb.set_message(label.clone());
                let mut tensors = taylorcal::calibrate::init::init_student(&setup.hc, &setup.files.tensors, o.seed)?;
                let t = std::time::Instant::now();
                let (_, t1, t2) = convert::apply_strategy(g, &setup.hc, &mut tensors, &cap, s, &o.align, vs, &o.phase1_knobs, |_| {})?;
                let secs = t.elapsed().as_secs_f64();
                let student = Decoder::build(g, &setup.hc.base, &tensors, s.name(), |l| setup.hc.is_gdn(l))?;
                let r = taylorcal::eval::perplexity_windows(g, &student, &windows)?;
                rows.push(json!({
                    "strategy": label, "value_scale": s.phase1().then(|| vs.name()),
                    "ppl": r.ppl, "nll": r.nll, "seconds": secs, "phase1_s": t1, "phase2_s": t2,
                }));
                pb.inc(1);
            }
            pb.finish_and_clear();
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let naive = rows[0]["ppl"].as_f64().unwrap_or(f64::NAN);
            let mut md = format!(
                "| strategy | eval ppl | vs naive |\n| --- | --- | --- |\n| teacher | {} | |\n",
                taylorcal::report::fmt(t_eval.ppl)
            );
            let mut chart = vec![("teacher".to_string(), t_eval.ppl)];
            for r in &rows {
                let p = r["ppl"].as_f64().unwrap_or(f64::NAN);
                md += &format!("| {} | {} | {:.1}x |\n", r["strategy"].as_str().unwrap_or(""), taylorcal::report::fmt(p), naive / p);
                chart.push((r["strategy"].as_str().unwrap_or("").to_string(), p));
            }
            let summary = json!({
                "teacher": setup.files.source, "attn_layers": setup.hc.attn_layers, "calib_tokens": cap.stat_tokens,
                "value_scale": o.value_scale.name(), "seed": o.seed, "steps": o.align.steps,
                "selection": setup.selection.as_ref().map(selection_json),
                "eval": { "windows": windows.len(), "window_tokens": WINDOW }, "teacher_ppl": t_eval.ppl, "strategies": rows,
                "capture_s": cap.seconds, "total_s": t0.elapsed().as_secs_f64(), "adapter": g.info.name,
            });
            std::fs::write(out.join("ablation.md"), &md)?;
            std::fs::write(out.join("ablation.json"), serde_json::to_string_pretty(&summary)?)?;
            std::fs::write(
                out.join("ablation.svg"),
                taylorcal::report::bar_chart_svg("Evaluation perplexity by initialisation strategy", &chart),
            )?;
            if json {
                println!("{summary}");
            } else {
                print!("{md}");
                println!("written to {}", out.display());
            }
        }
        Cmd::Select { conv, out, json } => {
            anyhow::ensure!(conv.policy.is_some(), "select needs --policy (uniform, ar, ga-s2) and --num-keep");
            let setup = conv_setup(&conv)?;
            let s = setup.selection.as_ref().expect("a policy was given");
            let mut report = selection_json(s);
            report["teacher"] = json!(setup.files.source);
            if let Some(out) = &out {
                std::fs::write(out, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", out.display()))?;
                let title = format!("{} per-layer score: {}", s.policy.name(), s.policy.score_meaning());
                std::fs::write(out.with_extension("svg"), taylorcal::report::layer_chart_svg(&title, &s.scores, &s.keep))?;
            }
            if json {
                println!("{report}");
            } else {
                println!("{} keeps layers {:?} ({:.1} s); score = {}", s.policy.name(), s.keep, s.seconds, s.policy.score_meaning());
                for (l, v) in s.scores.iter().enumerate() {
                    println!("layer {l:3}  {v:12.4}{}", if s.keep.contains(&l) { "  kept" } else { "" });
                }
            }
        }
        Cmd::Eval { model, text, json } => {
            let m = load(&model.model)?;
            let ids = taylorcal::data::tokenize_file(&m.tokenizer, &text.text, text.max_tokens)?;
            let r = taylorcal::eval::perplexity(gpu()?, &m.teacher, &ids)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("tokens {}  nll {:.4}  ppl {:.2}", r.tokens, r.nll, r.ppl);
            }
        }
        Cmd::Stats { model, text, json } => {
            let m = load(&model.model)?;
            let ids = taylorcal::data::tokenize_file(&m.tokenizer, &text.text, text.max_tokens)?;
            let layers = taylorcal::calibrate::capture::attention_stats(gpu()?, &m.teacher, &[&ids])?;
            if json {
                println!("{}", json!({ "tokens": ids.len(), "layers": layers }));
            } else {
                println!("{} tokens; per head: mean attention distance / entropy (nats)", ids.len());
                for (i, l) in layers.iter().enumerate() {
                    let cells: Vec<String> = l.distance.iter().zip(&l.entropy).map(|(d, e)| format!("{d:6.1}/{e:4.2}")).collect();
                    println!("layer {i:2}  {}", cells.join(" "));
                }
            }
        }
        Cmd::Distill { student, teacher, stage, tokens, train, seed, eval, eval_windows, checkpoint_every, out, resume, json } => {
            cli_train::distill_cmd(
                gpu()?,
                student,
                &teacher,
                stage,
                tokens,
                seed,
                &train,
                eval,
                eval_windows,
                checkpoint_every,
                out,
                resume,
                json,
            )?
        }
        Cmd::Recovery { conv, train, strategies, target_ppl_ratio, max_tokens, stage1_tokens, out, json } => {
            let r = cli_train::RecoveryArgs { strategies, target_ratio: target_ppl_ratio, max_tokens, stage1_tokens, out, json };
            cli_train::recovery_cmd(gpu()?, &conv, &train, &r)?
        }
        Cmd::Generate { model, prompt, max_new_tokens, json } => {
            let m = load(&model.model)?;
            let enc = m.tokenizer.encode(prompt.as_str(), false).map_err(|e| anyhow::anyhow!("tokenising the prompt: {e}"))?;
            let ids = enc.get_ids().to_vec();
            if !json {
                print!("{prompt}");
            }
            let mut shown = String::new();
            let mut new_ids: Vec<u32> = vec![];
            let out = taylorcal::eval::generate(gpu()?, &m.teacher, &ids, max_new_tokens, m.eos, |id| {
                if json {
                    return;
                }
                new_ids.push(id);
                let text = m.tokenizer.decode(&new_ids, true).unwrap_or_default();
                if let Some(tail) = text.strip_prefix(shown.as_str()) {
                    print!("{tail}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
                shown = text;
            })?;
            let text = m.tokenizer.decode(&out, true).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
            if json {
                println!("{}", json!({ "prompt": prompt, "prompt_tokens": ids.len(), "new_tokens": out.len(), "ids": out, "text": text }));
            } else {
                println!();
            }
        }
    }
    Ok(())
}
