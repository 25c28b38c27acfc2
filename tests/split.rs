//! Tensor splitting over several bindings: on a context whose binding limit is lowered to
//! 4096 bytes (`GpuOptions::max_binding`) every tensor over 4 KiB is bound in pieces, so the
//! split paths of `linear` and `embed` run on any adapter. Every test checks that the limit
//! took effect.
mod common;
use common::*;
use taylorcal::gpu::{Gpu, GpuOptions, Tensor};
use taylorcal::ops::{self, matmul::MatmulKernel};

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

/// Every kernel (and tile size) `linear` can run on this adapter.
fn kernels(g: &Gpu) -> Vec<MatmulKernel> {
    [MatmulKernel::Tiled64, MatmulKernel::Tiled128, MatmulKernel::Subgroup].into_iter().filter(|k| k.available(g)).collect()
}

/// y = x W^T into a fresh y, and y0 + x W^T + bias into a copy of y0, checked against f64.
fn check_linear(g: &Gpu, kernel: MatmulKernel, m: usize, n: usize, k: usize, seed: u64) {
    let mut r = rng(seed);
    let x = randn(&mut r, m * k, 1.0);
    let w = randn(&mut r, n * k, 1.0);
    let bias = randn(&mut r, n, 1.0);
    let y0 = randn(&mut r, m * n, 1.0);
    let (tx, tw, tb) = (up(g, &[m, k], &x), up(g, &[n, k], &w), up(g, &[n], &bias));
    let y = g.zeros(&[m, n]).unwrap();
    let yacc = up(g, &[m, n], &y0);
    g.run(|b| {
        ops::matmul::linear_with(b, &tx, &tw, None, &y, false, kernel);
        ops::matmul::linear_with(b, &tx, &tw, Some(&tb), &yacc, true, kernel);
        Ok(())
    })
    .unwrap();
    let want = ops::matmul::cpu::linear(&f64v(&x), &f64v(&w), None, k);
    assert_close(&format!("{kernel:?} split matmul {m}x{n}x{k}"), &g.read(&y).unwrap(), &want, 1e-5);
    let want_b = ops::matmul::cpu::linear(&f64v(&x), &f64v(&w), Some(&f64v(&bias)), k);
    let want_acc: Vec<f64> = want_b.iter().zip(&y0).map(|(a, b)| a + *b as f64).collect();
    assert_close(&format!("{kernel:?} split matmul+bias+acc {m}x{n}x{k}"), &g.read(&yacc).unwrap(), &want_acc, 1e-5);
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
        check_linear(g, kernel, m, n, k, 21);
    }
}

#[test]
fn linear_split_at_awkward_shapes_matches_reference() {
    let g = split_gpu();
    // some split along M only, N only, both, or not at all; K not a multiple of 4
    for kernel in kernels(g) {
        for (i, &(m, n, k)) in [(1, 1100, 3), (1500, 1, 2), (70, 90, 45), (33, 257, 7), (5, 7, 1000)].iter().enumerate() {
            check_linear(g, kernel, m, n, k, 30 + i as u64);
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
            ops::matmul::linear_with(b, &tx, &tw, None, &y, false, kernel);
            Ok(())
        })
        .unwrap();
        let want = ops::matmul::cpu::linear(&f64v(&x), &w16, None, k);
        assert_close(&format!("{kernel:?} split matmul f16 {m}x{n}x{k}"), &g.read(&y).unwrap(), &want, 1e-5);
    }
}

#[test]
fn embed_split_table_matches_reference() {
    let g = split_gpu();
    let (vocab, dim) = (500, 19);
    assert!((vocab * dim * 4) as u64 > MAX_BINDING);
    let step = g.rows_per_binding(&[(dim * 4) as u64]);
    assert!(step < vocab, "no split: {step} table rows per binding");
    let mut r = rng(22);
    let table = randn(&mut r, vocab * dim, 1.0);
    // ids from every part of the table, first and last rows included
    let mut ids: Vec<u32> = (0..97).map(|i| (i * 173 + 11) % vocab as u32).collect();
    ids.extend([0, vocab as u32 - 1, step as u32 - 1, step as u32]);
    let (tt, tid) = (up(g, &[vocab, dim], &table), g.upload_u32(&[ids.len()], &ids).unwrap());
    let out = g.zeros(&[ids.len(), dim]).unwrap();
    g.run(|b| {
        ops::elementwise::embed(b, &tid, &tt, &out);
        Ok(())
    })
    .unwrap();
    assert_close("split embed", &g.read(&out).unwrap(), &ops::elementwise::cpu::embed(&ids, &f64v(&table), dim), 0.0);
}

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
        ops::rmsnorm::rmsnorm_backward(b, &tx, &tw, 1e-5, &tdy, &dx, &dw, false);
        ops::elementwise::swiglu_backward(b, &tg, &tu, &td, &dg, &du);
        ops::elementwise::embed_backward(b, &ids, &tddx, &dtable);
        Ok(())
    })
    .unwrap();
    let (wdx, wdw) = ops::rmsnorm::cpu::rmsnorm_backward(&f64v(&x), &f64v(&w), 1e-5, &f64v(&dy));
    let wdw: Vec<f64> = wdw.iter().zip(&dw0).map(|(a, b)| a + *b as f64).collect();
    assert_close("split rmsnorm_backward dx", &g.read(&dx).unwrap(), &wdx, 1e-5);
    assert_close("split rmsnorm_backward dw", &g.read(&dw).unwrap(), &wdw, 1e-5);
    let (wg, wu) = ops::elementwise::cpu::swiglu_backward(&f64v(&gate), &f64v(&upv), &f64v(&dact));
    assert_close("split swiglu_backward dgate", &g.read(&dg).unwrap(), &wg, 1e-5);
    assert_close("split swiglu_backward dup", &g.read(&du).unwrap(), &wu, 1e-5);
    let want = ops::elementwise::cpu::embed_backward(&ids, &f64v(&ddx), vocab, dim);
    assert_close("split embed_backward", &g.read(&dtable).unwrap(), &want, 1e-6);
}

#[test]
fn kl_lm_head_split_over_bindings_matches_reference() {
    let g = split_gpu();
    // the heads [V, D] are split over bindings by the matmuls; one logits row per chunk fits
    let (n, v, d) = (5, 700, 19);
    assert!((v * d * 4) as u64 > MAX_BINDING && (v * 4) as u64 <= MAX_BINDING);
    let work = ops::kl::KlWorkspace::new(g, v, d, n, ops::kl::KL_DEFAULT_BUDGET).unwrap();
    assert_eq!(work.rows, 1, "one {v}-wide logits row per 4 KiB binding");
    let mut r = rng(25);
    let a = 6.0 / (d as f32).sqrt();
    let (hs, ws, ht, wt) = (randn(&mut r, n * d, 1.0), randn(&mut r, v * d, a), randn(&mut r, n * d, 1.0), randn(&mut r, v * d, a));
    let (ths, tws, tht, twt) = (up(g, &[n, d], &hs), up(g, &[v, d], &ws), up(g, &[n, d], &ht), up(g, &[v, d], &wt));
    let (loss_rows, dhs, dws) = (g.zeros(&[n]).unwrap(), g.zeros(&[n, d]).unwrap(), g.zeros(&[v, d]).unwrap());
    g.run(|b| {
        let out = ops::kl::KlOut { loss_rows: &loss_rows, dhs: Some(&dhs), dws: Some(&dws) };
        ops::kl::kl_lm_head(b, &ths, &tws, &tht, &twt, &work, out, 0.2);
        Ok(())
    })
    .unwrap();
    let (wl, wdhs, wdws) = ops::kl::cpu::kl_lm_head(&f64v(&hs), &f64v(&ws), &f64v(&ht), &f64v(&wt), d, 0.2);
    assert_close("split kl loss", &g.read(&loss_rows).unwrap(), &wl, 1e-5);
    assert_close("split kl dhs", &g.read(&dhs).unwrap(), &wdhs, 1e-4);
    assert_close("split kl dws", &g.read(&dws).unwrap(), &wdws, 1e-4);
}
