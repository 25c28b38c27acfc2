//! The student's training pass (src/nn/training.rs) on tiny random models: the whole
//! backward (KL through the tied or untied LM head, final norm, MLPs, softmax attention
//! with RoPE/GQA/biases, GDN blocks, embeddings) against central finite differences of an
//! independent f64 forward, and recomputed activations giving the same gradients.
use crate::common::student::{bare_checkpoint, kl_f64, tiny_pair, toks};
use crate::common::*;
use std::collections::HashMap;
use taylorcal::io::checkpoint::Checkpoint;
use taylorcal::io::{Arch, HostTensor, ModelFiles};
use taylorcal::nn::decoder::{Decoder, ForwardOpts};
use taylorcal::nn::reference;
use taylorcal::nn::training::{self, TrainActs};
use taylorcal::ops::kl::{self, KlOut, KlWorkspace, KL_DEFAULT_BUDGET};

/// GPU loss and every parameter gradient of one sequence.
fn gpu_grads(files: &ModelFiles, ck: &Checkpoint, ids: &[u32]) -> (f64, HashMap<String, HostTensor>) {
    gpu_grads_with(files, ck, ids, 1, false)
}

/// The mean loss and its gradients over `seqs` sequences (`ids`, one after the other) in
/// one forward and backward.
fn gpu_grads_with(files: &ModelFiles, ck: &Checkpoint, ids: &[u32], seqs: usize, recompute: bool) -> (f64, HashMap<String, HostTensor>) {
    let g = gpu();
    let t = ids.len();
    let teacher = Decoder::new(g, files).unwrap();
    let student = Decoder::from_checkpoint(g, ck).unwrap();
    let grads = student.zeros_like(g).unwrap();
    let acts = TrainActs::new(g, &student, seqs, t / seqs, recompute).unwrap();
    let ws = KlWorkspace::new(g, student.cfg.vocab_size, student.cfg.hidden_size, t, KL_DEFAULT_BUDGET).unwrap();
    let (rows, dh) = (g.zeros(&[t]).unwrap(), g.zeros(&[t, student.cfg.hidden_size]).unwrap());
    let tid = g.upload_u32(&[t], ids).unwrap();
    let cache = teacher.kv_cache(g, t).unwrap();
    g.run(|b| {
        let ht = teacher.forward(b, &cache, &tid, 0, ForwardOpts { seqs, ..Default::default() })?;
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
            let mut ckp = bare_checkpoint(ck.config.clone(), ck.tensors.clone(), serde_json::Value::Null);
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
    let (l0, g0) = gpu_grads_with(&files, &ck, &ids, 1, false);
    let (l1, g1) = gpu_grads_with(&files, &ck, &ids, 1, true);
    assert_eq!(l0, l1);
    for (n, t) in &g0 {
        assert_eq!(t.data, g1[n].data, "{n}");
    }
}

/// A batch of sequences in one forward and backward (seqs x T rows in every product, the
/// batched attention, RoPE and GDN scan) gives the mean of the losses and gradients of its
/// sequences computed one at a time (whose path the finite-difference tests above check):
/// 3 sequences of 65 tokens with GQA and a tied head, 2 of 63 with biases, an untied head and
/// recomputation.
#[test]
fn a_batch_in_one_pass_gives_the_mean_of_its_sequences_gradients() {
    for (arch, tied, keep, seqs, t, recompute) in [(Arch::Llama, true, vec![1], 3, 65, false), (Arch::Qwen2, false, vec![0], 2, 63, true)] {
        let (files, ck) = tiny_pair(arch, tied, keep, 61);
        let ids = toks(seqs * t, files.config.vocab_size, 62);
        let (loss, grads) = gpu_grads_with(&files, &ck, &ids, seqs, recompute);
        let alone: Vec<_> = ids.chunks(t).map(|s| gpu_grads_with(&files, &ck, s, 1, recompute)).collect();
        let want = alone.iter().map(|a| a.0).sum::<f64>() / seqs as f64;
        assert!((loss - want).abs() <= 1e-5 * want.abs(), "{arch:?}: batch loss {loss} vs mean of the sequences' {want}");
        for (n, gt) in &grads {
            let mean: Vec<f64> = (0..gt.numel()).map(|i| alone.iter().map(|a| a.1[n].data[i] as f64).sum::<f64>() / seqs as f64).collect();
            assert_close(&format!("{arch:?} {n}"), &gt.data, &mean, 1e-5);
        }
    }
}
