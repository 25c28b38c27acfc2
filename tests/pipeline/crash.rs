//! A distillation killed with SIGKILL again and again ends as an unbroken run.
//!
//! The longest test of the suite (one to three minutes on lavapipe, most of it processes
//! starting up while the test waits) has a module of its own whose name sorts near the front:
//! libtest starts tests in name order, so it starts early and the other tests run beside it
//! instead of after it (in `safety` it started last and ran alone for most of its time).
use crate::common::tiny::tiny_gguf;
use crate::common::{taylorcal_in, word_text};
use crate::safety::{convert_args, internal_entries, s};
use std::path::Path;
use taylorcal::io::checkpoint;

/// `distill` killed with SIGKILL at 20 random moments of one run (each kill lands on a
/// live process: loading, a training step, an evaluation or a checkpoint write), resumed
/// after each: whenever the output holds a checkpoint it loads completely, and the run
/// that was killed 20 times ends with the model and optimizer files byte-identical to an
/// unbroken run's and the same losses.
#[test]
fn distill_killed_at_20_random_moments_ends_as_an_unbroken_run() {
    use rand::Rng;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let student = dir.path().join("student");
    let (ok, _, err) = taylorcal_in(dir.path(), &convert_args(s(&model), s(&text), s(&student)));
    assert!(ok, "convert failed: {err}");
    let run = |out: &Path, resume: bool| -> Command {
        let mut c = crate::common::taylorcal_cmd(dir.path());
        c.args(["distill", "--teacher", s(&model), "--stage", "2", "--tokens", "384", "--seq-len", "16", "--batch", "1"]);
        c.args(["--checkpoint-every", "1", "--eval-every", "10", "--train", s(&text), "--eval", s(&text), "--eval-windows", "1"]);
        c.args(["--out", s(out), "--json"]);
        if resume {
            c.arg("--resume");
        } else {
            c.args(["--student", s(&student)]);
        }
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    };
    const STEPS: usize = 24;
    let losses = |d: &Path| -> Vec<(u64, f64)> {
        let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("report.json")).unwrap()).unwrap();
        rep["train"]["curve"].as_array().unwrap().iter().map(|c| (c["step"].as_u64().unwrap(), c["loss"].as_f64().unwrap())).collect()
    };
    let unbroken = dir.path().join("unbroken");
    let t0 = Instant::now();
    let mut child = run(&unbroken, false).spawn().unwrap();
    while !checkpoint::is_checkpoint(&unbroken) && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let start_up = t0.elapsed(); // until the first step's checkpoint
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let train = t0.elapsed() - start_up;

    let killed = dir.path().join("killed");
    let mut r = crate::common::rng(2026);
    let (mut kills, mut starts, mut landed) = (0, 0, vec![]);
    while kills < 20 {
        starts += 1;
        assert!(starts < 200, "only {kills} of 20 kills landed on a running process in {starts} starts");
        let resume = checkpoint::is_checkpoint(&killed);
        // a moment of the start-up (one kill in four), else of the steps left after the checkpoint
        let done = if resume { losses(&killed).len() as f64 / STEPS as f64 } else { 0.0 };
        let mut child = run(&killed, resume).spawn().unwrap();
        let at =
            if r.random_bool(0.25) { start_up.mul_f64(r.random()) } else { start_up + train.mul_f64((1.0 - done) * r.random::<f64>()) };
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_some() {
            // finished before the kill: start over so that the next kills land somewhere
            let status = child.wait_with_output().unwrap();
            assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
            std::fs::remove_dir_all(&killed).unwrap();
            continue;
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no cleanup
        child.wait().unwrap();
        kills += 1;
        let left = internal_entries(&killed).into_iter().filter(|n| n != ".taylorcal.lock").collect::<Vec<_>>().join("+");
        if checkpoint::is_checkpoint(&killed) {
            let ck = checkpoint::load_checkpoint(&killed).unwrap_or_else(|e| panic!("after kill {kills}: {e:#}"));
            assert!(ck.optimizer.is_some(), "after kill {kills}: a distillation checkpoint without its optimizer state");
            landed.push(format!("step {}{}", losses(&killed).len(), if left.is_empty() { String::new() } else { format!(" ({left})") }));
        } else {
            landed.push(format!("before the first checkpoint{}", if left.is_empty() { String::new() } else { format!(" ({left})") }));
        }
    }
    let out = run(&killed, checkpoint::is_checkpoint(&killed)).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["model.safetensors", checkpoint::OPTIMIZER_FILE] {
        assert!(std::fs::read(unbroken.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(), "{f} differs after 20 kills");
    }
    assert_eq!(losses(&unbroken), losses(&killed));
    assert_eq!(losses(&killed).len(), STEPS);
    assert_eq!(internal_entries(&killed), internal_entries(&unbroken), "the killed runs' temporaries are all gone");
    eprintln!(
        "20 kills over {starts} starts (an unbroken run: {start_up:?} to its first checkpoint, then {train:?}), landing at: {}",
        landed.join(", ")
    );
}
