//! Every kernel against its f64 CPU reference on random data at shapes that are not
//! multiples of the tile sizes.
mod common;
use common::*;
use taylorcal::gpu::{DType, Tensor};
use taylorcal::ops::{self, attention::AttnShape};

fn up(shape: &[usize], data: &[f32]) -> Tensor {
    gpu().upload(shape, data).unwrap()
}
fn read(t: &Tensor) -> Vec<f32> {
    gpu().read(t).unwrap()
}

#[test]
fn matmul_matches_reference_at_awkward_shapes() {
    let g = gpu();
    let mut r = rng(1);
    // m <= 4 runs the matrix-vector kernel, larger m the tiled one
    for &(m, n, k) in &[(1, 1, 1), (1, 33, 17), (3, 70, 129), (4, 300, 65), (63, 65, 64), (65, 63, 129), (130, 200, 33), (7, 129, 300)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let bias = randn(&mut r, n, 1.0);
        let y0 = randn(&mut r, m * n, 1.0);
        let (tx, tw, tb) = (up(&[m, k], &x), up(&[n, k], &w), up(&[n], &bias));
        let y = g.zeros(&[m, n]).unwrap();
        let yacc = up(&[m, n], &y0);
        g.run(|b| {
            ops::matmul::linear(b, &tx, &tw, None, &y, false);
            ops::matmul::linear(b, &tx, &tw, Some(&tb), &yacc, true);
            Ok(())
        })
        .unwrap();
        let want = ops::matmul::cpu::linear(&f64v(&x), &f64v(&w), None, k);
        assert_close(&format!("matmul {m}x{n}x{k}"), &read(&y), &want, 1e-5);
        let want_b = ops::matmul::cpu::linear(&f64v(&x), &f64v(&w), Some(&f64v(&bias)), k);
        let want_acc: Vec<f64> = want_b.iter().zip(&y0).map(|(a, b)| a + *b as f64).collect();
        assert_close(&format!("matmul+bias+acc {m}x{n}x{k}"), &read(&yacc), &want_acc, 1e-5);
    }
}

#[test]
fn naive_matmul_matches_reference() {
    let g = gpu();
    let mut r = rng(2);
    let (m, n, k) = (37, 53, 71);
    let x = randn(&mut r, m * k, 1.0);
    let w = randn(&mut r, n * k, 1.0);
    let (tx, tw) = (up(&[m, k], &x), up(&[n, k], &w));
    let y = g.zeros(&[m, n]).unwrap();
    g.run(|b| {
        ops::matmul::linear_naive(b, &tx, &tw, &y);
        Ok(())
    })
    .unwrap();
    assert_close("naive", &read(&y), &ops::matmul::cpu::linear(&f64v(&x), &f64v(&w), None, k), 1e-5);
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
        let tx = up(&[m, k], &x);
        let y = g.zeros(&[m, n]).unwrap();
        g.run(|b| {
            ops::matmul::linear(b, &tx, &tw, None, &y, false);
            Ok(())
        })
        .unwrap();
        assert_close(&format!("matmul f16 m={m}"), &read(&y), &ops::matmul::cpu::linear(&f64v(&x), &w16, None, k), 1e-5);
    }
}

#[test]
fn rmsnorm_matches_reference() {
    let g = gpu();
    let mut r = rng(4);
    for &(rows, cols) in &[(1, 1), (3, 63), (17, 65), (5, 576), (2, 1000)] {
        let x = randn(&mut r, rows * cols, 2.0);
        let w = randn(&mut r, cols, 1.0);
        let y = g.zeros(&[rows, cols]).unwrap();
        let (tx, tw) = (up(&[rows, cols], &x), up(&[cols], &w));
        g.run(|b| {
            ops::rmsnorm::rmsnorm(b, &tx, &tw, 1e-5, &y);
            Ok(())
        })
        .unwrap();
        assert_close(&format!("rmsnorm {rows}x{cols}"), &read(&y), &ops::rmsnorm::cpu::rmsnorm(&f64v(&x), &f64v(&w), 1e-5), 1e-5);
    }
}

#[test]
fn rope_matches_reference() {
    let g = gpu();
    let mut r = rng(5);
    for &(t, h, d, pos0, theta) in &[(1, 1, 2, 0, 10000.0), (7, 3, 64, 5, 100000.0), (65, 2, 16, 0, 10000.0), (3, 4, 128, 100, 1e6)] {
        let x = randn(&mut r, t * h * d, 1.0);
        let tab = ops::rope::RopeTables::new(g, theta, d, 256).unwrap();
        let tx = up(&[t, h * d], &x);
        g.run(|b| {
            ops::rope::rope(b, &tx, h, &tab, pos0);
            Ok(())
        })
        .unwrap();
        let mut want = f64v(&x);
        ops::rope::cpu::rope(&mut want, h, d, theta, pos0);
        assert_close(&format!("rope t{t} h{h} d{d}"), &read(&tx), &want, 1e-5);
    }
}

#[test]
fn elementwise_kernels_match_reference() {
    let g = gpu();
    let mut r = rng(6);
    let n = 1000;
    let (a, b2, c) = (randn(&mut r, n, 3.0), randn(&mut r, n, 3.0), randn(&mut r, n, 1.0));
    let (ta, tb, tc) = (up(&[n], &a), up(&[n], &b2), up(&[n], &c));
    let out = g.zeros(&[n]).unwrap();
    // embedding: vocab 37, dim 19, 11 ids
    let table = randn(&mut r, 37 * 19, 1.0);
    let ids: Vec<u32> = (0..11).map(|i| (i * 7 + 3) % 37).collect();
    let (tt, tid) = (up(&[37, 19], &table), g.upload_u32(&[11], &ids).unwrap());
    let emb = g.zeros(&[11, 19]).unwrap();
    g.run(|bt| {
        ops::elementwise::swiglu(bt, &ta, &tb, &out);
        ops::elementwise::add(bt, &ta, &tc);
        ops::elementwise::embed(bt, &tid, &tt, &emb);
        Ok(())
    })
    .unwrap();
    assert_close("swiglu", &read(&out), &ops::elementwise::cpu::swiglu(&f64v(&a), &f64v(&b2)), 1e-5);
    let want_add: Vec<f64> = a.iter().zip(&c).map(|(x, y)| *x as f64 + *y as f64).collect();
    assert_close("add", &read(&tc), &want_add, 1e-6);
    assert_close("embed", &read(&emb), &ops::elementwise::cpu::embed(&ids, &f64v(&table), 19), 0.0);
}

#[test]
fn nll_matches_reference() {
    let g = gpu();
    let mut r = rng(8);
    let (rows, vocab) = (9, 1001);
    let logits = randn(&mut r, rows * vocab, 8.0);
    let mut targets: Vec<u32> = (0..rows as u32).map(|i| (i * 97 + 5) % vocab as u32).collect();
    targets[rows - 1] = ops::nll::IGNORE;
    let out = g.zeros(&[rows]).unwrap();
    let (tl, tt) = (up(&[rows, vocab], &logits), g.upload_u32(&[rows], &targets).unwrap());
    g.run(|b| {
        ops::nll::nll(b, &tl, &tt, &out);
        Ok(())
    })
    .unwrap();
    assert_close("nll", &read(&out), &ops::nll::cpu::nll(&f64v(&logits), vocab, &targets), 1e-5);
}

fn check_attention(t: usize, h: usize, hkv: usize, d: usize, pos0: usize, qscale: f32, seed: u64) {
    let g = gpu();
    let mut r = rng(seed);
    let s = pos0 + t;
    let q = randn(&mut r, t * h * d, qscale);
    let k = randn(&mut r, s * hkv * d, 1.0);
    let v = randn(&mut r, s * hkv * d, 1.0);
    let shape = AttnShape { heads: h, kv_heads: hkv, dim: d, pos0, scale: 1.0 / (d as f32).sqrt() };
    let (tq, tk, tv) = (up(&[t, h * d], &q), up(&[s, hkv * d], &k), up(&[s, hkv * d], &v));
    let o = g.zeros(&[t, h * d]).unwrap();
    let st = g.zeros(&[t, h, 2]).unwrap();
    g.run(|b| {
        ops::attention::attention(b, &tq, &tk, &tv, &o, &st, shape);
        Ok(())
    })
    .unwrap();
    let (wo, wst) = ops::attention::cpu::attention(&f64v(&q), &f64v(&k), &f64v(&v), shape);
    let tag = format!("attention t{t} h{h}/{hkv} d{d} pos0 {pos0}");
    assert_close(&format!("{tag} output"), &read(&o), &wo, 1e-5);
    let got = read(&st);
    let dist: Vec<f32> = got.iter().step_by(2).cloned().collect();
    let ent: Vec<f32> = got.iter().skip(1).step_by(2).cloned().collect();
    assert_close(&format!("{tag} distance"), &dist, &wst.iter().step_by(2).cloned().collect::<Vec<_>>(), 1e-5);
    assert_close(&format!("{tag} entropy"), &ent, &wst.iter().skip(1).step_by(2).cloned().collect::<Vec<_>>(), 1e-5);
}

#[test]
fn attention_and_statistics_match_naive_reference() {
    check_attention(1, 1, 1, 8, 0, 1.0, 10);
    check_attention(63, 4, 2, 64, 0, 3.0, 11);
    check_attention(65, 3, 1, 64, 0, 1.0, 12);
    check_attention(130, 2, 2, 17, 0, 4.0, 13);
    check_attention(5, 6, 3, 128, 40, 2.0, 14); // decode-like: queries after a KV cache
    check_attention(33, 2, 1, 200, 3, 1.0, 15);
}
