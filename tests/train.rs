//! Distillation on tiny random models: the whole student's backward (KL through the tied or
//! untied LM head, final norm, MLPs, softmax attention with RoPE/GQA/biases, GDN blocks,
//! embeddings) against central finite differences of an independent f64 forward; a
//! stage 2 and a stage 1 run lower their losses; a killed run resumed from its checkpoint
//! ends with bit-identical weights; a NaN loss stops the run and keeps the checkpoint.
mod common;
use common::tiny::*;
use common::*;
use std::collections::HashMap;
use taylorcal::calibrate::init::init_student;
use taylorcal::data::TokenStream;
use taylorcal::io::checkpoint::{self, Checkpoint, HybridConfig};
use taylorcal::io::{Arch, HostTensor, ModelFiles};
use taylorcal::nn::decoder::{Decoder, ForwardOpts};
use taylorcal::nn::reference;
use taylorcal::nn::training::{self, TrainActs};
use taylorcal::ops::kl::{self, KlOut, KlWorkspace, KL_DEFAULT_BUDGET};
use taylorcal::train::distill::{self, DistillOpts, Hooks, Setup};

fn tiny_pair(arch: Arch, tied: bool, keep: Vec<usize>, seed: u64) -> (ModelFiles, Checkpoint) {
    let mut cfg = tiny_config(arch);
    cfg.tie_word_embeddings = tied;
    cfg.num_hidden_layers = 3;
    let mut tensors = random_tensors(&cfg, seed);
    if tied {
        tensors.remove("lm_head.weight");
    }
    let hc = HybridConfig::new(cfg.clone(), keep).unwrap();
    let mut student = init_student(&hc, &tensors, seed + 1).unwrap();
    // a student that differs from its teacher everywhere (not only in the GDN layers)
    let mut r = rng(seed + 2);
    let mut names: Vec<String> = student.keys().cloned().collect();
    names.sort();
    for n in names {
        for x in student.get_mut(&n).unwrap().data.iter_mut() {
            *x += randn(&mut r, 1, 0.05)[0];
        }
    }
    let files = ModelFiles { config: cfg, tensors, tokenizer: None, source: "tiny".into() };
    let ck = Checkpoint { config: hc, tensors: student, tokenizer: None, report: serde_json::Value::Null, optimizer: None, files: vec![] };
    (files, ck)
}

fn toks(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut r = rng(seed);
    (0..n).map(|_| (randn(&mut r, 1, 1.0)[0].abs() * vocab as f32) as u32 % vocab as u32).collect()
}

/// f64 KL(teacher || student) averaged over tokens, from the independent reference forward.
fn kl_f64(teacher: &[f64], ck: &Checkpoint, ids: &[u32]) -> f64 {
    let s = reference::hybrid_logits(ck, ids);
    let v = ck.config.base.vocab_size;
    let mut total = 0.0;
    for i in 0..ids.len() {
        let lt = taylorcal::ops::nll::cpu::log_softmax(&teacher[i * v..(i + 1) * v]);
        let ls = taylorcal::ops::nll::cpu::log_softmax(&s[i * v..(i + 1) * v]);
        total += lt.iter().zip(&ls).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
    }
    total / ids.len() as f64
}

/// GPU loss and every parameter gradient of one sequence.
fn gpu_grads(files: &ModelFiles, ck: &Checkpoint, ids: &[u32]) -> (f64, HashMap<String, HostTensor>) {
    gpu_grads_with(files, ck, ids, false)
}

fn gpu_grads_with(files: &ModelFiles, ck: &Checkpoint, ids: &[u32], recompute: bool) -> (f64, HashMap<String, HostTensor>) {
    let g = gpu();
    let t = ids.len();
    let teacher = Decoder::new(g, files).unwrap();
    let student = Decoder::from_checkpoint(g, ck).unwrap();
    let grads = student.zeros_like(g).unwrap();
    let acts = TrainActs::new(g, &student, t, recompute).unwrap();
    let ws = KlWorkspace::new(g, student.cfg.vocab_size, student.cfg.hidden_size, t, KL_DEFAULT_BUDGET).unwrap();
    let (rows, dh) = (g.zeros(&[t]).unwrap(), g.zeros(&[t, student.cfg.hidden_size]).unwrap());
    let tid = g.upload_u32(&[t], ids).unwrap();
    let cache = teacher.kv_cache(g, t).unwrap();
    g.run(|b| {
        let ht = teacher.forward(b, &cache, &tid, 0, ForwardOpts::default())?;
        training::forward(b, &student, &tid, &acts)?;
        let out = KlOut { loss_rows: &rows, dhs: Some(&dh), dws: Some(&grads.lm_head) };
        kl::kl_lm_head(b, &acts.hidden, &student.lm_head, &ht, &teacher.lm_head, &ws, out, 1.0 / t as f32);
        training::backward(b, &student, &acts, ids, &dh, &grads)
    })
    .unwrap();
    let l = g.read(&rows).unwrap().iter().map(|&x| x as f64).sum::<f64>() / t as f64;
    (l, grads.to_host(g).unwrap())
}

fn check_gradients(arch: Arch, tied: bool, keep: Vec<usize>, seed: u64) {
    let (files, ck) = tiny_pair(arch, tied, keep, seed);
    let ids = toks(21, files.config.vocab_size, seed + 5);
    let teacher_logits = reference::forward_logits(&files, &ids);
    let (gl, grads) = gpu_grads(&files, &ck, &ids);
    let l0 = kl_f64(&teacher_logits, &ck, &ids);
    assert!((gl - l0).abs() <= 1e-4 * l0.abs().max(1e-3), "GPU loss {gl} vs f64 {l0}");
    assert!(l0 > 1e-3, "the student should differ from the teacher (KL {l0})");
    let mut r = rng(seed + 9);
    let mut worst = (0.0f64, String::new());
    let mut names: Vec<&String> = ck.tensors.keys().collect();
    names.sort();
    assert_eq!(names.len(), grads.len(), "a gradient for every parameter");
    for name in names {
        let gt = &grads[name];
        let scale = gt.data.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64)).max(1e-6);
        // the largest entry and two random ones
        let imax = (0..gt.numel()).max_by(|&a, &b| gt.data[a].abs().total_cmp(&gt.data[b].abs())).unwrap();
        let picks = [
            imax,
            (randn(&mut r, 1, 1.0)[0].abs() * 1e6) as usize % gt.numel(),
            (randn(&mut r, 1, 1.0)[0].abs() * 1e6) as usize % gt.numel(),
        ];
        for i in picks {
            let mut ckp = Checkpoint {
                tensors: ck.tensors.clone(),
                config: ck.config.clone(),
                tokenizer: None,
                report: serde_json::Value::Null,
                optimizer: None,
                files: vec![],
            };
            let x = ckp.tensors[name].data[i];
            let h = 1e-3f32.max(x.abs() * 1e-3);
            ckp.tensors.get_mut(name).unwrap().data[i] = x + h;
            let (xp, lp) = (ckp.tensors[name].data[i] as f64, kl_f64(&teacher_logits, &ckp, &ids));
            ckp.tensors.get_mut(name).unwrap().data[i] = x - h;
            let (xm, lm) = (ckp.tensors[name].data[i] as f64, kl_f64(&teacher_logits, &ckp, &ids));
            let fd = (lp - lm) / (xp - xm);
            let err = (gt.data[i] as f64 - fd).abs() / scale;
            if err > worst.0 {
                worst = (err, format!("{name}[{i}]: gpu {} fd {fd}", gt.data[i]));
            }
        }
    }
    eprintln!("{arch:?} tied={tied}: worst gradient error {:.2e} at {}", worst.0, worst.1);
    assert!(worst.0 <= 2e-3, "gradient vs finite differences: {:.2e} at {}", worst.0, worst.1);
}

#[test]
fn student_gradients_match_finite_differences_tied_llama() {
    // layer 1 softmax attention, layers 0 and 2 GDN; tied embeddings / LM head
    check_gradients(Arch::Llama, true, vec![1], 40);
}

#[test]
fn student_gradients_match_finite_differences_untied_qwen2_with_biases() {
    check_gradients(Arch::Qwen2, false, vec![0], 50);
}

#[test]
fn recomputing_activations_gives_the_same_gradients() {
    let (files, ck) = tiny_pair(Arch::Qwen2, false, vec![1], 45);
    let ids = toks(19, files.config.vocab_size, 46);
    let (l0, g0) = gpu_grads_with(&files, &ck, &ids, false);
    let (l1, g1) = gpu_grads_with(&files, &ck, &ids, true);
    assert_eq!(l0, l1);
    for (n, t) in &g0 {
        assert_eq!(t.data, g1[n].data, "{n}");
    }
}

fn setup_run<'a>(
    teacher: &'a Decoder,
    student: &'a Decoder,
    ck: &'a Checkpoint,
    data: &'a TokenStream,
    eval: &'a [&'a [u32]],
    out: Option<&'a std::path::Path>,
) -> Setup<'a> {
    Setup { gpu: gpu(), teacher, student, config: &ck.config, tokenizer: None, data, eval, out, meta: serde_json::json!({}) }
}

fn small_opts(stage: u8) -> DistillOpts {
    let mut o = DistillOpts::for_stage(stage);
    o.tokens = 6 * 2 * 24;
    o.seq_len = 24;
    o.batch = 2;
    o.seed = 3;
    o.lr = if stage == 1 { 3e-3 } else { 1e-3 };
    o.lr_rest = 3e-4;
    o
}

#[test]
fn stage2_and_stage1_lower_their_losses() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![1], 60);
    let g = gpu();
    let teacher = Decoder::new(g, &files).unwrap();
    let ids = toks(24 * 8, files.config.vocab_size, 61);
    let data = TokenStream::new(&ids, 24, 3).unwrap();
    let eval_ids = toks(48, files.config.vocab_size, 62);
    let eval: Vec<&[u32]> = eval_ids.chunks(24).collect();
    for stage in [2u8, 1] {
        let student = Decoder::from_checkpoint(g, &ck).unwrap();
        let s = setup_run(&teacher, &student, &ck, &data, &eval, None);
        let mut o = small_opts(stage);
        o.tokens *= 3;
        if stage == 1 {
            // random GDN layers against a random teacher's attention: a larger step
            o.lr = 2e-2;
        }
        let rep = distill::distill(&s, &o, None, &mut Hooks::default()).unwrap();
        let first = rep.curve.first().unwrap().loss;
        let last = rep.curve.last().unwrap().loss;
        eprintln!("stage {stage}: loss {first:.5} -> {last:.5}, eval ppl {:?} -> {:?}", rep.initial_ppl, rep.final_ppl);
        assert!(rep.curve.iter().all(|c| c.loss.is_finite()));
        assert!(last < 0.8 * first, "stage {stage}: loss {first} -> {last}");
        if stage == 2 {
            // every sequence of an epoch is seen, and the KL is what the f64 reference says
            let l0 = kl_f64(&reference::forward_logits(&files, data.get(0)), &ck, data.get(0));
            let l1 = kl_f64(&reference::forward_logits(&files, data.get(1)), &ck, data.get(1));
            assert!((first - (l0 + l1) / 2.0).abs() < 1e-4 * first, "first step loss {first} vs f64 {}", (l0 + l1) / 2.0);
        }
    }
}

#[test]
fn a_killed_run_resumes_to_the_same_weights() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![0], 70);
    let g = gpu();
    let teacher = Decoder::new(g, &files).unwrap();
    let ids = toks(24 * 5, files.config.vocab_size, 71);
    let data = TokenStream::new(&ids, 24, 5).unwrap();
    let eval_ids = toks(24, files.config.vocab_size, 72);
    let eval: Vec<&[u32]> = vec![&eval_ids];
    let dir = tempfile::tempdir().unwrap();
    for stage in [2u8, 1] {
        let mut o = small_opts(stage);
        o.checkpoint_every = 2;
        o.eval_every = 3;
        let total = o.steps();
        // straight run
        let straight = Decoder::from_checkpoint(g, &ck).unwrap();
        let rep_a = distill::distill(&setup_run(&teacher, &straight, &ck, &data, &eval, None), &o, None, &mut Hooks::default()).unwrap();
        let want = straight.to_host(g).unwrap();
        // killed after a random step past the first checkpoint, then resumed from disk
        let kill = 3 + (rng(stage as u64).random_range(0..(total - 4)));
        let out = dir.path().join(format!("run{stage}"));
        let first = Decoder::from_checkpoint(g, &ck).unwrap();
        let err = distill::distill(
            &setup_run(&teacher, &first, &ck, &data, &eval, Some(&out)),
            &o,
            None,
            &mut Hooks { progress: None, kill_after: Some(kill) },
        )
        .unwrap_err();
        assert!(format!("{err}").contains("killed"), "{err}");
        let saved = checkpoint::load_checkpoint(&out).unwrap();
        let state = distill::resume_state(&saved, &o).unwrap();
        assert_eq!(state.step, kill / 2 * 2, "the last checkpoint before the kill");
        let resumed = Decoder::from_checkpoint(g, &saved).unwrap();
        let rep_b =
            distill::distill(&setup_run(&teacher, &resumed, &saved, &data, &eval, Some(&out)), &o, Some(state), &mut Hooks::default())
                .unwrap();
        let got = resumed.to_host(g).unwrap();
        for (name, t) in &want {
            assert_eq!(t.data, got[name].data, "stage {stage}: {name} differs after resume (killed after step {kill} of {total})");
        }
        assert_eq!(rep_a.curve.len(), rep_b.curve.len());
        for (a, b) in rep_a.curve.iter().zip(&rep_b.curve) {
            assert_eq!((a.step, a.loss, a.eval_ppl), (b.step, b.loss, b.eval_ppl), "stage {stage}: curves differ");
        }
        // the final checkpoint holds the final weights and the curve files
        let fin = checkpoint::load_checkpoint(&out).unwrap();
        assert_eq!(fin.tensors[&"model.norm.weight".to_string()].data, want["model.norm.weight"].data);
        let csv = std::fs::read_to_string(out.join("curve.csv")).unwrap();
        assert_eq!(csv.lines().count(), total + 1, "{csv}");
        assert!(std::fs::read_to_string(out.join("curve.svg")).unwrap().contains("<polyline"));
    }
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![0], 80);
    let g = gpu();
    let teacher = Decoder::new(g, &files).unwrap();
    let ids = toks(24 * 4, files.config.vocab_size, 81);
    let data = TokenStream::new(&ids, 24, 5).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let student = Decoder::from_checkpoint(g, &ck).unwrap();
    let mut o = small_opts(2);
    o.checkpoint_every = 1;
    // after step 2 (and its checkpoint) a weight turns into NaN, as a diverging run would
    let nan = vec![f32::NAN; student.norm.numel()];
    let mut poison = |c: &distill::CurvePoint| {
        if c.step == 2 {
            g.write(&student.norm, &nan);
        }
    };
    let err = distill::distill(
        &setup_run(&teacher, &student, &ck, &data, &[], Some(&out)),
        &o,
        None,
        &mut Hooks { progress: Some(&mut poison), kill_after: None },
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("step 3: the loss became NaN") && msg.contains("last good checkpoint (step 2)"), "{msg}");
    let saved = checkpoint::load_checkpoint(&out).unwrap();
    assert_eq!(saved.report["train"]["step"], 2);
    assert!(saved.tensors.values().all(|t| t.data.iter().all(|x| x.is_finite())), "the kept checkpoint is finite");
}

use rand::Rng;
