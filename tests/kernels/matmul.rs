//! Linear layers y = x W^T (+ bias) (+= y) (src/ops/matmul.rs, shaders/matmul.wgsl,
//! matmul_sg.wgsl, matvec.wgsl, matmul_naive.wgsl): every kernel against the f64
//! reference at awkward shapes, f16 weights, and the split over small bindings. The
//! gradients are in matmul_grad.rs.
use crate::common::*;
use rand::rngs::StdRng;
use taylorcal::gpu::{DType, Gpu};
use taylorcal::ops::matmul::{self, MatmulKernel};

/// y = x W^T into a fresh y, and y0 + x W^T + bias into a copy of y0, checked against f64;
/// with `kernel` forced, else the one `linear` picks.
fn check_linear(g: &Gpu, kernel: Option<MatmulKernel>, m: usize, n: usize, k: usize, r: &mut StdRng) {
    let x = randn(r, m * k, 1.0);
    let w = randn(r, n * k, 1.0);
    let bias = randn(r, n, 1.0);
    let y0 = randn(r, m * n, 1.0);
    let (tx, tw, tb) = (up(g, &[m, k], &x), up(g, &[n, k], &w), up(g, &[n], &bias));
    let y = g.zeros(&[m, n]).unwrap();
    let yacc = up(g, &[m, n], &y0);
    g.run(|b| {
        match kernel {
            Some(kernel) => {
                matmul::linear_with(b, &tx, &tw, None, &y, false, kernel);
                matmul::linear_with(b, &tx, &tw, Some(&tb), &yacc, true, kernel);
            }
            None => {
                matmul::linear(b, &tx, &tw, None, &y, false);
                matmul::linear(b, &tx, &tw, Some(&tb), &yacc, true);
            }
        }
        Ok(())
    })
    .unwrap();
    let tag = kernel.map_or("matmul".to_string(), |kernel| format!("{kernel:?} split matmul"));
    let want = matmul::cpu::linear(&f64v(&x), &f64v(&w), None, k);
    assert_close(&format!("{tag} {m}x{n}x{k}"), &read(g, &y), &want, 1e-5);
    let want_b = matmul::cpu::linear(&f64v(&x), &f64v(&w), Some(&f64v(&bias)), k);
    let want_acc: Vec<f64> = want_b.iter().zip(&y0).map(|(a, b)| a + *b as f64).collect();
    assert_close(&format!("{tag}+bias+acc {m}x{n}x{k}"), &read(g, &yacc), &want_acc, 1e-5);
}

#[test]
fn matmul_matches_reference_at_awkward_shapes() {
    let g = gpu();
    let mut r = rng(1);
    // m <= 4 runs the matrix-vector kernel, larger m the tiled one
    for &(m, n, k) in &[(1, 1, 1), (1, 33, 17), (3, 70, 129), (4, 300, 65), (63, 65, 64), (65, 63, 129), (130, 200, 33), (7, 129, 300)] {
        check_linear(g, None, m, n, k, &mut r);
    }
}

#[test]
fn naive_matmul_matches_reference() {
    let g = gpu();
    let mut r = rng(2);
    let (m, n, k) = (37, 53, 71);
    let x = randn(&mut r, m * k, 1.0);
    let w = randn(&mut r, n * k, 1.0);
    let (tx, tw) = (up(g, &[m, k], &x), up(g, &[n, k], &w));
    let y = g.zeros(&[m, n]).unwrap();
    g.run(|b| {
        matmul::linear_naive(b, &tx, &tw, &y);
        Ok(())
    })
    .unwrap();
    assert_close("naive", &read(g, &y), &matmul::cpu::linear(&f64v(&x), &f64v(&w), None, k), 1e-5);
}

#[test]
fn matmul_f16_weights_match_reference_of_rounded_weights() {
    let g = gpu();
    if !g.info.shader_f16 {
        // the f16 path only exists where the adapter has SHADER_F16; say so in the output
        eprintln!("adapter {} has no SHADER_F16: f16 storage path not available", g.info.name);
        return;
    }
    let mut r = rng(3);
    for (m, n, k) in [(65, 70, 99), (2, 70, 99)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let w16: Vec<f64> = w.iter().map(|&v| half::f16::from_f32(v).to_f64()).collect();
        let tw = g.upload_f16(&[n, k], &w).unwrap();
        assert_eq!(tw.dtype, DType::F16);
        let tx = up(g, &[m, k], &x);
        let y = g.zeros(&[m, n]).unwrap();
        g.run(|b| {
            matmul::linear(b, &tx, &tw, None, &y, false);
            Ok(())
        })
        .unwrap();
        assert_close(&format!("matmul f16 m={m}"), &read(g, &y), &matmul::cpu::linear(&f64v(&x), &w16, None, k), 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// split over bindings: rows of x / y and of W bound in pieces

/// Every kernel (and tile size) `linear` can run on this adapter.
fn kernels(g: &Gpu) -> Vec<MatmulKernel> {
    [MatmulKernel::Tiled64, MatmulKernel::Tiled128, MatmulKernel::Subgroup].into_iter().filter(|k| k.available(g)).collect()
}

#[test]
fn linear_split_over_bindings_matches_reference() {
    let g = split_gpu();
    let (m, n, k) = (300, 250, 33);
    // every operand is larger than one binding, so rows of x/y and of W are split
    assert!((m * k * 4) as u64 > MAX_BINDING && (n * k * 4) as u64 > MAX_BINDING && (m * n * 4) as u64 > MAX_BINDING);
    let mstep = g.rows_per_binding(&[(k * 4) as u64, (n * 4) as u64]);
    let nstep = g.rows_per_binding(&[(k * 4) as u64, 4]);
    assert!(mstep < m && nstep < n, "no split: {mstep} rows of x/y, {nstep} rows of W per binding");
    for kernel in kernels(g) {
        check_linear(g, Some(kernel), m, n, k, &mut rng(21));
    }
}

#[test]
fn linear_split_at_awkward_shapes_matches_reference() {
    let g = split_gpu();
    // some split along M only, N only, both, or not at all; K not a multiple of 4
    for kernel in kernels(g) {
        for (i, &(m, n, k)) in [(1, 1100, 3), (1500, 1, 2), (70, 90, 45), (33, 257, 7), (5, 7, 1000)].iter().enumerate() {
            check_linear(g, Some(kernel), m, n, k, &mut rng(30 + i as u64));
        }
    }
}

#[test]
fn linear_split_f16_weights_matches_reference() {
    let g = split_gpu();
    if !g.info.shader_f16 {
        eprintln!("adapter {} has no SHADER_F16: f16 weights not tested", g.info.name);
        return;
    }
    // odd K: W rows of 2 * 99 bytes, so the W split also has to keep offsets aligned
    let (m, n, k) = (65, 70, 99);
    assert!((n * k * 2) as u64 > MAX_BINDING);
    let mut r = rng(23);
    let x = randn(&mut r, m * k, 1.0);
    let w = randn(&mut r, n * k, 1.0);
    let w16: Vec<f64> = w.iter().map(|&v| half::f16::from_f32(v).to_f64()).collect();
    let (tx, tw) = (up(g, &[m, k], &x), g.upload_f16(&[n, k], &w).unwrap());
    for kernel in kernels(g) {
        let y = g.zeros(&[m, n]).unwrap();
        g.run(|b| {
            matmul::linear_with(b, &tx, &tw, None, &y, false, kernel);
            Ok(())
        })
        .unwrap();
        let want = matmul::cpu::linear(&f64v(&x), &w16, None, k);
        assert_close(&format!("{kernel:?} split matmul f16 {m}x{n}x{k}"), &read(g, &y), &want, 1e-5);
    }
}
