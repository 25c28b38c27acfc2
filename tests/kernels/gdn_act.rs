//! Element-wise pieces of the Gated DeltaNet block, forward and backward
//! (src/ops/gdn_act.rs, shaders/gdn_act.wgsl): SiLU, the decay gate with the write
//! strength, the column sums; against the f64 references, then split over bindings
//! (with the gated norm's split path).
use crate::common::*;
use taylorcal::ops::{gated_norm, gdn_act};

#[test]
fn silu_forward_and_backward_match_reference() {
    let g = gpu();
    let mut r = rng(33);
    for &n in &[1, 255, 1000] {
        let z = randn(&mut r, n, 6.0);
        let d = randn(&mut r, n, 1.0);
        let (tz, td) = (up(g, &[n], &z), up(g, &[n], &d));
        let y = g.zeros(&[n]).unwrap();
        g.run(|b| {
            gdn_act::silu_forward(b, &tz, &y);
            gdn_act::silu_backward(b, &tz, &td);
            Ok(())
        })
        .unwrap();
        let want_y: Vec<f64> = z.iter().map(|&v| gdn_act::cpu::silu(v as f64)).collect();
        let want_d: Vec<f64> = z.iter().zip(&d).map(|(&v, &dd)| dd as f64 * gdn_act::cpu::silu_grad(v as f64)).collect();
        check(&format!("silu {n}"), &read(g, &y), &want_y, 1e-5);
        check(&format!("silu backward {n}"), &read(g, &td), &want_d, 1e-5);
    }
}

/// Parameters of the decay gate drawn like fla's initialisation.
fn gate_params(r: &mut rand::rngs::StdRng, h: usize) -> (Vec<f32>, Vec<f32>) {
    use rand::Rng;
    let a_log = (0..h).map(|_| r.random_range(1.0f64..16.0).ln() as f32).collect();
    let dt_bias = (0..h)
        .map(|_| {
            let dt = (r.random_range(1e-3f64.ln()..0.1f64.ln())).exp();
            gdn_act::cpu::inv_softplus(dt) as f32
        })
        .collect();
    (a_log, dt_bias)
}

#[test]
fn gate_forward_and_backward_match_reference() {
    let g = gpu();
    let mut r = rng(34);
    for &(n, h) in &[(1, 1), (7, 3), (300, 5), (2500, 2)] {
        let za = randn(&mut r, n * h, 3.0);
        let zb = randn(&mut r, n * h, 4.0);
        let (a_log, dt_bias) = gate_params(&mut r, h);
        let dg = randn(&mut r, n * h, 1.0);
        let dbeta = randn(&mut r, n * h, 1.0);
        let da0 = randn(&mut r, h, 1.0);
        let (tza, tzb, ta, tdt) = (up(g, &[n, h], &za), up(g, &[n, h], &zb), up(g, &[h], &a_log), up(g, &[h], &dt_bias));
        let (tg, tbeta) = (g.zeros(&[n, h]).unwrap(), g.zeros(&[n, h]).unwrap());
        let (tdg, tdbeta) = (up(g, &[n, h], &dg), up(g, &[n, h], &dbeta));
        let scratch = g.zeros(&[n * h + 3]).unwrap();
        let (tda, tddt) = (up(g, &[h], &da0), up(g, &[h], &da0));
        g.run(|b| {
            gdn_act::gate_forward(b, &tza, &tzb, &ta, &tdt, &tg, &tbeta);
            gdn_act::gate_backward(b, &tza, &tbeta, &ta, &tdt, &tdg, &tdbeta, &scratch, &tda, &tddt, n % 2 == 0);
            Ok(())
        })
        .unwrap();
        let (za, zb, a_log, dt_bias) = (f64v(&za), f64v(&zb), f64v(&a_log), f64v(&dt_bias));
        let (want_g, want_beta) = gdn_act::cpu::gate_forward(&za, &zb, &a_log, &dt_bias);
        let (dza, dzb, mut da, mut ddt) = gdn_act::cpu::gate_backward(&za, &zb, &a_log, &dt_bias, &f64v(&dg), &f64v(&dbeta));
        if n % 2 == 0 {
            for i in 0..h {
                da[i] += da0[i] as f64;
                ddt[i] += da0[i] as f64;
            }
        }
        check(&format!("gate g {n}x{h}"), &read(g, &tg), &want_g, 1e-5);
        check(&format!("gate beta {n}x{h}"), &read(g, &tbeta), &want_beta, 1e-5);
        check(&format!("gate dza {n}x{h}"), &read(g, &tdg), &dza, 1e-5);
        check(&format!("gate dzb {n}x{h}"), &read(g, &tdbeta), &dzb, 1e-5);
        check(&format!("gate dA_log {n}x{h}"), &read(g, &tda), &da, 1e-5);
        check(&format!("gate ddt_bias {n}x{h}"), &read(g, &tddt), &ddt, 1e-5);
    }
}

#[test]
fn colsum_matches_reference() {
    let g = gpu();
    let mut r = rng(36);
    for &(rows, cols) in &[(1, 1), (3, 70), (1025, 3), (5000, 65), (300_000, 2)] {
        let x = randn(&mut r, rows * cols, 1.0);
        let y0 = randn(&mut r, cols, 1.0);
        let tx = up(g, &[rows, cols], &x);
        let (y, ya) = (up(g, &[cols], &y0), up(g, &[cols], &y0));
        g.run(|b| {
            gdn_act::colsum(b, &tx, &y, false);
            gdn_act::colsum(b, &tx, &ya, true);
            Ok(())
        })
        .unwrap();
        let want = gdn_act::cpu::colsum(&f64v(&x), cols, 1.0);
        let want_a: Vec<f64> = want.iter().zip(&y0).map(|(a, b)| a + *b as f64).collect();
        check(&format!("colsum {rows}x{cols}"), &read(g, &y), &want, 1e-5);
        check(&format!("colsum += {rows}x{cols}"), &read(g, &ya), &want_a, 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// split over bindings

#[test]
fn activations_gate_norm_and_colsum_split_over_bindings() {
    let g = split_gpu();
    let mut r = rng(52);
    let (n, h, d) = (700, 3, 20);
    // rows of every op are bound in several pieces
    assert!(
        g.rows_per_binding(&[(d * 4) as u64, 4]) < n * h
            && g.rows_per_binding(&[(h * 4) as u64]) < n
            && g.rows_per_binding(&[4]) < n * h * d
    );
    // SiLU over 2100 * 20 elements
    let z = randn(&mut r, n * h * d, 5.0);
    let dd = randn(&mut r, n * h * d, 1.0);
    let (tz, td, ty) = (up(g, &[n, h * d], &z), up(g, &[n, h * d], &dd), g.zeros(&[n, h * d]).unwrap());
    // gate over [700, 3]
    let za = randn(&mut r, n * h, 3.0);
    let zb = randn(&mut r, n * h, 3.0);
    let a_log: Vec<f32> = vec![0.5, 1.7, 2.4];
    let dt: Vec<f32> = vec![-4.0, -2.5, -6.0];
    let dg = randn(&mut r, n * h, 1.0);
    let dbeta = randn(&mut r, n * h, 1.0);
    let (tza, tzb, ta, tdt) = (up(g, &[n, h], &za), up(g, &[n, h], &zb), up(g, &[h], &a_log), up(g, &[h], &dt));
    let (tg, tbeta, tdg, tdbeta) = (g.zeros(&[n, h]).unwrap(), g.zeros(&[n, h]).unwrap(), up(g, &[n, h], &dg), up(g, &[n, h], &dbeta));
    let (tda, tddt, scratch) = (g.zeros(&[h]).unwrap(), g.zeros(&[h]).unwrap(), g.zeros(&[n * h * d]).unwrap());
    // gated norm over [2100, 20]
    let o = randn(&mut r, n * h * d, 2.0);
    let w = randn(&mut r, d, 1.0);
    let dy = randn(&mut r, n * h * d, 1.0);
    let (to, tw, tdy) = (up(g, &[n * h, d], &o), up(g, &[d], &w), up(g, &[n * h, d], &dy));
    let (y, rstd, d_o, dz, dw) = (
        g.zeros(&[n * h, d]).unwrap(),
        g.zeros(&[n * h]).unwrap(),
        g.zeros(&[n * h, d]).unwrap(),
        g.zeros(&[n * h, d]).unwrap(),
        g.zeros(&[d]).unwrap(),
    );
    g.run(|b| {
        gdn_act::silu_forward(b, &tz, &ty);
        gdn_act::silu_backward(b, &tz, &td);
        gdn_act::gate_forward(b, &tza, &tzb, &ta, &tdt, &tg, &tbeta);
        gdn_act::gate_backward(b, &tza, &tbeta, &ta, &tdt, &tdg, &tdbeta, &scratch, &tda, &tddt, false);
        gated_norm::gated_norm_forward(b, &to, &tz, &tw, 1e-5, &y, &rstd);
        gated_norm::gated_norm_backward(b, &to, &tz, &tw, &rstd, &tdy, &d_o, &dz, &dw, &scratch, false);
        Ok(())
    })
    .unwrap();
    let c = gdn_act::cpu::silu;
    check("split silu", &read(g, &ty), &z.iter().map(|&v| c(v as f64)).collect::<Vec<_>>(), 1e-5);
    let want_d: Vec<f64> = z.iter().zip(&dd).map(|(&v, &e)| e as f64 * gdn_act::cpu::silu_grad(v as f64)).collect();
    check("split silu backward", &read(g, &td), &want_d, 1e-5);
    let (za, zb, a_log, dt) = (f64v(&za), f64v(&zb), f64v(&a_log), f64v(&dt));
    let (want_g, want_beta) = gdn_act::cpu::gate_forward(&za, &zb, &a_log, &dt);
    let (dza, dzb, da, ddt) = gdn_act::cpu::gate_backward(&za, &zb, &a_log, &dt, &f64v(&dg), &f64v(&dbeta));
    check("split gate g", &read(g, &tg), &want_g, 1e-5);
    check("split gate beta", &read(g, &tbeta), &want_beta, 1e-5);
    check("split gate dza", &read(g, &tdg), &dza, 1e-5);
    check("split gate dzb", &read(g, &tdbeta), &dzb, 1e-5);
    check("split gate dA_log", &read(g, &tda), &da, 1e-5);
    check("split gate ddt_bias", &read(g, &tddt), &ddt, 1e-5);
    let (o, z, w) = (f64v(&o), f64v(&z), f64v(&w));
    let (want_y, want_rstd) = gated_norm::cpu::gated_norm_forward(&o, &z, &w, 1e-5);
    let (want_do, want_dz, want_dw) = gated_norm::cpu::gated_norm_backward(&o, &z, &w, 1e-5, &f64v(&dy));
    check("split gated norm y", &read(g, &y), &want_y, 1e-5);
    check("split gated norm rstd", &read(g, &rstd), &want_rstd, 1e-5);
    check("split gated norm do", &read(g, &d_o), &want_do, 1e-5);
    check("split gated norm dz", &read(g, &dz), &want_dz, 1e-5);
    check("split gated norm dw", &read(g, &dw), &want_dw, 1e-5);
}
