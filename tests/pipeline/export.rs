//! A student exported for Python tools and read back (src/io/export.rs): flash-linear-
//! attention's layout and the reference's give the student again bit for bit (config,
//! tensors, GPU logits) for tied and untied, biased (Qwen2) and q/k-norm (Qwen3) teachers,
//! the latter only `--to reference`; the files, read with the safetensors crate and
//! serde_json (not taylorcal's loader), hold the names, shapes, dtypes and fields of issue
//! 17's lists; f16 / bf16 round to the dtype; what fla cannot express and malformed
//! exports get errors naming the file and field; `--out` never touches a user's files.
use crate::common::student::{tiny_pair, toks};
use crate::common::taylorcal_in;
use crate::common::tiny::{random_tensors, tiny_config, tiny_tokenizer, write_safetensors_as};
use crate::decoder::logits;
use crate::safety::s;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use taylorcal::io::checkpoint::{self, Checkpoint};
use taylorcal::io::config::RopeScaling;
use taylorcal::io::dtype::FloatDtype;
use taylorcal::io::export::{self, Format};
use taylorcal::io::{self, hf, Arch, HostTensor};
use taylorcal::nn::decoder::Decoder;

/// A 3-layer student of a tiny teacher of `arch` (softmax attention kept in layer 1, every
/// weight perturbed), with the tiny tokenizer.
fn student(arch: Arch, tied: bool, seed: u64) -> Checkpoint {
    let (_, mut ck) = tiny_pair(arch, tied, vec![1], seed);
    ck.tokenizer = Some(tiny_tokenizer());
    ck
}

fn gpu_logits(ck: &Checkpoint, ids: &[u32]) -> Vec<f32> {
    logits(&Decoder::from_checkpoint(crate::common::gpu(), ck).unwrap(), ids)
}

/// `ck` exported to `dir` in `format` (f32) and read back by the loader every command uses.
fn round_trip(ck: &Checkpoint, dir: &Path, format: Format) -> Checkpoint {
    export::save_export(dir, ck, format, FloatDtype::F32).unwrap();
    assert!(io::is_student(dir), "{} is not read as a student", dir.display());
    io::load_student(dir).unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

#[test]
fn export_then_import_gives_bit_identical_logits() {
    let cases = [
        (Arch::Llama, true, Format::Fla),
        (Arch::Llama, false, Format::Fla),
        (Arch::Qwen2, false, Format::Fla),
        (Arch::Qwen2, true, Format::Reference),
        (Arch::Llama, false, Format::Reference),
        (Arch::Qwen3, false, Format::Reference),
        (Arch::Qwen3, true, Format::Reference),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (arch, tied, format)) in cases.into_iter().enumerate() {
        let what = format!("{arch:?} tied={tied} --to {}", format.name());
        let ck = student(arch, tied, 60 + i as u64);
        let out = dir.path().join(format!("export-{i}"));
        let back = round_trip(&ck, &out, format);
        assert_eq!(back.config, ck.config, "{what}: config");
        assert!(back.tensors == ck.tensors, "{what}: tensors differ");
        assert_eq!(back.tokenizer.as_ref().unwrap().to_string(false).unwrap(), tiny_tokenizer().to_string(false).unwrap(), "{what}");
        // 70 tokens: more than one 64-token chunk of the scan
        let ids = toks(70, ck.config.base.vocab_size, i as u64);
        assert_eq!(gpu_logits(&back, &ids), gpu_logits(&ck, &ids), "{what}: logits changed across export and import");
        // an export is itself a student export reads: into the other layout, and back
        let other = if format == Format::Fla { Format::Reference } else { Format::Fla };
        if export::check(&ck.config, other).is_ok() {
            let again = round_trip(&io::load_student(&out).unwrap(), &dir.path().join(format!("again-{i}")), other);
            assert!(again.config == ck.config && again.tensors == ck.tensors, "{what}: re-exported --to {}", other.name());
        }
    }
}

/// What `transformers` saves can leave out fields at their class's defaults: they read as
/// those defaults.
#[test]
fn fields_left_at_their_defaults_read_as_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for (format, dropped) in [
        (Format::Fla, &["use_gate", "allow_neg_eigval", "hidden_act", "num_v_heads", "attn_mode", "hidden_ratio"][..]),
        (Format::Reference, &["qkv_bias", "window_size", "hidden_act", "hidden_ratio", "rope_scaling"][..]),
    ] {
        let ck = student(Arch::Llama, false, 70);
        let out = dir.path().join(format.name());
        export::save_export(&out, &ck, format, FloatDtype::F32).unwrap();
        let mut v = read_json(&out.join("config.json"));
        for f in dropped {
            v.as_object_mut().unwrap().remove(*f).unwrap_or_else(|| panic!("{f} not written"));
        }
        if format == Format::Fla {
            for f in ["qkv_bias", "window_size"] {
                v["attn"].as_object_mut().unwrap().remove(f).unwrap_or_else(|| panic!("attn.{f} not written"));
            }
        }
        write_json(&out.join("config.json"), &v);
        let back = io::load_student(&out).unwrap();
        assert_eq!(back.config, ck.config, "--to {}", format.name());
    }
}

/// Every tensor of the student in taylorcal's names, and its exported name and shape, as
/// issue 17 lists them (written out here, not taken from the exporter).
fn issue_names(ck: &Checkpoint) -> HashMap<String, Vec<usize>> {
    let c = &ck.config.base;
    let (d, f, v, h, hkv, hd) =
        (c.hidden_size, c.intermediate_size, c.vocab_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let mut want: HashMap<String, Vec<usize>> = HashMap::new();
    want.insert("model.embeddings.weight".into(), vec![v, d]);
    want.insert("model.norm.weight".into(), vec![d]);
    if !c.tie_word_embeddings {
        want.insert("lm_head.weight".into(), vec![v, d]);
    }
    for l in 0..c.num_hidden_layers {
        let mut put = |name: &str, shape: Vec<usize>| want.insert(format!("model.layers.{l}.{name}"), shape);
        put("attn_norm.weight", vec![d]);
        put("mlp_norm.weight", vec![d]);
        put("mlp.gate_proj.weight", vec![f, d]);
        put("mlp.up_proj.weight", vec![f, d]);
        put("mlp.down_proj.weight", vec![d, f]);
        if ck.config.attn_layers.contains(&l) {
            put("attn.q_proj.weight", vec![h * hd, d]);
            put("attn.k_proj.weight", vec![hkv * hd, d]);
            put("attn.v_proj.weight", vec![hkv * hd, d]);
            put("attn.o_proj.weight", vec![d, h * hd]);
            if c.attention_bias {
                put("attn.q_proj.bias", vec![h * hd]);
                put("attn.k_proj.bias", vec![hkv * hd]);
                put("attn.v_proj.bias", vec![hkv * hd]);
            }
            if c.qk_norm {
                put("attn.q_norm.weight", vec![hd]);
                put("attn.k_norm.weight", vec![hd]);
            }
        } else {
            for p in ["q", "k", "v", "g"] {
                put(&format!("attn.{p}_proj.weight"), vec![h * hd, d]);
            }
            put("attn.a_proj.weight", vec![h, d]);
            put("attn.b_proj.weight", vec![h, d]);
            put("attn.o_proj.weight", vec![d, h * hd]);
            put("attn.A_log", vec![h]);
            put("attn.dt_bias", vec![h]);
            put("attn.o_norm.weight", vec![hd]);
        }
    }
    want
}

/// The exported safetensors file as (name -> (dtype, shape)), read with the safetensors crate.
fn stored(path: &Path) -> HashMap<String, (safetensors::Dtype, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, t)| (n, (t.dtype(), t.shape().to_vec()))).collect()
}

#[test]
fn exported_files_hold_the_names_shapes_and_fields_of_the_issue() {
    let dir = tempfile::tempdir().unwrap();
    // fla: a biased, untied teacher in f32
    let ck = student(Arch::Qwen2, false, 80);
    let out = dir.path().join("fla");
    export::save_export(&out, &ck, Format::Fla, FloatDtype::F32).unwrap();
    let want: HashMap<_, _> = issue_names(&ck).into_iter().map(|(n, s)| (n, (safetensors::Dtype::F32, s))).collect();
    assert_eq!(stored(&out.join("model.safetensors")), want);
    let c = read_json(&out.join("config.json"));
    let expect = json!({
        "model_type": "gated_deltanet", "attn": {"layers": [1], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": true,
        "window_size": null, "rope_theta": 10000.0}, "use_short_conv": false, "expand_v": 1, "head_dim": 16,
        "num_heads": 4, "use_gate": true, "norm_eps": 1e-5, "intermediate_size": 96, "hidden_act": "swish",
        "tie_word_embeddings": false, "hidden_size": 64, "num_hidden_layers": 3, "vocab_size": 100, "allow_neg_eigval": false,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    });
    for (k, want) in expect.as_object().unwrap() {
        assert_eq!(&c[k], want, "fla config.json field {k}");
    }
    assert_eq!(read_json(&out.join("generation_config.json")), json!({"bos_token_id": 1, "eos_token_id": 2}));
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    assert_eq!(tok.get_vocab_size(true), tiny_tokenizer().get_vocab_size(true));
    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    assert_eq!(tc["eos_token"], json!(tok.id_to_token(2)));

    // reference: a q/k-norm (Qwen3), tied teacher in bf16
    let ck = student(Arch::Qwen3, true, 81);
    let out = dir.path().join("reference");
    export::save_export(&out, &ck, Format::Reference, FloatDtype::BF16).unwrap();
    let want: HashMap<_, _> = issue_names(&ck).into_iter().map(|(n, s)| (n, (safetensors::Dtype::BF16, s))).collect();
    assert!(want.contains_key("model.layers.1.attn.q_norm.weight") && !want.contains_key("lm_head.weight"));
    assert_eq!(stored(&out.join("model.safetensors")), want);
    let c = read_json(&out.join("config.json"));
    let expect = json!({
        "model_type": "student", "student_name": "gdn_v4", "keep_full_attention_layers": [1], "qk_norm": true,
        "qkv_bias": false, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "tie_word_embeddings": true,
        "norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "swish", "intermediate_size": 96, "window_size": null,
        "teacher_model_type": "qwen3", "torch_dtype": "bfloat16",
    });
    for (k, want) in expect.as_object().unwrap() {
        assert_eq!(&c[k], want, "reference config.json field {k}");
    }
}

#[test]
fn half_precision_exports_round_to_their_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let ck = student(Arch::Qwen2, false, 90);
    for (dtype, round) in [
        (FloatDtype::F16, (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32),
        (FloatDtype::BF16, |x: f32| half::bf16::from_f32(x).to_f32()),
    ] {
        for format in [Format::Fla, Format::Reference] {
            let out = dir.path().join(format!("{}-{}", format.name(), dtype.name()));
            export::save_export(&out, &ck, format, dtype).unwrap();
            assert_eq!(read_json(&out.join("config.json"))["torch_dtype"], dtype.torch_name());
            let back = io::load_student(&out).unwrap();
            assert_eq!(back.config, ck.config);
            for (name, t) in &ck.tensors {
                let want: Vec<f32> = t.data.iter().map(|&x| round(x)).collect();
                assert!(back.tensors[name].data == want, "{name} in {}: not the {} rounding", format.name(), dtype.name());
            }
        }
    }
}

#[test]
fn fla_refuses_what_it_cannot_express_and_reference_carries_it() {
    let dir = tempfile::tempdir().unwrap();
    let qwen3 = student(Arch::Qwen3, false, 100);
    let mut scaled = student(Arch::Llama, false, 101);
    scaled.config.base.rope_scaling = Some(RopeScaling::Linear { factor: 2.0 });
    let mut eps = student(Arch::Llama, false, 102);
    eps.config.base.rms_norm_eps = 1e-6;
    let mut heads = student(Arch::Llama, false, 103);
    heads.config.base.head_dim = 8;
    for (ck, named) in [(&qwen3, "q/k norms"), (&scaled, "RoPE scaling"), (&eps, "rms_norm_eps 0.000001"), (&heads, "head_dim 8")] {
        let out = dir.path().join("refused");
        let e = export::save_export(&out, ck, Format::Fla, FloatDtype::F32).unwrap_err().to_string();
        assert!(e.contains(named) && e.contains("--to reference"), "{e}");
        assert!(!out.exists(), "a refused export wrote {}", out.display());
    }
    // the reference layout carries q/k norms, RoPE scaling and the norms' epsilon
    for (i, ck) in [&qwen3, &scaled, &eps].into_iter().enumerate() {
        let out = dir.path().join(format!("reference-{i}"));
        let done = export::save_export(&out, ck, Format::Reference, FloatDtype::F32).unwrap();
        assert_eq!(done.warnings.is_empty(), ck.config.base.rope_scaling.is_none(), "{:?}", done.warnings);
        let back = io::load_student(&out).unwrap();
        assert!(back.config == ck.config && back.tensors == ck.tensors, "reference round trip {i}");
    }
    let ids = toks(20, qwen3.config.base.vocab_size, 1);
    let back = io::load_student(&dir.path().join("reference-0")).unwrap();
    assert_eq!(gpu_logits(&back, &ids), gpu_logits(&qwen3, &ids));
}

/// `path`'s tensors as taylorcal reads them, changed by `edit`, written back (f32).
fn edit_tensors(path: &Path, edit: impl FnOnce(&mut HashMap<String, HostTensor>)) {
    let mut t = hf::read_safetensors(path).unwrap();
    edit(&mut t);
    write_safetensors_as(path, &t, safetensors::Dtype::F32);
}

#[test]
fn malformed_exports_are_refused_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ck = student(Arch::Llama, false, 110);
    let fresh = |format: Format| {
        let out = dir.path().join(format.name());
        export::save_export(&out, &ck, format, FloatDtype::F32).unwrap();
        out
    };
    let load_err = |out: &Path| format!("{:#}", io::load_student(out).map(drop).unwrap_err());
    // config.json fields: each edit, and the words the error must hold
    type Edit = fn(&mut Value);
    let cases: [(Format, Edit, &[&str]); 10] = [
        (Format::Fla, |v| v["num_heads"] = json!("4"), &["field 'num_heads'", "must be a non-negative integer"]),
        (Format::Fla, |v| v["attn"]["layers"] = json!("1"), &["field 'attn.layers'", "a list of non-negative integers"]),
        (Format::Fla, |v| v["use_short_conv"] = json!(true), &["use_short_conv true is not supported", "short convolution"]),
        (Format::Fla, |v| drop(v.as_object_mut().unwrap().remove("use_short_conv")), &["use_short_conv true (the default"]),
        (Format::Fla, |v| v["expand_v"] = json!(2), &["expand_v 2 is not supported"]),
        (Format::Fla, |v| v["norm_eps"] = json!(1e-6), &["norm_eps 0.000001 is not supported", "output norm"]),
        (Format::Fla, |v| v["attn"]["window_size"] = json!(512), &["attn.window_size 512 is not supported"]),
        (Format::Reference, |v| v["student_name"] = json!("gdn_v1"), &["student_name gdn_v1 is not supported", "gdn_v4"]),
        (Format::Reference, |v| drop(v.as_object_mut().unwrap().remove("student_name")), &["missing required field 'student_name'"]),
        (Format::Reference, |v| v["keep_full_attention_layers"] = json!([7]), &["kept layer 7 does not exist"]),
    ];
    for (format, edit, words) in cases {
        let out = fresh(format);
        let config = out.join("config.json");
        let mut v = read_json(&config);
        edit(&mut v);
        write_json(&config, &v);
        let e = load_err(&out);
        assert!(e.contains(s(&config)) && words.iter().all(|w| e.contains(w)), "{words:?}: {e}");
    }
    // tensors: a missing one, a wrong shape, one with no place
    let out = fresh(Format::Fla);
    let file = out.join("model.safetensors");
    edit_tensors(&file, |t| drop(t.remove("model.layers.0.attn.A_log")));
    let e = load_err(&out);
    assert!(e.contains(s(&out)) && e.contains("missing tensor model.layers.0.attn.A_log"), "{e}");
    edit_tensors(&file, |t| drop(t.insert("model.layers.0.attn.A_log".into(), HostTensor::new(vec![3], vec![0.5; 3]))));
    let e = load_err(&out);
    assert!(e.contains("tensor model.layers.0.attn.A_log has shape [3], expected [4]"), "{e}");
    edit_tensors(&file, |t| {
        t.insert("model.layers.0.attn.A_log".into(), HostTensor::new(vec![4], vec![0.5; 4]));
        t.insert("model.layers.0.attn.q_conv1d.weight".into(), HostTensor::new(vec![64, 1, 4], vec![0.5; 256]));
    });
    let e = load_err(&out);
    assert!(e.contains("'model.layers.0.attn.q_conv1d.weight' has no place in the fla student"), "{e}");
    // a model_type no loader knows: the teacher loader's error names the file and the students' types
    let config = out.join("config.json");
    let mut v = read_json(&config);
    v["model_type"] = json!("mamba");
    write_json(&config, &v);
    assert!(!io::is_student(&out));
    let e = format!("{:#}", io::load_model(&out).map(drop).unwrap_err());
    assert!(e.contains("'mamba'") && e.contains(s(&config)) && e.contains("gated_deltanet"), "{e}");
}

/// The CLI's `--out` rules, as every command that writes a directory follows them.
#[test]
fn export_out_never_touches_a_users_files() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| taylorcal_in(dir.path(), args);
    let studs = dir.path().join("student");
    checkpoint::save_checkpoint(&studs, &student(Arch::Llama, false, 120)).unwrap();
    let export_to =
        |out: &Path, extra: &[&str]| run(&[&["export", "--model", s(&studs), "--to", "fla", "--out", s(out)][..], extra].concat());
    // a directory of the user's: refused, untouched; with --force, the export beside the file
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    let (ok, _, err) = export_to(&mine, &[]);
    assert!(!ok && err.contains(s(&mine)) && err.contains("--force") && err.contains("notes.txt"), "{err}");
    assert_eq!(std::fs::read_dir(&mine).unwrap().count(), 1, "something was written into the refused directory");
    let (ok, _, err) = export_to(&mine, &["--force"]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(mine.join("notes.txt")).unwrap(), "my notes");
    assert_eq!(io::load_student(&mine).unwrap().tensors, io::load_student(&studs).unwrap().tensors);
    // its own export is written over without --force; one a Python tool saved over is not
    let (ok, _, err) = run(&["export", "--model", s(&studs), "--to", "reference", "--out", s(&mine)]);
    assert!(ok, "{err}");
    let config = mine.join("config.json");
    let mut v = read_json(&config);
    v["transformers_version"] = json!("4.56.0");
    write_json(&config, &v);
    let (ok, _, err) = export_to(&mine, &[]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert_eq!(read_json(&config), v, "the Python tool's config.json was written over");
    // a Hugging Face model directory of the same file names is the user's
    let hf_dir = dir.path().join("hf");
    let cfg = tiny_config(Arch::Llama);
    hf::save_hf_dir(&hf_dir, &cfg, &random_tensors(&cfg, 3), Some(&tiny_tokenizer())).unwrap();
    let before = std::fs::read(hf_dir.join("model.safetensors")).unwrap();
    let (ok, _, err) = export_to(&hf_dir, &[]);
    assert!(!ok && err.contains("config.json"), "{err}");
    assert_eq!(std::fs::read(hf_dir.join("model.safetensors")).unwrap(), before);
    // the input itself, and a layout that cannot hold the student: refused, nothing created
    let (ok, _, err) = export_to(&studs, &["--force"]);
    assert!(!ok && err.contains("would write over the input model"), "{err}");
    let qwen3 = dir.path().join("qwen3");
    checkpoint::save_checkpoint(&qwen3, &student(Arch::Qwen3, false, 121)).unwrap();
    let new = dir.path().join("new");
    let (ok, _, err) = run(&["export", "--model", s(&qwen3), "--to", "fla", "--out", s(&new)]);
    assert!(!ok && err.contains("q/k norms") && err.contains("--to reference"), "{err}");
    assert!(!new.exists());
    // a teacher is no student
    let (ok, _, err) = run(&["export", "--model", s(&hf_dir), "--to", "fla", "--out", s(&new)]);
    assert!(!ok && err.contains("is not a hybrid student"), "{err}");
}
