//! The GDN block's kernels with every tensor over 4 KiB bound in pieces (a context whose
//! binding limit is lowered to 4096 bytes, `GpuOptions::max_binding`), so the split paths
//! of the linear-layer gradients, the element-wise ops and the column sums run on any
//! adapter, against the same f64 references as tests/gdn.rs.
mod common;
use common::*;
use taylorcal::gpu::{Gpu, GpuOptions, Tensor};
use taylorcal::ops;

const MAX_BINDING: u64 = 4096;

/// The shared context with the binding limit lowered to 4096 bytes.
fn split_gpu() -> &'static Gpu {
    let g = gpu_with(GpuOptions { max_binding: Some(MAX_BINDING), ..Default::default() });
    assert_eq!(g.max_binding, MAX_BINDING, "the lowered binding limit was not applied: nothing would be split");
    g
}

fn up(g: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    g.upload(shape, data).unwrap()
}

fn check(what: &str, got: &[f32], want: &[f64], tol: f64) {
    let e = rel_err(got, want);
    eprintln!("{what:<40} rel max err {e:.2e}");
    assert_close(what, got, want, tol);
}

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
            ops::matmul_grad::linear_backward_input(b, &tdy, &tw, &dx, false);
            ops::matmul_grad::linear_backward_input(b, &tdy, &tw, &dxa, true);
            ops::matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
            Ok(())
        })
        .unwrap();
        let want_dx = ops::matmul_grad::cpu::linear_backward_input(&f64v(&dy), &f64v(&w), n, k);
        let want_dxa: Vec<f64> = want_dx.iter().zip(&dx0).map(|(a, b)| a + *b as f64).collect();
        let want_dw = ops::matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k);
        check(&format!("split dx {m}x{n}x{k}"), &g.read(&dx).unwrap(), &want_dx, 1e-5);
        check(&format!("split dx += {m}x{n}x{k}"), &g.read(&dxa).unwrap(), &want_dxa, 1e-5);
        check(&format!("split dW {m}x{n}x{k}"), &g.read(&dw).unwrap(), &want_dw, 1e-5);
    }
}

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
        ops::gdn_act::silu_forward(b, &tz, &ty);
        ops::gdn_act::silu_backward(b, &tz, &td);
        ops::gdn_act::gate_forward(b, &tza, &tzb, &ta, &tdt, &tg, &tbeta);
        ops::gdn_act::gate_backward(b, &tza, &tbeta, &ta, &tdt, &tdg, &tdbeta, &scratch, &tda, &tddt, false);
        ops::gated_norm::gated_norm_forward(b, &to, &tz, &tw, 1e-5, &y, &rstd);
        ops::gated_norm::gated_norm_backward(b, &to, &tz, &tw, &rstd, &tdy, &d_o, &dz, &dw, &scratch, false);
        Ok(())
    })
    .unwrap();
    let c = ops::gdn_act::cpu::silu;
    check("split silu", &g.read(&ty).unwrap(), &z.iter().map(|&v| c(v as f64)).collect::<Vec<_>>(), 1e-5);
    let want_d: Vec<f64> = z.iter().zip(&dd).map(|(&v, &e)| e as f64 * ops::gdn_act::cpu::silu_grad(v as f64)).collect();
    check("split silu backward", &g.read(&td).unwrap(), &want_d, 1e-5);
    let (za, zb, a_log, dt) = (f64v(&za), f64v(&zb), f64v(&a_log), f64v(&dt));
    let (want_g, want_beta) = ops::gdn_act::cpu::gate_forward(&za, &zb, &a_log, &dt);
    let (dza, dzb, da, ddt) = ops::gdn_act::cpu::gate_backward(&za, &zb, &a_log, &dt, &f64v(&dg), &f64v(&dbeta));
    check("split gate g", &g.read(&tg).unwrap(), &want_g, 1e-5);
    check("split gate beta", &g.read(&tbeta).unwrap(), &want_beta, 1e-5);
    check("split gate dza", &g.read(&tdg).unwrap(), &dza, 1e-5);
    check("split gate dzb", &g.read(&tdbeta).unwrap(), &dzb, 1e-5);
    check("split gate dA_log", &g.read(&tda).unwrap(), &da, 1e-5);
    check("split gate ddt_bias", &g.read(&tddt).unwrap(), &ddt, 1e-5);
    let (o, z, w) = (f64v(&o), f64v(&z), f64v(&w));
    let (want_y, want_rstd) = ops::gated_norm::cpu::gated_norm_forward(&o, &z, &w, 1e-5);
    let (want_do, want_dz, want_dw) = ops::gated_norm::cpu::gated_norm_backward(&o, &z, &w, 1e-5, &f64v(&dy));
    check("split gated norm y", &g.read(&y).unwrap(), &want_y, 1e-5);
    check("split gated norm rstd", &g.read(&rstd).unwrap(), &want_rstd, 1e-5);
    check("split gated norm do", &g.read(&d_o).unwrap(), &want_do, 1e-5);
    check("split gated norm dz", &g.read(&dz).unwrap(), &want_dz, 1e-5);
    check("split gated norm dw", &g.read(&dw).unwrap(), &want_dw, 1e-5);
}
