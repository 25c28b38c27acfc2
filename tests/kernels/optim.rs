//! Training kernels (src/ops/optim.rs, shaders/optim.wgsl) against f64 references: global
//! gradient norm, MSE + cosine sums, AdamW with clipping over several steps.
use crate::common::*;
use taylorcal::ops::optim::{self, AdamW, Reducer};

#[test]
fn sum_of_squares_over_several_tensors() {
    let g = gpu();
    let mut r = rng(31);
    let (a, b) = (randn(&mut r, 1000, 1.0), randn(&mut r, 77, 3.0));
    let (ta, tb) = (g.upload(&[1000], &a).unwrap(), g.upload(&[77], &b).unwrap());
    let red = Reducer::new(g, 2000, 2).unwrap();
    g.run(|bt| {
        optim::sum_squares(bt, &[&ta, &tb], &red, 1);
        Ok(())
    })
    .unwrap();
    let got = g.read(&red.out).unwrap();
    let want: f64 = a.iter().chain(&b).map(|x| (*x as f64).powi(2)).sum();
    assert_close("sum of squares", &got[4..5], &[want], 1e-5);
}

#[test]
fn mse_gradient_and_cosine_sums() {
    let g = gpu();
    let mut r = rng(32);
    let n = 1537;
    let (y, t) = (randn(&mut r, n, 1.0), randn(&mut r, n, 1.0));
    let (ty, tt, dy) = (g.upload(&[n], &y).unwrap(), g.upload(&[n], &t).unwrap(), g.zeros(&[n]).unwrap());
    let red = Reducer::new(g, n, 1).unwrap();
    g.run(|b| {
        optim::mse(b, &ty, &tt, &dy, &red, 0);
        Ok(())
    })
    .unwrap();
    let want_dy: Vec<f64> = y.iter().zip(&t).map(|(a, b)| 2.0 * (*a as f64 - *b as f64) / n as f64).collect();
    assert_close("mse dy", &g.read(&dy).unwrap(), &want_dy, 1e-6);
    let s = g.read(&red.out).unwrap();
    let (loss, cos) = optim::mse_summary([s[0], s[1], s[2], s[3]], n);
    let yd = f64v(&y);
    let td = f64v(&t);
    let want_loss = yd.iter().zip(&td).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n as f64;
    let dot: f64 = yd.iter().zip(&td).map(|(a, b)| a * b).sum();
    let want_cos = dot / (yd.iter().map(|a| a * a).sum::<f64>().sqrt() * td.iter().map(|a| a * a).sum::<f64>().sqrt());
    assert!((loss - want_loss).abs() < 1e-5 * want_loss, "loss {loss} vs {want_loss}");
    assert!((cos - want_cos).abs() < 1e-5, "cos {cos} vs {want_cos}");
}

#[test]
fn adamw_with_clipping_matches_reference_over_steps() {
    let g = gpu();
    let mut r = rng(33);
    let sizes = [300, 65];
    let mut params: Vec<Vec<f64>> = sizes.iter().map(|&n| f64v(&randn(&mut r, n, 1.0))).collect();
    let mut m: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0.0; n]).collect();
    let mut v = m.clone();
    let tp: Vec<_> = params.iter().map(|p| g.upload(&[p.len()], &p.iter().map(|x| *x as f32).collect::<Vec<_>>()).unwrap()).collect();
    let tm: Vec<_> = sizes.iter().map(|&n| g.zeros(&[n]).unwrap()).collect();
    let tv: Vec<_> = sizes.iter().map(|&n| g.zeros(&[n]).unwrap()).collect();
    let o = AdamW { lr: 1e-2, weight_decay: 0.1, max_norm: 1.0, ..Default::default() };
    let red = Reducer::new(g, 400, 1).unwrap();
    let mut norms = vec![];
    for step in 1..=4u32 {
        // gradients large enough that clipping is active on some steps
        let scale = if step % 2 == 0 { 0.01 } else { 2.0 };
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| randn(&mut r, n, scale)).collect();
        let tg: Vec<_> = grads.iter().map(|gr| g.upload(&[gr.len()], gr).unwrap()).collect();
        g.run(|b| {
            optim::sum_squares(b, &tg.iter().collect::<Vec<_>>(), &red, 0);
            for i in 0..sizes.len() {
                optim::adamw(b, &o, step, &tp[i], &tg[i], &tm[i], &tv[i], &red);
            }
            Ok(())
        })
        .unwrap();
        let gd: Vec<Vec<f64>> = grads.iter().map(|x| f64v(x)).collect();
        norms.push(optim::cpu::adamw(&o, step, &mut params, &gd, &mut m, &mut v));
    }
    assert!(norms.iter().any(|&n| n > 1.0) && norms.iter().any(|&n| n < 1.0), "clipping not exercised: {norms:?}");
    for (i, p) in params.iter().enumerate() {
        assert_close(&format!("param {i}"), &g.read(&tp[i]).unwrap(), p, 1e-5);
    }
}
