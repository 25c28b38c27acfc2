//! Causal GQA softmax attention with its fused statistics, and its backward
//! (src/ops/attention.rs, shaders/attention.wgsl and attention_bwd.wgsl): the GPU kernels
//! against the f64 reference, the f64 backward against finite differences.
use crate::common::*;
use taylorcal::gpu::GpuOptions;
use taylorcal::ops::attention::{self, AttnBwdScratch, AttnShape};

// ---------------------------------------------------------------------------------------
// forward

fn check_attention(t: usize, h: usize, hkv: usize, d: usize, pos0: usize, qscale: f32, seed: u64) {
    let g = gpu();
    let mut r = rng(seed);
    let s = pos0 + t;
    let q = randn(&mut r, t * h * d, qscale);
    let k = randn(&mut r, s * hkv * d, 1.0);
    let v = randn(&mut r, s * hkv * d, 1.0);
    let shape = AttnShape { heads: h, kv_heads: hkv, dim: d, pos0, scale: 1.0 / (d as f32).sqrt(), seqs: 1 };
    let (tq, tk, tv) = (up(g, &[t, h * d], &q), up(g, &[s, hkv * d], &k), up(g, &[s, hkv * d], &v));
    let o = g.zeros(&[t, h * d]).unwrap();
    let st = g.zeros(&[t, h, 2]).unwrap();
    g.run(|b| {
        attention::attention(b, &tq, &tk, &tv, &o, &st, shape);
        Ok(())
    })
    .unwrap();
    let (wo, wst) = attention::cpu::attention(&f64v(&q), &f64v(&k), &f64v(&v), shape);
    let tag = format!("attention t{t} h{h}/{hkv} d{d} pos0 {pos0}");
    assert_close(&format!("{tag} output"), &read(g, &o), &wo, 1e-5);
    let got = read(g, &st);
    let dist: Vec<f32> = got.iter().step_by(2).cloned().collect();
    let ent: Vec<f32> = got.iter().skip(1).step_by(2).cloned().collect();
    assert_close(&format!("{tag} distance"), &dist, &wst.iter().step_by(2).cloned().collect::<Vec<_>>(), 1e-5);
    assert_close(&format!("{tag} entropy"), &ent, &wst.iter().skip(1).step_by(2).cloned().collect::<Vec<_>>(), 1e-5);
}

#[test]
fn attention_and_statistics_match_naive_reference() {
    check_attention(1, 1, 1, 8, 0, 1.0, 10);
    check_attention(63, 4, 2, 64, 0, 3.0, 11);
    check_attention(65, 3, 1, 64, 0, 1.0, 12);
    check_attention(130, 2, 2, 17, 0, 4.0, 13);
    check_attention(5, 6, 3, 128, 40, 2.0, 14); // decode-like: queries after a KV cache
    check_attention(33, 2, 1, 200, 3, 1.0, 15);
}

// ---------------------------------------------------------------------------------------
// backward

fn shape(h: usize, hkv: usize, d: usize) -> AttnShape {
    AttnShape { heads: h, kv_heads: hkv, dim: d, pos0: 0, scale: 1.0 / (d as f64).sqrt() as f32, seqs: 1 }
}

/// loss = sum(dO * O(q, k, v)) in f64.
fn loss(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], s: AttnShape) -> f64 {
    let (o, _) = attention::cpu::attention(q, k, v, s);
    o.iter().zip(dout).map(|(a, b)| a * b).sum()
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let mut r = rng(100);
    let (t, h, hkv, d) = (5, 4, 2, 6);
    let s = shape(h, hkv, d);
    let q = f64v(&randn(&mut r, t * h * d, 3.0));
    let k = f64v(&randn(&mut r, t * hkv * d, 1.0));
    let v = f64v(&randn(&mut r, t * hkv * d, 1.0));
    let dout = f64v(&randn(&mut r, t * h * d, 1.0));
    let (dq, dk, dv) = attention::cpu::attention_backward(&q, &k, &v, &dout, s);
    for (name, which, grad) in [("dq", 0, &dq), ("dk", 1, &dk), ("dv", 2, &dv)] {
        let fd = numeric_grad([&q, &k, &v][which], 1e-5, |xw| {
            let mut x = [q.clone(), k.clone(), v.clone()];
            x[which] = xw.to_vec();
            loss(&x[0], &x[1], &x[2], &dout, s)
        });
        let err = rel_err_f64(grad, &fd);
        eprintln!("{name}: relative error vs central differences {err:.2e}");
        assert!(err < 1e-7, "{name}: relative error {err:.2e} vs central differences");
    }
}

/// GPU backward (forward on the GPU to get o) vs the f64 reference; returns the worst
/// relative error of dq, dk, dv.
/// Both tile heights of the attention kernels (16 and 64 rows per workgroup), forward and
/// backward, each on a context whose options force it.
fn check_backward(t: usize, h: usize, hkv: usize, d: usize, qscale: f32, seed: u64) -> f64 {
    let mut worst: f64 = 0.0;
    for rows in [16, 64] {
        worst = worst.max(check_backward_rows(rows, t, h, hkv, d, qscale, seed));
    }
    worst
}

fn check_backward_rows(rows: usize, t: usize, h: usize, hkv: usize, d: usize, qscale: f32, seed: u64) -> f64 {
    let g = gpu_with(GpuOptions { attention_rows: Some(rows), ..env_options() });
    let mut r = rng(seed);
    let s = shape(h, hkv, d);
    let q = randn(&mut r, t * h * d, qscale);
    let k = randn(&mut r, t * hkv * d, 1.0);
    let v = randn(&mut r, t * hkv * d, 1.0);
    let dout = randn(&mut r, t * h * d, 1.0);
    let (tq, tk, tv, tdo) = (up(g, &[t, h * d], &q), up(g, &[t, hkv * d], &k), up(g, &[t, hkv * d], &v), up(g, &[t, h * d], &dout));
    let o = g.zeros(&[t, h * d]).unwrap();
    let st = g.zeros(&[t, h, 2]).unwrap();
    // gradients start as garbage: the backward must overwrite, not accumulate
    let dq = up(g, &[t, h * d], &vec![7.0; t * h * d]);
    let dk = up(g, &[t, hkv * d], &vec![7.0; t * hkv * d]);
    let dv = up(g, &[t, hkv * d], &vec![7.0; t * hkv * d]);
    let scratch = AttnBwdScratch::new(g, t, h, d).unwrap();
    g.run(|b| {
        attention::attention(b, &tq, &tk, &tv, &o, &st, s);
        attention::attention_backward(b, &tq, &tk, &tv, &o, &tdo, &dq, &dk, &dv, &scratch, s);
        Ok(())
    })
    .unwrap();
    let (wq, wk, wv) = attention::cpu::attention_backward(&f64v(&q), &f64v(&k), &f64v(&v), &f64v(&dout), s);
    // the softmax must be neither uniform nor one-hot for the test to mean anything: the
    // mean over rows i >= 1 of entropy / ln(i + 1) (1 = uniform, 0 = one-hot)
    let stats = read(g, &st);
    let ent = if t > 1 {
        let n = (1..t).map(|i| (0..h).map(|hh| stats[(i * h + hh) * 2 + 1] as f64 / ((i + 1) as f64).ln()).sum::<f64>()).sum::<f64>();
        let ent = n / ((t - 1) * h) as f64;
        assert!((0.2..0.9).contains(&ent), "T{t} H{h} d{d}: normalised entropy {ent:.2}: softmax too flat or too peaked");
        ent
    } else {
        0.0
    };
    let (wo, _) = attention::cpu::attention(&f64v(&q), &f64v(&k), &f64v(&v), s);
    assert_close(&format!("attention forward T{t} H{h}/{hkv} d{d}"), &read(g, &o), &wo, 1e-5);
    let (gq, gk, gv) = (read(g, &dq), read(g, &dk), read(g, &dv));
    let tag = format!("attention_backward T{t} H{h}/{hkv} d{d} rows/workgroup {rows}");
    let mut worst: f64 = 0.0;
    for (name, got, want) in [("dq", &gq, &wq), ("dk", &gk, &wk), ("dv", &gv, &wv)] {
        worst = worst.max(check_grad(&format!("{tag} {name}"), got, want));
    }
    eprintln!("{tag}: max relative error {worst:.2e} (normalised entropy {ent:.2})");
    worst
}

/// A GPU gradient against its f64 reference: relative error <= 1e-4 (returned), or, where
/// the reference is exactly zero (T = 1: one key, p = 1, dp = delta, so dq = dk = 0), at
/// most 1e-5 in magnitude (f32 leaves rounding; 0 returned).
fn check_grad(what: &str, got: &[f32], want: &[f64]) -> f64 {
    assert!(got.iter().all(|x| x.is_finite()), "{what}: non-finite");
    if want.iter().all(|x| x.abs() < 1e-12) {
        let e = got.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(e <= 1e-5, "{what}: should be zero, max |.| {e:.3e}");
        return 0.0;
    }
    let e = rel_err(got, want);
    assert!(e <= 1e-4, "{what}: relative error {e:.3e} > 1e-4");
    e
}

#[test]
fn gpu_backward_matches_reference_at_awkward_shapes() {
    let mut worst: f64 = 0.0;
    for &(t, h, hkv, d, seed) in &[
        (1, 3, 3, 8, 1),
        (63, 6, 2, 64, 2),
        (64, 4, 1, 100, 3),
        (65, 3, 3, 128, 4),
        (130, 6, 2, 8, 5),
        (130, 4, 1, 64, 6),
        (65, 6, 2, 100, 7),
    ] {
        worst = worst.max(check_backward(t, h, hkv, d, 6.0, seed));
    }
    eprintln!("worst relative error {worst:.2e}");
}

#[test]
fn gpu_backward_head_dim_256() {
    check_backward(11, 4, 2, 256, 6.0, 8);
    check_backward(3, 2, 1, 200, 6.0, 9);
}

#[test]
#[should_panic(expected = "pos0 must be 0")]
fn backward_refuses_a_kv_cache_offset() {
    let g = gpu();
    let (t, h, d) = (4, 2, 8);
    let x = g.zeros(&[t, h * d]).unwrap();
    let scratch = AttnBwdScratch::new(g, t, h, d).unwrap();
    let s = AttnShape { pos0: 3, ..shape(h, h, d) };
    let mut b = g.batch();
    attention::attention_backward(&mut b, &x, &x, &x, &x, &x, &x, &x, &x, &scratch, s);
}

// ---------------------------------------------------------------------------------------
// batches

/// The f64 reference run on each of `seqs` sequences (slices of equal length of every
/// input) in turn, outputs concatenated.
fn per_seq<const N: usize>(seqs: usize, inputs: &[&[f32]], f: impl Fn(&[Vec<f64>]) -> [Vec<f64>; N]) -> [Vec<f64>; N] {
    let mut out: [Vec<f64>; N] = std::array::from_fn(|_| vec![]);
    for n in 0..seqs {
        let part: Vec<Vec<f64>> = inputs.iter().map(|x| f64v(&x[n * x.len() / seqs..(n + 1) * x.len() / seqs])).collect();
        for (o, r) in out.iter_mut().zip(f(&part)) {
            o.extend(r);
        }
    }
    out
}

/// A batch: `seqs` sequences one after the other in every buffer (the training layout),
/// each attending only to its own keys. Output, statistics and gradients against the f64
/// reference run on each sequence alone, at T = 1, 63, 65, 130, with GQA (split key pass)
/// and without, dims off the tiles, both tile heights.
#[test]
fn a_batch_of_sequences_attends_within_each_sequence() {
    for &(seqs, t, h, hkv, d, seed) in &[(3, 1, 2, 1, 8, 31), (2, 63, 4, 2, 64, 32), (3, 65, 3, 3, 17, 33), (2, 130, 6, 2, 20, 34)] {
        for rows in [16, 64] {
            let g = gpu_with(GpuOptions { attention_rows: Some(rows), ..env_options() });
            let mut r = rng(seed);
            let (n, one) = (seqs * t, shape(h, hkv, d));
            let s = AttnShape { seqs, ..one };
            let (q, k, v, dout) = (
                randn(&mut r, n * h * d, 6.0),
                randn(&mut r, n * hkv * d, 1.0),
                randn(&mut r, n * hkv * d, 1.0),
                randn(&mut r, n * h * d, 1.0),
            );
            let (tq, tk, tv, tdo) = (up(g, &[n, h * d], &q), up(g, &[n, hkv * d], &k), up(g, &[n, hkv * d], &v), up(g, &[n, h * d], &dout));
            let (o, st) = (g.zeros(&[n, h * d]).unwrap(), g.zeros(&[n, h, 2]).unwrap());
            let (dq, dk, dv) = (g.zeros(&[n, h * d]).unwrap(), g.zeros(&[n, hkv * d]).unwrap(), g.zeros(&[n, hkv * d]).unwrap());
            let scratch = AttnBwdScratch::new(g, n, h, d).unwrap();
            g.run(|b| {
                attention::attention(b, &tq, &tk, &tv, &o, &st, s);
                attention::attention_backward(b, &tq, &tk, &tv, &o, &tdo, &dq, &dk, &dv, &scratch, s);
                Ok(())
            })
            .unwrap();
            let [wo, wst] = per_seq(seqs, &[&q, &k, &v], |x| {
                let (o, st) = attention::cpu::attention(&x[0], &x[1], &x[2], one);
                [o, st]
            });
            let [wq, wk, wv] = per_seq(seqs, &[&q, &k, &v, &dout], |x| {
                let (a, b, c) = attention::cpu::attention_backward(&x[0], &x[1], &x[2], &x[3], one);
                [a, b, c]
            });
            let tag = format!("{seqs} x T{t} H{h}/{hkv} d{d} rows/workgroup {rows}");
            assert_close(&format!("{tag} output"), &read(g, &o), &wo, 1e-5);
            assert_close(&format!("{tag} statistics"), &read(g, &st), &wst, 1e-5);
            for (name, got, want) in [("dq", read(g, &dq), wq), ("dk", read(g, &dk), wk), ("dv", read(g, &dv), wv)] {
                check_grad(&format!("{tag} {name}"), &got, &want);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// f16 tiles (attention_mma: cooperative matrices on a GPU that has them, the fallback with
// the same tiles on lavapipe)

fn round16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// `attention_mma` on `seqs` sequences of T queries after pos0 cached keys, against two
/// f64 references run per sequence: on q, k, v rounded to f16 as the kernel stages them,
/// where only the probabilities' rounding to f16 (at most 2^-11 relative each, RMS about
/// 2^-11 / sqrt 3 = 2.8e-4, of random sign over the keys) and f32 sums remain: relative
/// RMS <= 5e-4; and on the given q, k, v, the precision a caller gets: the rounded
/// operands move each score by ~2^-11 |q| |k| scale / sqrt 3 (a few 1e-4 at these scales),
/// which the output carries: <= 2e-3 (the mma GEMM's bound; fla's bf16 tests allow 5e-3).
#[allow(clippy::too_many_arguments)]
fn check_mma(seqs: usize, t: usize, h: usize, hkv: usize, d: usize, pos0: usize, qscale: f32, seed: u64) -> (f64, f64) {
    let g = gpu();
    let mut r = rng(seed);
    let s = AttnShape { heads: h, kv_heads: hkv, dim: d, pos0, scale: 1.0 / (d as f32).sqrt(), seqs };
    let one = AttnShape { seqs: 1, ..s };
    let (n, nk) = (seqs * t, seqs * (pos0 + t));
    let (q, k, v) = (randn(&mut r, n * h * d, qscale), randn(&mut r, nk * hkv * d, 1.0), randn(&mut r, nk * hkv * d, 1.0));
    let o = up(g, &[n, h * d], &vec![7.0; n * h * d]);
    g.run(|b| {
        attention::attention_mma(b, &up(g, &[n, h * d], &q), &up(g, &[nk, hkv * d], &k), &up(g, &[nk, hkv * d], &v), &o, s);
        Ok(())
    })
    .unwrap();
    let got = f64v(&read(g, &o));
    let reference =
        |q: &[f32], k: &[f32], v: &[f32]| per_seq(seqs, &[q, k, v], |x| [attention::cpu::attention(&x[0], &x[1], &x[2], one).0]);
    let [w16] = reference(&round16(&q), &round16(&k), &round16(&v));
    let [w] = reference(&q, &k, &v);
    let (e16, e) = (rel_rms_f64(&got, &w16), rel_rms_f64(&got, &w));
    let tag = format!("attention_mma {seqs} x T{t} H{h}/{hkv} d{d} pos0 {pos0}");
    eprintln!("{tag}: relative RMS {e16:.2e} (f16-rounded operands), {e:.2e} (given operands)");
    assert!(got.iter().all(|x| x.is_finite()), "{tag}: non-finite output");
    assert!(e16 <= 5e-4, "{tag}: relative RMS {e16:.2e} > 5e-4 against the f16-rounded operands");
    assert!(e <= 2e-3, "{tag}: relative RMS {e:.2e} > 2e-3 against the given operands");
    (e16, e)
}

#[test]
fn attention_mma_matches_references_at_awkward_shapes() {
    let g = gpu();
    assert!(taylorcal::ops::mma::available(g), "adapter {} has no SHADER_F16", g.info.name);
    eprintln!("attention_mma path on {}: {:?}", g.info.name, taylorcal::ops::mma::MmaPath::auto(g));
    for &(seqs, t, h, hkv, d, pos0, seed) in &[
        (1, 1, 2, 1, 8, 0, 60),
        (1, 63, 3, 1, 64, 0, 61),
        (1, 65, 4, 2, 17, 0, 62),
        (1, 130, 2, 2, 64, 0, 63),
        (2, 65, 6, 2, 100, 0, 64),
        (1, 70, 2, 1, 128, 0, 65),
        (1, 5, 4, 2, 64, 61, 66), // queries after a KV cache
        (3, 33, 2, 1, 40, 7, 67),
    ] {
        check_mma(seqs, t, h, hkv, d, pos0, 3.0, seed);
    }
}

/// `attention_backward_mma` on `seqs` sequences against the f64 backward run per sequence,
/// on q, k, v, dO rounded to f16 as the kernels stage them (dO after its power-of-two
/// scale, which is exact) and on the given values; o is the f64 forward's (delta = dO.O in
/// f32 then matches the reference). `dscale` sets dO's magnitude: 1e-7 is below f16's
/// normal range, where only the scale keeps its precision. Returns the worst relative RMS
/// error against the rounded operands.
#[allow(clippy::too_many_arguments)]
fn check_backward_mma(seqs: usize, t: usize, h: usize, hkv: usize, d: usize, qscale: f32, dscale: f32, seed: u64) -> f64 {
    let g = gpu();
    let mut r = rng(seed);
    let one = shape(h, hkv, d);
    let s = AttnShape { seqs, ..one };
    let n = seqs * t;
    let (q, k, v) = (randn(&mut r, n * h * d, qscale), randn(&mut r, n * hkv * d, 1.0), randn(&mut r, n * hkv * d, 1.0));
    let dout = randn(&mut r, n * h * d, dscale);
    let [wo] = per_seq(seqs, &[&q, &k, &v], |x| [attention::cpu::attention(&x[0], &x[1], &x[2], one).0]);
    let (tq, tk, tv, tdo, to) = (
        up(g, &[n, h * d], &q),
        up(g, &[n, hkv * d], &k),
        up(g, &[n, hkv * d], &v),
        up(g, &[n, h * d], &dout),
        up(g, &[n, h * d], &f32v(&wo)),
    );
    // gradients start as garbage: the backward must overwrite, not accumulate
    let dq = up(g, &[n, h * d], &vec![7.0; n * h * d]);
    let dk = up(g, &[n, hkv * d], &vec![7.0; n * hkv * d]);
    let dv = up(g, &[n, hkv * d], &vec![7.0; n * hkv * d]);
    let scratch = AttnBwdScratch::new(g, n, h, d).unwrap();
    g.run(|b| {
        attention::attention_backward_mma(b, &tq, &tk, &tv, &to, &tdo, &dq, &dk, &dv, &scratch, s);
        Ok(())
    })
    .unwrap();
    let reference = |q: &[f32], k: &[f32], v: &[f32], dout: &[f32]| {
        per_seq(seqs, &[q, k, v, dout], |x| {
            let (a, b, c) = attention::cpu::attention_backward(&x[0], &x[1], &x[2], &x[3], one);
            [a, b, c]
        })
    };
    // dO as staged: times 2^(6 - floor(log2 max |dO|)), rounded, scaled back (exact)
    let sa = 2f32.powf(6.0 - dout.iter().fold(0.0f32, |m, x| m.max(x.abs())).log2().floor());
    let dout16: Vec<f32> = round16(&dout.iter().map(|x| x * sa).collect::<Vec<_>>()).iter().map(|x| x / sa).collect();
    let w16 = reference(&round16(&q), &round16(&k), &round16(&v), &dout16);
    let w = reference(&q, &k, &v, &dout);
    let tag = format!("attention_backward_mma {seqs} x T{t} H{h}/{hkv} d{d} |dO| {dscale:.0e}");
    let mut worst: f64 = 0.0;
    for (i, (name, got)) in [("dq", read(g, &dq)), ("dk", read(g, &dk)), ("dv", read(g, &dv))].into_iter().enumerate() {
        let got = f64v(&got);
        assert!(got.iter().all(|x| x.is_finite()), "{tag} {name}: non-finite");
        if w[i].iter().all(|x| x.abs() < 1e-30) {
            // T = 1: one key, p = 1, ds = 0, so dq = dk = 0; here ds is dO.v on f16 operands
            // less delta in f32, the rounding of dO and v (~2^-11 |dO| |v| relative, |dO|,
            // |v|, |k| and scale of order 1): observed 1.0e-4
            let e = got.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(e <= 1e-3 * dscale as f64, "{tag} {name}: should be about zero, max |.| {e:.3e}");
            continue;
        }
        let (e16, e) = (rel_rms_f64(&got, &w16[i]), rel_rms_f64(&got, &w[i]));
        eprintln!("{tag} {name}: relative RMS {e16:.2e} (f16-rounded operands), {e:.2e} (given operands)");
        assert!(e16 <= 1e-3, "{tag} {name}: relative RMS {e16:.2e} > 1e-3 against the f16-rounded operands");
        assert!(e <= 2e-3, "{tag} {name}: relative RMS {e:.2e} > 2e-3 against the given operands");
        worst = worst.max(e16);
    }
    worst
}

/// The f16-tile backward (cooperative matrices on a GPU that has them, the fallback with
/// the same tiles on lavapipe) at awkward shapes, GQA, batches, and a dO far below f16's
/// normal range. Bounds: p and ds are rounded to f16 (2^-11 relative each, RMS 2.8e-4) and
/// the sums over keys of ds k partly cancel (sum_j ds_ij = 0): 1e-3 relative RMS against
/// the rounded operands (lavapipe: at most 3.4e-4); the operands' own rounding adds about
/// as much again: 2e-3 against the given ones (at most 5.5e-4; fla's bf16 tests allow 5e-3).
#[test]
fn attention_backward_mma_matches_references_at_awkward_shapes() {
    let mut worst: f64 = 0.0;
    for &(seqs, t, h, hkv, d, dscale, seed) in &[
        (1, 1, 2, 1, 8, 1.0, 70),
        (1, 63, 3, 1, 64, 1.0, 71),
        (1, 65, 4, 2, 17, 1e-7, 72),
        (1, 130, 2, 2, 64, 1.0, 73),
        (2, 65, 6, 2, 100, 1.0, 74),
        (1, 70, 2, 1, 128, 1e-7, 75),
        (3, 33, 2, 1, 40, 1.0, 76),
    ] {
        worst = worst.max(check_backward_mma(seqs, t, h, hkv, d, 3.0, dscale, seed));
    }
    eprintln!("worst relative RMS {worst:.2e}");
}
