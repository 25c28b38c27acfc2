//! The command line's arguments (clap), and their translation into the library's settings.
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use taylorcal::calibrate::convert::ConvertOpts;
use taylorcal::data::{self, ShardSet, TextSource, TokenStream, TrainFiles, WINDOW};
use taylorcal::gpu::Precision;
use taylorcal::io::{self, fingerprint};
use taylorcal::train::distill::{DistillOpts, Identity};

/// The command line: one subcommand.
#[derive(Parser)]
#[command(
    name = "taylorcal",
    version,
    about = "Turn a pretrained Transformer into a hybrid Gated DeltaNet model with Taylor-Calibrate, on any GPU wgpu drives"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
    /// Operands of the matrix products: f16 (f32 accumulation, tensor cores where the GPU has them) or f32. Default: f16 on a GPU with 16-bit shader floats, f32 elsewhere (CPU adapters)
    #[arg(long, global = true, value_parser = parse_precision)]
    pub precision: Option<Precision>,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("{s:?} is not f16 or f32"))
}

/// The model a command runs.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// `smollm2` (the default teacher, fetched on first use), a .gguf file, a Hugging Face directory, a taylorcal checkpoint directory or a student exported by `taylorcal export`
    #[arg(long, default_value = io::fetch::DEFAULT_TEACHER)]
    pub model: String,
}

/// The text a command reads.
#[derive(clap::Args)]
pub struct TextArgs {
    /// Plain-text file to tokenise (no BOS is added)
    #[arg(long)]
    pub text: PathBuf,
    /// Use at most this many tokens of the text, as one sequence
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
}

/// `eval` and `stats`: a model, a text to run it on, and the output format.
#[derive(clap::Args)]
pub struct ModelTextArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub text: TextArgs,
    /// Print one line of JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// The evaluation text of `convert`, `ablate`, `select`, `distill` and `recovery`.
#[derive(clap::Args, Clone)]
pub struct EvalArgs {
    /// Evaluation text (default: the built-in Brown evaluation split)
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Evaluation windows of 256 tokens (distill: 0 evaluates nothing)
    #[arg(long, default_value_t = 8)]
    pub eval_windows: usize,
}

impl EvalArgs {
    /// The evaluation tokens: --eval-windows windows' worth of --eval (or the Brown split),
    /// checked against the model's `vocab`.
    pub fn tokens(&self, tok: &tokenizers::Tokenizer, vocab: usize) -> Result<Vec<u32>> {
        data::tokenize_or(tok, self.eval.as_deref(), &data::brown::EVAL, vocab, self.eval_windows.saturating_mul(WINDOW))
    }

    /// `tokens` cut into --eval-windows windows of [`WINDOW`] tokens.
    pub fn windows<'a>(&self, tokens: &'a [u32]) -> Result<Vec<&'a [u32]>> {
        data::windows(tokens, WINDOW, self.eval_windows, "the evaluation text")
    }
}

/// What `select` reads: the teacher, the retained-layer policy, the calibration and
/// evaluation text, and the phase 1 settings GA-S2's candidates use. [`ConvArgs`] adds what
/// only a conversion uses.
#[derive(clap::Args)]
pub struct TeacherArgs {
    /// `smollm2` (default teacher), a .gguf file or a Hugging Face directory
    #[arg(long, default_value = io::fetch::DEFAULT_TEACHER)]
    pub teacher: String,
    /// Choose the kept layers with a retained-layer policy: uniform, ar, ga-s2 (needs --num-keep)
    #[arg(long, requires = "num_keep")]
    pub policy: Option<String>,
    /// Layers the policy keeps as softmax attention
    #[arg(long, requires = "policy")]
    pub num_keep: Option<usize>,
    /// Calibration text (default: the built-in Brown calibration split)
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// Calibration tokens for the attention statistics (streamed; activations for the
    /// value scale and alignment come from the first --capture-windows windows)
    #[arg(long, default_value_t = 1024)]
    pub calib_tokens: usize,
    /// Calibration windows of 256 tokens whose activations phase 1's value scale and
    /// phase 2's alignment use (default: 4, the reference's; 1 with convert's --preset
    /// quick); every alignment step sees all of them
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub capture_windows: Option<u64>,
    /// Phase 1's value scale: `linear[:TAU]` (the default: sigma = TAU / RMS(W_v x) per
    /// head, SiLU near its linear regime; TAU 0.25, chosen on the Brown training split) or
    /// `fit` (the method as written, docs/method.md: sigma = <c_T, c_S> / |c_S|^2 from the recurrence's
    /// output, which on SmolLM2 hits its clamp and loses to alignment-only)
    #[arg(long, default_value_t = taylorcal::calibrate::phase1::ValueScale::default(), value_parser = taylorcal::calibrate::phase1::ValueScale::parse)]
    pub value_scale: taylorcal::calibrate::phase1::ValueScale,
    /// Random seed: the new GDN parameters' initialisation (recovery: also the order of the
    /// training sequences)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub eval: EvalArgs,
}

impl TeacherArgs {
    /// The conversion settings of `preset` with these arguments' values over it
    /// (Taylor-Calibrate, no kept layers yet: they come from the teacher's layer count or a
    /// policy).
    pub fn opts(&self, preset: Preset) -> Result<ConvertOpts> {
        let base = preset.opts();
        Ok(ConvertOpts {
            calib_tokens: self.calib_tokens,
            capture_windows: self.capture_windows.map_or(base.capture_windows, |c| c as usize),
            value_scale: self.value_scale,
            seed: self.seed,
            phase1_knobs: super::env::phase1_knobs_from_env()?,
            ..base
        })
    }

    /// Reject arguments no run can use, before anything is loaded or written.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(self.eval.eval_windows >= 1, "--eval-windows must be at least 1");
        anyhow::ensure!(self.num_keep != Some(0), "--num-keep must be at least 1");
        self.opts(Preset::Reference)?.check()
    }
}

/// Conversion settings for a kind of adapter; explicit options override a preset's values.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum Preset {
    /// The reference settings: 300 alignment steps per layer on 4 windows of 256 tokens
    #[default]
    Reference,
    /// For CPU and other slow adapters: 50 alignment steps per layer on 1 window of 256
    /// tokens (about 1/24 of the reference's alignment work; the student is less accurate,
    /// see the README)
    Quick,
}

impl Preset {
    /// The conversion settings this preset stands for.
    pub fn opts(self) -> ConvertOpts {
        match self {
            Preset::Reference => ConvertOpts::default(),
            Preset::Quick => ConvertOpts::quick(),
        }
    }
}

/// What a conversion reads and how it runs (`convert`, `ablate`, `recovery`): [`TeacherArgs`]
/// (read through this struct: it derefs to them), the student's layout and phase 2.
#[derive(clap::Args)]
pub struct ConvArgs {
    #[command(flatten)]
    pub teacher_args: TeacherArgs,
    /// Layers that keep softmax attention, e.g. 0,4,8
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["keep_every", "policy"])]
    pub keep: Option<Vec<usize>>,
    /// Keep every K-th layer from 0 (the default when neither --keep nor --policy is given: 4)
    #[arg(long, conflicts_with = "policy")]
    pub keep_every: Option<usize>,
    /// Settings for the adapter: `reference` (the default) or `quick` for CPU and other slow
    /// adapters (fewer alignment steps on less text: about 24x less phase 2 work); --steps and
    /// --capture-windows override it
    #[arg(long, value_enum, default_value_t = Preset::Reference)]
    pub preset: Preset,
    /// Phase 2 AdamW steps per layer (default: 300, the reference's; 50 with --preset quick)
    #[arg(long)]
    pub steps: Option<usize>,
}

impl std::ops::Deref for ConvArgs {
    type Target = TeacherArgs;
    fn deref(&self) -> &TeacherArgs {
        &self.teacher_args
    }
}

impl ConvArgs {
    /// The conversion settings these arguments give (Taylor-Calibrate, no kept layers yet:
    /// they come from the teacher's layer count or a policy).
    pub fn opts(&self) -> Result<ConvertOpts> {
        let mut o = self.teacher_args.opts(self.preset)?;
        o.align.steps = self.steps.unwrap_or(o.align.steps);
        Ok(o)
    }

    /// Reject arguments no conversion can use, before anything is loaded or written.
    pub fn check(&self) -> Result<()> {
        self.teacher_args.check()?;
        anyhow::ensure!(self.keep_every != Some(0), "--keep-every must be at least 1");
        self.opts()?.check()
    }
}

/// Settings shared by `distill` and `recovery`.
#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    /// Tokens per training sequence
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Sequences per optimizer step, all in one forward and backward (batch x seq-len rows
    /// in every matrix product) unless --micro-batch splits them
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Sequences per forward and backward when a whole batch does not fit in GPU memory
    /// (gradients accumulated over batch / micro-batch passes; default: the whole batch)
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Peak learning rate (stage 1: all trained parameters, default 1e-3; stage 2: GDN and
    /// kept softmax attention blocks, default 1e-4)
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Stage 2: peak learning rate of embeddings, norms and MLPs (default 7e-6)
    #[arg(long, allow_negative_numbers = true)]
    pub lr_rest: Option<f32>,
    /// Warmup steps (default: 5% of the steps)
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Training data: text files, JSONL files (`.jsonl`, a "text" field a line) or token
    /// shards (`taylorcal tokenize`'s files or directory; streamed, bounded memory); default:
    /// the built-in Brown training split; repeatable
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
    /// The distillation settings of `stage` for `tokens` training tokens.
    pub fn opts(&self, stage: u8, tokens: usize, seed: u64) -> DistillOpts {
        let mut o = DistillOpts::for_stage(stage);
        o.tokens = tokens;
        o.seq_len = self.seq_len;
        o.batch = self.batch;
        o.micro_batch = self.micro_batch;
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

    /// The training token stream: text and JSONL files (documents followed by `eos`),
    /// packed and read only as far as the run's `sequences` (steps x batch) go; token shards,
    /// read a sequence at a time (bounded memory at any size), refused when made from the
    /// evaluation text (`eval`: its file, or the built-in split); or the whole Brown training
    /// split. Ids checked against the model's `vocab`.
    pub fn stream(
        &self,
        tok: &tokenizers::Tokenizer,
        eos: Option<u32>,
        vocab: usize,
        sequences: usize,
        seed: u64,
        eval: Option<&std::path::Path>,
    ) -> Result<TokenStream> {
        if self.train.is_empty() {
            return TokenStream::read([TextSource::builtin(tok, &data::brown::TRAIN)?], vocab, self.seq_len, usize::MAX, seed);
        }
        match TrainFiles::of(&self.train)? {
            TrainFiles::Text(files) => {
                let sources = files.iter().map(|f| data::source_file(tok, f, eos)).collect::<Result<Vec<_>>>()?;
                TokenStream::read(sources, vocab, self.seq_len, sequences, seed)
            }
            TrainFiles::Shards(files) => {
                let set = ShardSet::open(&files, tok, vocab)?;
                let (fp, name) = match eval {
                    Some(p) => (fingerprint::of_files(&[p])?, format!("--eval {}", p.display())),
                    None => (fingerprint::of_bytes(data::brown::EVAL.text.as_bytes()), data::brown::EVAL.name.to_string()),
                };
                data::check_disjoint(&set, &fp, &name)?;
                TokenStream::shards(set, self.seq_len, seed)
            }
        }
    }

    /// The training text as `--resume` recognises it: the files (or the built-in split) and
    /// a fingerprint of their bytes (of shards: of their headers' content fingerprints).
    pub fn identity(&self, data: &TokenStream) -> Result<Identity> {
        if self.train.is_empty() {
            let fingerprint = fingerprint::Fingerprint::default().bytes(data::brown::TRAIN.text.as_bytes()).hex();
            return Ok(Identity { name: "the built-in Brown training split".into(), fingerprint });
        }
        let names: Vec<String> = self.train.iter().map(|p| p.display().to_string()).collect();
        if let Some(set) = data.shard_set() {
            return Ok(Identity { name: format!("token shards {}", names.join(", ")), fingerprint: data::shards_fingerprint(set) });
        }
        Ok(Identity { name: format!("file {}", names.join(", ")), fingerprint: fingerprint::of_files(&self.train)? })
    }
}

/// `tokenize`'s arguments.
#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Text files (one document each) and JSONL files (`.jsonl`: one document a line, in its "text" field)
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output directory: shard_00000.bin, ... and shards.json (what `distill --train DIR` reads)
    #[arg(long)]
    pub out: PathBuf,
    /// Tokens per shard
    #[arg(long, default_value_t = 100_000_000)]
    pub shard_tokens: u64,
    /// Write into --out even when it holds other files (only the files this command writes are replaced)
    #[arg(long)]
    pub force: bool,
    /// Print one line of JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `distill`'s arguments.
#[derive(clap::Args)]
pub struct DistillArgs {
    /// The student checkpoint written by `taylorcal convert`, or a student exported by
    /// `taylorcal export` (either layout; not needed with --resume)
    #[arg(long)]
    pub student: Option<PathBuf>,
    /// The teacher it was converted from
    #[arg(long, default_value = io::fetch::DEFAULT_TEACHER)]
    pub teacher: String,
    /// 1: per-layer alignment; 2: end-to-end KL
    #[arg(long)]
    pub stage: u8,
    /// Training tokens
    #[arg(long, default_value_t = 1 << 20)]
    pub tokens: usize,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Seed of the order the training sequences are drawn in
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Write a checkpoint every N steps (and always at the end)
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Output checkpoint directory (also what --resume continues from)
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run whose checkpoint is in --out exactly: another option, --train text,
    /// evaluation or teacher is refused (--checkpoint-every and --recompute may change)
    #[arg(long)]
    pub resume: bool,
    /// Write into --out even when it holds other files: only the files this command writes
    /// are replaced, every other file is left alone
    #[arg(long)]
    pub force: bool,
    /// Print one line of JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// `export`'s arguments.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// The student: a taylorcal checkpoint, or a directory exported before (either layout)
    #[arg(long)]
    pub model: PathBuf,
    /// The layout: `fla` (flash-linear-attention's GatedDeltaNetConfig, model_type
    /// gated_deltanet; refused for what it cannot express: q/k norms, RoPE scaling, a
    /// head_dim other than hidden/heads in kept layers, rms_norm_eps other than 1e-5) or
    /// `reference` (the Taylor-Calibrate reference code's StudentConfig, model_type student:
    /// carries everything)
    #[arg(long, value_parser = parse_format)]
    pub to: io::export::Format,
    /// Output directory: config.json, model.safetensors, tokenizer.json,
    /// tokenizer_config.json, generation_config.json
    #[arg(long)]
    pub out: PathBuf,
    /// The tensors' type: f32 (exact), f16 or bf16 (rounded to nearest even)
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: io::dtype::FloatDtype,
    /// Write into --out even when it holds other files: only the files this command writes
    /// are replaced, every other file is left alone
    #[arg(long)]
    pub force: bool,
    /// Print one line of JSON instead of text
    #[arg(long)]
    pub json: bool,
}

fn parse_format(s: &str) -> Result<io::export::Format, String> {
    io::export::Format::parse(s).ok_or_else(|| format!("{s:?} is not fla or reference"))
}

fn parse_dtype(s: &str) -> Result<io::dtype::FloatDtype, String> {
    io::dtype::FloatDtype::parse(s).ok_or_else(|| format!("{s:?} is not f32, f16 or bf16"))
}

/// `recovery`'s arguments.
#[derive(clap::Args)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub conv: ConvArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Strategies to compare
    #[arg(long, value_delimiter = ',', default_value = "naive,taylor-calibrate")]
    pub strategies: Vec<String>,
    /// Target: evaluation perplexity <= R x the teacher's
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub target_ppl_ratio: f64,
    /// Stage 2 token budget per strategy
    #[arg(long, default_value_t = 1 << 20)]
    pub max_tokens: usize,
    /// Stage 1 tokens before stage 2 (0: none)
    #[arg(long, default_value_t = 0)]
    pub stage1_tokens: usize,
    /// Directory for recovery.md, recovery.json, recovery.svg and the curves
    #[arg(long, default_value = "recovery")]
    pub out: PathBuf,
    /// Write into --out even when it holds other files: only the files this command writes
    /// are replaced, every other file is left alone
    #[arg(long)]
    pub force: bool,
    /// Print one line of JSON instead of text
    #[arg(long)]
    pub json: bool,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Show the GPU adapter, backend, driver, features and key limits
    Info {
        /// Print one line of JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Mean next-token NLL and perplexity of a model on a text
    Eval(ModelTextArgs),
    /// Per-layer, per-head mean attention distance and entropy (fused kernel)
    Stats(ModelTextArgs),
    /// Benchmark the kernels (GPU timestamps): GFLOP/s or GB/s per kernel
    Bench {
        /// Only benchmarks whose label contains one of these words (e.g. `matmul`, `attention`);
        /// `gdn` times the chunked delta-rule scan, forward and forward+backward
        what: Vec<String>,
        /// Print one line of JSON instead of text
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
        /// Output checkpoint directory (each converted layer is saved there as it is done)
        #[arg(long, default_value = "student")]
        out: PathBuf,
        /// Continue the conversion a killed run left in --out, to the checkpoint an unbroken
        /// run writes: another setting, teacher or --calib text is refused
        #[arg(long)]
        resume: bool,
        /// Write into --out even when it holds other files: only the files this command writes
        /// are replaced, every other file is left alone (and an interrupted conversion there
        /// starts over)
        #[arg(long)]
        force: bool,
        /// Print one line of JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Run all six strategies from one teacher pass and tabulate evaluation perplexity (plus
    /// taylor-calibrate with the fitted sigma of docs/method.md when --value-scale is not `fit`)
    Ablate {
        #[command(flatten)]
        conv: ConvArgs,
        /// Directory for ablation.md, ablation.json and ablation.svg
        #[arg(long, default_value = "ablation")]
        out: PathBuf,
        /// Write into --out even when it holds other files: only the files this command writes
        /// are replaced, every other file is left alone
        #[arg(long)]
        force: bool,
        /// Print one line of JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Rank the teacher's layers with a retained-layer policy (--policy, --num-keep) and
    /// print the kept layers and every layer's score
    Select {
        #[command(flatten)]
        teacher: TeacherArgs,
        /// Write the report here as JSON, and a per-layer score chart next to it (.svg in
        /// place of .json, else appended); only select's own earlier report is written over
        #[arg(long)]
        out: Option<PathBuf>,
        /// Print one line of JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Distil a converted student from its teacher on the GPU: stage 1 (per-layer
    /// alignment, converted layers only) or stage 2 (end-to-end KL, every parameter), with
    /// checkpoints, exact --resume, curve.csv and curve.svg in --out
    Distill(DistillArgs),
    /// Distillation tokens each initialisation needs to reach a perplexity within R x the
    /// teacher's: converts with each strategy, distils (optional stage 1, then stage 2) and
    /// reports the tokens and their ratio, with curves and a chart
    Recovery(RecoveryArgs),
    /// Write a student for Python tools: flash-linear-attention's layout (--to fla) or the
    /// Taylor-Calibrate reference code's (--to reference); eval, generate, distill and export
    /// read both back
    Export(ExportArgs),
    /// Tokenise text and JSONL files (a "text" field per line) into token shards that
    /// `distill --train` streams (each file, or JSONL line, one document followed by the
    /// end-of-sequence token)
    Tokenize(TokenizeArgs),
    /// Continue a text with a KV cache (softmax layers) and recurrent state (GDN layers),
    /// greedy or sampled, streamed to stdout as it is produced
    Generate(GenerateArgs),
}

/// `taylorcal generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to continue
    #[arg(long, required_unless_present = "prompt_file", conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// File whose text to continue (instead of --prompt)
    #[arg(long)]
    pub prompt_file: Option<std::path::PathBuf>,
    /// Tokens to generate at most (fewer when the model ends the text or a --stop string appears)
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature: 0 is greedy (the most likely token each step)
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Sample only among the K most likely tokens (0: all)
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only among the fewest most likely tokens whose probability reaches P (1: all)
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sample only among tokens at least P times as likely as the most likely one (0: all)
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f64,
    /// Penalty on tokens already in the text: positive logits divided by it, negative ones
    /// multiplied (1: none; also applies when greedy)
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    /// Seed of the sampling draws (the same seed gives the same text)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the generated text contains STRING, which is cut off with what follows
    /// (repeatable)
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,
    /// Wrap the prompt as a user message in the model's chat template (GGUF
    /// tokenizer.chat_template or tokenizer_config.json's chat_template) and open the
    /// assistant's turn; only the reply is printed
    #[arg(long)]
    pub chat: bool,
    /// Print one line of JSON at the end (text, ids, speeds, stop reason) instead of streaming
    #[arg(long)]
    pub json: bool,
}

impl GenerateArgs {
    pub fn sample_opts(&self) -> taylorcal::eval::SampleOpts {
        taylorcal::eval::SampleOpts {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        }
    }
}
