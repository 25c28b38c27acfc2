//! Gated RMSNorm per head, y = rmsnorm(o) * w * silu(z), forward and backward
//! (src/ops/gated_norm.rs, shaders/gated_norm.wgsl), against the f64 references. (Its
//! split path runs with the GDN activations' in gdn_act.rs.)
use crate::common::*;
use taylorcal::ops::gated_norm;

#[test]
fn gated_norm_forward_and_backward_match_reference() {
    let g = gpu();
    let mut r = rng(35);
    for &(rows, d) in &[(1, 2), (5, 3), (37, 64), (130, 65), (3, 200)] {
        let o = randn(&mut r, rows * d, 2.0);
        let z = randn(&mut r, rows * d, 3.0);
        let w = randn(&mut r, d, 1.0);
        let dy = randn(&mut r, rows * d, 1.0);
        let dw0 = randn(&mut r, d, 1.0);
        let (to, tz, tw, tdy) = (up(g, &[rows, d], &o), up(g, &[rows, d], &z), up(g, &[d], &w), up(g, &[rows, d], &dy));
        let (y, rstd) = (g.zeros(&[rows, d]).unwrap(), g.zeros(&[rows]).unwrap());
        let (d_o, dz, scratch) = (g.zeros(&[rows, d]).unwrap(), g.zeros(&[rows, d]).unwrap(), g.zeros(&[rows * d]).unwrap());
        let dw = up(g, &[d], &dw0);
        g.run(|b| {
            gated_norm::gated_norm_forward(b, &to, &tz, &tw, 1e-5, &y, &rstd);
            gated_norm::gated_norm_backward(b, &to, &tz, &tw, &rstd, &tdy, &d_o, &dz, &dw, &scratch, true);
            Ok(())
        })
        .unwrap();
        let (o, z, w) = (f64v(&o), f64v(&z), f64v(&w));
        let (want_y, want_rstd) = gated_norm::cpu::gated_norm_forward(&o, &z, &w, 1e-5);
        let (want_do, want_dz, mut want_dw) = gated_norm::cpu::gated_norm_backward(&o, &z, &w, 1e-5, &f64v(&dy));
        for (a, b) in want_dw.iter_mut().zip(&dw0) {
            *a += *b as f64;
        }
        check(&format!("gated norm y {rows}x{d}"), &read(g, &y), &want_y, 1e-5);
        check(&format!("gated norm rstd {rows}x{d}"), &read(g, &rstd), &want_rstd, 1e-5);
        check(&format!("gated norm do {rows}x{d}"), &read(g, &d_o), &want_do, 1e-5);
        check(&format!("gated norm dz {rows}x{d}"), &read(g, &dz), &want_dz, 1e-5);
        check(&format!("gated norm dw {rows}x{d}"), &read(g, &dw), &want_dw, 1e-5);
    }
}
