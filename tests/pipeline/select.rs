//! Retained-layer policies (src/select) on tiny random teachers: uniform's index lists,
//! AR finding the one decisive attention layer, GA-S2 scoring every layer. (`taylorcal
//! select` itself is tested in tests/cli.rs.)
use crate::common::tiny::*;
use crate::common::*;
use taylorcal::eval;
use taylorcal::io::Arch;
use taylorcal::nn::decoder::Decoder;
use taylorcal::select::{self, Inputs, Policy};

#[test]
fn uniform_takes_every_kth_layer_from_zero() {
    // k = max(1, layers / n), n layers: 0, k, 2k, ...
    let cases: [(usize, usize, Vec<usize>); 6] = [
        (28, 7, vec![0, 4, 8, 12, 16, 20, 24]),
        (30, 8, vec![0, 3, 6, 9, 12, 15, 18, 21]),
        (30, 7, vec![0, 4, 8, 12, 16, 20, 24]),
        (4, 4, vec![0, 1, 2, 3]),
        (5, 1, vec![0]),
        (5, 2, vec![0, 2]),
    ];
    for (layers, n, want) in cases {
        assert_eq!(select::uniform(layers, n).unwrap(), want, "({layers}, {n})");
    }
    let e = select::uniform(4, 0).unwrap_err().to_string();
    assert!(e.contains("at least 1"), "{e}");
    let e = select::uniform(4, 5).unwrap_err().to_string();
    assert!(e.contains("cannot keep 5") && e.contains("only 4"), "{e}");
    assert_eq!(Policy::parse("ga-s2").unwrap(), Policy::GaS2);
    assert_eq!(Policy::parse("ar").unwrap().name(), "ar");
    let e = Policy::parse("best").unwrap_err().to_string();
    assert!(e.contains("unknown policy 'best'") && e.contains("ga-s2"), "{e}");
}

#[test]
fn top_n_breaks_ties_by_lower_index_and_ranks_nan_last() {
    assert_eq!(select::top_n(&[1.0, 3.0, 3.0, 2.0], 2, true).unwrap(), vec![1, 2]);
    assert_eq!(select::top_n(&[1.0, 3.0, 3.0, 3.0], 2, true).unwrap(), vec![1, 2]);
    assert_eq!(select::top_n(&[f64::NAN, 3.0, 1.0], 1, false).unwrap(), vec![2]);
    assert_eq!(select::top_n(&[f64::NAN, 3.0, 1.0], 1, true).unwrap(), vec![1]);
}

#[test]
fn kept_layers_prefer_the_policy_then_the_list_then_every_kth() {
    let s = select::Selection { policy: Policy::Ar, keep: vec![2], scores: vec![0.5, f64::NAN, 2.0], teacher_ppl: 9.0, seconds: 1.5 };
    assert_eq!(select::kept_layers(10, Some(&s), None, None).unwrap(), vec![2]);
    assert_eq!(select::kept_layers(10, None, Some(&[1, 3]), Some(2)).unwrap(), vec![1, 3]);
    assert_eq!(select::kept_layers(10, None, None, Some(3)).unwrap(), vec![0, 3, 6, 9]);
    assert_eq!(select::kept_layers(10, None, None, None).unwrap(), vec![0, 4, 8]);
    assert_eq!(select::DEFAULT_KEEP_EVERY, 4);
    let e = select::kept_layers(10, None, None, Some(0)).unwrap_err().to_string();
    assert!(e.contains("--keep-every must be at least 1"), "{e}");
    // the selection serialises as the reports write it: NaN as null, with what a score means
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v,
        serde_json::json!({ "policy": "ar", "keep": [2], "scores": [0.5, null, 2.0], "score": Policy::Ar.score_meaning(), "teacher_ppl": 9.0, "seconds": 1.5 })
    );
}

/// A 3-layer teacher whose layer `decisive` carries a large attention output while the
/// others' W_o are scaled by 1e-3 (their attention is nearly a no-op), with a sharpened LM
/// head; the evaluation text is the teacher's own greedy continuation, which it predicts
/// confidently. Bypassing a 1e-3 layer barely moves the hidden states, so its perplexity
/// increase is ~0; bypassing the decisive layer changes every later hidden state by O(1)
/// and so the confident predictions: its increase is the largest.
#[test]
fn ar_ranks_the_decisive_attention_layer_first() {
    let g = gpu();
    let decisive = 1;
    let mut cfg = tiny_config(Arch::Llama);
    cfg.num_hidden_layers = 3;
    let mut tensors = random_tensors(&cfg, 71);
    for l in 0..3 {
        let scale = if l == decisive { 4.0 } else { 1e-3 };
        tensors.get_mut(&format!("model.layers.{l}.self_attn.o_proj.weight")).unwrap().data.iter_mut().for_each(|w| *w *= scale);
    }
    tensors.get_mut("lm_head.weight").unwrap().data.iter_mut().for_each(|w| *w *= 4.0);
    let teacher = Decoder::build(g, &cfg, &tensors, "decisive", |_| false).unwrap();
    let mut r = rng(72);
    let prompt: Vec<u32> = (0..8).map(|_| rand::Rng::random_range(&mut r, 3..cfg.vocab_size as u32)).collect();
    let mut text = prompt.clone();
    text.extend(eval::generate(g, &teacher, &prompt, 40, None, |_| {}).unwrap());
    let windows = vec![&text[..]];
    let s = select::ar(g, &teacher, 1, &windows, |_, _| {}).unwrap();
    eprintln!("teacher ppl {:.3}, AR scores {:?}", s.teacher_ppl, s.scores);
    assert_eq!(s.policy, Policy::Ar);
    assert_eq!(s.keep, vec![decisive]);
    assert_eq!(s.scores.len(), 3);
    assert!(s.scores.iter().all(|v| v.is_finite()));
    // the near-no-op layers barely matter
    for l in (0..3).filter(|&l| l != decisive) {
        assert!(s.scores[l].abs() < 0.1 * s.scores[decisive], "layer {l}: {:?}", s.scores);
    }
    // same answer through the generic entry point, and a ranking for N = 2
    let inp = Inputs {
        teacher: &teacher,
        tensors: &tensors,
        eval: &windows,
        calib: &[],
        capture_windows: 1,
        value_scale: taylorcal::calibrate::phase1::ValueScale::Fit,
        phase1_knobs: Default::default(),
        seed: 0,
    };
    assert_eq!(select::select(g, Policy::Ar, 1, &inp, |_, _| {}).unwrap().keep, vec![decisive]);
    let two = select::top_n(&s.scores, 2, true).unwrap();
    assert!(two.contains(&decisive) && two.len() == 2);
    let u = select::select(g, Policy::Uniform, 2, &inp, |_, _| {}).unwrap();
    assert_eq!(u.keep, vec![0, 1]);
    assert!(u.scores.iter().all(|v| v.is_nan()));
}

#[test]
fn ga_s2_scores_every_layer_from_one_teacher_pass() {
    let g = gpu();
    let mut cfg = tiny_config(Arch::Llama);
    cfg.num_hidden_layers = 3;
    let files = hf_round_trip(&cfg, &random_tensors(&cfg, 81));
    let teacher = Decoder::new(g, &files).unwrap();
    let mut r = rng(82);
    let ids: Vec<u32> = (0..240).map(|_| rand::Rng::random_range(&mut r, 0..cfg.vocab_size as u32)).collect();
    let calib = taylorcal::data::windows(&ids[..144], 48, 3, "calib").unwrap();
    let evalw = taylorcal::data::windows(&ids[144..], 48, 2, "eval").unwrap();
    let inp = Inputs {
        teacher: &teacher,
        tensors: &files.tensors,
        eval: &evalw,
        calib: &calib,
        capture_windows: 2,
        value_scale: taylorcal::calibrate::phase1::ValueScale::Fit,
        phase1_knobs: Default::default(),
        seed: 5,
    };
    let mut calls = vec![];
    let s = select::select(g, Policy::GaS2, 2, &inp, |d, t| calls.push((d, t))).unwrap();
    eprintln!("GA-S2 scores {:?}, keep {:?}, {:.2} s", s.scores, s.keep, s.seconds);
    assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(s.scores.len(), 3);
    assert!(s.scores.iter().all(|v| v.is_finite() && *v > 1.0), "{:?}", s.scores);
    assert_eq!(s.keep.len(), 2);
    assert!(s.keep.windows(2).all(|w| w[0] < w[1]) && s.keep.iter().all(|&l| l < 3));
    // the kept layers are the two lowest-perplexity students
    let worst = (0..3).find(|l| !s.keep.contains(l)).unwrap();
    assert!(s.keep.iter().all(|&l| s.scores[l] <= s.scores[worst]));
    assert!(s.seconds > 0.0);
    assert!(select::select(g, Policy::GaS2, 4, &inp, |_, _| {}).is_err());
}
