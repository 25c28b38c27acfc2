//! The distillation loop: stage 1 (per-layer MSE alignment over a token stream,
//! teacher-forced, only converted layers train) and stage 2 (end-to-end KL(teacher ||
//! student) on next-token distributions, every parameter trains, two learning-rate
//! groups). Both use AdamW with a global gradient-norm clip, warmup + cosine schedule,
//! `batch` sequences per step in one forward and backward (or in micro-batches with the
//! gradients accumulated), periodic evaluation and
//! atomic checkpoints that hold the optimizer state, so a killed run resumes exactly.
use crate::data::TokenStream;
use crate::eval::perplexity_windows;
use crate::gpu::{Batch, Gpu, PendingRead, Precision, Tensor};
use crate::io::checkpoint::{self, Checkpoint, HybridConfig};
use crate::io::fingerprint::{self, Fingerprint};
use crate::io::ModelFiles;
use crate::nn::decoder::{AttnActs, Decoder, ForwardOpts, KvCache, Mixer};
use crate::nn::gdn::{self, GdnActs, GdnParams};
use crate::nn::optim::{cosine_lr, Optimizer};
use crate::nn::training::{self, TrainActs};
use crate::ops::kl::{self, KlOut, KlWorkspace, KL_DEFAULT_BUDGET};
use crate::ops::optim::{self, AdamW, Reducer};
use anyhow::{bail, ensure, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Instant;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DistillOpts {
    /// 1: per-layer alignment; 2: end-to-end KL.
    pub stage: u8,
    /// Training tokens in total (rounded up to whole steps).
    pub tokens: usize,
    pub seq_len: usize,
    /// Sequences per optimizer step.
    pub batch: usize,
    /// Sequences per forward and backward (None: the whole batch); gradients accumulate
    /// over batch / micro_batch passes. Checkpoints from before this option ran one.
    #[serde(default = "one_sequence")]
    pub micro_batch: Option<usize>,
    /// Peak learning rate: stage 1 all trained parameters; stage 2 the attention blocks
    /// (GDN and kept softmax).
    pub lr: f32,
    /// Stage 2: peak learning rate of everything else (embeddings, norms, MLPs).
    pub lr_rest: f32,
    /// Warmup steps (None: 5% of the steps, at least 1).
    pub warmup: Option<usize>,
    /// The schedule ends at lr * min_lr_ratio.
    pub min_lr_ratio: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: none).
    pub clip: f32,
    pub seed: u64,
    /// Evaluate every N steps (0: only at the start and the end).
    pub eval_every: usize,
    /// Write a checkpoint every N steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Recompute each layer's activations in the backward (stage 2) to save memory.
    pub recompute: bool,
    /// Stop at the first evaluation whose perplexity is at or below this.
    pub target_ppl: Option<f64>,
}

fn one_sequence() -> Option<usize> {
    Some(1)
}

impl DistillOpts {
    /// Sequences per forward and backward pass.
    pub fn micro(&self) -> usize {
        self.micro_batch.unwrap_or(self.batch)
    }

    /// The reference's settings for a stage (learning rates, betas, clip 1.0).
    pub fn for_stage(stage: u8) -> DistillOpts {
        let (lr, beta2) = if stage == 1 { (1e-3, 0.999) } else { (1e-4, 0.95) };
        DistillOpts {
            stage,
            tokens: 1 << 20,
            seq_len: 512,
            batch: 4,
            micro_batch: None,
            lr,
            lr_rest: 7e-6,
            warmup: None,
            min_lr_ratio: 0.1,
            beta1: 0.9,
            beta2,
            weight_decay: 0.01,
            clip: 1.0,
            seed: 0,
            eval_every: 0,
            checkpoint_every: 0,
            recompute: false,
            target_ppl: None,
        }
    }

    pub fn steps(&self) -> usize {
        self.tokens.div_ceil(self.seq_len.saturating_mul(self.batch).max(1)).max(1)
    }

    fn warmup_steps(&self) -> usize {
        self.warmup.unwrap_or((self.steps() / 20).max(1))
    }

    /// Refuse sequences longer than the model's context (`max_pos` positions).
    pub fn check_context(&self, max_pos: usize) -> Result<()> {
        ensure!(self.seq_len <= max_pos, "--seq-len {} exceeds the model's context ({max_pos})", self.seq_len);
        Ok(())
    }

    /// Reject options no run can use (before anything is loaded), naming the option (the
    /// command line's name where it has one).
    pub fn check(&self) -> Result<()> {
        ensure!(self.stage == 1 || self.stage == 2, "--stage must be 1 or 2 (got {})", self.stage);
        ensure!(self.tokens >= 1, "--tokens must be at least 1 (got 0)");
        ensure!(self.batch >= 1, "--batch must be at least 1");
        if let Some(m) = self.micro_batch {
            ensure!(
                m >= 1 && self.batch.is_multiple_of(m),
                "--micro-batch {m} must be at least 1 and divide --batch {} (each step runs batch / micro-batch passes)",
                self.batch
            );
        }
        ensure!(self.seq_len >= 2, "--seq-len must be at least 2");
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "--lr must be a positive number (got {})", self.lr);
        ensure!(self.lr_rest >= 0.0 && self.lr_rest.is_finite(), "--lr-rest must be a number >= 0 (got {})", self.lr_rest);
        if let Some(w) = self.warmup {
            let steps = self.steps();
            ensure!(w <= steps, "--warmup {w} is more than the run's {steps} steps: the learning rate would never reach --lr");
        }
        ensure!((0.0..=1.0).contains(&self.min_lr_ratio), "min_lr_ratio must lie in [0, 1] (got {})", self.min_lr_ratio);
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            ensure!((0.0..1.0).contains(&beta), "{name} must lie in [0, 1) (got {beta})");
        }
        ensure!(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "weight_decay must be a number >= 0 (got {})",
            self.weight_decay
        );
        ensure!(self.clip >= 0.0 && self.clip.is_finite(), "clip must be a number >= 0 (0: no clipping; got {})", self.clip);
        if let Some(p) = self.target_ppl {
            ensure!(p > 0.0, "target_ppl must be positive (got {p})");
        }
        Ok(())
    }
}

/// The first option of `now` that changes the run `was` describes, as (option, was, now):
/// every option but `checkpoint_every` (when files are written) and `recompute` (the same
/// gradients bit for bit, with less memory).
fn changed_option(was: &DistillOpts, now: &DistillOpts) -> Option<(&'static str, String, String)> {
    // destructured so that a new option must be placed here (or said not to change the run)
    let DistillOpts {
        stage,
        tokens,
        seq_len,
        batch,
        micro_batch: _,
        lr,
        lr_rest,
        warmup: _,
        min_lr_ratio,
        beta1,
        beta2,
        weight_decay,
        clip,
        seed,
        eval_every,
        checkpoint_every: _,
        recompute: _,
        target_ppl,
    } = was;
    let ppl = |p: Option<f64>| p.map_or("none".to_string(), |p| p.to_string());
    [
        ("--stage", stage.to_string(), now.stage.to_string()),
        ("--tokens", tokens.to_string(), now.tokens.to_string()),
        ("--seq-len", seq_len.to_string(), now.seq_len.to_string()),
        ("--batch", batch.to_string(), now.batch.to_string()),
        // the order in which gradients are summed (1: the whole batch in one pass)
        ("--micro-batch", was.micro().to_string(), now.micro().to_string()),
        ("--lr", lr.to_string(), now.lr.to_string()),
        ("--lr-rest", lr_rest.to_string(), now.lr_rest.to_string()),
        // the warmup the schedule uses (without --warmup, 5% of the steps)
        ("--warmup", was.warmup_steps().to_string(), now.warmup_steps().to_string()),
        ("min_lr_ratio", min_lr_ratio.to_string(), now.min_lr_ratio.to_string()),
        ("beta1", beta1.to_string(), now.beta1.to_string()),
        ("beta2", beta2.to_string(), now.beta2.to_string()),
        ("weight_decay", weight_decay.to_string(), now.weight_decay.to_string()),
        ("clip", clip.to_string(), now.clip.to_string()),
        ("--seed", seed.to_string(), now.seed.to_string()),
        ("--eval-every", eval_every.to_string(), now.eval_every.to_string()),
        ("target_ppl", ppl(*target_ppl), ppl(now.target_ppl)),
    ]
    .into_iter()
    .find(|(_, a, b)| a != b)
}

/// What a run reads besides its options and its student, identified so that resuming with
/// another input is refused. The caller identifies what it built [`Setup::data`] and
/// [`Setup::teacher`] from; the evaluation windows the run identifies itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunInputs {
    /// The training text (`--train` files, or the built-in split).
    pub train: Identity,
    /// The teacher's weights ([`Identity::of_model`]).
    pub teacher: Identity,
}

/// One input: what it is, for messages, and a fingerprint of its content (equal
/// fingerprints: the same input, wherever it lies now).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    pub name: String,
    /// [`crate::io::fingerprint`] of its bytes, tokens or tensors.
    pub fingerprint: String,
}

impl Identity {
    /// A model by its source and the fingerprint of its weights (as loaded, in name order).
    pub fn of_model(files: &ModelFiles) -> Identity {
        Identity { name: files.source.clone(), fingerprint: fingerprint::of_tensors(&files.tensors) }
    }
}

/// What a checkpoint records of a run's inputs (report.json `train.inputs`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Recorded {
    #[serde(flatten)]
    inputs: RunInputs,
    eval_windows: usize,
    /// The fingerprint of the evaluation windows' token ids.
    eval_fingerprint: String,
}

impl Recorded {
    fn of(s: &Setup) -> Recorded {
        let mut fp = Fingerprint::default();
        for w in s.eval {
            fp.u32s(w.iter().copied());
        }
        Recorded { inputs: s.inputs.clone(), eval_windows: s.eval.len(), eval_fingerprint: fp.hex() }
    }

    /// Refuse `now` where it reads another input than the recorded run, naming the option.
    fn check(&self, now: &Recorded) -> Result<()> {
        let (was, is) = (&self.inputs.train, &now.inputs.train);
        ensure!(
            was.fingerprint == is.fingerprint,
            "--resume: the checkpoint was trained on another --train text ({}, fingerprint {}) than this run reads ({}, fingerprint {})",
            was.name,
            was.fingerprint,
            is.name,
            is.fingerprint
        );
        let (was, is) = (&self.inputs.teacher, &now.inputs.teacher);
        ensure!(
            was.fingerprint == is.fingerprint,
            "--resume: the checkpoint was distilled from another --teacher ({}, fingerprint {}) than this run's ({}, fingerprint {}): other weights",
            was.name,
            was.fingerprint,
            is.name,
            is.fingerprint
        );
        ensure!(
            self.eval_windows == now.eval_windows,
            "--resume: the checkpoint was evaluated with --eval-windows {}, this run asks for --eval-windows {}",
            self.eval_windows,
            now.eval_windows
        );
        ensure!(
            self.eval_fingerprint == now.eval_fingerprint,
            "--resume: the checkpoint was evaluated on another --eval text (its windows' tokens have fingerprint {}, this run's {})",
            self.eval_fingerprint,
            now.eval_fingerprint
        );
        Ok(())
    }
}

/// Refuse `opts` where they change the run a checkpoint was trained with (see
/// [`changed_option`]).
fn check_options(was: &DistillOpts, opts: &DistillOpts) -> Result<()> {
    match changed_option(was, opts) {
        Some((name, was, now)) => bail!("--resume: the checkpoint was trained with {name} {was}, this run asks for {name} {now}"),
        None => Ok(()),
    }
}

/// One logged step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    pub step: usize,
    pub tokens: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Evaluation perplexity when this step was evaluated.
    pub eval_ppl: Option<f64>,
    /// Training seconds so far (evaluation and checkpoints excluded).
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DistillReport {
    pub opts: DistillOpts,
    pub steps: usize,
    pub tokens: usize,
    pub curve: Vec<CurvePoint>,
    pub initial_ppl: Option<f64>,
    pub final_ppl: Option<f64>,
    /// Training tokens per second (evaluation and checkpoint time excluded).
    pub tokens_per_s: f64,
    /// The same over the steps after this run's first, which also compiles every kernel
    /// (None with fewer than two steps): the rate a longer run settles at.
    pub steady_tokens_per_s: Option<f64>,
    pub train_seconds: f64,
    /// The run stopped early because the evaluation reached `target_ppl`.
    pub reached_target: bool,
    /// Bytes of GPU buffers the run allocated for training (activations, gradients,
    /// optimizer state, scratch), on top of the two models' weights.
    pub train_buffer_bytes: u64,
}

/// Where a resumed run picks up, and what it must run with to continue it exactly.
pub struct ResumeState {
    pub step: usize,
    pub curve: Vec<CurvePoint>,
    pub optimizer: std::collections::HashMap<String, crate::io::HostTensor>,
    pub initial_ppl: Option<f64>,
    /// The options the checkpoint was trained with.
    pub opts: DistillOpts,
    recorded: Recorded,
    /// The matrix products' precision the checkpoint was trained at (f32 before it was recorded).
    precision: Precision,
}

/// What the loop reports and when it stops early.
#[derive(Default)]
pub struct Hooks<'a> {
    pub progress: Option<&'a mut dyn FnMut(&CurvePoint)>,
    /// Return (as an error, like a crash) after this many steps: tests of resume.
    pub kill_after: Option<usize>,
}

/// Everything a run needs besides its options.
pub struct Setup<'a> {
    pub gpu: &'a Gpu,
    pub teacher: &'a Decoder,
    /// The student, trained in place.
    pub student: &'a Decoder,
    pub config: &'a HybridConfig,
    pub tokenizer: Option<&'a tokenizers::Tokenizer>,
    pub data: &'a TokenStream,
    pub eval: &'a [&'a [u32]],
    /// Checkpoint directory (None: nothing written).
    pub out: Option<&'a Path>,
    /// Extra fields for report.json (teacher name, strategy...).
    pub meta: Value,
    /// What `data` and `teacher` are: recorded in checkpoints, compared on resume.
    pub inputs: RunInputs,
}

/// The per-step work of a stage: accumulate the gradients of one micro-batch (its
/// sequences one after the other in `ids`).
trait Stage {
    fn micro(&mut self, b: &mut Batch, ids: &Tensor, ids_host: &[u32], slot: usize) -> Result<()>;
    /// The reducer's slots, read back at the end of a step.
    fn loss_slots(&self) -> &Tensor;
    /// The mean loss of the step from those slots' values.
    fn loss(&self, out: &[f32]) -> f64;
    /// GPU bytes of the stage's activations and scratch.
    fn bytes(&self) -> u64;
}

/// Stage 2: KL(teacher || student) through the whole student.
struct KlStage<'a> {
    s: &'a Setup<'a>,
    acts: TrainActs,
    grads: &'a Decoder,
    teacher_cache: KvCache,
    kl: KlWorkspace,
    dhidden: Tensor,
    loss_rows: Tensor,
    red: Reducer,
    scale: f32,
    /// micro-batches per step
    passes: usize,
}

impl Stage for KlStage<'_> {
    fn micro(&mut self, b: &mut Batch, ids: &Tensor, ids_host: &[u32], slot: usize) -> Result<()> {
        let (s, t) = (self.s, ids.numel());
        let seqs = self.acts.seqs;
        let ht = s.teacher.forward(b, &self.teacher_cache, ids, 0, ForwardOpts { seqs, ..Default::default() })?;
        training::forward(b, s.student, ids, &self.acts)?;
        let out = KlOut { loss_rows: &self.loss_rows, dhs: Some(&self.dhidden), dws: Some(&self.grads.lm_head) };
        kl::kl_lm_head(b, &self.acts.hidden, &s.student.lm_head, &ht, &s.teacher.lm_head, &self.kl, out, self.scale);
        optim::sum(b, &[&self.loss_rows], 1.0, &self.red, slot);
        training::backward(b, s.student, &self.acts, ids_host, &self.dhidden, self.grads)?;
        debug_assert_eq!(t, seqs * self.acts.t);
        Ok(())
    }

    fn loss_slots(&self) -> &Tensor {
        &self.red.out
    }

    fn loss(&self, out: &[f32]) -> f64 {
        let total: f64 = (0..self.passes).map(|j| out[4 * j] as f64).sum();
        total / (self.passes * self.acts.seqs * self.acts.t) as f64
    }

    fn bytes(&self) -> u64 {
        let kl = (2 * self.kl.rows * self.kl.vocab + 3 * self.kl.rows * self.kl.dim) * 4;
        self.acts.bytes() + kl as u64 + self.dhidden.bytes() + self.loss_rows.bytes()
    }
}

/// Stage 1: every converted layer, fed the teacher's normed hidden state, matches the
/// teacher's attention output (MSE); the layers are independent.
struct AlignStage<'a> {
    s: &'a Setup<'a>,
    layers: Vec<usize>,
    grads: Vec<GdnParams>,
    acts: GdnActs,
    xs: Vec<Tensor>,
    ys: Vec<Tensor>,
    out: Tensor,
    dout: Tensor,
    cache: KvCache,
    red: Reducer,
    scale: f32,
    /// micro-batches per step, sequences per micro-batch
    passes: usize,
    seqs: usize,
    t: usize,
}

impl Stage for AlignStage<'_> {
    fn micro(&mut self, b: &mut Batch, ids: &Tensor, _ids_host: &[u32], slot: usize) -> Result<()> {
        let (layers, xs, ys) = (&self.layers, &self.xs, &self.ys);
        let mut hook = |b: &mut Batch, a: AttnActs| -> Result<()> {
            if let Some(k) = layers.iter().position(|&l| l == a.layer) {
                b.copy(a.normed, 0, &xs[k], 0, xs[k].bytes());
                b.copy(a.output, 0, &ys[k], 0, ys[k].bytes());
            }
            Ok(())
        };
        let fo = ForwardOpts { hook: Some(&mut hook), seqs: self.seqs, ..Default::default() };
        self.s.teacher.forward(b, &self.cache, ids, 0, fo)?;
        let shape = (self.seqs, self.t);
        for (k, &l) in self.layers.iter().enumerate() {
            let Mixer::Gdn(p) = &self.s.student.layers[l].mixer else { bail!("layer {l} is not a GDN layer") };
            gdn::gdn_forward(b, p, &self.xs[k], shape, &self.acts, &self.out)?;
            optim::mse_scaled(b, &self.out, &self.ys[k], &self.dout, &self.red, slot * self.layers.len() + k, self.scale);
            gdn::gdn_backward(b, p, &self.xs[k], shape, &self.acts, &self.dout, &self.grads[k], None, true)?;
        }
        Ok(())
    }

    fn loss_slots(&self) -> &Tensor {
        &self.red.out
    }

    fn loss(&self, out: &[f32]) -> f64 {
        let n = (self.seqs * self.t * self.s.teacher.cfg.hidden_size) as f64;
        let total: f64 = (0..self.passes * self.layers.len()).map(|j| out[4 * j] as f64 / n).sum();
        total / (self.passes * self.layers.len()) as f64
    }

    fn bytes(&self) -> u64 {
        self.xs.iter().chain(&self.ys).chain([&self.out, &self.dout]).map(|t| t.bytes()).sum::<u64>() + self.acts.bytes()
    }
}

/// Run a distillation stage (see the module docs). The student's GPU weights are updated
/// in place; with `out`, checkpoints (and curve.csv / curve.svg) are written there. A
/// `resume` whose run had other options or inputs is refused (it would not continue it).
pub fn distill(s: &Setup, opts: &DistillOpts, resume: Option<ResumeState>, hooks: &mut Hooks) -> Result<DistillReport> {
    opts.check()?;
    if let Some(r) = &resume {
        check_options(&r.opts, opts)?;
        r.recorded.check(&Recorded::of(s))?;
        let now = s.gpu.info.precision;
        ensure!(
            r.precision == now,
            "--resume: the checkpoint was trained at --precision {}, this run would use {}: resume at {} (an exact continuation needs the same arithmetic)",
            r.precision.name(),
            now.name(),
            r.precision.name()
        );
    }
    let g = s.gpu;
    let (t, batch, seqs) = (opts.seq_len, opts.batch, opts.micro());
    let (passes, rows) = (batch / seqs, seqs * opts.seq_len);
    opts.check_context(s.student.rope.max_pos)?;
    let hyper =
        AdamW { lr: opts.lr, beta1: opts.beta1, beta2: opts.beta2, eps: 1e-8, weight_decay: opts.weight_decay, max_norm: opts.clip };
    let gdn_layers = s.config.gdn_layers();
    // gradient buffers, the optimizer's slots, and the stage's per-step work
    let grads_model = if opts.stage == 2 { Some(s.student.zeros_like(g)?) } else { None };
    let (mut stage, mut opt): (Box<dyn Stage + '_>, Optimizer) = match &grads_model {
        Some(gm) => {
            let params: Vec<(String, Tensor, Tensor, usize)> = s
                .student
                .params()
                .into_iter()
                .zip(gm.params())
                .map(|((n, p), (_, gr))| {
                    let group = if n.contains(".attn.") || n.contains(".self_attn.") { 0 } else { 1 };
                    (n, p.clone(), gr.clone(), group)
                })
                .collect();
            let st = KlStage {
                s,
                acts: TrainActs::new(g, s.student, seqs, t, opts.recompute)?,
                grads: gm,
                teacher_cache: s.teacher.kv_cache(g, rows)?,
                kl: KlWorkspace::new(g, s.student.cfg.vocab_size, s.student.cfg.hidden_size, rows, KL_DEFAULT_BUDGET)?,
                dhidden: g.zeros(&[rows, s.student.cfg.hidden_size])?,
                loss_rows: g.zeros(&[rows])?,
                red: Reducer::new(g, rows, passes)?,
                scale: 1.0 / (t * batch) as f32,
                passes,
            };
            (Box::new(st), Optimizer::new(g, params, hyper)?)
        }
        None => {
            ensure!(!gdn_layers.is_empty(), "stage 1 trains converted layers, but the student has none");
            let mut params = vec![];
            let mut grads = vec![];
            for &l in &gdn_layers {
                let Mixer::Gdn(p) = &s.student.layers[l].mixer else { bail!("layer {l} is not a GDN layer") };
                let gr = p.zeros_like(g)?;
                for ((q, pt), gt) in checkpoint::GDN_PARAMS.iter().zip(p.tensors()).zip(gr.tensors()) {
                    params.push((checkpoint::gdn_name(l, q.name), pt.clone(), gt.clone(), 0));
                }
                grads.push(gr);
            }
            let Mixer::Gdn(p0) = &s.student.layers[gdn_layers[0]].mixer else { unreachable!() };
            let d = s.student.cfg.hidden_size;
            let n = gdn_layers.len();
            let st = AlignStage {
                s,
                acts: GdnActs::new(g, p0.dims(), (seqs, t), true)?,
                xs: (0..n).map(|_| g.zeros(&[rows, d])).collect::<Result<_>>()?,
                ys: (0..n).map(|_| g.zeros(&[rows, d])).collect::<Result<_>>()?,
                out: g.zeros(&[rows, d])?,
                dout: g.zeros(&[rows, d])?,
                cache: s.teacher.kv_cache(g, rows)?,
                red: Reducer::new(g, rows * d, passes * n)?,
                scale: 2.0 / (t * d * batch) as f32,
                passes,
                seqs,
                t,
                layers: gdn_layers.clone(),
                grads,
            };
            (Box::new(st), Optimizer::new(g, params, hyper)?)
        }
    };
    // gradient and both AdamW moments of every trained parameter, plus the stage's buffers
    let train_bytes = opt.slots.iter().map(|sl| 3 * sl.param.bytes()).sum::<u64>() + stage.bytes();

    let total = opts.steps();
    let warmup = opts.warmup_steps();
    let (mut step0, mut curve, mut initial_ppl) = (0, vec![], None);
    if let Some(r) = resume {
        ensure!(r.step <= total, "the checkpoint is at step {}, past this run's {total} steps", r.step);
        opt.load_state(g, &r.optimizer, r.step as u32)?;
        step0 = r.step;
        curve = r.curve;
        initial_ppl = r.initial_ppl;
    } else if !s.eval.is_empty() {
        initial_ppl = Some(perplexity_windows(g, s.student, s.eval)?.ppl);
    }
    let train_s = curve.last().map(|c: &CurvePoint| c.seconds).unwrap_or(0.0);
    let mut reached = false;
    let mut last_saved: Option<usize> = None;
    let tokens_per_step = t * batch;
    // Steps are pipelined: the host records and submits step n + 1 while the GPU runs step
    // n, then reads step n's loss and gradient norm (copied at the end of each step, read
    // without waiting for later work). A step after which the run evaluates, saves, may
    // stop for a test hook, or ends is read before the next one is recorded, so a
    // checkpoint holds exactly the parameters of the steps in its curve.
    let mut pending: Option<(usize, f32, PendingRead)> = None;
    // training seconds, brought up to date when a step is read (evaluation and saving not counted)
    let mut clock = (train_s, Instant::now());
    // the curve point of step n (0-based) from its read
    let read_step = |stage: &dyn Stage, clock: &mut (f64, Instant), n: usize, lr: f32, read: PendingRead, last_saved: Option<usize>| {
        let vals = read.wait(g)?;
        let (loss, gn) = (stage.loss(&vals[0]), (vals[1][0] as f64).sqrt());
        *clock = (clock.0 + clock.1.elapsed().as_secs_f64(), Instant::now());
        if !loss.is_finite() || !gn.is_finite() {
            let kept = match (last_saved, s.out) {
                (Some(k), Some(dir)) => format!("the last good checkpoint (step {k}) is in {}", dir.display()),
                (None, Some(dir)) if step0 > 0 => format!("the last good checkpoint (step {step0}) is in {}", dir.display()),
                _ => "no checkpoint was written yet".to_string(),
            };
            bail!("stage {} step {}: the loss became {loss} (gradient norm {gn}); stopping — {kept}. Try a lower --lr.", opts.stage, n + 1);
        }
        let tokens = (n + 1) * tokens_per_step;
        Ok(CurvePoint { step: n + 1, tokens, loss, lr: lr as f64, grad_norm: gn, eval_ppl: None, seconds: clock.0 })
    };
    for step in step0..total {
        let lr = cosine_lr(step, total, warmup, opts.lr, opts.min_lr_ratio);
        let lr_rest = cosine_lr(step, total, warmup, opts.lr_rest, opts.min_lr_ratio);
        let mut b = g.batch();
        opt.zero_grad(&mut b);
        for j in 0..passes {
            let first = step * batch + j * seqs;
            let mut ids_host = Vec::with_capacity(rows);
            for i in first..first + seqs {
                s.data.sequence(i, &mut ids_host)?;
            }
            let ids = s.student.upload_ids(g, &ids_host)?;
            stage.micro(&mut b, &ids, &ids_host, j)?;
            // submit per micro-batch: keeps command buffers (and uniform pools) small
            b.submit();
            b = g.batch();
        }
        opt.step(&mut b, &[lr, lr_rest]);
        let read = g.submit_and_read(b, &[stage.loss_slots(), opt.grad_norm_sq()])?;
        if let Some((n, lr_n, r)) = pending.take() {
            curve.push(read_step(&*stage, &mut clock, n, lr_n, r, last_saved)?);
            if let Some(p) = hooks.progress.as_deref_mut() {
                p(curve.last().expect("just pushed"));
            }
        }
        let last = step + 1 == total;
        let eval_due = last || (opts.eval_every > 0 && (step + 1) % opts.eval_every == 0);
        let save_due = opts.checkpoint_every > 0 && (step + 1) % opts.checkpoint_every == 0;
        if !(eval_due || save_due || hooks.kill_after == Some(step + 1)) {
            pending = Some((step, lr, read));
            continue;
        }
        let mut point = read_step(&*stage, &mut clock, step, lr, read, last_saved)?;
        if eval_due && !s.eval.is_empty() {
            let ppl = perplexity_windows(g, s.student, s.eval)?.ppl;
            point.eval_ppl = Some(ppl);
            reached = opts.target_ppl.is_some_and(|tp| ppl <= tp);
        }
        curve.push(point);
        let ck_due = last || reached || save_due;
        if let (true, Some(dir)) = (ck_due, s.out) {
            save(s, opts, &opt, step + 1, &curve, initial_ppl, dir)?;
            last_saved = Some(step + 1);
        }
        clock.1 = Instant::now();
        if let Some(p) = hooks.progress.as_deref_mut() {
            p(curve.last().expect("just pushed"));
        }
        if hooks.kill_after == Some(step + 1) && !last {
            bail!("killed after step {} (test hook)", step + 1);
        }
        if reached {
            break;
        }
    }
    let train_s = clock.0;
    let steps = curve.last().map(|c| c.step).unwrap_or(0);
    let tokens = steps * tokens_per_step;
    let final_ppl = curve.iter().rev().find_map(|c| c.eval_ppl);
    let tokens_per_s =
        if train_s > 0.0 { (steps - step0) as f64 * tokens_per_step as f64 / (train_s - curve_seconds_at(&curve, step0)) } else { 0.0 };
    let steady_tokens_per_s = match curve.get(step0..) {
        Some([first, .., last]) if last.seconds > first.seconds => {
            Some((last.step - first.step) as f64 * tokens_per_step as f64 / (last.seconds - first.seconds))
        }
        _ => None,
    };
    Ok(DistillReport {
        steady_tokens_per_s,
        opts: opts.clone(),
        steps,
        tokens,
        curve,
        initial_ppl,
        final_ppl,
        tokens_per_s,
        train_seconds: train_s,
        reached_target: reached,
        train_buffer_bytes: train_bytes,
    })
}

fn curve_seconds_at(curve: &[CurvePoint], step: usize) -> f64 {
    curve.iter().find(|c| c.step == step).map(|c| c.seconds).unwrap_or(0.0)
}

/// The curve as CSV: step, tokens, loss, lr, grad_norm, eval_ppl, seconds.
pub fn curve_csv(curve: &[CurvePoint]) -> String {
    let mut s = String::from("step,tokens,loss,lr,grad_norm,eval_ppl,seconds\n");
    for c in curve {
        let ppl = c.eval_ppl.map(|p| format!("{p:.4}")).unwrap_or_default();
        s += &format!("{},{},{:.6},{:.3e},{:.4},{ppl},{:.3}\n", c.step, c.tokens, c.loss, c.lr, c.grad_norm, c.seconds);
    }
    s
}

/// Training loss and evaluation perplexity against tokens, as an SVG line chart.
pub fn curve_svg(title: &str, curve: &[CurvePoint], initial_ppl: Option<f64>) -> String {
    let loss: Vec<(f64, f64)> = curve.iter().map(|c| (c.tokens as f64, c.loss)).collect();
    let mut ppl: Vec<(f64, f64)> = initial_ppl.map(|p| vec![(0.0, p)]).unwrap_or_default();
    ppl.extend(curve.iter().filter_map(|c| c.eval_ppl.map(|p| (c.tokens as f64, p))));
    crate::report::line_chart_svg(title, "training tokens", &[("train loss".into(), loss), ("eval perplexity".into(), ppl)], true)
}

fn save(
    s: &Setup,
    opts: &DistillOpts,
    opt: &Optimizer,
    step: usize,
    curve: &[CurvePoint],
    initial_ppl: Option<f64>,
    dir: &Path,
) -> Result<()> {
    let mut report = s.meta.clone();
    if !report.is_object() {
        report = json!({});
    }
    report["train"] = json!({
        "stage": opts.stage, "step": step, "tokens": step * opts.seq_len * opts.batch,
        "opts": opts, "curve": curve, "initial_ppl": initial_ppl, "inputs": Recorded::of(s),
        "precision": s.gpu.precision_report(),
    });
    let ck = Checkpoint {
        config: s.config.clone(),
        tensors: s.student.to_host(s.gpu)?,
        tokenizer: s.tokenizer.cloned(),
        report,
        optimizer: Some(opt.state(s.gpu)?),
        files: vec![
            ("curve.csv".into(), curve_csv(curve).into_bytes()),
            ("curve.svg".into(), curve_svg(&format!("stage {} distillation", opts.stage), curve, initial_ppl).into_bytes()),
        ],
    };
    checkpoint::save_checkpoint(dir, &ck).with_context(|| format!("writing the checkpoint at step {step}"))
}

/// The resume state of a checkpoint a previous `distill` wrote, refused where `opts` change
/// its run (its inputs are compared when [`distill`] starts).
pub fn resume_state(ck: &Checkpoint, opts: &DistillOpts) -> Result<ResumeState> {
    let train = ck.report.get("train").ok_or_else(|| anyhow::anyhow!("the checkpoint has no training state (report.json 'train')"))?;
    let saved: DistillOpts =
        serde_json::from_value(train["opts"].clone()).context("the checkpoint's training options (report.json train.opts)")?;
    check_options(&saved, opts)?;
    let Some(inputs) = train.get("inputs") else {
        bail!(
            "--resume: the checkpoint was written before taylorcal recorded a run's training text, evaluation text and \
             teacher (report.json train.inputs), so resuming cannot check that this run reads the same ones; continue \
             from it as a new run instead (--student pointing at it, another --out)"
        );
    };
    let recorded: Recorded = serde_json::from_value(inputs.clone()).context("the checkpoint's inputs (report.json train.inputs)")?;
    let step = train["step"].as_u64().ok_or_else(|| anyhow::anyhow!("report.json train.step missing"))? as usize;
    let curve: Vec<CurvePoint> = serde_json::from_value(train["curve"].clone()).context("report.json train.curve")?;
    let optimizer = ck.optimizer.clone().ok_or_else(|| anyhow::anyhow!("the checkpoint has no {}", checkpoint::OPTIMIZER_FILE))?;
    let precision = match train.get("precision") {
        Some(p) => serde_json::from_value(p["precision"].clone()).context("report.json train.precision.precision")?,
        None => Precision::F32,
    };
    Ok(ResumeState { step, curve, optimizer, initial_ppl: train["initial_ppl"].as_f64(), opts: saved, recorded, precision })
}
