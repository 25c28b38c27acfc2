//! RMSNorm over the last dimension, forward and backward (src/ops/rmsnorm.rs,
//! shaders/rmsnorm.wgsl), against the f64 references; the f64 backward against finite
//! differences; the backward split over bindings (with SwiGLU's and the embedding's).
use crate::common::*;
use taylorcal::ops::{elementwise, rmsnorm};

#[test]
fn rmsnorm_matches_reference() {
    let g = gpu();
    let mut r = rng(4);
    for &(rows, cols) in &[(1, 1), (3, 63), (17, 65), (5, 576), (2, 1000)] {
        let x = randn(&mut r, rows * cols, 2.0);
        let w = randn(&mut r, cols, 1.0);
        let y = g.zeros(&[rows, cols]).unwrap();
        let (tx, tw) = (up(g, &[rows, cols], &x), up(g, &[cols], &w));
        g.run(|b| {
            rmsnorm::rmsnorm(b, &tx, &tw, 1e-5, &y);
            Ok(())
        })
        .unwrap();
        assert_close(&format!("rmsnorm {rows}x{cols}"), &read(g, &y), &rmsnorm::cpu::rmsnorm(&f64v(&x), &f64v(&w), 1e-5), 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// backward

#[test]
fn rmsnorm_backward_matches_reference() {
    let g = gpu();
    let mut r = rng(20);
    let eps = 1e-5;
    // (one column is left out: there dx = w dy inv eps / (x^2 + eps) is all cancellation in f32)
    for &(rows, cols) in &[(1, 3), (1, 67), (3, 577), (17, 64), (130, 67), (129, 577), (300, 5)] {
        let x = randn(&mut r, rows * cols, 2.0);
        let w = randn(&mut r, cols, 1.0);
        let dy = randn(&mut r, rows * cols, 1.0);
        let dx0 = randn(&mut r, rows * cols, 1.0);
        let dw0 = randn(&mut r, cols, 1.0);
        let (tx, tw, tdy) = (up(g, &[rows, cols], &x), up(g, &[cols], &w), up(g, &[rows, cols], &dy));
        let dx = up(g, &[rows, cols], &dx0); // overwritten
        let dxa = up(g, &[rows, cols], &dx0); // accumulated
        let dw = up(g, &[cols], &dw0);
        g.run(|b| {
            rmsnorm::rmsnorm_backward(b, &tx, &tw, eps, &tdy, &dx, &dw, false);
            rmsnorm::rmsnorm_backward(b, &tx, &tw, eps, &tdy, &dxa, &dw, true);
            Ok(())
        })
        .unwrap();
        let (wdx, wdw) = rmsnorm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), eps as f64, &f64v(&dy));
        let label = format!("rmsnorm_backward {rows}x{cols}");
        check(&format!("{label} dx"), &read(g, &dx), &wdx, 1e-5);
        let wdxa: Vec<f64> = wdx.iter().zip(&dx0).map(|(a, b)| a + *b as f64).collect();
        check(&format!("{label} dx accumulated"), &read(g, &dxa), &wdxa, 1e-5);
        // dw accumulated twice onto dw0
        let wdw2: Vec<f64> = wdw.iter().zip(&dw0).map(|(a, b)| 2.0 * a + *b as f64).collect();
        check(&format!("{label} dw"), &read(g, &dw), &wdw2, 1e-5);
    }
}

#[test]
fn rmsnorm_backward_per_head_weight() {
    // a [T, H * d] tensor normalised per head with a [d] weight
    let g = gpu();
    let mut r = rng(21);
    let (t, h, d) = (5, 3, 67);
    let x = randn(&mut r, t * h * d, 1.0);
    let w = randn(&mut r, d, 1.0);
    let dy = randn(&mut r, t * h * d, 1.0);
    let (tx, tw, tdy) = (up(g, &[t, h * d], &x), up(g, &[d], &w), up(g, &[t, h * d], &dy));
    let (dx, dw) = (g.zeros(&[t, h * d]).unwrap(), g.zeros(&[d]).unwrap());
    g.run(|b| {
        rmsnorm::rmsnorm_backward(b, &tx, &tw, 1e-6, &tdy, &dx, &dw, false);
        Ok(())
    })
    .unwrap();
    let (wdx, wdw) = rmsnorm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), 1e-6, &f64v(&dy));
    check("rmsnorm_backward per head dx", &read(g, &dx), &wdx, 1e-5);
    check("rmsnorm_backward per head dw", &read(g, &dw), &wdw, 1e-5);
}

#[test]
fn rmsnorm_reference_gradient_matches_finite_differences() {
    let mut r = rng(22);
    let (rows, cols, eps) = (3, 5, 1e-3);
    let (x, w, dy) = (f64v(&randn(&mut r, rows * cols, 1.0)), f64v(&randn(&mut r, cols, 1.0)), f64v(&randn(&mut r, rows * cols, 1.0)));
    let f = |x: &[f64], w: &[f64]| rmsnorm::cpu::rmsnorm(x, w, eps).iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let (dx, dw) = rmsnorm::cpu::rmsnorm_backward(&x, &w, eps, &dy);
    let (ex, ew) = (rel_err_f64(&dx, &numeric_grad(&x, 1e-5, |v| f(v, &w))), rel_err_f64(&dw, &numeric_grad(&w, 1e-5, |v| f(&x, v))));
    eprintln!("rmsnorm f64 gradient vs finite differences: dx {ex:.1e}, dw {ew:.1e}");
    assert!(ex < 1e-7 && ew < 1e-7, "rmsnorm reference gradient vs finite differences: dx {ex:.2e}, dw {ew:.2e}");
}

// ---------------------------------------------------------------------------------------
// split over bindings

#[test]
fn train_ops_split_over_bindings_match_reference() {
    let g = split_gpu();
    let mut r = rng(24);
    // RMSNorm backward: x, dy, dx split over rows
    let (rows, cols) = (300, 67);
    assert!(g.rows_per_binding(&[(cols * 4) as u64, 4]) < rows);
    let (x, w, dy, dw0) =
        (randn(&mut r, rows * cols, 2.0), randn(&mut r, cols, 1.0), randn(&mut r, rows * cols, 1.0), randn(&mut r, cols, 1.0));
    let (tx, tw, tdy) = (up(g, &[rows, cols], &x), up(g, &[cols], &w), up(g, &[rows, cols], &dy));
    let (dx, dw) = (g.zeros(&[rows, cols]).unwrap(), up(g, &[cols], &dw0));
    // SwiGLU backward: split over elements
    let n = 3001;
    let (gate, upv, dact) = (randn(&mut r, n, 6.0), randn(&mut r, n, 2.0), randn(&mut r, n, 1.0));
    let (tg, tu, td) = (up(g, &[n], &gate), up(g, &[n], &upv), up(g, &[n], &dact));
    let (dg, du) = (g.zeros(&[n]).unwrap(), g.zeros(&[n]).unwrap());
    // embedding backward: table split over rows, ids from every part of it
    let (vocab, dim) = (500, 19);
    let step = g.rows_per_binding(&[(dim * 4) as u64]);
    assert!(step < vocab, "no split: {step} table rows per binding");
    let mut ids: Vec<u32> = (0..40).map(|i| (i * 173 + 11) % vocab as u32).collect();
    ids.extend([0, vocab as u32 - 1, step as u32 - 1, step as u32, step as u32, 0]);
    let ddx = randn(&mut r, ids.len() * dim, 1.0);
    let (tddx, dtable) = (up(g, &[ids.len(), dim], &ddx), g.zeros(&[vocab, dim]).unwrap());
    g.run(|b| {
        rmsnorm::rmsnorm_backward(b, &tx, &tw, 1e-5, &tdy, &dx, &dw, false);
        elementwise::swiglu_backward(b, &tg, &tu, &td, &dg, &du);
        elementwise::embed_backward(b, &ids, &tddx, &dtable);
        Ok(())
    })
    .unwrap();
    let (wdx, wdw) = rmsnorm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), 1e-5, &f64v(&dy));
    let wdw: Vec<f64> = wdw.iter().zip(&dw0).map(|(a, b)| a + *b as f64).collect();
    assert_close("split rmsnorm_backward dx", &read(g, &dx), &wdx, 1e-5);
    assert_close("split rmsnorm_backward dw", &read(g, &dw), &wdw, 1e-5);
    let (wg, wu) = elementwise::cpu::swiglu_backward(&f64v(&gate), &f64v(&upv), &f64v(&dact));
    assert_close("split swiglu_backward dgate", &read(g, &dg), &wg, 1e-5);
    assert_close("split swiglu_backward dup", &read(g, &du), &wu, 1e-5);
    let want = elementwise::cpu::embed_backward(&ids, &f64v(&ddx), vocab, dim);
    assert_close("split embed_backward", &read(g, &dtable), &want, 1e-6);
}
