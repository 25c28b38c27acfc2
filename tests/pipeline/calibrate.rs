//! Taylor-Calibrate conversion (src/calibrate) on a tiny random teacher: the naive
//! student's initial weights (init.rs), the teacher capture, phase 1's settings, phase 2
//! lowering the layer MSE, and every strategy end to end (convert.rs).
use crate::common::student::{bare_checkpoint, tiny_hybrid};
use crate::common::tiny::*;
use crate::common::*;
use taylorcal::calibrate::convert::{self, ConvertOpts};
use taylorcal::calibrate::init::init_student;
use taylorcal::calibrate::phase1;
use taylorcal::calibrate::phase2::AlignOpts;
use taylorcal::calibrate::strategy::Strategy;
use taylorcal::eval;
use taylorcal::io::checkpoint::{self, gdn_name, HybridConfig};
use taylorcal::io::Arch;
use taylorcal::nn::decoder::Decoder;

fn setup() -> (taylorcal::io::ModelFiles, HybridConfig, Vec<u32>) {
    let cfg = tiny_config(Arch::Llama);
    let files = hf_round_trip(&cfg, &random_tensors(&cfg, 61));
    let hc = HybridConfig::new(cfg.clone(), vec![0]).unwrap();
    let mut r = rng(62);
    let ids: Vec<u32> = (0..400).map(|_| rand::Rng::random_range(&mut r, 0..cfg.vocab_size as u32)).collect();
    (files, hc, ids)
}

fn opts(strategy: Strategy, steps: usize) -> ConvertOpts {
    ConvertOpts {
        keep: vec![0],
        strategy,
        seq_len: 48,
        calib_tokens: 96,
        capture_windows: 2,
        align: AlignOpts { steps, ..Default::default() },
        value_scale: taylorcal::calibrate::phase1::ValueScale::Fit,
        phase1_knobs: Default::default(),
        seed: 3,
    }
}

#[test]
fn converted_layer_starts_from_the_teacher_q_o_and_repeated_kv() {
    let (cfg, teacher) = tiny_hybrid(vec![1], 41);
    let s = init_student(&cfg, &teacher, 7).unwrap();
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
    let dt: Vec<f64> = s["model.layers.0.attn.dt_bias"].data.iter().map(|&b| phase1::softplus(b as f64)).collect();
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

/// The tiny teacher's capture over 3 windows of 48 tokens (activations of the first 2) and
/// a naive student's tensors.
fn captured() -> (taylorcal::calibrate::capture::Capture, std::collections::HashMap<String, taylorcal::io::HostTensor>) {
    let (files, hc, ids) = setup();
    let g = gpu();
    let teacher = Decoder::new(g, &files).unwrap();
    let windows = taylorcal::data::windows(&ids, 48, 3, "text").unwrap();
    let cap = taylorcal::calibrate::capture::capture(g, &teacher, &hc.gdn_layers(), &windows, 2, |_| {}).unwrap();
    (cap, init_student(&hc, &files.tensors, 3).unwrap())
}

#[test]
fn phase1_sets_decay_from_distance_and_alignment_lowers_the_mse() {
    let g = gpu();
    let (cap, mut tensors) = captured();
    assert_eq!(cap.seqs, (2, 48));
    assert_eq!(cap.stat_tokens, 144);
    let l = cap.layers[0];
    let wv0 = tensors[&gdn_name(cap.layers[0], "v_proj.weight")].data.clone();
    let rep = taylorcal::calibrate::phase1::phase1_layer(
        g,
        &mut tensors,
        &cap,
        0,
        taylorcal::calibrate::phase1::ValueScale::Fit,
        &Default::default(),
    )
    .unwrap();
    // the fitted scale is what went into W_v
    assert_eq!(rep.sigma_applied, rep.sigma);
    assert_rows_scaled(&wv0, &tensors[&gdn_name(cap.layers[0], "v_proj.weight")].data, &rep.sigma);
    assert!(tensors[&gdn_name(l, "A_log")].data.iter().all(|&a| a == 0.0));
    for (h, &d) in cap.stats[l].distance.iter().enumerate() {
        let r = phase1::softplus(tensors[&gdn_name(l, "dt_bias")].data[h] as f64);
        assert!((r - phase1::decay_rate(d as f64)).abs() < 1e-5, "head {h}");
    }
    assert!(rep.sigma.iter().all(|s| (0.1..=10.0).contains(s)));
    // W_g = alpha W_v after phase 1
    let (wg, wv) = (&tensors[&gdn_name(l, "g_proj.weight")].data, &tensors[&gdn_name(l, "v_proj.weight")].data);
    assert!(wg.iter().zip(wv).all(|(g, v)| (g - rep.alpha * v).abs() <= 1e-6 * v.abs().max(1e-3)));
    let a = taylorcal::calibrate::phase2::align_layer(
        g,
        &mut tensors,
        &cap,
        0,
        &AlignOpts { steps: 30, lr_qkv: 1e-3, lr_gates: 1e-2, ..Default::default() },
        |_, _| {},
    )
    .unwrap();
    eprintln!("alignment: loss {:.4e} -> {:.4e}, cosine {:.4} -> {:.4}", a.initial_loss, a.final_loss, a.initial_cosine, a.final_cosine);
    assert!(a.final_loss < 0.9 * a.initial_loss, "{a:?}");
    assert!(a.final_cosine > a.initial_cosine);
}

/// W_v's rows of head h (head_dim rows of `before.len() / heads / head_dim` columns each)
/// equal `before`'s times scale[h].
fn assert_rows_scaled(before: &[f32], after: &[f32], scale: &[f32]) {
    let per_head = before.len() / scale.len();
    for (h, s) in scale.iter().enumerate() {
        for j in h * per_head..(h + 1) * per_head {
            assert!((after[j] - before[j] * s).abs() <= 1e-6 * before[j].abs().max(1e-6), "head {h} element {j}");
        }
    }
}

#[test]
fn linear_value_scale_brings_each_heads_preactivation_to_tau() {
    let g = gpu();
    let (cap, mut tensors) = captured();
    let l = cap.layers[0];
    let wv0 = tensors[&gdn_name(l, "v_proj.weight")].data.clone();
    let tau = 0.3;
    let rep = taylorcal::calibrate::phase1::phase1_layer(
        g,
        &mut tensors,
        &cap,
        0,
        taylorcal::calibrate::phase1::ValueScale::Linear { tau },
        &Default::default(),
    )
    .unwrap();
    // pre-activation RMS per head of W_v x on the captured inputs, on the CPU in f64
    let x = g.read(&cap.x[0]).unwrap();
    let (dm, heads) = (cap.x[0].cols(), rep.sigma.len());
    let hd = wv0.len() / dm / heads;
    for h in 0..heads {
        let mut ss = 0.0f64;
        let mut n = 0usize;
        for row in x.chunks(dm) {
            for r in h * hd..(h + 1) * hd {
                let z: f64 = row.iter().zip(&wv0[r * dm..(r + 1) * dm]).map(|(a, b)| *a as f64 * *b as f64).sum();
                ss += z * z;
                n += 1;
            }
        }
        let rms = (ss / n as f64).sqrt();
        assert!((rep.value_preact_rms[h] as f64 - rms).abs() <= 1e-4 * rms, "head {h}: {} vs {rms}", rep.value_preact_rms[h]);
        let want = (tau as f64 / rms).clamp(0.1, 10.0);
        assert!((rep.sigma_applied[h] as f64 - want).abs() <= 1e-4 * want, "head {h}: sigma {} vs {want}", rep.sigma_applied[h]);
    }
    // the fit is still computed and reported, but W_v got the linear-regime scale
    assert!(rep.sigma.iter().all(|s| (0.1..=10.0).contains(s)));
    assert_rows_scaled(&wv0, &tensors[&gdn_name(l, "v_proj.weight")].data, &rep.sigma_applied);
}

#[test]
fn every_strategy_converts_and_the_checkpoint_evaluates() {
    let (files, hc, ids) = setup();
    let g = gpu();
    let teacher = Decoder::new(g, &files).unwrap();
    let eval_windows = taylorcal::data::windows(&ids[300..], 48, 2, "eval").unwrap();
    let teacher_ppl = eval::perplexity_windows(g, &teacher, &eval_windows).unwrap().ppl;
    let dir = tempfile::tempdir().unwrap();
    for s in Strategy::ALL {
        let convert::Conversion { tensors, layers: reports, timings, .. } =
            convert::convert(g, &hc, &teacher, &files.tensors, &ids[..300], &opts(s, 5), |_| {}).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].phase1.is_some(), s.phase1(), "{s:?}");
        assert_eq!(reports[0].alignment.is_some(), s.phase2(), "{s:?}");
        let out = dir.path().join(s.name());
        let ck = bare_checkpoint(hc.clone(), tensors, serde_json::json!({"strategy": s.name(), "timings": timings}));
        checkpoint::save_checkpoint(&out, &ck).unwrap();
        let back = checkpoint::load_checkpoint(&out).unwrap();
        let student = Decoder::from_checkpoint(g, &back).unwrap();
        let r = eval::perplexity_windows(g, &student, &eval_windows).unwrap();
        eprintln!("{:16} ppl {:.2} (teacher {teacher_ppl:.2})", s.name(), r.ppl);
        assert!(r.ppl.is_finite() && r.ppl > 1.0);
    }
}

#[test]
fn calibration_windows_cover_the_tokens_and_the_captured_windows() {
    let o = |calib_tokens, capture_windows| ConvertOpts { calib_tokens, capture_windows, ..ConvertOpts::default() };
    assert_eq!(o(1024, 4).calib_windows(), 4);
    assert_eq!(o(1025, 4).calib_windows(), 5);
    assert_eq!(o(100, 4).calib_windows(), 4);
    assert_eq!(o(65536, 4).calib_windows(), 256);
    assert_eq!(ConvertOpts { seq_len: 48, ..o(96, 2) }.calib_windows(), 2);
}

#[test]
fn unknown_strategy_is_a_clear_error() {
    let e = Strategy::parse("taylor").unwrap_err().to_string();
    assert!(e.contains("unknown strategy 'taylor'") && e.contains("taylor-calibrate"), "{e}");
}
