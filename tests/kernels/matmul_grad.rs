//! Gradients of a linear layer, dx = dy W and dW = dy^T x (src/ops/matmul_grad.rs,
//! shaders/matmul_grad.wgsl), against the f64 references at awkward shapes, over a long
//! reduction, and split over bindings.
use crate::common::*;
use taylorcal::ops::matmul_grad;

#[test]
fn linear_gradients_match_reference_at_awkward_shapes() {
    let g = gpu();
    let mut r = rng(31);
    for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (63, 65, 64), (130, 33, 71), (257, 17, 129), (5, 130, 66), (1100, 5, 70)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let dy = randn(&mut r, m * n, 1.0);
        let dx0 = randn(&mut r, m * k, 1.0);
        let dw0 = randn(&mut r, n * k, 1.0);
        let (tx, tw, tdy) = (up(g, &[m, k], &x), up(g, &[n, k], &w), up(g, &[m, n], &dy));
        let dx = up(g, &[m, k], &dx0); // overwritten
        let dxa = up(g, &[m, k], &dx0);
        let dw = up(g, &[n, k], &dw0); // overwritten
        let dwa = up(g, &[n, k], &dw0);
        g.run(|b| {
            matmul_grad::linear_backward_input(b, &tdy, &tw, &dx, false);
            matmul_grad::linear_backward_input(b, &tdy, &tw, &dxa, true);
            matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
            matmul_grad::linear_backward_weight(b, &tdy, &tx, &dwa, true);
            Ok(())
        })
        .unwrap();
        let want_dx = matmul_grad::cpu::linear_backward_input(&f64v(&dy), &f64v(&w), n, k);
        let want_dw = matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k);
        check(&format!("dx {m}x{n}x{k}"), &read(g, &dx), &want_dx, 1e-5);
        check(&format!("dW {m}x{n}x{k}"), &read(g, &dw), &want_dw, 1e-5);
        let acc = |a: &[f64], b0: &[f32]| a.iter().zip(b0).map(|(a, b)| a + *b as f64).collect::<Vec<_>>();
        check(&format!("dx += {m}x{n}x{k}"), &read(g, &dxa), &acc(&want_dx, &dx0), 1e-5);
        check(&format!("dW += {m}x{n}x{k}"), &read(g, &dwa), &acc(&want_dw, &dw0), 1e-5);
    }
}

#[test]
fn linear_weight_gradient_over_many_tokens() {
    // a long reduction (M >> N, K): every tile loops over all rows
    let g = gpu();
    let mut r = rng(32);
    let (m, n, k) = (3001, 3, 70);
    let x = randn(&mut r, m * k, 1.0);
    let dy = randn(&mut r, m * n, 1.0);
    let dw = g.zeros(&[n, k]).unwrap();
    let (tx, tdy) = (up(g, &[m, k], &x), up(g, &[m, n], &dy));
    g.run(|b| {
        matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
        Ok(())
    })
    .unwrap();
    let want = matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k);
    check(&format!("dW {m}x{n}x{k}"), &read(g, &dw), &want, 1e-5);
}

// ---------------------------------------------------------------------------------------
// split over bindings

#[test]
fn linear_gradients_split_over_bindings() {
    let g = split_gpu();
    let mut r = rng(51);
    for &(m, n, k) in &[(300, 250, 33), (1500, 3, 5), (7, 1100, 3), (70, 90, 45)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let dy = randn(&mut r, m * n, 1.0);
        let dx0 = randn(&mut r, m * k, 1.0);
        let (tx, tw, tdy) = (up(g, &[m, k], &x), up(g, &[n, k], &w), up(g, &[m, n], &dy));
        let (dx, dxa) = (g.zeros(&[m, k]).unwrap(), up(g, &[m, k], &dx0));
        let dw = g.zeros(&[n, k]).unwrap();
        g.run(|b| {
            matmul_grad::linear_backward_input(b, &tdy, &tw, &dx, false);
            matmul_grad::linear_backward_input(b, &tdy, &tw, &dxa, true);
            matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
            Ok(())
        })
        .unwrap();
        let want_dx = matmul_grad::cpu::linear_backward_input(&f64v(&dy), &f64v(&w), n, k);
        let want_dxa: Vec<f64> = want_dx.iter().zip(&dx0).map(|(a, b)| a + *b as f64).collect();
        let want_dw = matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k);
        check(&format!("split dx {m}x{n}x{k}"), &read(g, &dx), &want_dx, 1e-5);
        check(&format!("split dx += {m}x{n}x{k}"), &read(g, &dxa), &want_dxa, 1e-5);
        check(&format!("split dW {m}x{n}x{k}"), &read(g, &dw), &want_dw, 1e-5);
    }
}
