//! The Gated DeltaNet block: its kernels (linear-layer gradients, SiLU, gate, gated RMSNorm,
//! column sums) against f64 CPU references at awkward shapes, and the whole block forward
//! and backward against the f64 block reference, itself checked by central differences.
mod common;
use common::*;
use taylorcal::gpu::Tensor;
use taylorcal::ops;

fn up(shape: &[usize], data: &[f32]) -> Tensor {
    gpu().upload(shape, data).unwrap()
}
fn read(t: &Tensor) -> Vec<f32> {
    gpu().read(t).unwrap()
}

/// sqrt(sum (got - want)^2 / sum want^2)
fn rel_rms(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(g, w)| (*g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().max(1e-300);
    (num / den).sqrt()
}

fn check(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let e = rel_err(got, want);
    eprintln!("{what:<40} rel max err {e:.2e}");
    assert!(e <= tol, "{what}: relative error {e:.3e} > {tol:.1e}");
}

#[test]
fn linear_gradients_match_reference_at_awkward_shapes() {
    let g = gpu();
    let mut r = rng(31);
    for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (63, 65, 64), (130, 33, 71), (257, 17, 129), (5, 130, 66), (1100, 5, 70)] {
        let x = randn(&mut r, m * k, 1.0);
        let w = randn(&mut r, n * k, 1.0);
        let dy = randn(&mut r, m * n, 1.0);
        let dx0 = randn(&mut r, m * k, 1.0);
        let dw0 = randn(&mut r, n * k, 1.0);
        let (tx, tw, tdy) = (up(&[m, k], &x), up(&[n, k], &w), up(&[m, n], &dy));
        let dx = up(&[m, k], &dx0); // overwritten
        let dxa = up(&[m, k], &dx0);
        let dw = up(&[n, k], &dw0); // overwritten
        let dwa = up(&[n, k], &dw0);
        g.run(|b| {
            ops::matmul_grad::linear_backward_input(b, &tdy, &tw, &dx, false);
            ops::matmul_grad::linear_backward_input(b, &tdy, &tw, &dxa, true);
            ops::matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
            ops::matmul_grad::linear_backward_weight(b, &tdy, &tx, &dwa, true);
            Ok(())
        })
        .unwrap();
        let want_dx = ops::matmul_grad::cpu::linear_backward_input(&f64v(&dy), &f64v(&w), n, k);
        let want_dw = ops::matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k);
        check(&format!("dx {m}x{n}x{k}"), &read(&dx), &want_dx, 1e-5);
        check(&format!("dW {m}x{n}x{k}"), &read(&dw), &want_dw, 1e-5);
        let acc = |a: &[f64], b0: &[f32]| a.iter().zip(b0).map(|(a, b)| a + *b as f64).collect::<Vec<_>>();
        check(&format!("dx += {m}x{n}x{k}"), &read(&dxa), &acc(&want_dx, &dx0), 1e-5);
        check(&format!("dW += {m}x{n}x{k}"), &read(&dwa), &acc(&want_dw, &dw0), 1e-5);
    }
}

#[test]
fn linear_weight_gradient_over_many_tokens() {
    // a long reduction (M >> N, K): every tile loops over all rows
    let g = gpu();
    let mut r = rng(32);
    let (m, n, k) = (3001, 3, 70);
    let x = randn(&mut r, m * k, 1.0);
    let dy = randn(&mut r, m * n, 1.0);
    let dw = g.zeros(&[n, k]).unwrap();
    let (tx, tdy) = (up(&[m, k], &x), up(&[m, n], &dy));
    g.run(|b| {
        ops::matmul_grad::linear_backward_weight(b, &tdy, &tx, &dw, false);
        Ok(())
    })
    .unwrap();
    let want = ops::matmul_grad::cpu::linear_backward_weight(&f64v(&dy), &f64v(&x), n, k);
    check(&format!("dW {m}x{n}x{k}"), &read(&dw), &want, 1e-5);
}

#[test]
fn silu_forward_and_backward_match_reference() {
    let g = gpu();
    let mut r = rng(33);
    for &n in &[1, 255, 1000] {
        let z = randn(&mut r, n, 6.0);
        let d = randn(&mut r, n, 1.0);
        let (tz, td) = (up(&[n], &z), up(&[n], &d));
        let y = g.zeros(&[n]).unwrap();
        g.run(|b| {
            ops::gdn_act::silu_forward(b, &tz, &y);
            ops::gdn_act::silu_backward(b, &tz, &td);
            Ok(())
        })
        .unwrap();
        let want_y: Vec<f64> = z.iter().map(|&v| ops::gdn_act::cpu::silu(v as f64)).collect();
        let want_d: Vec<f64> = z.iter().zip(&d).map(|(&v, &dd)| dd as f64 * ops::gdn_act::cpu::silu_grad(v as f64)).collect();
        check(&format!("silu {n}"), &read(&y), &want_y, 1e-5);
        check(&format!("silu backward {n}"), &read(&td), &want_d, 1e-5);
    }
}

/// Parameters of the decay gate drawn like fla's initialisation.
fn gate_params(r: &mut rand::rngs::StdRng, h: usize) -> (Vec<f32>, Vec<f32>) {
    use rand::Rng;
    let a_log = (0..h).map(|_| r.random_range(1.0f64..16.0).ln() as f32).collect();
    let dt_bias = (0..h)
        .map(|_| {
            let dt = (r.random_range(1e-3f64.ln()..0.1f64.ln())).exp();
            ops::gdn_act::cpu::inv_softplus(dt) as f32
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
        let (tza, tzb, ta, tdt) = (up(&[n, h], &za), up(&[n, h], &zb), up(&[h], &a_log), up(&[h], &dt_bias));
        let (tg, tbeta) = (g.zeros(&[n, h]).unwrap(), g.zeros(&[n, h]).unwrap());
        let (tdg, tdbeta) = (up(&[n, h], &dg), up(&[n, h], &dbeta));
        let scratch = g.zeros(&[n * h + 3]).unwrap();
        let (tda, tddt) = (up(&[h], &da0), up(&[h], &da0));
        g.run(|b| {
            ops::gdn_act::gate_forward(b, &tza, &tzb, &ta, &tdt, &tg, &tbeta);
            ops::gdn_act::gate_backward(b, &tza, &tbeta, &ta, &tdt, &tdg, &tdbeta, &scratch, &tda, &tddt, n % 2 == 0);
            Ok(())
        })
        .unwrap();
        let (za, zb, a_log, dt_bias) = (f64v(&za), f64v(&zb), f64v(&a_log), f64v(&dt_bias));
        let (want_g, want_beta) = ops::gdn_act::cpu::gate_forward(&za, &zb, &a_log, &dt_bias);
        let (dza, dzb, mut da, mut ddt) = ops::gdn_act::cpu::gate_backward(&za, &zb, &a_log, &dt_bias, &f64v(&dg), &f64v(&dbeta));
        if n % 2 == 0 {
            for i in 0..h {
                da[i] += da0[i] as f64;
                ddt[i] += da0[i] as f64;
            }
        }
        check(&format!("gate g {n}x{h}"), &read(&tg), &want_g, 1e-5);
        check(&format!("gate beta {n}x{h}"), &read(&tbeta), &want_beta, 1e-5);
        check(&format!("gate dza {n}x{h}"), &read(&tdg), &dza, 1e-5);
        check(&format!("gate dzb {n}x{h}"), &read(&tdbeta), &dzb, 1e-5);
        check(&format!("gate dA_log {n}x{h}"), &read(&tda), &da, 1e-5);
        check(&format!("gate ddt_bias {n}x{h}"), &read(&tddt), &ddt, 1e-5);
    }
}

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
        let (to, tz, tw, tdy) = (up(&[rows, d], &o), up(&[rows, d], &z), up(&[d], &w), up(&[rows, d], &dy));
        let (y, rstd) = (g.zeros(&[rows, d]).unwrap(), g.zeros(&[rows]).unwrap());
        let (d_o, dz, scratch) = (g.zeros(&[rows, d]).unwrap(), g.zeros(&[rows, d]).unwrap(), g.zeros(&[rows * d]).unwrap());
        let dw = up(&[d], &dw0);
        g.run(|b| {
            ops::gated_norm::gated_norm_forward(b, &to, &tz, &tw, 1e-5, &y, &rstd);
            ops::gated_norm::gated_norm_backward(b, &to, &tz, &tw, &rstd, &tdy, &d_o, &dz, &dw, &scratch, true);
            Ok(())
        })
        .unwrap();
        let (o, z, w) = (f64v(&o), f64v(&z), f64v(&w));
        let (want_y, want_rstd) = ops::gated_norm::cpu::gated_norm_forward(&o, &z, &w, 1e-5);
        let (want_do, want_dz, mut want_dw) = ops::gated_norm::cpu::gated_norm_backward(&o, &z, &w, 1e-5, &f64v(&dy));
        for (a, b) in want_dw.iter_mut().zip(&dw0) {
            *a += *b as f64;
        }
        check(&format!("gated norm y {rows}x{d}"), &read(&y), &want_y, 1e-5);
        check(&format!("gated norm rstd {rows}x{d}"), &read(&rstd), &want_rstd, 1e-5);
        check(&format!("gated norm do {rows}x{d}"), &read(&d_o), &want_do, 1e-5);
        check(&format!("gated norm dz {rows}x{d}"), &read(&dz), &want_dz, 1e-5);
        check(&format!("gated norm dw {rows}x{d}"), &read(&dw), &want_dw, 1e-5);
    }
}

#[test]
fn colsum_matches_reference() {
    let g = gpu();
    let mut r = rng(36);
    for &(rows, cols) in &[(1, 1), (3, 70), (1025, 3), (5000, 65), (300_000, 2)] {
        let x = randn(&mut r, rows * cols, 1.0);
        let y0 = randn(&mut r, cols, 1.0);
        let tx = up(&[rows, cols], &x);
        let (y, ya) = (up(&[cols], &y0), up(&[cols], &y0));
        g.run(|b| {
            ops::gdn_act::colsum(b, &tx, &y, false);
            ops::gdn_act::colsum(b, &tx, &ya, true);
            Ok(())
        })
        .unwrap();
        let want = ops::gdn_act::cpu::colsum(&f64v(&x), cols, 1.0);
        let want_a: Vec<f64> = want.iter().zip(&y0).map(|(a, b)| a + *b as f64).collect();
        check(&format!("colsum {rows}x{cols}"), &read(&y), &want, 1e-5);
        check(&format!("colsum += {rows}x{cols}"), &read(&ya), &want_a, 1e-5);
    }
}

// ---------------------------------------------------------------------------------------
// The whole block
// ---------------------------------------------------------------------------------------

use taylorcal::io::checkpoint::GDN_PARAMS;
use taylorcal::nn::gdn::{self, cpu as gref, GdnActs, GdnDims, GdnParams};
use taylorcal::ops::delta::cpu as dref;

fn block_params(r: &mut rand::rngs::StdRng, dims: GdnDims) -> gref::Params {
    use rand::Rng;
    gref::Params::init(dims, &mut || r.random_range(0.0..1.0))
}

/// x [N, D] like the block's input in a model (a normalised hidden state), rounded to f32.
fn block_input(r: &mut rand::rngs::StdRng, n: usize, d: usize) -> Vec<f64> {
    f64v(&randn(r, n * d, 1.5))
}

fn f32v(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn reference_block_backward_matches_finite_differences() {
    let mut r = rng(41);
    let dims = GdnDims { d_model: 8, heads: 2, head_dim: 4 };
    let seqs = (2, 5);
    let n = seqs.0 * seqs.1;
    let p = block_params(&mut r, dims);
    let x = block_input(&mut r, n, dims.d_model);
    let w_out = f64v(&randn(&mut r, n * dims.d_model, 1.0));
    let loss = |p: &gref::Params, x: &[f64]| -> f64 {
        let (out, _) = gref::forward(p, x, seqs);
        out.iter().zip(&w_out).map(|(a, b)| a * b).sum()
    };
    let (_, acts) = gref::forward(&p, &x, seqs);
    let (gr, dx) = gref::backward(&p, &x, seqs, &acts, &w_out);
    let eps = 1e-5;
    let fd = |f: &mut dyn FnMut(f64) -> f64| (f(eps) - f(-eps)) / (2.0 * eps);
    for (slot, name) in GDN_PARAMS.iter().map(|q| q.name).enumerate() {
        let len = p.tensors()[slot].len();
        let num: Vec<f64> = (0..len)
            .map(|i| {
                fd(&mut |h| {
                    let mut q = p.clone();
                    q.tensors_mut()[slot][i] += h;
                    loss(&q, &x)
                })
            })
            .collect();
        let e = rel_rms_f64(gr.tensors()[slot], &num);
        eprintln!("reference d{name:<14} vs finite differences: rel RMS {e:.2e}");
        assert!(e <= 1e-6, "reference d{name}: rel RMS {e:.3e} against finite differences");
    }
    let num: Vec<f64> = (0..x.len())
        .map(|i| {
            fd(&mut |h| {
                let mut y = x.clone();
                y[i] += h;
                loss(&p, &y)
            })
        })
        .collect();
    let e = rel_rms_f64(&dx, &num);
    eprintln!("reference dx              vs finite differences: rel RMS {e:.2e}");
    assert!(e <= 1e-6, "reference dx: rel RMS {e:.3e} against finite differences");
}

fn rel_rms_f64(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum::<f64>().max(1e-300);
    (num / den).sqrt()
}

/// GPU forward and backward of the block, with the scan either on the GPU or (`cpu_scan`)
/// replaced by the f64 reference recurrence run on the GPU's own scan inputs; compared with
/// the f64 block reference.
fn check_block(dims: GdnDims, seqs: (usize, usize), seed: u64, cpu_scan: bool) {
    let g = gpu();
    let mut r = rng(seed);
    let n = seqs.0 * seqs.1;
    let hp = block_params(&mut r, dims);
    let x = block_input(&mut r, n, dims.d_model);
    let dout = f64v(&randn(&mut r, n * dims.d_model, 1.0));
    let (want_out, acts_ref) = gref::forward(&hp, &x, seqs);
    let (want_gr, want_dx) = gref::backward(&hp, &x, seqs, &acts_ref, &dout);

    let p = GdnParams::upload(g, &hp).unwrap();
    let tx = up(&[n, dims.d_model], &f32v(&x));
    let tdout = up(&[n, dims.d_model], &f32v(&dout));
    let acts = GdnActs::new(g, dims, seqs, true).unwrap();
    let out = g.zeros(&[n, dims.d_model]).unwrap();
    let grads = p.zeros_like(g).unwrap();
    let dx = g.zeros(&[n, dims.d_model]).unwrap();
    let s = gdn::scan_shape(dims, seqs);
    let tag = format!(
        "D{} H{} d{} B{} T{}{}",
        dims.d_model,
        dims.heads,
        dims.head_dim,
        seqs.0,
        seqs.1,
        if cpu_scan { " (cpu scan)" } else { "" }
    );
    if cpu_scan {
        g.run(|b| {
            gdn::gdn_forward_inputs(b, &p, &tx, &acts);
            Ok(())
        })
        .unwrap();
        let rd = |t: &Tensor| f64v(&read(t));
        let (q, k, v, gg, beta) = (rd(&acts.q), rd(&acts.k), rd(&acts.v), rd(&acts.g), rd(&acts.beta));
        let x = dref::Inputs { q: &q, k: &k, v: &v, g: &gg, beta: &beta, h0: None };
        let (o, _) = dref::forward(&s, &x);
        g.write(&acts.o, &f32v(&o));
        g.run(|b| {
            gdn::gdn_forward_output(b, &p, &acts, &out);
            gdn::gdn_backward_output(b, &p, &acts, &tdout, &grads, false);
            Ok(())
        })
        .unwrap();
        let d_o = rd(&acts.back.as_ref().unwrap().d_o);
        let sg = dref::backward(&s, &x, &d_o, None);
        let bb = acts.back.as_ref().unwrap();
        g.write(bb.dq(), &f32v(&sg.dq));
        g.write(&bb.dk, &f32v(&sg.dk));
        g.write(&bb.dv, &f32v(&sg.dv));
        g.write(&bb.dg, &f32v(&sg.dg));
        g.write(&bb.dbeta, &f32v(&sg.dbeta));
        g.run(|b| {
            gdn::gdn_backward_inputs(b, &p, &tx, &acts, &grads, Some(&dx), false);
            Ok(())
        })
        .unwrap();
    } else {
        g.run(|b| {
            gdn::gdn_forward(b, &p, &tx, seqs, &acts, &out)?;
            gdn::gdn_backward(b, &p, &tx, seqs, &acts, &tdout, &grads, Some(&dx), false)
        })
        .unwrap();
    }
    let got_out = read(&out);
    let e = rel_err(&got_out, &want_out);
    eprintln!("block out {tag}: rel max err {e:.2e}, rel RMS {:.2e}", rel_rms(&got_out, &want_out));
    assert!(e <= 1e-4, "block out {tag}: relative error {e:.3e}");
    let mut worst = 0.0f64;
    for (slot, name) in GDN_PARAMS.iter().map(|q| q.name).enumerate() {
        let got = read(grads.tensors()[slot]);
        let e = rel_rms(&got, want_gr.tensors()[slot]);
        eprintln!("block d{name:<14} {tag}: rel RMS {e:.2e}");
        worst = worst.max(e);
        assert!(e <= 1e-4, "block d{name} {tag}: rel RMS {e:.3e}");
    }
    let e = rel_rms(&read(&dx), &want_dx);
    eprintln!("block dx              {tag}: rel RMS {e:.2e} (worst parameter {worst:.2e})");
    assert!(e <= 1e-4, "block dx {tag}: rel RMS {e:.3e}");
    if !cpu_scan {
        // a second backward with `accumulate` adds the same gradients (and dx) again
        g.run(|b| gdn::gdn_backward(b, &p, &tx, seqs, &acts, &tdout, &grads, Some(&dx), true)).unwrap();
        let twice = |v: &[f64]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
        for (slot, name) in GDN_PARAMS.iter().map(|q| q.name).enumerate() {
            let e = rel_rms(&read(grads.tensors()[slot]), &twice(want_gr.tensors()[slot]));
            assert!(e <= 1e-4, "block d{name} accumulated twice {tag}: rel RMS {e:.3e}");
        }
        let e = rel_rms(&read(&dx), &twice(&want_dx));
        assert!(e <= 1e-4, "block dx accumulated twice {tag}: rel RMS {e:.3e}");
    }
}

#[test]
fn block_forward_and_backward_match_reference() {
    // the whole block on the GPU, chunked scan included: T spans several 64-token chunks
    // and ends mid-chunk; H d differs from D
    check_block(GdnDims { d_model: 40, heads: 3, head_dim: 16 }, (2, 37), 44, false);
    check_block(GdnDims { d_model: 24, heads: 2, head_dim: 20 }, (1, 150), 45, false);
    check_block(GdnDims { d_model: 33, heads: 1, head_dim: 64 }, (3, 65), 46, false);
}

#[test]
fn block_recurrent_steps_match_reference_forward() {
    // decoding token by token with the one-step recurrence gives the block's forward
    let g = gpu();
    let mut r = rng(47);
    let dims = GdnDims { d_model: 24, heads: 2, head_dim: 12 };
    let seqs = (2, 9);
    let (bsz, t) = seqs;
    let hp = block_params(&mut r, dims);
    let x = block_input(&mut r, bsz * t, dims.d_model);
    let (want, _) = gref::forward(&hp, &x, seqs);
    let p = GdnParams::upload(g, &hp).unwrap();
    let acts = GdnActs::new(g, dims, (bsz, 1), false).unwrap();
    let state = g.zeros(&[bsz, dims.heads, dims.head_dim, dims.head_dim]).unwrap();
    let (xt, out) = (g.zeros(&[bsz, dims.d_model]).unwrap(), g.zeros(&[bsz, dims.d_model]).unwrap());
    let mut got = vec![0.0f32; bsz * t * dims.d_model];
    for step in 0..t {
        let rows: Vec<f32> = (0..bsz).flat_map(|b| f32v(&x[(b * t + step) * dims.d_model..(b * t + step + 1) * dims.d_model])).collect();
        g.write(&xt, &rows);
        g.run(|b| gdn::gdn_recurrent_step(b, &p, &xt, &acts, &state, &out)).unwrap();
        let o = read(&out);
        for b in 0..bsz {
            got[(b * t + step) * dims.d_model..(b * t + step + 1) * dims.d_model]
                .copy_from_slice(&o[b * dims.d_model..(b + 1) * dims.d_model]);
        }
    }
    let e = rel_err(&got, &want);
    eprintln!("block recurrent steps B{bsz} T{t}: rel max err {e:.2e}");
    assert!(e <= 1e-4, "block recurrent steps: relative error {e:.3e}");
}

#[test]
fn block_with_reference_scan_matches_reference() {
    // everything but the scan on the GPU (the scan's inputs and output gradients cross to
    // the f64 recurrence and back), so the block's own kernels are checked on their own
    check_block(GdnDims { d_model: 40, heads: 3, head_dim: 16 }, (2, 37), 42, true);
    check_block(GdnDims { d_model: 24, heads: 2, head_dim: 20 }, (1, 70), 43, true);
}
