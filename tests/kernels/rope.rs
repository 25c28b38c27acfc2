//! Rotary position embedding, forward and backward (src/ops/rope.rs, shaders/rope.wgsl):
//! the GPU kernels against the f64 reference, the f64 backward as the adjoint and inverse
//! of the forward.
use crate::common::*;
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
        per_seq(&mut want, seqs, |s| rope::cpu::rope(s, h, d, theta, pos0));
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
        per_seq(&mut want, seqs, |s| rope::cpu::rope_backward(s, h, d, theta, pos0));
        assert_close(&format!("rope_backward t{t} h{h} d{d} seqs{seqs}"), &read(g, &ty), &want, 1e-5);

        // <rope(x), y> == <x, rope_backward(y)> in f64
        let mut rx = f64v(&x);
        per_seq(&mut rx, seqs, |s| rope::cpu::rope(s, h, d, theta, pos0));
        let lhs: f64 = rx.iter().zip(&f64v(&y)).map(|(a, b)| a * b).sum();
        let rhs: f64 = f64v(&x).iter().zip(&want).map(|(a, b)| a * b).sum();
        let err = (lhs - rhs).abs() / lhs.abs().max(1.0);
        assert!(err < 1e-12, "rope adjoint t{t} h{h} d{d}: <Rx,y> {lhs} vs <x,R^T y> {rhs}");
        // and it inverts the forward
        let mut back = rx.clone();
        per_seq(&mut back, seqs, |s| rope::cpu::rope_backward(s, h, d, theta, pos0));
        let inv = back.iter().zip(&f64v(&x)).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(inv < 1e-12, "rope_backward(rope(x)) != x: {inv:.2e}");
    }
}
