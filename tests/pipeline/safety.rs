//! Never losing the user's data: what `--out` may touch, the crash-safe checkpoint write
//! (a kill played at every step of it) and the lock on an output directory. A whole run
//! killed again and again is in `crash`.
use crate::common::tiny::*;
use crate::common::{taylorcal_in, word_text};
use std::path::Path;
use taylorcal::io::checkpoint::{self, Checkpoint, HybridConfig, SaveStep};
use taylorcal::io::out_dir::{self, Kind};
use taylorcal::io::Arch;

/// `convert` of `teacher` into `out` on `text` (a missing `text` makes any real work fail).
pub(crate) fn convert_args<'a>(teacher: &'a str, text: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "convert",
        "--teacher",
        teacher,
        "--keep",
        "1",
        "--strategy",
        "naive",
        "--calib",
        text,
        "--calib-tokens",
        "512",
        "--capture-windows",
        "2",
        "--eval",
        text,
        "--eval-windows",
        "1",
        "--out",
        out,
    ]
}

pub(crate) fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The refusals come before any work: the calibration text does not even exist.
#[test]
fn out_holding_a_users_file_is_refused_and_the_file_survives() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let missing = dir.path().join("no-such-text.txt");
    let out = dir.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "my notes").unwrap();
    let (ok, _, err) = taylorcal_in(dir.path(), &convert_args(s(&model), s(&missing), s(&out)));
    assert!(!ok);
    assert!(err.contains(s(&out)) && err.contains("--force") && err.contains("notes.txt"), "{err}");
    assert!(!err.contains("no-such-text"), "the directory is checked before any work: {err}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "my notes");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1, "nothing was written into the refused directory");

    // ablate and recovery: the same, for a directory that holds anything but their reports
    let mut args = convert_args(s(&model), s(&missing), s(&out));
    args[0] = "ablate";
    args.retain(|a| !["--strategy", "naive"].contains(a));
    let (ok, _, err) = taylorcal_in(dir.path(), &args);
    assert!(!ok && err.contains(s(&out)) && err.contains("--force") && !err.contains("no-such-text"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "my notes");
}

#[test]
fn out_equal_to_inside_or_around_the_teacher_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    let cfg = tiny_config(Arch::Llama);
    taylorcal::io::hf::save_hf_dir(&teacher, &cfg, &random_tensors(&cfg, 3), None).unwrap();
    let before: Vec<u8> = std::fs::read(teacher.join("model.safetensors")).unwrap();
    let missing = dir.path().join("no-such-text.txt");
    let gguf = tiny_gguf(dir.path(), true);
    let inside = teacher.join("student");
    let cases: [(&Path, &Path); 4] =
        [(&teacher, &teacher), (&teacher, &inside), (&gguf, dir.path()), (&teacher, &dir.path().join("teacher/../teacher"))];
    for (t, out) in cases {
        for force in [false, true] {
            let mut args = convert_args(s(t), s(&missing), s(out));
            if force {
                args.push("--force");
            }
            let (ok, _, err) = taylorcal_in(&std::env::temp_dir(), &args);
            assert!(!ok, "--out {} accepted", out.display());
            assert!(err.contains("input model") && err.contains(s(out)), "{err}");
        }
    }
    assert_eq!(std::fs::read(teacher.join("model.safetensors")).unwrap(), before);
    assert!(!inside.exists());
}

#[test]
fn out_dot_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let missing = dir.path().join("no-such-text.txt");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    for out in [".", "..", "../work"] {
        for force in [false, true] {
            let mut args = convert_args(s(&model), s(&missing), out);
            if force {
                args.push("--force");
            }
            let (ok, _, err) = taylorcal_in(&work, &args);
            assert!(!ok);
            assert!(err.contains(&format!("--out {out}")) && !err.contains("no-such-text"), "{err}");
        }
    }
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
}

#[test]
fn force_writes_the_checkpoint_beside_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let out = dir.path().join("mine");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("notes.txt"), "my notes").unwrap();
    std::fs::write(out.join("sub/data.bin"), [1u8, 2, 3]).unwrap();
    let mut args = convert_args(s(&model), s(&text), s(&out));
    args.push("--force");
    let (ok, _, err) = taylorcal_in(dir.path(), &args);
    assert!(ok, "convert --force failed: {err}");
    assert!(checkpoint::load_checkpoint(&out).is_ok());
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "my notes");
    assert_eq!(std::fs::read(out.join("sub/data.bin")).unwrap(), [1, 2, 3]);
    // now a checkpoint (with the user's files beside it): converting again needs no --force
    args.pop();
    let (ok, _, err) = taylorcal_in(dir.path(), &args);
    assert!(ok, "convert over its own checkpoint failed: {err}");
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "my notes");
    // distill never writes over the student it reads (only --resume continues in place)
    for o in [out.clone(), out.join("sub")] {
        let (ok, _, err) =
            taylorcal_in(dir.path(), &["distill", "--student", s(&out), "--teacher", s(&model), "--stage", "1", "--out", s(&o), "--force"]);
        assert!(!ok && err.contains("input model"), "{err}");
    }
}

#[test]
fn report_directories_accept_only_their_own_files() {
    use taylorcal::experiments::{ablate::Ablation, recovery::RecoveryReport};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ablation");
    std::fs::create_dir(&out).unwrap();
    for f in ["ablation.md", "ablation.json", "ablation.svg"] {
        std::fs::write(out.join(f), "old").unwrap();
    }
    // a failed report write (here: a directory is in the way of its rename) removes its
    // temporary file; one a crash leaves (named as the writer names it) is taylorcal's own:
    // it never makes the directory look foreign, and the next claim removes it
    std::fs::remove_file(out.join("ablation.md")).unwrap();
    std::fs::create_dir_all(out.join("ablation.md/in-the-way")).unwrap();
    let before = std::fs::read_dir(&out).unwrap().count();
    assert!(taylorcal::io::hf::write_atomic(&out.join("ablation.md"), b"new").is_err());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), before, "the failed write left its temporary file");
    std::fs::remove_dir_all(out.join("ablation.md")).unwrap();
    std::fs::write(out.join(".taylorcal-tmp-ablation.md"), "half a rep").unwrap();
    drop(out_dir::claim(&out, Kind::Report(Ablation::is_report_file), &[], false).unwrap());
    assert!(!out.join(".taylorcal-tmp-ablation.md").exists(), "the claim removes an interrupted write's temporary file");
    let e = out_dir::claim(&out, Kind::Report(RecoveryReport::is_report_file), &[], false).err().unwrap().to_string();
    assert!(e.contains("did not write") && e.contains("--force"), "{e}");
    let e = out_dir::claim(&out, Kind::Checkpoint, &[], false).err().unwrap().to_string();
    assert!(e.contains("not a taylorcal checkpoint"), "{e}");
    let rec = dir.path().join("recovery");
    std::fs::create_dir(&rec).unwrap();
    for f in ["recovery.md", "naive_stage2.csv", "taylor-calibrate_stage1.csv"] {
        std::fs::write(rec.join(f), "old").unwrap();
    }
    drop(out_dir::claim(&rec, Kind::Report(RecoveryReport::is_report_file), &[], false).unwrap());
    std::fs::write(rec.join("plan.csv"), "mine").unwrap();
    assert!(out_dir::claim(&rec, Kind::Report(RecoveryReport::is_report_file), &[], false).is_err());
    drop(out_dir::claim(&rec, Kind::Report(RecoveryReport::is_report_file), &[], true).unwrap());
    assert_eq!(std::fs::read_to_string(rec.join("plan.csv")).unwrap(), "mine");
    // a path that is a file is never an output directory
    let e = out_dir::claim(&rec.join("plan.csv"), Kind::Checkpoint, &[], true).err().unwrap().to_string();
    assert!(e.contains("not a directory"), "{e}");
}

fn checkpoint_v(v: u32, with_tokenizer_and_optimizer: bool) -> Checkpoint {
    let cfg = HybridConfig::new(tiny_config(Arch::Qwen2), vec![1]).unwrap();
    let teacher = random_tensors(&cfg.base, 41);
    let mut tensors = taylorcal::calibrate::init::init_student(&cfg, &teacher, v as u64).unwrap();
    tensors.get_mut("model.norm.weight").unwrap().data[0] = v as f32;
    let optimizer = with_tokenizer_and_optimizer.then(|| tensors.clone());
    let files = vec![("curve.csv".to_string(), format!("v{v}").into_bytes())];
    Checkpoint { config: cfg, tensors, tokenizer: None, report: serde_json::json!({ "v": v }), optimizer, files }
}

/// Whatever `dir` holds loads as exactly checkpoint `v` (report, weights, optimizer state
/// present or not, its extra file).
fn assert_loads_as(dir: &Path, v: u32, with_optimizer: bool) {
    let back = checkpoint::load_checkpoint(dir).unwrap_or_else(|e| panic!("no loadable checkpoint: {e:#}"));
    assert!(checkpoint::is_checkpoint(dir));
    assert_eq!(back.report["v"], v);
    assert_eq!(back.tensors["model.norm.weight"].data[0], v as f32);
    assert_eq!(back.optimizer.is_some(), with_optimizer, "checkpoint v{v}");
}

pub(crate) fn internal_entries(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    names.filter(|n| n.starts_with(checkpoint::INTERNAL_PREFIX)).collect()
}

/// A write killed after each of its steps (a panic inside the hook: nothing cleans up, as
/// with kill -9) leaves one complete checkpoint: the previous one before the commit, the new
/// one after it. The next write finishes or removes what was left.
#[test]
fn a_write_killed_at_any_step_leaves_a_complete_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let (v1, v2, v3) = (checkpoint_v(1, true), checkpoint_v(2, false), checkpoint_v(3, true));
    let steps = {
        let dir = root.path().join("count");
        checkpoint::save_checkpoint(&dir, &v1).unwrap();
        let mut n = 0;
        checkpoint::save_checkpoint_hooked(&dir, &v2, &mut |_| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    };
    // Staged, Committed, Removed(optimizer), Moved x4 (model, config, report, curve.csv), Published
    assert_eq!(steps, 8);
    for kill_at in 0..steps {
        let dir = root.path().join(format!("ck{kill_at}"));
        checkpoint::save_checkpoint(&dir, &v1).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let mut seen = vec![];
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut i = 0;
            checkpoint::save_checkpoint_hooked(&dir, &v2, &mut |step| {
                seen.push(format!("{step:?}"));
                if i == kill_at {
                    panic!("killed after {step:?}");
                }
                i += 1;
                Ok(())
            })
        }));
        assert!(r.is_err(), "the hook did not stop the write at step {kill_at}");
        let committed = seen.iter().any(|s| s == &format!("{:?}", SaveStep::Committed));
        if committed {
            assert_loads_as(&dir, 2, false);
        } else {
            assert_loads_as(&dir, 1, true);
        }
        // the next write starts by finishing or removing the leftovers, then writes its own
        checkpoint::save_checkpoint(&dir, &v3).unwrap();
        assert_loads_as(&dir, 3, true);
        assert_eq!(std::fs::read_to_string(dir.join("curve.csv")).unwrap(), "v3");
        assert!(internal_entries(&dir).is_empty(), "left behind after {seen:?}: {:?}", internal_entries(&dir));
        assert_eq!(std::fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
    }
    // claiming the directory (the next command's start) also cleans up a killed write
    let dir = root.path().join("claimed");
    checkpoint::save_checkpoint(&dir, &v1).unwrap();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        checkpoint::save_checkpoint_hooked(&dir, &v2, &mut |step| if step == SaveStep::Staged { panic!("killed") } else { Ok(()) })
    }));
    assert!(!internal_entries(&dir).is_empty(), "the killed write left its staging directory");
    let claimed = out_dir::claim(&dir, Kind::Checkpoint, &[], false).unwrap();
    assert_eq!(internal_entries(&dir), [out_dir::LOCK_FILE]);
    assert_loads_as(&dir, 1, true);
    drop(claimed);
}

#[test]
fn a_second_run_on_the_same_out_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let held = out_dir::claim(&out, Kind::Checkpoint, &[], false).unwrap();
    let e = out_dir::claim(&out, Kind::Checkpoint, &[], false).err().unwrap().to_string();
    assert!(e.contains("in use by another taylorcal run") && e.contains(s(&out)), "{e}");
    // another process: the CLI refuses before any work
    let model = tiny_gguf(dir.path(), true);
    let missing = dir.path().join("no-such-text.txt");
    let (ok, _, err) = taylorcal_in(dir.path(), &convert_args(s(&model), s(&missing), s(&out)));
    assert!(!ok && err.contains("in use by another taylorcal run") && err.contains(s(&out)), "{err}");
    drop(held);
    let again = out_dir::claim(&out, Kind::Checkpoint, &[], false);
    assert!(again.is_ok(), "the lock is released with its holder");
}

/// `convert` stopped (like a crash) after its first converted layer, resumed and stopped
/// again after the second, then resumed to the end, writes the checkpoint of an unbroken
/// run byte for byte; each resumed run converts only the layers left, and the state files
/// are gone at the end. A resume with another teacher, calibration text or setting is
/// refused, naming it.
#[test]
fn convert_stopped_after_a_layer_resumes_to_the_unbroken_checkpoint() {
    use crate::common::{gpu, rng};
    use taylorcal::calibrate::convert::{ConvertOpts, Inputs, Progress};
    use taylorcal::calibrate::phase2::AlignOpts;
    use taylorcal::calibrate::resumable::{self, Hooks, STATE_FILE};
    use taylorcal::calibrate::strategy::Strategy;
    use taylorcal::nn::decoder::Decoder;
    let g = gpu();
    let cfg = taylorcal::io::ModelConfig { num_hidden_layers: 4, ..tiny_config(Arch::Llama) };
    let files = hf_round_trip(&cfg, &random_tensors(&cfg, 71));
    let teacher = Decoder::new(g, &files).unwrap();
    let hc = HybridConfig::new(cfg.clone(), vec![1]).unwrap(); // converts layers 0, 2 and 3
    let mut r = rng(72);
    let ids: Vec<u32> = (0..400).map(|_| rand::Rng::random_range(&mut r, 0..cfg.vocab_size as u32)).collect();
    let eval = taylorcal::data::windows(&ids[300..], 48, 2, "eval").unwrap();
    let inputs = |tensors, calib| Inputs {
        gpu: g,
        teacher: &teacher,
        teacher_tensors: tensors,
        teacher_source: "tiny",
        config: &hc,
        selection: None,
        calib,
        eval: &eval,
    };
    let o = ConvertOpts {
        keep: vec![1],
        strategy: Strategy::TaylorCalibrate,
        seq_len: 48,
        calib_tokens: 96,
        capture_windows: 2,
        align: AlignOpts { steps: 4, ..Default::default() },
        seed: 5,
        ..Default::default()
    };
    let inp = inputs(&files.tensors, &ids[..300]);
    // runs a conversion into `out`; the layers it aligned, from its progress messages
    let run = |out: &Path, o: &ConvertOpts, inp: &Inputs, resume: bool, kill_after| {
        let mut aligned = std::collections::BTreeSet::new();
        let mut p = |p: Progress| {
            if let Some(l) = p.what.strip_prefix("layer ").and_then(|w| w.split(' ').next()) {
                aligned.insert(l.parse::<usize>().unwrap());
            }
        };
        let res = resumable::convert_and_save(inp, o, None, out, resume, &mut Hooks { progress: Some(&mut p), kill_after });
        (res.map(|_| ()), aligned.into_iter().collect::<Vec<_>>())
    };
    let dir = tempfile::tempdir().unwrap();
    let (unbroken, killed) = (dir.path().join("unbroken"), dir.path().join("killed"));
    let (res, aligned) = run(&unbroken, &o, &inp, false, None);
    res.unwrap();
    assert_eq!(aligned, [0, 2, 3]);
    assert!(!unbroken.join(STATE_FILE).exists(), "the state is removed once the checkpoint is written");

    let (res, aligned) = run(&killed, &o, &inp, false, Some(1));
    assert!(format!("{:#}", res.unwrap_err()).contains("kill_after"));
    assert_eq!(aligned, [0]);
    assert!(!checkpoint::is_checkpoint(&killed) && killed.join(STATE_FILE).is_file());
    // a resume that would not continue this conversion is refused, naming what differs
    let other_teacher = random_tensors(&cfg, 73);
    let other_calib: Vec<u32> = ids[..300].iter().map(|&t| (t + 1) % cfg.vocab_size as u32).collect();
    let changed = [
        (run(&killed, &ConvertOpts { align: AlignOpts { steps: 5, ..o.align.clone() }, ..o.clone() }, &inp, true, None), "--steps 4"),
        (run(&killed, &ConvertOpts { seed: 6, ..o.clone() }, &inp, true, None), "--seed 5"),
        (run(&killed, &o, &inputs(&other_teacher, &ids[..300]), true, None), "another teacher"),
        (run(&killed, &o, &inputs(&files.tensors, &other_calib), true, None), "another --calib text"),
    ];
    for ((res, aligned), what) in changed {
        let e = format!("{:#}", res.unwrap_err());
        assert!(e.contains("--resume") && e.contains(what) && e.contains(s(&killed)), "{what}: {e}");
        assert!(aligned.is_empty(), "{what}: refused before any work");
    }
    let (res, aligned) = run(&killed, &o, &inp, true, Some(2));
    assert!(format!("{:#}", res.unwrap_err()).contains("kill_after"));
    assert_eq!(aligned, [2], "the resumed run converts the layers left only");
    let (res, aligned) = run(&killed, &o, &inp, true, None);
    res.unwrap();
    assert_eq!(aligned, [3]);
    for f in ["model.safetensors", "config.json"] {
        assert!(std::fs::read(unbroken.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(), "{f} differs after resuming");
    }
    // the reports of every layer agree too (all but their seconds)
    let layers = |d: &Path| {
        let mut rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
        for l in rep["layers"].as_array_mut().unwrap() {
            l["alignment"]["seconds"] = serde_json::Value::Null;
        }
        rep["layers"].clone()
    };
    assert_eq!(layers(&unbroken), layers(&killed));
    assert_eq!(internal_entries(&killed), internal_entries(&unbroken), "no state file is left");
}
