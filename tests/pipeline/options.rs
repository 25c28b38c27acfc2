//! Settings and reports: every option no run can use is refused by the library's `check`,
//! naming the option (`--lr-rest -1` trained to a perplexity of 1e100, `--tokens 0` trained
//! one step); the ablation and recovery reports are replaced atomically; select's report
//! and chart never share a path.
use std::io::Read;
use taylorcal::calibrate::convert::ConvertOpts;
use taylorcal::calibrate::strategy::Strategy;
use taylorcal::experiments::ablate::{Ablation, AblationRow, EvalWindows};
use taylorcal::experiments::recovery::{RecoveryOpts, RecoveryReport, StrategyRun};
use taylorcal::select::Selection;
use taylorcal::train::distill::{CurvePoint, DistillOpts, DistillReport};

/// A named change of a settings struct, and the option its refusal must name.
type Change<T> = (&'static str, fn(&mut T), &'static str);

/// `check` refuses `o` with an error naming `named`.
fn refused(what: &str, r: anyhow::Result<()>, named: &str) {
    match r {
        Ok(()) => panic!("{what}: accepted"),
        Err(e) => assert!(format!("{e:#}").contains(named), "{what}: {e:#} does not name {named}"),
    }
}

#[test]
fn options_no_run_can_use_are_refused_naming_the_option() {
    let base = DistillOpts { tokens: 4096, seq_len: 64, batch: 4, ..DistillOpts::for_stage(2) };
    base.check().unwrap();
    assert_eq!(base.steps(), 16);
    let distill: [Change<DistillOpts>; 15] = [
        ("tokens 0", |o| o.tokens = 0, "--tokens"),
        ("lr_rest -1", |o| o.lr_rest = -1.0, "--lr-rest"),
        ("lr_rest NaN", |o| o.lr_rest = f32::NAN, "--lr-rest"),
        ("lr inf", |o| o.lr = f32::INFINITY, "--lr"),
        ("lr 0", |o| o.lr = 0.0, "--lr"),
        ("warmup past the steps", |o| o.warmup = Some(17), "--warmup 17"),
        ("min_lr_ratio 1.5", |o| o.min_lr_ratio = 1.5, "min_lr_ratio"),
        ("min_lr_ratio -0.1", |o| o.min_lr_ratio = -0.1, "min_lr_ratio"),
        ("beta1 1", |o| o.beta1 = 1.0, "beta1"),
        ("beta2 -0.1", |o| o.beta2 = -0.1, "beta2"),
        ("weight_decay -0.01", |o| o.weight_decay = -0.01, "weight_decay"),
        ("clip -1", |o| o.clip = -1.0, "clip"),
        ("clip NaN", |o| o.clip = f32::NAN, "clip"),
        ("target_ppl NaN", |o| o.target_ppl = Some(f64::NAN), "target_ppl"),
        ("batch 0", |o| o.batch = 0, "--batch"),
    ];
    for (what, change, named) in distill {
        let mut o = base.clone();
        change(&mut o);
        refused(what, o.check(), named);
    }
    // the boundaries that mean something stay: no warmup or all of it, a frozen rest, no
    // clipping, a constant rate, huge sizes (no overflow)
    let kept: [fn(&mut DistillOpts); 6] = [
        |o| o.warmup = Some(0),
        |o| o.warmup = Some(16),
        |o| o.lr_rest = 0.0,
        |o| o.clip = 0.0,
        |o| o.min_lr_ratio = 1.0,
        |o| (o.seq_len, o.batch) = (usize::MAX, usize::MAX),
    ];
    for change in kept {
        let mut o = base.clone();
        change(&mut o);
        o.check().unwrap();
    }

    let conv: [Change<ConvertOpts>; 4] = [
        ("capture_windows 0", |o| o.capture_windows = 0, "--capture-windows"),
        ("lr_qkv -1", |o| o.align.lr_qkv = -1.0, "lr_qkv"),
        ("lr_gates NaN", |o| o.align.lr_gates = f32::NAN, "lr_gates"),
        ("max_norm inf", |o| o.align.max_norm = f32::INFINITY, "max_norm"),
    ];
    ConvertOpts::default().check().unwrap();
    for (what, change, named) in conv {
        let mut o = ConvertOpts::default();
        change(&mut o);
        refused(what, o.check(), named);
    }

    let rec = || RecoveryOpts {
        strategies: vec![Strategy::Naive],
        stage1: Some(DistillOpts { tokens: 256, seq_len: 64, batch: 1, ..DistillOpts::for_stage(1) }),
        stage2: base.clone(),
        target_ratio: 1.5,
        convert: ConvertOpts::default(),
    };
    rec().check().unwrap();
    let recovery: [Change<RecoveryOpts>; 6] = [
        ("no strategy", |o| o.strategies.clear(), "--strategies"),
        ("target ratio NaN", |o| o.target_ratio = f64::NAN, "--target-ppl-ratio"),
        ("target ratio 0.5", |o| o.target_ratio = 0.5, "--target-ppl-ratio"),
        ("stage 2 tokens 0", |o| o.stage2.tokens = 0, "--max-tokens"),
        ("stage 1 lr -1", |o| o.stage1.as_mut().unwrap().lr = -1.0, "stage 1: --lr"),
        ("alignment weight decay -1", |o| o.convert.align.weight_decay = -1.0, "weight_decay"),
    ];
    for (what, change, named) in recovery {
        let mut o = rec();
        change(&mut o);
        refused(what, o.check(), named);
    }
}

fn ablation(teacher_ppl: f64) -> Ablation {
    let row = AblationRow {
        strategy: "naive".into(),
        value_scale: None,
        ppl: 2.0 * teacher_ppl,
        nll: 1.0,
        seconds: 0.0,
        phase1_s: 0.0,
        phase2_s: 0.0,
    };
    Ablation {
        teacher: "t".into(),
        attn_layers: vec![0],
        calib_tokens: 256,
        value_scale: "fit".into(),
        seed: 0,
        steps: 1,
        selection: None,
        eval: EvalWindows { windows: 1, window_tokens: 256 },
        teacher_ppl,
        strategies: vec![row],
        capture_s: 0.0,
        total_s: 0.0,
        adapter: "a".into(),
    }
}

fn recovery_report(teacher_ppl: f64) -> RecoveryReport {
    let point = CurvePoint { step: 1, tokens: 64, loss: teacher_ppl, lr: 1e-4, grad_norm: 1.0, eval_ppl: Some(teacher_ppl), seconds: 1.0 };
    let report = DistillReport {
        opts: DistillOpts::for_stage(2),
        steps: 1,
        tokens: 64,
        curve: vec![point],
        initial_ppl: Some(2.0 * teacher_ppl),
        final_ppl: Some(teacher_ppl),
        tokens_per_s: 64.0,
        steady_tokens_per_s: None,
        train_seconds: 1.0,
        reached_target: true,
        train_buffer_bytes: 0,
    };
    let run = StrategyRun { strategy: "naive", init_ppl: 3.0, stage1: Some(report.clone()), stage2: report, tokens_to_target: Some(64) };
    RecoveryReport {
        teacher: "t".into(),
        attn_layers: vec![0],
        teacher_ppl,
        target_ratio: 2.0,
        target_ppl: 2.0 * teacher_ppl,
        runs: vec![run],
        adapter: "a".into(),
    }
}

/// A report file is replaced whole (a new file renamed over the old one), never rewritten in
/// place: a reader that opened the previous report reads all of it while the next one is
/// written, and a crash mid-write leaves the previous one. (The files were rewritten in
/// place: the held reader saw the new text.)
#[test]
fn ablation_and_recovery_reports_are_replaced_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let (abl, rec) = (dir.path().join("abl"), dir.path().join("rec"));
    std::fs::create_dir(&rec).unwrap();
    // the report of teacher perplexity p, written to its directory
    let write = |dir: &std::path::Path, p: f64| if dir == abl { ablation(p).write(dir) } else { recovery_report(p).write(dir) };
    for dir in [abl.as_path(), rec.as_path()] {
        write(dir, 10.0).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert!(names.len() >= 3, "{names:?}");
        let held: Vec<(String, std::fs::File)> =
            names.iter().map(|n| (std::fs::read_to_string(dir.join(n)).unwrap(), std::fs::File::open(dir.join(n)).unwrap())).collect();
        write(dir, 20.0).unwrap();
        for (name, (before, mut file)) in names.iter().zip(held) {
            let mut seen = String::new();
            file.read_to_string(&mut seen).unwrap();
            assert_eq!(seen, before, "{}: the report was rewritten in place", dir.join(name).display());
            assert_ne!(std::fs::read_to_string(dir.join(name)).unwrap(), before, "{name}: not rewritten");
        }
        let mut after: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        after.sort();
        assert_eq!(after, names, "no temporary file is left behind");
    }
}

#[test]
fn select_report_and_chart_never_share_a_path() {
    let p = |s: &str| std::path::PathBuf::from(s);
    assert_eq!(Selection::report_paths(&p("out/sel.json")).unwrap(), (p("out/sel.json"), p("out/sel.svg")));
    assert_eq!(Selection::report_paths(&p("sel")).unwrap(), (p("sel"), p("sel.svg")));
    assert_eq!(Selection::report_paths(&p("sel.txt")).unwrap(), (p("sel.txt"), p("sel.txt.svg")));
    for svg in ["x.svg", "x.SVG"] {
        refused(svg, Selection::report_paths(&p(svg)).map(|_| ()), ".svg");
    }
}
