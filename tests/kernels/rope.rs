//! Rotary position embedding, forward and backward (src/ops/rope.rs, shaders/rope.wgsl):
//! the GPU kernels against the f64 reference, the f64 backward as the adjoint and inverse
//! of the forward; RoPE scaling (linear, llama3, yarn, per-frequency divisors) against f64
//! references of each formula, and the kernels on scaled tables.
use crate::common::*;
use rand::Rng;
use std::f64::consts::PI;
use taylorcal::io::config::RopeScaling;
use taylorcal::ops::rope;

/// (tokens, heads, head dim, pos0, theta, sequences): batches of 3 sequences of 7 and of
/// 2 of 65 tokens (each sequence from pos0) beside single ones.
const CASES: &[(usize, usize, usize, usize, f64, usize)] = &[
    (1, 1, 2, 0, 10000.0, 1),
    (7, 3, 64, 5, 100000.0, 1),
    (65, 2, 16, 0, 10000.0, 1),
    (3, 4, 128, 100, 1e6, 1),
    (21, 3, 64, 5, 100000.0, 3),
    (130, 2, 18, 0, 10000.0, 2),
];

/// The f64 reference on each of `seqs` sequences of `x` in turn.
fn per_seq(x: &mut [f64], seqs: usize, f: impl Fn(&mut [f64])) {
    let n = x.len() / seqs;
    x.chunks_mut(n).for_each(f);
}

#[test]
fn rope_matches_reference() {
    let g = gpu();
    let mut r = rng(5);
    for &(t, h, d, pos0, theta, seqs) in CASES {
        let x = randn(&mut r, t * h * d, 1.0);
        let tab = rope::RopeTables::new(g, theta, d, 256).unwrap();
        let tx = up(g, &[t, h * d], &x);
        g.run(|b| {
            rope::rope(b, &tx, h, &tab, pos0, seqs);
            Ok(())
        })
        .unwrap();
        let mut want = f64v(&x);
        per_seq(&mut want, seqs, |s| rope::cpu::rope(s, h, d, theta, None, pos0));
        assert_close(&format!("rope t{t} h{h} d{d} seqs{seqs}"), &read(g, &tx), &want, 1e-5);
    }
}

#[test]
fn rope_backward_matches_reference_and_is_the_adjoint() {
    let g = gpu();
    let mut r = rng(20);
    for &(t, h, d, pos0, theta, seqs) in CASES {
        let x = randn(&mut r, t * h * d, 1.0);
        let y = randn(&mut r, t * h * d, 1.0);
        let tab = rope::RopeTables::new(g, theta, d, 256).unwrap();
        let ty = up(g, &[t, h * d], &y);
        g.run(|b| {
            rope::rope_backward(b, &ty, h, &tab, pos0, seqs);
            Ok(())
        })
        .unwrap();
        let mut want = f64v(&y);
        per_seq(&mut want, seqs, |s| rope::cpu::rope_backward(s, h, d, theta, None, pos0));
        assert_close(&format!("rope_backward t{t} h{h} d{d} seqs{seqs}"), &read(g, &ty), &want, 1e-5);

        // <rope(x), y> == <x, rope_backward(y)> in f64
        let mut rx = f64v(&x);
        per_seq(&mut rx, seqs, |s| rope::cpu::rope(s, h, d, theta, None, pos0));
        let lhs: f64 = rx.iter().zip(&f64v(&y)).map(|(a, b)| a * b).sum();
        let rhs: f64 = f64v(&x).iter().zip(&want).map(|(a, b)| a * b).sum();
        let err = (lhs - rhs).abs() / lhs.abs().max(1.0);
        assert!(err < 1e-12, "rope adjoint t{t} h{h} d{d}: <Rx,y> {lhs} vs <x,R^T y> {rhs}");
        // and it inverts the forward
        let mut back = rx.clone();
        per_seq(&mut back, seqs, |s| rope::cpu::rope_backward(s, h, d, theta, None, pos0));
        let inv = back.iter().zip(&f64v(&x)).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(inv < 1e-12, "rope_backward(rope(x)) != x: {inv:.2e}");
    }
}

// ---------------------------------------------------------------------------
// RoPE scaling: each type's inverse frequencies against an f64 reference written here from
// the published formulas (transformers' modeling_rope_utils.py, Meta's Llama 3.1
// apply_scaling, the YaRN paper's correction range and ramp, llama.cpp's rope_freqs
// divisors), hand-checkable values at real models' settings, then the kernel on scaled
// tables.

/// 1 / theta^(j/d) over even j < d: the unscaled inverse frequencies.
fn unscaled(theta: f64, d: usize) -> Vec<f64> {
    (0..d).step_by(2).map(|j| 1.0 / theta.powf(j as f64 / d as f64)).collect()
}

/// Llama 3.1 (Meta's apply_scaling): wavelengths below old_ctx / high kept, above
/// old_ctx / low divided by factor, between them a mix by how many turns fit in old_ctx.
fn llama3_ref(theta: f64, d: usize, factor: f64, low: f64, high: f64, old_ctx: f64) -> Vec<f64> {
    let (short_wavelen, long_wavelen) = (old_ctx / high, old_ctx / low);
    let mut out = vec![];
    for f in unscaled(theta, d) {
        let wavelen = 2.0 * PI / f;
        out.push(if wavelen < short_wavelen {
            f
        } else if wavelen > long_wavelen {
            f / factor
        } else {
            let w = (old_ctx / wavelen - low) / (high - low);
            f * (w + (1.0 - w) / factor)
        });
    }
    out
}

/// YaRN: the dimension indices at which a frequency turns beta_fast and beta_slow times over
/// the original context, floored and ceiled and clamped to [0, d - 1]; below the first
/// frequencies are kept, beyond the second divided by factor, a linear ramp in between.
fn yarn_ref(theta: f64, d: usize, factor: f64, orig: f64, beta_fast: f64, beta_slow: f64) -> Vec<f64> {
    let dim_at = |turns: f64| d as f64 * (orig / (2.0 * PI * turns)).ln() / (2.0 * theta.ln());
    let lo = dim_at(beta_fast).floor().max(0.0);
    let hi = dim_at(beta_slow).ceil().min(d as f64 - 1.0);
    let hi = if hi == lo { hi + 0.001 } else { hi };
    let mut out = vec![];
    for (i, f) in unscaled(theta, d).into_iter().enumerate() {
        let t = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
        out.push((1.0 - t) * f + t * (f / factor));
    }
    out
}

fn assert_rel(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * w.abs(), "{what}[{i}]: {g:e} vs reference {w:e}");
    }
}

/// Llama-3.2-3B: theta 500000, head_dim 128, llama3 factor 32, low 1, high 4, original 8192.
fn llama_3_2() -> RopeScaling {
    RopeScaling::Llama3 { factor: 32.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 }
}

/// Qwen2.5's long-context setting: yarn factor 4 over an original 32768 positions.
fn qwen_yarn() -> RopeScaling {
    RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 32768,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: RopeScaling::yarn_attention_factor(4.0, None, None),
        truncate: true,
    }
}

#[test]
fn rope_scaling_llama3_at_llama_3_2_3b() {
    let got = rope::cpu::inv_freq(500000.0, 128, Some(&llama_3_2()));
    assert_rel("llama3", &got, &llama3_ref(500000.0, 128, 32.0, 1.0, 4.0, 8192.0), 1e-14);
    let plain = rope::cpu::inv_freq(500000.0, 128, None);
    // the highest frequency (wavelength 2 pi) is kept, the lowest divided by 32 exactly
    assert_eq!(got[0], 1.0);
    assert_eq!(got[63], plain[63] / 32.0);
    // wavelengths 2 pi 500000^(i/64) between 2048 and 8192: i = 29 ..= 34, interpolated
    let medium: Vec<usize> = (0..64).filter(|&i| got[i] != plain[i] && got[i] != plain[i] / 32.0).collect();
    assert_eq!(medium, (29..=34).collect::<Vec<_>>());
    // i = 32: frequency 1/sqrt(500000), wavelength 4442.88, smooth (8192/4442.88 - 1)/3 = 0.28128
    assert!((got[32] - 4.295567965593682e-4).abs() < 1e-17, "llama3[32] = {}", got[32]);
    assert_eq!((got[28], got[35]), (plain[28], plain[35] / 32.0));
}

#[test]
fn rope_scaling_linear_divides_every_frequency() {
    let got = rope::cpu::inv_freq(10000.0, 64, Some(&RopeScaling::Linear { factor: 4.0 }));
    let want: Vec<f64> = unscaled(10000.0, 64).iter().map(|f| f / 4.0).collect();
    assert_rel("linear", &got, &want, 1e-14);
    // 10000^0 / 4 and 10000^(-1/2) / 4
    assert_eq!(got[0], 0.25);
    assert!((got[16] - 0.0025).abs() < 1e-18, "linear[16] = {}", got[16]);
    assert_eq!(rope::cpu::attention_factor(Some(&RopeScaling::Linear { factor: 4.0 })), 1.0);
}

#[test]
fn rope_scaling_yarn_at_qwen2_5_settings() {
    let s = qwen_yarn();
    let got = rope::cpu::inv_freq(1e6, 128, Some(&s));
    assert_rel("yarn", &got, &yarn_ref(1e6, 128, 4.0, 32768.0, 32.0, 1.0), 1e-14);
    let plain = rope::cpu::inv_freq(1e6, 128, None);
    // 32 turns over 32768 positions at index 23.6 (floored to 23), 1 turn at 39.65 (ceiled
    // to 40): i <= 23 kept, i >= 40 divided by 4, i = 30 mixed 7/17 of the way
    assert!((0..=23).all(|i| got[i] == plain[i]));
    assert!((40..64).all(|i| (got[i] - plain[i] / 4.0).abs() <= 1e-16 * plain[i]));
    let mix = 7.0 / 17.0;
    assert!((got[30] - plain[30] * (1.0 - mix + mix / 4.0)).abs() <= 1e-15 * plain[30]);
    // attention factor 0.1 ln 4 + 1 on cos and sin
    assert!((rope::cpu::attention_factor(Some(&s)) - 1.138629436111989).abs() < 1e-15);
    assert_eq!(RopeScaling::yarn_attention_factor(1.0, None, None), 1.0);
    // DeepSeek's mscale / mscale_all_dim: the ratio of the two
    let m = |k: f64| 0.1 * k * 40f64.ln() + 1.0;
    assert!((RopeScaling::yarn_attention_factor(40.0, Some(0.707), Some(1.0)) - m(0.707) / m(1.0)).abs() < 1e-15);
    // without truncation the range stays fractional: [23.596, 39.651]
    let mut untruncated = s;
    if let RopeScaling::Yarn { truncate, .. } = &mut untruncated {
        *truncate = false;
    }
    let got = rope::cpu::inv_freq(1e6, 128, Some(&untruncated));
    let (lo, hi) = (23.5959476083381, 39.6508807104171);
    let t = (30.0 - lo) / (hi - lo);
    assert!((got[30] - plain[30] * (1.0 - t + t / 4.0)).abs() <= 1e-12 * plain[30]);
    assert_eq!(got[23], plain[23]);
}

#[test]
fn rope_scaling_freq_factors_divide_each_frequency() {
    let mut r = rng(31);
    let factors: Vec<f32> = (0..64).map(|_| 1.0 + r.random_range(0.0f32..31.0)).collect();
    let got = rope::cpu::inv_freq(500000.0, 128, Some(&RopeScaling::FreqFactors { factors: factors.clone() }));
    let want: Vec<f64> = unscaled(500000.0, 128).iter().zip(&factors).map(|(f, &k)| f / k as f64).collect();
    assert_rel("freq factors", &got, &want, 1e-14);
}

/// A RoPE setting at head dim 128 with its reference inverse frequencies and attention factor.
struct Scaled {
    name: &'static str,
    theta: f64,
    scaling: Option<RopeScaling>,
    freqs: Vec<f64>,
    m: f64,
}

/// Every scaling type beside plain RoPE, at head dim 128.
fn scalings() -> Vec<Scaled> {
    let factors: Vec<f32> = (0..64).map(|i| 1.0 + (i as f32 * 0.37) % 7.0).collect();
    let ff_ref = unscaled(500000.0, 128).iter().zip(&factors).map(|(f, &k)| f / k as f64).collect();
    let case = |name, theta, scaling, freqs, m| Scaled { name, theta, scaling, freqs, m };
    vec![
        case("plain", 10000.0, None, unscaled(10000.0, 128), 1.0),
        case("linear", 10000.0, Some(RopeScaling::Linear { factor: 4.0 }), unscaled(10000.0, 128).iter().map(|f| f / 4.0).collect(), 1.0),
        case("llama3", 500000.0, Some(llama_3_2()), llama3_ref(500000.0, 128, 32.0, 1.0, 4.0, 8192.0), 1.0),
        case("yarn", 1e6, Some(qwen_yarn()), yarn_ref(1e6, 128, 4.0, 32768.0, 32.0, 1.0), 0.1 * 4f64.ln() + 1.0),
        case("freq factors", 500000.0, Some(RopeScaling::FreqFactors { factors }), ff_ref, 1.0),
    ]
}

/// m R(angle) on x [tokens, heads, d] (rotate-half pairs i, i + d/2), token t at pos0 + t.
fn rotate_ref(x: &[f64], heads: usize, d: usize, freqs: &[f64], m: f64, pos0: usize, sign: f64) -> Vec<f64> {
    let mut out = x.to_vec();
    for (row, v) in out.chunks_mut(d).enumerate() {
        let pos = (pos0 + row / heads) as f64;
        for (i, f) in freqs.iter().enumerate() {
            let (c, s) = ((pos * f).cos() * m, sign * (pos * f).sin() * m);
            let (a, b) = (v[i], v[i + d / 2]);
            (v[i], v[i + d / 2]) = (a * c - b * s, b * c + a * s);
        }
    }
    out
}

#[test]
fn rope_scaled_tables_carry_the_attention_factor() {
    for Scaled { name, theta, scaling: s, freqs, m } in scalings() {
        let (c, sn) = rope::cpu::tables(theta, 128, 50, s.as_ref());
        for pos in [0usize, 1, 17, 49] {
            for i in [0usize, 30, 63] {
                let a = pos as f64 * freqs[i];
                let k = pos * 64 + i;
                assert!((c[k] - m * a.cos()).abs() < 1e-12 && (sn[k] - m * a.sin()).abs() < 1e-12, "{name} table at pos {pos}, i {i}");
            }
        }
    }
}

/// The kernel on scaled tables against the reference rotation, forward and backward, at
/// 65 tokens of 3 heads of 128 from position 1000; the f64 reference rope (the one the
/// reference model uses) agrees with it too.
#[test]
fn rope_scaled_matches_reference() {
    let g = gpu();
    let (t, h, d, pos0) = (65, 3, 128, 1000);
    let mut r = rng(32);
    for Scaled { name, theta, scaling: s, freqs, m } in scalings() {
        let x = randn(&mut r, t * h * d, 1.0);
        let tab = rope::RopeTables::with_scaling(g, theta, d, pos0 + t, s.as_ref()).unwrap();
        for (sign, entry) in [(1.0, "rope"), (-1.0, "rope_backward")] {
            let tx = up(g, &[t, h * d], &x);
            g.run(|b| {
                match entry {
                    "rope" => rope::rope(b, &tx, h, &tab, pos0, 1),
                    _ => rope::rope_backward(b, &tx, h, &tab, pos0, 1),
                }
                Ok(())
            })
            .unwrap();
            let want = rotate_ref(&f64v(&x), h, d, &freqs, m, pos0, sign);
            assert_close(&format!("{entry} {name}"), &read(g, &tx), &want, 1e-5);
            let mut cpu = f64v(&x);
            match entry {
                "rope" => rope::cpu::rope(&mut cpu, h, d, theta, s.as_ref(), pos0),
                _ => rope::cpu::rope_backward(&mut cpu, h, d, theta, s.as_ref(), pos0),
            }
            assert!(rel_err_f64(&cpu, &want) < 1e-12, "cpu::{entry} {name}: {:.2e}", rel_err_f64(&cpu, &want));
        }
    }
}
