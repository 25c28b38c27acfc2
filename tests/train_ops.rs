//! Distillation kernels vs f64 references: RMSNorm / SwiGLU / embedding backward; the
//! f64 gradients themselves against central finite differences of the f64 forwards.
mod common;
use common::*;
use taylorcal::gpu::Tensor;
use taylorcal::ops;

fn up(shape: &[usize], data: &[f32]) -> Tensor {
    gpu().upload(shape, data).unwrap()
}
fn read(t: &Tensor) -> Vec<f32> {
    gpu().read(t).unwrap()
}

/// max |got - want| / max |want| (absolute where want is all zero).
fn err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let e = got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
    if scale > 0.0 {
        e / scale
    } else {
        e
    }
}

fn check(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let e = err(got, want);
    eprintln!("{what}: rel err {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
    e
}

/// Same-sized f64 relative error of two f64 vectors (for finite differences).
fn err64(got: &[f64], want: &[f64]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g - w).abs())) / scale
}

/// Central differences of `f` at `x` in every coordinate.
fn numeric_grad(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + h;
            let fp = f(&x);
            x[i] = x0 - h;
            let fm = f(&x);
            x[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

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
        let (tx, tw, tdy) = (up(&[rows, cols], &x), up(&[cols], &w), up(&[rows, cols], &dy));
        let dx = up(&[rows, cols], &dx0); // overwritten
        let dxa = up(&[rows, cols], &dx0); // accumulated
        let dw = up(&[cols], &dw0);
        g.run(|b| {
            ops::norm::rmsnorm_backward(b, &tx, &tw, eps, &tdy, &dx, &dw, false);
            ops::norm::rmsnorm_backward(b, &tx, &tw, eps, &tdy, &dxa, &dw, true);
            Ok(())
        })
        .unwrap();
        let (wdx, wdw) = ops::norm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), eps as f64, &f64v(&dy));
        let label = format!("rmsnorm_backward {rows}x{cols}");
        check(&format!("{label} dx"), &read(&dx), &wdx, 1e-5);
        let wdxa: Vec<f64> = wdx.iter().zip(&dx0).map(|(a, b)| a + *b as f64).collect();
        check(&format!("{label} dx accumulated"), &read(&dxa), &wdxa, 1e-5);
        // dw accumulated twice onto dw0
        let wdw2: Vec<f64> = wdw.iter().zip(&dw0).map(|(a, b)| 2.0 * a + *b as f64).collect();
        check(&format!("{label} dw"), &read(&dw), &wdw2, 1e-5);
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
    let (tx, tw, tdy) = (up(&[t, h * d], &x), up(&[d], &w), up(&[t, h * d], &dy));
    let (dx, dw) = (g.zeros(&[t, h * d]).unwrap(), g.zeros(&[d]).unwrap());
    g.run(|b| {
        ops::norm::rmsnorm_backward(b, &tx, &tw, 1e-6, &tdy, &dx, &dw, false);
        Ok(())
    })
    .unwrap();
    let (wdx, wdw) = ops::norm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), 1e-6, &f64v(&dy));
    check("rmsnorm_backward per head dx", &read(&dx), &wdx, 1e-5);
    check("rmsnorm_backward per head dw", &read(&dw), &wdw, 1e-5);
}

#[test]
fn rmsnorm_reference_gradient_matches_finite_differences() {
    let mut r = rng(22);
    let (rows, cols, eps) = (3, 5, 1e-3);
    let (x, w, dy) = (f64v(&randn(&mut r, rows * cols, 1.0)), f64v(&randn(&mut r, cols, 1.0)), f64v(&randn(&mut r, rows * cols, 1.0)));
    let f = |x: &[f64], w: &[f64]| ops::norm::cpu::rmsnorm(x, w, eps).iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let (dx, dw) = ops::norm::cpu::rmsnorm_backward(&x, &w, eps, &dy);
    let (ex, ew) = (err64(&dx, &numeric_grad(&x, 1e-5, |v| f(v, &w))), err64(&dw, &numeric_grad(&w, 1e-5, |v| f(&x, v))));
    eprintln!("rmsnorm f64 gradient vs finite differences: dx {ex:.1e}, dw {ew:.1e}");
    assert!(ex < 1e-7 && ew < 1e-7, "rmsnorm reference gradient vs finite differences: dx {ex:.2e}, dw {ew:.2e}");
}

#[test]
fn swiglu_backward_matches_reference() {
    let g = gpu();
    let mut r = rng(23);
    for &(rows, cols) in &[(1, 1), (1, 67), (7, 577), (130, 67)] {
        let n = rows * cols;
        let (gate, upv, dact) = (randn(&mut r, n, 6.0), randn(&mut r, n, 2.0), randn(&mut r, n, 1.0));
        let (tg, tu, td) = (up(&[rows, cols], &gate), up(&[rows, cols], &upv), up(&[rows, cols], &dact));
        let (dg, du) = (up(&[rows, cols], &vec![5.0; n]), up(&[rows, cols], &vec![5.0; n]));
        g.run(|b| {
            ops::elementwise::swiglu_backward(b, &tg, &tu, &td, &dg, &du);
            Ok(())
        })
        .unwrap();
        let (wg, wu) = ops::elementwise::cpu::swiglu_backward(&f64v(&gate), &f64v(&upv), &f64v(&dact));
        check(&format!("swiglu_backward {rows}x{cols} dgate"), &read(&dg), &wg, 1e-5);
        check(&format!("swiglu_backward {rows}x{cols} dup"), &read(&du), &wu, 1e-5);
    }
}

#[test]
fn swiglu_reference_gradient_matches_finite_differences() {
    let mut r = rng(24);
    let n = 9;
    let (gate, upv, dact) = (f64v(&randn(&mut r, n, 6.0)), f64v(&randn(&mut r, n, 2.0)), f64v(&randn(&mut r, n, 1.0)));
    let f = |g: &[f64], u: &[f64]| ops::elementwise::cpu::swiglu(g, u).iter().zip(&dact).map(|(a, b)| a * b).sum::<f64>();
    let (dg, du) = ops::elementwise::cpu::swiglu_backward(&gate, &upv, &dact);
    let eg = err64(&dg, &numeric_grad(&gate, 1e-5, |v| f(v, &upv)));
    let eu = err64(&du, &numeric_grad(&upv, 1e-5, |v| f(&gate, v)));
    eprintln!("swiglu f64 gradient vs finite differences: dgate {eg:.1e}, dup {eu:.1e}");
    assert!(eg < 1e-7 && eu < 1e-7, "swiglu reference gradient vs finite differences: dgate {eg:.2e}, dup {eu:.2e}");
}

#[test]
fn embed_backward_with_repeated_ids_matches_reference() {
    let g = gpu();
    let mut r = rng(25);
    for &(vocab, dim, t) in &[(1, 1, 1), (37, 19, 11), (1000, 67, 131), (50, 577, 200)] {
        // repeated ids (every fourth position reuses id 3 % vocab), first and last rows included
        let mut ids: Vec<u32> = (0..t as u32).map(|i| if i % 4 == 0 { 3 % vocab as u32 } else { (i * 7919 + 5) % vocab as u32 }).collect();
        ids[t - 1] = vocab as u32 - 1;
        if t > 2 {
            ids[1] = 0;
        }
        let dx = randn(&mut r, t * dim, 1.0);
        let table0 = randn(&mut r, vocab * dim, 1.0);
        let (tdx, dtable) = (up(&[t, dim], &dx), up(&[vocab, dim], &table0));
        g.run(|b| {
            ops::elementwise::embed_backward(b, &ids, &tdx, &dtable);
            Ok(())
        })
        .unwrap();
        let want: Vec<f64> =
            ops::elementwise::cpu::embed_backward(&ids, &f64v(&dx), vocab, dim).iter().zip(&table0).map(|(a, b)| a + *b as f64).collect();
        check(&format!("embed_backward V{vocab} D{dim} T{t}"), &read(&dtable), &want, 1e-6);
    }
}

#[test]
fn id_groups_are_csr_by_id() {
    let (uniq, offsets, pos) = ops::elementwise::group_ids(&[5, 2, 5, 0, 2, 5]);
    assert_eq!(uniq, [0, 2, 5]);
    assert_eq!(offsets, [0, 1, 3, 6]);
    assert_eq!(pos, [3, 1, 4, 0, 2, 5]);
    let (u, o, p) = ops::elementwise::group_ids(&[]);
    assert!(u.is_empty() && p.is_empty() && o == [0]);
}
