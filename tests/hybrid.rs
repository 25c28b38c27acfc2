//! The hybrid checkpoint format and the naive student's initial weights.
mod common;
use common::tiny::*;
use taylorcal::calibrate::phase1::softplus;
use taylorcal::io::checkpoint::{self, Checkpoint, HybridConfig};
use taylorcal::io::Arch;

fn setup() -> (HybridConfig, std::collections::HashMap<String, taylorcal::io::HostTensor>) {
    let cfg = tiny_config(Arch::Qwen2); // GQA 4/2 heads, q/k/v biases
    let teacher = random_tensors(&cfg, 41);
    (HybridConfig::new(cfg, vec![1]).unwrap(), teacher)
}

#[test]
fn converted_layer_starts_from_the_teacher_q_o_and_repeated_kv() {
    let (cfg, teacher) = setup();
    let s = taylorcal::calibrate::init::init_student(&cfg, &teacher, 7).unwrap();
    let c = &cfg.base;
    let (dm, h, hkv, d) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    // layer 0 is converted: Q and O copied
    assert_eq!(s["model.layers.0.attn.q_proj.weight"], teacher["model.layers.0.self_attn.q_proj.weight"]);
    assert_eq!(s["model.layers.0.attn.o_proj.weight"], teacher["model.layers.0.self_attn.o_proj.weight"]);
    // K/V: head hh row r equals teacher kv head hh / (h / hkv) row r, written out by index
    for name in ["k_proj", "v_proj"] {
        let st = &s[&format!("model.layers.0.attn.{name}.weight")];
        let tt = &teacher[&format!("model.layers.0.self_attn.{name}.weight")];
        assert_eq!(st.shape, vec![h * d, dm]);
        for hh in 0..h {
            for r in 0..d {
                let src = ((hh * hkv / h) * d + r) * dm;
                assert_eq!(&st.data[(hh * d + r) * dm..(hh * d + r + 1) * dm], &tt.data[src..src + dm]);
            }
        }
    }
    // teacher biases of converted layers are dropped; the kept layer keeps everything
    assert!(!s.keys().any(|k| k.starts_with("model.layers.0.self_attn.") || k.ends_with("proj.bias") && k.starts_with("model.layers.0.")));
    assert_eq!(s["model.layers.1.self_attn.q_proj.bias"], teacher["model.layers.1.self_attn.q_proj.bias"]);
    assert_eq!(s["model.layers.0.mlp.down_proj.weight"], teacher["model.layers.0.mlp.down_proj.weight"]);
    // new parameters at fla's defaults
    let dt: Vec<f64> = s["model.layers.0.attn.dt_bias"].data.iter().map(|&b| softplus(b as f64)).collect();
    assert!(dt.iter().all(|&x| (0.99e-3..=0.1001).contains(&x)), "dt {dt:?}");
    assert!(s["model.layers.0.attn.A_log"].data.iter().all(|&a| a < 16f32.ln()));
    assert!(s["model.layers.0.attn.o_norm.weight"].data.iter().all(|&w| w == 1.0));
    let names: Vec<_> = checkpoint::expected_tensors(&cfg).into_iter().map(|(n, _)| n).collect();
    let mut have: Vec<_> = s.keys().cloned().collect();
    let mut want = names.clone();
    have.sort();
    want.sort();
    assert_eq!(have, want);
}

#[test]
fn checkpoint_round_trips() {
    let (cfg, teacher) = setup();
    let tensors = taylorcal::calibrate::init::init_student(&cfg, &teacher, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let ck = Checkpoint {
        config: cfg.clone(),
        tensors: tensors.clone(),
        tokenizer: None,
        report: serde_json::json!({"strategy": "naive"}),
        optimizer: None,
        files: vec![],
    };
    checkpoint::save_checkpoint(&out, &ck).unwrap();
    assert!(checkpoint::is_checkpoint(&out));
    let back = checkpoint::load_checkpoint(&out).unwrap();
    assert_eq!(back.config, cfg);
    assert_eq!(back.tensors, tensors);
    assert_eq!(back.report["strategy"], "naive");
    let text = std::fs::read_to_string(out.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["model_type"], "taylorcal_hybrid");
    assert_eq!(v["attn_layers"], serde_json::json!([1]));
    for k in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "rms_norm_eps",
        "rope_theta",
        "tie_word_embeddings",
        "gdn_use_silu",
        "gdn_norm_eps",
        "gdn_chunk_size",
    ] {
        assert!(!v[k].is_null(), "config.json lacks {k}");
    }
}

#[test]
fn interrupted_write_leaves_no_half_checkpoint() {
    let (cfg, teacher) = setup();
    let tensors = taylorcal::calibrate::init::init_student(&cfg, &teacher, 7).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("student");
    let ck =
        Checkpoint { config: cfg.clone(), tensors, tokenizer: None, report: serde_json::json!({"v": 1}), optimizer: None, files: vec![] };
    // first write fails after the files were written, before publishing: nothing appears
    let r = checkpoint::save_checkpoint_with(&out, &ck, || anyhow::bail!("simulated crash"));
    assert!(r.is_err());
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temporary files left behind");
    // a good checkpoint, then a failed overwrite: the old one survives intact
    checkpoint::save_checkpoint(&out, &ck).unwrap();
    let ck2 = Checkpoint { report: serde_json::json!({"v": 2}), ..ck };
    assert!(checkpoint::save_checkpoint_with(&out, &ck2, || anyhow::bail!("simulated crash")).is_err());
    assert_eq!(checkpoint::load_checkpoint(&out).unwrap().report["v"], 1);
    checkpoint::save_checkpoint(&out, &ck2).unwrap();
    assert_eq!(checkpoint::load_checkpoint(&out).unwrap().report["v"], 2);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn bad_kept_layer_is_a_clear_error() {
    let (cfg, _) = setup();
    let e = HybridConfig::new(cfg.base.clone(), vec![0, 9]).unwrap_err().to_string();
    assert!(e.contains("kept layer 9") && e.contains("2 layers"), "{e}");
}
