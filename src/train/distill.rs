//! The distillation loop: stage 1 (per-layer MSE alignment over a token stream,
//! teacher-forced, only converted layers train) and stage 2 (end-to-end KL(teacher ||
//! student) on next-token distributions, every parameter trains, two learning-rate
//! groups). Both use AdamW with a global gradient-norm clip, warmup + cosine schedule,
//! gradient accumulation over `batch` sequences per step, periodic evaluation and
//! atomic checkpoints that hold the optimizer state, so a killed run resumes exactly.
use crate::data::TokenStream;
use crate::eval::perplexity_windows;
use crate::gpu::{Batch, Gpu, Tensor};
use crate::io::checkpoint::{self, Checkpoint, HybridConfig};
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
    /// Sequences per optimizer step (gradient accumulation over micro-batches of one).
    pub batch: usize,
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

impl DistillOpts {
    /// The reference's settings for a stage (learning rates, betas, clip 1.0).
    pub fn for_stage(stage: u8) -> DistillOpts {
        let (lr, beta2) = if stage == 1 { (1e-3, 0.999) } else { (1e-4, 0.95) };
        DistillOpts {
            stage,
            tokens: 1 << 20,
            seq_len: 512,
            batch: 4,
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
        self.tokens.div_ceil(self.seq_len * self.batch).max(1)
    }

    fn warmup_steps(&self) -> usize {
        self.warmup.unwrap_or((self.steps() / 20).max(1))
    }

    /// Reject options no run can use (before anything is loaded).
    pub fn check(&self) -> Result<()> {
        ensure!(self.stage == 1 || self.stage == 2, "--stage must be 1 or 2 (got {})", self.stage);
        ensure!(self.batch >= 1, "--batch must be at least 1");
        ensure!(self.seq_len >= 2, "--seq-len must be at least 2");
        ensure!(self.lr > 0.0 && self.lr.is_finite(), "--lr must be positive");
        Ok(())
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
    pub train_seconds: f64,
    /// The run stopped early because the evaluation reached `target_ppl`.
    pub reached_target: bool,
    /// Bytes of GPU buffers the run allocated for training (activations, gradients,
    /// optimizer state, scratch), on top of the two models' weights.
    pub train_buffer_bytes: u64,
}

/// Where a resumed run picks up.
pub struct ResumeState {
    pub step: usize,
    pub curve: Vec<CurvePoint>,
    pub optimizer: std::collections::HashMap<String, crate::io::HostTensor>,
    pub initial_ppl: Option<f64>,
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
}

/// The per-step work of a stage: accumulate gradients of one sequence.
trait Stage {
    fn micro(&mut self, b: &mut Batch, ids: &Tensor, ids_host: &[u32], slot: usize) -> Result<()>;
    /// The mean loss of the step from the reducer's slots.
    fn loss(&self, gpu: &Gpu) -> Result<f64>;
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
    batch: usize,
}

impl Stage for KlStage<'_> {
    fn micro(&mut self, b: &mut Batch, ids: &Tensor, ids_host: &[u32], slot: usize) -> Result<()> {
        let (s, t) = (self.s, ids.numel());
        let ht = s.teacher.forward(b, &self.teacher_cache, ids, 0, ForwardOpts::default())?;
        training::forward(b, s.student, ids, &self.acts)?;
        let out = KlOut { loss_rows: &self.loss_rows, dhs: Some(&self.dhidden), dws: Some(&self.grads.lm_head) };
        kl::kl_lm_head(b, &self.acts.hidden, &s.student.lm_head, &ht, &s.teacher.lm_head, &self.kl, out, self.scale);
        optim::sum(b, &[&self.loss_rows], 1.0, &self.red, slot);
        training::backward(b, s.student, &self.acts, ids_host, &self.dhidden, self.grads)?;
        debug_assert_eq!(t, self.acts.t);
        Ok(())
    }

    fn loss(&self, gpu: &Gpu) -> Result<f64> {
        let out = gpu.read(&self.red.out)?;
        let total: f64 = (0..self.batch).map(|j| out[4 * j] as f64).sum();
        Ok(total / (self.batch * self.acts.t) as f64)
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
    batch: usize,
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
        self.s.teacher.forward(b, &self.cache, ids, 0, ForwardOpts { hook: Some(&mut hook), ..Default::default() })?;
        for (k, &l) in self.layers.iter().enumerate() {
            let Mixer::Gdn(p) = &self.s.student.layers[l].mixer else { bail!("layer {l} is not a GDN layer") };
            gdn::gdn_forward(b, p, &self.xs[k], (1, self.t), &self.acts, &self.out)?;
            optim::mse_scaled(b, &self.out, &self.ys[k], &self.dout, &self.red, slot * self.layers.len() + k, self.scale);
            gdn::gdn_backward(b, p, &self.xs[k], (1, self.t), &self.acts, &self.dout, &self.grads[k], None, true)?;
        }
        Ok(())
    }

    fn loss(&self, gpu: &Gpu) -> Result<f64> {
        let out = gpu.read(&self.red.out)?;
        let n = (self.t * self.s.teacher.cfg.hidden_size) as f64;
        let total: f64 = (0..self.batch * self.layers.len()).map(|j| out[4 * j] as f64 / n).sum();
        Ok(total / (self.batch * self.layers.len()) as f64)
    }

    fn bytes(&self) -> u64 {
        self.xs.iter().chain(&self.ys).chain([&self.out, &self.dout]).map(|t| t.bytes()).sum::<u64>() + self.acts.bytes()
    }
}

/// Run a distillation stage (see the module docs). The student's GPU weights are updated
/// in place; with `out`, checkpoints (and curve.csv / curve.svg) are written there.
pub fn distill(s: &Setup, opts: &DistillOpts, resume: Option<ResumeState>, hooks: &mut Hooks) -> Result<DistillReport> {
    opts.check()?;
    let g = s.gpu;
    let (t, batch) = (opts.seq_len, opts.batch);
    ensure!(t <= s.student.rope.max_pos, "--seq-len {t} exceeds the model's context ({})", s.student.rope.max_pos);
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
                acts: TrainActs::new(g, s.student, t, opts.recompute)?,
                grads: gm,
                teacher_cache: s.teacher.kv_cache(g, t)?,
                kl: KlWorkspace::new(g, s.student.cfg.vocab_size, s.student.cfg.hidden_size, t, KL_DEFAULT_BUDGET)?,
                dhidden: g.zeros(&[t, s.student.cfg.hidden_size])?,
                loss_rows: g.zeros(&[t])?,
                red: Reducer::new(g, t, batch)?,
                scale: 1.0 / (t * batch) as f32,
                batch,
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
                acts: GdnActs::new(g, p0.dims(), (1, t), true)?,
                xs: (0..n).map(|_| g.zeros(&[t, d])).collect::<Result<_>>()?,
                ys: (0..n).map(|_| g.zeros(&[t, d])).collect::<Result<_>>()?,
                out: g.zeros(&[t, d])?,
                dout: g.zeros(&[t, d])?,
                cache: s.teacher.kv_cache(g, t)?,
                red: Reducer::new(g, t * d, batch * n)?,
                scale: 2.0 / (t * d * batch) as f32,
                batch,
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
    let mut train_s = curve.last().map(|c: &CurvePoint| c.seconds).unwrap_or(0.0);
    let mut reached = false;
    let mut last_saved: Option<usize> = None;
    let tokens_per_step = t * batch;
    for step in step0..total {
        let t0 = Instant::now();
        let lr = cosine_lr(step, total, warmup, opts.lr, opts.min_lr_ratio);
        let lr_rest = cosine_lr(step, total, warmup, opts.lr_rest, opts.min_lr_ratio);
        let mut b = g.batch();
        opt.zero_grad(&mut b);
        for j in 0..batch {
            let seq = s.data.get(step * batch + j);
            let ids = s.student.upload_ids(g, seq)?;
            stage.micro(&mut b, &ids, seq, j)?;
            // submit per sequence: keeps command buffers (and uniform pools) small
            b.submit();
            b = g.batch();
        }
        opt.step(&mut b, &[lr, lr_rest]);
        b.submit();
        let loss = stage.loss(g)?;
        let gn = (g.read(opt.grad_norm_sq())?[0] as f64).sqrt();
        train_s += t0.elapsed().as_secs_f64();
        let mut point = CurvePoint {
            step: step + 1,
            tokens: (step + 1) * tokens_per_step,
            loss,
            lr: lr as f64,
            grad_norm: gn,
            eval_ppl: None,
            seconds: train_s,
        };
        if !loss.is_finite() || !gn.is_finite() {
            let kept = match (last_saved, s.out) {
                (Some(k), Some(dir)) => format!("the last good checkpoint (step {k}) is in {}", dir.display()),
                (None, Some(dir)) if step0 > 0 => format!("the last good checkpoint (step {step0}) is in {}", dir.display()),
                _ => "no checkpoint was written yet".to_string(),
            };
            bail!(
                "stage {} step {}: the loss became {loss} (gradient norm {gn}); stopping — {kept}. Try a lower --lr.",
                opts.stage,
                step + 1
            );
        }
        let last = step + 1 == total;
        let eval_due = last || (opts.eval_every > 0 && (step + 1) % opts.eval_every == 0);
        if eval_due && !s.eval.is_empty() {
            let ppl = perplexity_windows(g, s.student, s.eval)?.ppl;
            point.eval_ppl = Some(ppl);
            reached = opts.target_ppl.is_some_and(|tp| ppl <= tp);
        }
        curve.push(point);
        let ck_due = last || reached || (opts.checkpoint_every > 0 && (step + 1) % opts.checkpoint_every == 0);
        if let (true, Some(dir)) = (ck_due, s.out) {
            save(s, opts, &opt, step + 1, &curve, initial_ppl, dir)?;
            last_saved = Some(step + 1);
        }
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
    let steps = curve.last().map(|c| c.step).unwrap_or(0);
    let tokens = steps * tokens_per_step;
    let final_ppl = curve.iter().rev().find_map(|c| c.eval_ppl);
    let tokens_per_s =
        if train_s > 0.0 { (steps - step0) as f64 * tokens_per_step as f64 / (train_s - curve_seconds_at(&curve, step0)) } else { 0.0 };
    Ok(DistillReport {
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
        "opts": opts, "curve": curve, "initial_ppl": initial_ppl,
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

/// The resume state of a checkpoint a previous `distill` wrote with the same options.
pub fn resume_state(ck: &Checkpoint, opts: &DistillOpts) -> Result<ResumeState> {
    let train = ck.report.get("train").ok_or_else(|| anyhow::anyhow!("the checkpoint has no training state (report.json 'train')"))?;
    let saved: DistillOpts =
        serde_json::from_value(train["opts"].clone()).context("the checkpoint's training options (report.json train.opts)")?;
    for (what, same) in [
        ("stage", saved.stage == opts.stage),
        ("seq-len", saved.seq_len == opts.seq_len),
        ("batch", saved.batch == opts.batch),
        ("seed", saved.seed == opts.seed),
        ("tokens", saved.tokens == opts.tokens),
        ("lr", saved.lr == opts.lr && saved.lr_rest == opts.lr_rest),
    ] {
        ensure!(same, "--resume: the checkpoint was trained with another --{what} ({saved:?})");
    }
    let step = train["step"].as_u64().ok_or_else(|| anyhow::anyhow!("report.json train.step missing"))? as usize;
    let curve: Vec<CurvePoint> = serde_json::from_value(train["curve"].clone()).context("report.json train.curve")?;
    let optimizer = ck.optimizer.clone().ok_or_else(|| anyhow::anyhow!("the checkpoint has no {}", checkpoint::OPTIMIZER_FILE))?;
    Ok(ResumeState { step, curve, optimizer, initial_ppl: train["initial_ppl"].as_f64() })
}
