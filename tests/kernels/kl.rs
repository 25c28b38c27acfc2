//! The distillation loss: student and teacher LM heads fused with KL(teacher || student)
//! and its gradients (src/ops/kl.rs, shaders/kl.wgsl), against the f64 reference; the f64
//! gradient against finite differences; the heads split over bindings.
use crate::common::*;
use taylorcal::gpu::Gpu;
use taylorcal::ops::kl::{self, KlOut, KlWorkspace};
use taylorcal::ops::optim::Reducer;

/// [`check`], except that a reference that is zero everywhere (V = 1: one logit, so no
/// divergence and no gradient) is compared absolutely.
fn check_rel_or_abs(what: &str, got: &[f32], want: &[f64], tol: f64) {
    if want.iter().any(|w| *w != 0.0) {
        return check(what, got, want, tol);
    }
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let e = got.iter().fold(0.0f64, |m, g| m.max((*g as f64).abs()));
    eprintln!("{what:<40} max abs err {e:.2e} (zero reference)");
    assert!(e <= tol, "{what}: absolute error {e:.3e} > {tol:.1e}");
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
    let (ths, tws, tht, twt) = (up(g, &[n, d], &c.hs), up(g, &[v, d], &c.ws), up(g, &[n, d], &c.ht), up(g, &[v, d], &c.wt));
    let loss_rows = up(g, &[n], &vec![7.0; n]);
    let dhs = up(g, &[n, d], &vec![-3.0; n * d]); // overwritten
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
    check_rel_or_abs(&format!("{label} loss"), &read(g, &loss_rows), &wl, 1e-5);
    check_rel_or_abs(&format!("{label} dhs"), &read(g, &dhs), &wdhs, 1e-4);
    check_rel_or_abs(&format!("{label} dws"), &read(g, &dws), &wdws, 1e-4);
    call(g);
    let twice: Vec<f64> = wdws.iter().map(|x| 2.0 * x).collect();
    check_rel_or_abs(&format!("{label} dws accumulated twice"), &read(g, &dws), &twice, 1e-4);
    check_rel_or_abs(&format!("{label} dhs second call"), &read(g, &dhs), &wdhs, 1e-4);
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
    let (ths, tws, tht, twt) = (up(g, &[n, d], &c.hs), up(g, &[v, d], &c.ws), up(g, &[n, d], &c.ht), up(g, &[v, d], &c.wt));
    let loss_rows = g.zeros(&[n]).unwrap();
    let red = Reducer::new(g, n, 2).unwrap();
    g.run(|b| {
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, KlOut { loss_rows: &loss_rows, dhs: None, dws: None }, 1.0);
        kl::kl_total(b, &loss_rows, 1.0 / n as f32, &red, 1);
        Ok(())
    })
    .unwrap();
    let (wl, _, _) = kl::cpu::kl_lm_head(&f64v(&c.hs), &f64v(&c.ws), &f64v(&c.ht), &f64v(&c.wt), d, 1.0);
    check_rel_or_abs("kl loss only", &read(g, &loss_rows), &wl, 1e-5);
    let mean = wl.iter().sum::<f64>() / n as f64;
    check_rel_or_abs("kl mean (Reducer)", &read(g, &red.out)[4..5], &[mean], 1e-5);
}

#[test]
fn kl_is_zero_when_student_equals_teacher() {
    let g = gpu();
    let (n, v, d) = (13, 1000, 67);
    let c = kl_case(n, v, d, 8);
    let work = KlWorkspace::with_rows(g, v, d, 5).unwrap();
    let (ths, tws, tht, twt) = (up(g, &[n, d], &c.hs), up(g, &[v, d], &c.ws), up(g, &[n, d], &c.hs), up(g, &[v, d], &c.ws));
    let loss_rows = up(g, &[n], &vec![1.0; n]);
    let dhs = up(g, &[n, d], &vec![1.0; n * d]);
    let dws = g.zeros(&[v, d]).unwrap();
    g.run(|b| {
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) }, 1.0);
        Ok(())
    })
    .unwrap();
    let maxabs = |v: Vec<f32>| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let (l, dh, dw) = (maxabs(read(g, &loss_rows)), maxabs(read(g, &dhs)), maxabs(read(g, &dws)));
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
    let (ths, tws, tht) = (up(g, &[n, d], &c.hs), up(g, &[v, d], &c.ws), up(g, &[n, d], &c.ht));
    let twt = g.upload_f16(&[v, d], &c.wt).unwrap();
    let (loss_rows, dhs, dws) = (g.zeros(&[n]).unwrap(), g.zeros(&[n, d]).unwrap(), g.zeros(&[v, d]).unwrap());
    g.run(|b| {
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) }, 0.5);
        Ok(())
    })
    .unwrap();
    let (wl, wdhs, wdws) = kl::cpu::kl_lm_head(&f64v(&c.hs), &f64v(&c.ws), &f64v(&c.ht), &wt16, d, 0.5);
    check_rel_or_abs("kl f16 teacher loss", &read(g, &loss_rows), &wl, 1e-5);
    check_rel_or_abs("kl f16 teacher dhs", &read(g, &dhs), &wdhs, 1e-4);
    check_rel_or_abs("kl f16 teacher dws", &read(g, &dws), &wdws, 1e-4);
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
    let (eh, ew) = (rel_err_f64(&dhs, &nh), rel_err_f64(&dws, &nw));
    eprintln!("kl f64 gradient vs finite differences: dhs {eh:.1e}, dws {ew:.1e}");
    assert!(eh < 1e-7 && ew < 1e-7, "kl reference gradient vs finite differences: dhs {eh:.2e}, dws {ew:.2e}");
}

// ---------------------------------------------------------------------------------------
// split over bindings

#[test]
fn kl_lm_head_split_over_bindings_matches_reference() {
    let g = split_gpu();
    // the heads [V, D] are split over bindings by the matmuls; one logits row per chunk fits
    let (n, v, d) = (5, 700, 19);
    assert!((v * d * 4) as u64 > MAX_BINDING && (v * 4) as u64 <= MAX_BINDING);
    let work = KlWorkspace::new(g, v, d, n, kl::KL_DEFAULT_BUDGET).unwrap();
    assert_eq!(work.rows, 1, "one {v}-wide logits row per 4 KiB binding");
    let mut r = rng(25);
    let a = 6.0 / (d as f32).sqrt();
    let (hs, ws, ht, wt) = (randn(&mut r, n * d, 1.0), randn(&mut r, v * d, a), randn(&mut r, n * d, 1.0), randn(&mut r, v * d, a));
    let (ths, tws, tht, twt) = (up(g, &[n, d], &hs), up(g, &[v, d], &ws), up(g, &[n, d], &ht), up(g, &[v, d], &wt));
    let (loss_rows, dhs, dws) = (g.zeros(&[n]).unwrap(), g.zeros(&[n, d]).unwrap(), g.zeros(&[v, d]).unwrap());
    g.run(|b| {
        let out = KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) };
        kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, out, 0.2);
        Ok(())
    })
    .unwrap();
    let (wl, wdhs, wdws) = kl::cpu::kl_lm_head(&f64v(&hs), &f64v(&ws), &f64v(&ht), &f64v(&wt), d, 0.2);
    assert_close("split kl loss", &read(g, &loss_rows), &wl, 1e-5);
    assert_close("split kl dhs", &read(g, &dhs), &wdhs, 1e-4);
    assert_close("split kl dws", &read(g, &dws), &wdws, 1e-4);
}
