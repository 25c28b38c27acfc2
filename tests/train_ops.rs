//! Distillation kernels vs f64 references: the fused LM heads + KL(teacher || student)
//! with its gradients, RMSNorm / SwiGLU / embedding backward; the f64 gradients
//! themselves against central finite differences of the f64 forwards.
mod common;
use common::*;
use taylorcal::gpu::{Gpu, Tensor};
use taylorcal::ops::kl::{self, KlOut, KlWorkspace};
use taylorcal::ops::{self, optim::Reducer};

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

struct KlCase {
    hs: Vec<f32>,
    ws: Vec<f32>,
    ht: Vec<f32>,
    wt: Vec<f32>,
}

fn kl_case(n: usize, v: usize, d: usize, seed: u64) -> KlCase {
    let mut r = rng(seed);
    // logits of a few units: uniform weights of scale 6 / sqrt(D) give a std of about 2
    let a = 6.0 / (d as f32).sqrt();
    KlCase { hs: randn(&mut r, n * d, 1.0), ws: randn(&mut r, v * d, a), ht: randn(&mut r, n * d, 1.0), wt: randn(&mut r, v * d, a) }
}

/// GPU loss, dhs, dws (one call from zero, then a second call accumulating) vs f64.
fn check_kl(g: &Gpu, n: usize, v: usize, d: usize, chunk: Option<usize>, seed: u64) {
    let c = kl_case(n, v, d, seed);
    let scale = 1.0 / n as f32;
    let work = match chunk {
        Some(rows) => KlWorkspace::with_rows(g, v, d, rows).unwrap(),
        None => KlWorkspace::new(g, v, d, n, kl::KL_DEFAULT_BUDGET).unwrap(),
    };
    let (ths, tws, tht, twt) = (up(&[n, d], &c.hs), up(&[v, d], &c.ws), up(&[n, d], &c.ht), up(&[v, d], &c.wt));
    let loss_rows = up(&[n], &vec![7.0; n]);
    let dhs = up(&[n, d], &vec![-3.0; n * d]); // overwritten
    let dws = g.zeros(&[v, d]).unwrap();
    let call = |g: &Gpu| {
        g.run(|b| {
            let out = KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) };
            kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, out, scale);
            Ok(())
        })
        .unwrap()
    };
    call(g);
    let (wl, wdhs, wdws) = kl::cpu::kl_lm_head(&f64v(&c.hs), &f64v(&c.ws), &f64v(&c.ht), &f64v(&c.wt), d, scale as f64);
    let label = format!("kl N{n} V{v} D{d} R{}", work.rows);
    check(&format!("{label} loss"), &read(&loss_rows), &wl, 1e-5);
    check(&format!("{label} dhs"), &read(&dhs), &wdhs, 1e-4);
    check(&format!("{label} dws"), &read(&dws), &wdws, 1e-4);
    call(g);
    let twice: Vec<f64> = wdws.iter().map(|x| 2.0 * x).collect();
    check(&format!("{label} dws accumulated twice"), &read(&dws), &twice, 1e-4);
    check(&format!("{label} dhs second call"), &read(&dhs), &wdhs, 1e-4);
}

#[test]
fn kl_lm_head_matches_reference_at_awkward_shapes() {
    let g = gpu();
    // (N, V, D, rows per chunk): several chunks with a short last one, one whole chunk
    let cases = [
        (1, 37, 5, None),
        (1, 4099, 67, Some(1)),
        (7, 1, 5, Some(2)),
        (7, 1000, 67, Some(3)),
        (7, 4099, 5, None),
        (65, 37, 67, Some(64)),
        (65, 1000, 64, Some(16)),
        (65, 4099, 64, Some(30)),
    ];
    for (i, &(n, v, d, chunk)) in cases.iter().enumerate() {
        check_kl(g, n, v, d, chunk, 100 + i as u64);
    }
}

#[test]
fn kl_lm_head_loss_only_and_total() {
    let g = gpu();
    let (n, v, d) = (9, 300, 17);
    let c = kl_case(n, v, d, 7);
    let work = KlWorkspace::with_rows(g, v, d, 4).unwrap();
    let (ths, tws, tht, twt) = (up(&[n, d], &c.hs), up(&[v, d], &c.ws), up(&[n, d], &c.ht), up(&[v, d], &c.wt));
    let loss_rows = g.zeros(&[n]).unwrap();
    let red = Reducer::new(g, n, 2).unwrap();
    g.run(|b| {
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, KlOut { loss_rows: &loss_rows, dhs: None, dws: None }, 1.0);
        kl::kl_total(b, &loss_rows, 1.0 / n as f32, &red, 1);
        Ok(())
    })
    .unwrap();
    let (wl, _, _) = kl::cpu::kl_lm_head(&f64v(&c.hs), &f64v(&c.ws), &f64v(&c.ht), &f64v(&c.wt), d, 1.0);
    check("kl loss only", &read(&loss_rows), &wl, 1e-5);
    let mean = wl.iter().sum::<f64>() / n as f64;
    check("kl mean (Reducer)", &read(&red.out)[4..5], &[mean], 1e-5);
}

#[test]
fn kl_is_zero_when_student_equals_teacher() {
    let g = gpu();
    let (n, v, d) = (13, 1000, 67);
    let c = kl_case(n, v, d, 8);
    let work = KlWorkspace::with_rows(g, v, d, 5).unwrap();
    let (ths, tws, tht, twt) = (up(&[n, d], &c.hs), up(&[v, d], &c.ws), up(&[n, d], &c.hs), up(&[v, d], &c.ws));
    let loss_rows = up(&[n], &vec![1.0; n]);
    let dhs = up(&[n, d], &vec![1.0; n * d]);
    let dws = g.zeros(&[v, d]).unwrap();
    g.run(|b| {
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) }, 1.0);
        Ok(())
    })
    .unwrap();
    let maxabs = |v: Vec<f32>| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let (l, dh, dw) = (maxabs(read(&loss_rows)), maxabs(read(&dhs)), maxabs(read(&dws)));
    eprintln!("kl(student == teacher): max |loss| {l:.1e}, max |dhs| {dh:.1e}, max |dws| {dw:.1e}");
    assert!(l <= 1e-6 && dh <= 1e-6 && dw <= 1e-6, "KL of identical models: loss {l}, dhs {dh}, dws {dw}");
}

#[test]
fn kl_f16_teacher_head_matches_reference_of_rounded_weights() {
    let g = gpu();
    if !g.info.shader_f16 {
        eprintln!("adapter {} has no SHADER_F16: f16 teacher head not available", g.info.name);
        return;
    }
    let (n, v, d) = (6, 500, 33);
    let c = kl_case(n, v, d, 9);
    let wt16: Vec<f64> = c.wt.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect();
    let work = KlWorkspace::with_rows(g, v, d, 4).unwrap();
    let (ths, tws, tht) = (up(&[n, d], &c.hs), up(&[v, d], &c.ws), up(&[n, d], &c.ht));
    let twt = g.upload_f16(&[v, d], &c.wt).unwrap();
    let (loss_rows, dhs, dws) = (g.zeros(&[n]).unwrap(), g.zeros(&[n, d]).unwrap(), g.zeros(&[v, d]).unwrap());
    g.run(|b| {
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) }, 0.5);
        Ok(())
    })
    .unwrap();
    let (wl, wdhs, wdws) = kl::cpu::kl_lm_head(&f64v(&c.hs), &f64v(&c.ws), &f64v(&c.ht), &wt16, d, 0.5);
    check("kl f16 teacher loss", &read(&loss_rows), &wl, 1e-5);
    check("kl f16 teacher dhs", &read(&dhs), &wdhs, 1e-4);
    check("kl f16 teacher dws", &read(&dws), &wdws, 1e-4);
}

#[test]
fn kl_reference_gradient_matches_finite_differences() {
    let (n, v, d) = (3, 7, 4);
    let c = kl_case(n, v, d, 11);
    let (hs, ws, ht, wt) = (f64v(&c.hs), f64v(&c.ws), f64v(&c.ht), f64v(&c.wt));
    let scale = 0.37;
    let lossf = |hs: &[f64], ws: &[f64]| scale * kl::cpu::kl_lm_head(hs, ws, &ht, &wt, d, scale).0.iter().sum::<f64>();
    let (_, dhs, dws) = kl::cpu::kl_lm_head(&hs, &ws, &ht, &wt, d, scale);
    let nh = numeric_grad(&hs, 1e-5, |x| lossf(x, &ws));
    let nw = numeric_grad(&ws, 1e-5, |x| lossf(&hs, x));
    let (eh, ew) = (err64(&dhs, &nh), err64(&dws, &nw));
    eprintln!("kl f64 gradient vs finite differences: dhs {eh:.1e}, dws {ew:.1e}");
    assert!(eh < 1e-7 && ew < 1e-7, "kl reference gradient vs finite differences: dhs {eh:.2e}, dws {ew:.2e}");
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
            ops::rmsnorm::rmsnorm_backward(b, &tx, &tw, eps, &tdy, &dx, &dw, false);
            ops::rmsnorm::rmsnorm_backward(b, &tx, &tw, eps, &tdy, &dxa, &dw, true);
            Ok(())
        })
        .unwrap();
        let (wdx, wdw) = ops::rmsnorm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), eps as f64, &f64v(&dy));
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
        ops::rmsnorm::rmsnorm_backward(b, &tx, &tw, 1e-6, &tdy, &dx, &dw, false);
        Ok(())
    })
    .unwrap();
    let (wdx, wdw) = ops::rmsnorm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), 1e-6, &f64v(&dy));
    check("rmsnorm_backward per head dx", &read(&dx), &wdx, 1e-5);
    check("rmsnorm_backward per head dw", &read(&dw), &wdw, 1e-5);
}

#[test]
fn rmsnorm_reference_gradient_matches_finite_differences() {
    let mut r = rng(22);
    let (rows, cols, eps) = (3, 5, 1e-3);
    let (x, w, dy) = (f64v(&randn(&mut r, rows * cols, 1.0)), f64v(&randn(&mut r, cols, 1.0)), f64v(&randn(&mut r, rows * cols, 1.0)));
    let f = |x: &[f64], w: &[f64]| ops::rmsnorm::cpu::rmsnorm(x, w, eps).iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>();
    let (dx, dw) = ops::rmsnorm::cpu::rmsnorm_backward(&x, &w, eps, &dy);
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
