//! The matrix-unit GEMM (src/ops/mma.rs, shaders/mma_*.wgsl): the three products of a
//! linear layer, with f32 and f16 weights, bias and accumulation, at shapes that are not
//! multiples of its 64 x 64 and 128 x 128 tiles (slices of 64 and 32 deep on lavapipe). On an adapter with cooperative matrices the
//! tensor-core path runs; elsewhere (lavapipe in CI) the fallback with the same tiling.
//!
//! Two references: f64 on the f16-rounded operands, which the kernel must match to f32
//! accumulation (1e-5 relative, as every f32 kernel here: this checks the tiling, staging
//! and multiply exactly), and f64 on the operands as given, the precision a user gets:
//! each operand rounded to f16 is off by at most 2^-11 relative, so a product by at most
//! ~2^-10 and a sum of K products of random sign by about 2^-11 sqrt(2) in relative RMS
//! (6.9e-4); the bound is 2e-3 relative RMS (bf16 tests in flash-linear-attention allow 5e-3).
use crate::common::*;
use taylorcal::gpu::{GpuOptions, MatmulKernel, Precision};
use taylorcal::ops::{matmul, matmul_grad, mma};

fn round16(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f64()).collect()
}

/// `got` against both references (`exact16` from the rounded operands, `exact` from the given ones).
fn check2(what: &str, got: &[f32], exact16: &[f64], exact: &[f64]) {
    check(what, got, exact16, 1e-5);
    let rms = rel_rms_f64(&f64v(got), exact);
    assert!(rms < 2e-3, "{what}: relative RMS error {rms:.2e} against the unrounded operands (f16 bound 2e-3)");
}

/// y = x W^T + bias, dx = dy W and dW = dy^T x (`got`, in that order) against both references.
#[allow(clippy::too_many_arguments)]
fn check_products(s: &str, got: [Vec<f32>; 3], x: &[f32], w: &[f32], dy: &[f32], bias: &[f32], n: usize, k: usize) {
    let (x16, w16, dy16) = (round16(x), round16(w), round16(dy));
    let (xe, we, dye, be) = (f64v(x), f64v(w), f64v(dy), f64v(bias));
    let [y, dx, dw] = got;
    check2(&format!("y {s}"), &y, &matmul::cpu::linear(&x16, &w16, Some(&be), k), &matmul::cpu::linear(&xe, &we, Some(&be), k));
    let (dx16, dxe) =
        (matmul_grad::cpu::linear_backward_input(&dy16, &w16, n, k), matmul_grad::cpu::linear_backward_input(&dye, &we, n, k));
    check2(&format!("dx {s}"), &dx, &dx16, &dxe);
    let (dw16, dwe) =
        (matmul_grad::cpu::linear_backward_weight(&dy16, &x16, n, k), matmul_grad::cpu::linear_backward_weight(&dye, &xe, n, k));
    check2(&format!("dW {s}"), &dw, &dw16, &dwe);
}

#[test]
fn mma_linear_and_gradients_match_references_at_awkward_shapes() {
    let g = gpu();
    assert!(mma::available(g), "adapter {} has no SHADER_F16: the mma kernels cannot run", g.info.name);
    eprintln!("mma path on {}: {:?}", g.info.name, mma::MmaPath::auto(g));
    let mut r = rng(41);
    for &(m, n, k) in &[(1, 1, 1), (1, 70, 33), (63, 17, 65), (65, 130, 100), (130, 65, 1), (3, 5, 7), (200, 129, 257)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let bias = randn(&mut r, n, 1.0);
        let dy = randn(&mut r, m * n, 1.0);
        let y0 = randn(&mut r, m * n, 1.0);
        let (tx, tdy, tb) = (up(g, &[m, k], &x), up(g, &[m, n], &dy), up(g, &[n], &bias));
        let plus = |a: &[f64], b0: &[f32]| a.iter().zip(b0).map(|(a, b)| a + *b as f64).collect::<Vec<_>>();
        for (f16_w, tile) in [(false, mma::Tile::T64), (true, mma::Tile::T64), (true, mma::Tile::T128)] {
            let tw = if f16_w { g.upload_f16(&[n, k], &w).unwrap() } else { up(g, &[n, k], &w) };
            let y = g.zeros(&[m, n]).unwrap();
            let ya = up(g, &[m, n], &y0);
            let dx = g.zeros(&[m, k]).unwrap();
            let dw = g.zeros(&[n, k]).unwrap();
            g.run(|b| {
                mma::linear(b, &tx, &tw, Some(&tb), &y, false, Some(tile));
                mma::linear(b, &tx, &tw, None, &ya, true, Some(tile));
                mma::backward_input(b, &tdy, &tw, &dx, false, Some(tile));
                mma::backward_weight(b, &tdy, &tx, &dw, false, Some(tile));
                Ok(())
            })
            .unwrap();
            let s = format!("{m}x{n}x{k} W {} tile {}", if f16_w { "f16" } else { "f32" }, tile.size());
            check_products(&s, [read(g, &y), read(g, &dx), read(g, &dw)], &x, &w, &dy, &bias, n, k);
            let (x16, w16) = (round16(&x), round16(&w));
            check2(
                &format!("y += {s}"),
                &read(g, &ya),
                &plus(&matmul::cpu::linear(&x16, &w16, None, k), &y0),
                &plus(&matmul::cpu::linear(&f64v(&x), &f64v(&w), None, k), &y0),
            );
        }
    }
}

/// A long reduction: every output tile loops over 47 to 94 slices (3001 rows).
#[test]
fn mma_weight_gradient_over_many_tokens() {
    let g = gpu();
    let mut r = rng(42);
    let (m, n, k) = (3001, 70, 66);
    let (x, dy) = (randn(&mut r, m * k, 1.0), randn(&mut r, m * n, 1.0));
    let dw = g.zeros(&[n, k]).unwrap();
    let (tx, tdy) = (up(g, &[m, k], &x), up(g, &[m, n], &dy));
    g.run(|b| {
        mma::backward_weight(b, &tdy, &tx, &dw, false, None);
        Ok(())
    })
    .unwrap();
    let want16 = matmul_grad::cpu::linear_backward_weight(&round16(&dy), &round16(&x), n, k);
    check2(&format!("dW {m}x{n}x{k}"), &read(g, &dw), &want16, &matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k));
}

/// An input gradient of few rows over a long reduction (the KL head's dh over the
/// vocabulary): the reduction goes in pieces over several workgroups per tile, whose
/// partial sums are added into dx, replacing it or accumulating into it.
#[test]
fn mma_input_gradient_over_a_long_reduction() {
    let g = gpu();
    let mut r = rng(43);
    let (m, n, k) = (70, 3001, 66);
    let (w, dy, dx0) = (randn(&mut r, n * k, 1.0), randn(&mut r, m * n, 1.0), randn(&mut r, m * k, 1.0));
    let (tw, tdy) = (up(g, &[n, k], &w), up(g, &[m, n], &dy));
    let dx = g.zeros(&[m, k]).unwrap();
    let dxa = up(g, &[m, k], &dx0);
    g.run(|b| {
        mma::backward_input(b, &tdy, &tw, &dx, false, None);
        mma::backward_input(b, &tdy, &tw, &dxa, true, None);
        Ok(())
    })
    .unwrap();
    let want16 = matmul_grad::cpu::linear_backward_input(&round16(&dy), &round16(&w), n, k);
    let want = matmul_grad::cpu::linear_backward_input(&f64v(&dy), &f64v(&w), n, k);
    check2(&format!("dx {m}x{n}x{k}"), &read(g, &dx), &want16, &want);
    let plus = |a: &[f64]| a.iter().zip(&dx0).map(|(a, b)| a + *b as f64).collect::<Vec<_>>();
    check2(&format!("dx += {m}x{n}x{k}"), &read(g, &dxa), &plus(&want16), &plus(&want));
}

/// At precision f16 the model's products (`ops::matmul::linear`, `ops::matmul_grad`) run
/// these kernels, split over bindings as the f32 ones are: here every tensor over 4 KiB is
/// bound in pieces (rows of x / y / dy, W's rows with the bias and with the reduction over
/// them, dW's rows with A's column offset).
#[test]
fn precision_f16_runs_the_model_products_on_mma_split_over_bindings() {
    let g = gpu_with(GpuOptions { precision: Some(Precision::F16), max_binding: Some(MAX_BINDING), ..env_options() });
    assert_eq!(g.max_binding, MAX_BINDING);
    assert_eq!(MatmulKernel::auto(g), MatmulKernel::Mma, "precision f16 must pick the mma kernels");
    let mut r = rng(43);
    for &(m, n, k) in &[(300, 250, 33), (7, 1100, 3), (70, 90, 45), (130, 600, 65)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let bias = randn(&mut r, n, 1.0);
        let dy = randn(&mut r, m * n, 1.0);
        let (tx, tdy, tb) = (up(g, &[m, k], &x), up(g, &[m, n], &dy), up(g, &[n], &bias));
        for f16_w in [false, true] {
            let tw = if f16_w { g.upload_f16(&[n, k], &w).unwrap() } else { up(g, &[n, k], &w) };
            let (y, dx, dw) = (g.zeros(&[m, n]).unwrap(), g.zeros(&[m, k]).unwrap(), g.zeros(&[n, k]).unwrap());
            g.run(|b| {
                matmul::linear(b, &tx, &tw, Some(&tb), &y, false);
                matmul_grad::linear_backward_input(b, &tdy, &tw, &dx, false);
                matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
                Ok(())
            })
            .unwrap();
            let s = format!("split {m}x{n}x{k} W {}", if f16_w { "f16" } else { "f32" });
            check_products(&s, [read(g, &y), read(g, &dx), read(g, &dw)], &x, &w, &dy, &bias, n, k);
        }
    }
}

/// Gradients far outside f16's range keep f16's relative precision: dy of 1e-9 (a KL
/// loss's per-logit gradients over thousands of tokens; below f16's smallest subnormal,
/// 6e-8, so they flushed to zero before the per-workgroup scaling, relative error 1.0) and of
/// 1e6 (past f16's largest value, 65504: infinite before), with rows of very different
/// magnitudes in one tile.
#[test]
fn mma_gradients_of_any_magnitude_keep_f16_precision() {
    let g = gpu();
    let mut r = rng(44);
    for &(m, n, k) in &[(130, 70, 65), (300, 9, 33)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        for mag in [1e-9f32, 1e6] {
            // each row of dy at mag times a factor between 1/16 and 16
            let mut dy = randn(&mut r, m * n, mag);
            for (i, row) in dy.chunks_mut(n).enumerate() {
                row.iter_mut().for_each(|v| *v *= 2f32.powi(i as i32 % 9 - 4));
            }
            let (tx, tw, tdy) = (up(g, &[m, k], &x), up(g, &[n, k], &w), up(g, &[m, n], &dy));
            let (dx, dw) = (g.zeros(&[m, k]).unwrap(), g.zeros(&[n, k]).unwrap());
            g.run(|b| {
                mma::backward_input(b, &tdy, &tw, &dx, false, None);
                mma::backward_weight(b, &tdy, &tx, &dw, false, None);
                Ok(())
            })
            .unwrap();
            let (xe, we, dye) = (f64v(&x), f64v(&w), f64v(&dy));
            for (what, got, want) in [
                ("dx", read(g, &dx), matmul_grad::cpu::linear_backward_input(&dye, &we, n, k)),
                ("dW", read(g, &dw), matmul_grad::cpu::linear_backward_weight(&dye, &xe, n, k)),
            ] {
                let rms = rel_rms_f64(&f64v(&got), &want);
                assert!(rms < 2e-3, "{what} {m}x{n}x{k}, dy ~ {mag:e}: relative RMS error {rms:.2e} (f16 bound 2e-3)");
            }
        }
    }
}
