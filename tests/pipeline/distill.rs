//! Distillation runs (src/train/distill.rs) on tiny random models: a stage 2 and a stage 1
//! run lower their losses; a killed run resumed from its checkpoint ends with
//! bit-identical weights; a resume that would not continue the run exactly (another option,
//! training text, teacher or evaluation) is refused; a NaN loss stops the run and keeps the
//! last checkpoint.
use crate::common::student::{kl_f64, tiny_pair, toks};
use crate::common::*;
use rand::Rng;
use taylorcal::data::TokenStream;
use taylorcal::gpu::{GpuOptions, Precision};
use taylorcal::io::checkpoint::{self, Checkpoint};
use taylorcal::io::fingerprint::Fingerprint;
use taylorcal::io::Arch;
use taylorcal::nn::decoder::Decoder;
use taylorcal::nn::reference;
use taylorcal::train::distill::{self, DistillOpts, Hooks, Identity, RunInputs, Setup};

fn setup_run<'a>(
    teacher: &'a Decoder,
    student: &'a Decoder,
    ck: &'a Checkpoint,
    data: &'a TokenStream,
    eval: &'a [&'a [u32]],
    out: Option<&'a std::path::Path>,
) -> Setup<'a> {
    let inputs = RunInputs::default();
    Setup { gpu: gpu(), teacher, student, config: &ck.config, tokenizer: None, data, eval, out, meta: serde_json::json!({}), inputs }
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
        // the rate after the first step (which compiles the kernels, unless an earlier test did)
        let steady = rep.steady_tokens_per_s.expect("a rate after the first step");
        assert!(steady.is_finite() && steady > 0.0, "stage {stage}: {steady} tokens/s after the first step");
        if stage == 2 {
            // every sequence of an epoch is seen, and the KL is what the f64 reference says
            let l0 = kl_f64(&reference::forward_logits(&files, data.get(0)), &ck, data.get(0));
            let l1 = kl_f64(&reference::forward_logits(&files, data.get(1)), &ck, data.get(1));
            assert!((first - (l0 + l1) / 2.0).abs() < 1e-4 * first, "first step loss {first} vs f64 {}", (l0 + l1) / 2.0);
        }
    }
}

/// A step's sequences in one forward and backward (the default: batch x T rows in every
/// product) or in micro-batches of one with the gradients accumulated: the same step, up
/// to the order of f32 sums (first gradient norm within 1e-5, every step's loss within
/// 1e-4), for both stages; a micro-batch that does not divide the batch is refused.
#[test]
fn micro_batches_accumulate_to_the_whole_batch_step() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![1], 63);
    let g = gpu();
    let teacher = Decoder::new(g, &files).unwrap();
    let ids = toks(24 * 8, files.config.vocab_size, 64);
    let data = TokenStream::new(&ids, 24, 3).unwrap();
    for stage in [2u8, 1] {
        let mut o = small_opts(stage);
        o.batch = 4;
        o.tokens = 3 * 4 * 24;
        let curves: Vec<_> = [None, Some(2), Some(1)]
            .into_iter()
            .map(|m| {
                let student = Decoder::from_checkpoint(g, &ck).unwrap();
                let s = setup_run(&teacher, &student, &ck, &data, &[], None);
                distill::distill(&s, &DistillOpts { micro_batch: m, ..o.clone() }, None, &mut Hooks::default()).unwrap().curve
            })
            .collect();
        for (m, c) in curves.iter().enumerate().skip(1) {
            let (a, b) = (curves[0][0].grad_norm, c[0].grad_norm);
            assert!((a - b).abs() <= 1e-5 * a, "stage {stage} micro-batch run {m}: gradient norm {b} vs one pass {a}");
            for (p, q) in curves[0].iter().zip(c) {
                assert!((p.loss - q.loss).abs() <= 1e-4 * p.loss, "stage {stage} step {}: loss {} vs one pass {}", p.step, q.loss, p.loss);
            }
        }
        let err = DistillOpts { micro_batch: Some(3), ..o }.check().unwrap_err().to_string();
        assert!(err.contains("--micro-batch 3") && err.contains("--batch 4"), "{err}");
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

/// A change of the options, and the words its refusal must contain.
type OptionChange = (fn(&mut DistillOpts), &'static str);

/// Resuming checks every option that shapes the run and every input: another --train
/// text, --warmup, teacher of the same shape or evaluation is refused, naming it, before
/// anything trains (each was accepted and the run was no longer exact); the same run
/// resumes. A checkpoint that predates the recorded inputs is refused with the way out.
#[test]
fn resume_refuses_another_option_training_text_teacher_or_evaluation() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![0], 90);
    let (other_files, _) = tiny_pair(Arch::Llama, true, vec![0], 91);
    let g = gpu();
    let (teacher, other_teacher) = (Decoder::new(g, &files).unwrap(), Decoder::new(g, &other_files).unwrap());
    let vocab = files.config.vocab_size;
    let (ids, other_ids) = (toks(24 * 4, vocab, 92), toks(24 * 4, vocab, 93));
    let (data, other_data) = (TokenStream::new(&ids, 24, 5).unwrap(), TokenStream::new(&other_ids, 24, 5).unwrap());
    let (eval_ids, other_eval_ids) = (toks(48, vocab, 94), toks(48, vocab, 95));
    let (eval, other_eval): (Vec<&[u32]>, Vec<&[u32]>) = (eval_ids.chunks(24).collect(), other_eval_ids.chunks(24).collect());
    let text = |ids: &[u32]| Identity { name: "random tokens".into(), fingerprint: Fingerprint::default().u32s(ids.iter().copied()).hex() };
    let inputs = RunInputs { train: text(&ids), teacher: Identity::of_model(&files) };
    assert_ne!(inputs.teacher, Identity::of_model(&other_files), "a teacher of the same shape with other weights");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut o = small_opts(2);
    o.checkpoint_every = 2;
    assert_eq!(o.steps(), 6);
    let student = Decoder::from_checkpoint(g, &ck).unwrap();
    let run = Setup { inputs: inputs.clone(), ..setup_run(&teacher, &student, &ck, &data, &eval, Some(&out)) };
    distill::distill(&run, &o, None, &mut Hooks { progress: None, kill_after: Some(3) }).unwrap_err();
    let saved = checkpoint::load_checkpoint(&out).unwrap();
    assert_eq!(saved.report["train"]["step"], 2);

    // options, refused by resume_state (before anything is loaded) and by distill itself
    let changes: [OptionChange; 8] = [
        (|o| o.micro_batch = Some(1), "--micro-batch 2, this run asks for --micro-batch 1"),
        (|o| o.warmup = Some(3), "--warmup 1, this run asks for --warmup 3"),
        (|o| o.eval_every = 1, "--eval-every 0, this run asks for --eval-every 1"),
        (|o| o.lr_rest *= 2.0, "--lr-rest"),
        (|o| o.tokens += 48, "--tokens"),
        (|o| o.beta2 = 0.9, "beta2"),
        (|o| o.target_ppl = Some(5.0), "target_ppl none, this run asks for target_ppl 5"),
        (|o| o.seed += 1, "--seed"),
    ];
    for (change, named) in changes {
        let mut changed = o.clone();
        change(&mut changed);
        let err = format!("{:#}", distill::resume_state(&saved, &changed).err().unwrap_or_else(|| panic!("{named}: accepted")));
        assert!(err.contains(named), "{err}");
        let resumed = Decoder::from_checkpoint(g, &saved).unwrap();
        let s = Setup { inputs: inputs.clone(), ..setup_run(&teacher, &resumed, &saved, &data, &eval, Some(&out)) };
        let state = distill::resume_state(&saved, &o).unwrap();
        let err = format!("{:#}", distill::distill(&s, &changed, Some(state), &mut Hooks::default()).unwrap_err());
        assert!(err.contains(named), "{err}");
    }
    // what only changes when files are written or how memory is used is not refused
    let mut same_run = o.clone();
    (same_run.checkpoint_every, same_run.recompute) = (3, true);
    distill::resume_state(&saved, &same_run).unwrap();

    // inputs, refused by distill before it trains
    let other_text = RunInputs { train: text(&other_ids), ..inputs.clone() };
    let other_weights = RunInputs { teacher: Identity::of_model(&other_files), ..inputs.clone() };
    let cases = [
        (&teacher, &other_data, &eval[..], &other_text, "another --train text"),
        (&other_teacher, &data, &eval[..], &other_weights, "another --teacher"),
        (&teacher, &data, &eval[..1], &inputs, "--eval-windows 2, this run asks for --eval-windows 1"),
        (&teacher, &data, &other_eval[..], &inputs, "another --eval text"),
    ];
    for (t, d, e, inp, named) in cases {
        let resumed = Decoder::from_checkpoint(g, &saved).unwrap();
        let s = Setup { inputs: inp.clone(), ..setup_run(t, &resumed, &saved, d, e, Some(&out)) };
        let state = distill::resume_state(&saved, &o).unwrap();
        let err = distill::distill(&s, &o, Some(state), &mut Hooks::default()).err().unwrap_or_else(|| panic!("{named}: accepted"));
        assert!(format!("{err:#}").contains(named), "{err:#}");
        assert_eq!(checkpoint::load_checkpoint(&out).unwrap().report["train"]["step"], 2, "{named}: trained before refusing");
    }
    // the same run resumes to its end
    let resumed = Decoder::from_checkpoint(g, &saved).unwrap();
    let s = Setup { inputs: inputs.clone(), ..setup_run(&teacher, &resumed, &saved, &data, &eval, Some(&out)) };
    let rep = distill::distill(&s, &o, Some(distill::resume_state(&saved, &o).unwrap()), &mut Hooks::default()).unwrap();
    assert_eq!(rep.steps, 6);

    // a checkpoint written before the inputs were recorded cannot be checked: refused
    let mut old = checkpoint::load_checkpoint(&out).unwrap();
    old.report["train"].as_object_mut().unwrap().remove("inputs");
    let err = format!("{:#}", distill::resume_state(&old, &o).err().expect("an old checkpoint was resumed unchecked"));
    assert!(err.contains("train.inputs") && err.contains("--student"), "{err}");
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

/// Stage 2 at precision f16 (the model's products on `ops::mma`, the fallback tiles on
/// lavapipe): the loss falls as at f32, the first step's loss is the f64 KL within the f16
/// operands' error (each product's operands rounded by at most 2^-11 relative, errors of
/// random sign over two small models: 3e-3 of the loss; measured 2e-4 on lavapipe), the checkpoint has the f32 run's files,
/// tensor names and shapes (f32 master weights either way), report.json records the precision, and a resume at
/// another precision is refused.
#[test]
fn stage2_at_f16_lowers_its_loss_and_writes_the_f32_format() {
    let (files, ck) = tiny_pair(Arch::Llama, true, vec![1], 60);
    let g16 = gpu_with(GpuOptions { precision: Some(Precision::F16), ..env_options() });
    assert_eq!(g16.info.precision, Precision::F16);
    let ids = toks(24 * 8, files.config.vocab_size, 61);
    let data = TokenStream::new(&ids, 24, 3).unwrap();
    let eval_ids = toks(48, files.config.vocab_size, 62);
    let eval: Vec<&[u32]> = eval_ids.chunks(24).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_opts(2);
    o.tokens *= 3;
    let mut saved = vec![];
    for g in [g16, gpu()] {
        let teacher = Decoder::new(g, &files).unwrap();
        let student = Decoder::from_checkpoint(g, &ck).unwrap();
        let out = dir.path().join(g.info.precision.name());
        let s = Setup { gpu: g, ..setup_run(&teacher, &student, &ck, &data, &eval, Some(&out)) };
        let rep = distill::distill(&s, &o, None, &mut Hooks::default()).unwrap();
        let (first, last) = (rep.curve.first().unwrap().loss, rep.curve.last().unwrap().loss);
        eprintln!("{}: loss {first:.5} -> {last:.5}", g.info.precision.name());
        assert!(last < 0.8 * first, "{}: loss {first} -> {last}", g.info.precision.name());
        let l0 = kl_f64(&reference::forward_logits(&files, data.get(0)), &ck, data.get(0));
        let l1 = kl_f64(&reference::forward_logits(&files, data.get(1)), &ck, data.get(1));
        assert!((first - (l0 + l1) / 2.0).abs() < 3e-3 * first, "first step loss {first} vs f64 {}", (l0 + l1) / 2.0);
        saved.push(out);
    }
    let (a, b) = (checkpoint::load_checkpoint(&saved[0]).unwrap(), checkpoint::load_checkpoint(&saved[1]).unwrap());
    let listing = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    assert_eq!(listing(&saved[0]), listing(&saved[1]), "f16 and f32 checkpoints hold the same files");
    let mut names: Vec<&String> = a.tensors.keys().collect();
    names.sort();
    let mut names_b: Vec<&String> = b.tensors.keys().collect();
    names_b.sort();
    assert_eq!(names, names_b);
    for n in names {
        assert_eq!(a.tensors[n].shape, b.tensors[n].shape, "{n}");
    }
    assert_eq!(a.report["train"]["precision"]["precision"], "f16");
    assert_eq!(b.report["train"]["precision"]["precision"], "f32");
    // resuming the f16 run at f32 would not continue it exactly
    let teacher = Decoder::new(gpu(), &files).unwrap();
    let student = Decoder::from_checkpoint(gpu(), &a).unwrap();
    let state = distill::resume_state(&a, &o).unwrap();
    let err = distill::distill(&setup_run(&teacher, &student, &a, &data, &eval, None), &o, Some(state), &mut Hooks::default()).unwrap_err();
    assert!(format!("{err:#}").contains("--precision f16"), "{err:#}");
}
