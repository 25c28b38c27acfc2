//! Distillation runs (src/train/distill.rs) on tiny random models: a stage 2 and a stage 1
//! run lower their losses; a killed run resumed from its checkpoint ends with
//! bit-identical weights; a NaN loss stops the run and keeps the last checkpoint.
use crate::common::student::{kl_f64, tiny_pair, toks};
use crate::common::*;
use rand::Rng;
use taylorcal::data::TokenStream;
use taylorcal::io::checkpoint::{self, Checkpoint};
use taylorcal::io::Arch;
use taylorcal::nn::decoder::Decoder;
use taylorcal::nn::reference;
use taylorcal::train::distill::{self, DistillOpts, Hooks, Setup};

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
