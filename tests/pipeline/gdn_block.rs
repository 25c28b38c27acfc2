//! The Gated DeltaNet block (src/nn/gdn.rs): the whole block forward and backward on the
//! GPU (chunked scan included, or with the scan swapped for the f64 recurrence), and
//! decoding step by step, against the f64 block reference, itself checked by central
//! differences. (Its kernels are tested one by one in tests/kernels.)
use crate::common::*;
use taylorcal::gpu::Tensor;
use taylorcal::io::checkpoint::GDN_PARAMS;
use taylorcal::nn::gdn::{self, cpu as gref, GdnActs, GdnDims, GdnParams};
use taylorcal::ops::delta::cpu as dref;

/// sqrt(sum (got - want)^2 / sum want^2)
fn rel_rms(got: &[f32], want: &[f64]) -> f64 {
    rel_rms_f64(&f64v(got), want)
}

fn block_params(r: &mut rand::rngs::StdRng, dims: GdnDims) -> gref::Params {
    use rand::Rng;
    gref::Params::init(dims, &mut || r.random_range(0.0..1.0))
}

/// x [N, D] like the block's input in a model (a normalised hidden state), rounded to f32.
fn block_input(r: &mut rand::rngs::StdRng, n: usize, d: usize) -> Vec<f64> {
    f64v(&randn(r, n * d, 1.5))
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
    for (slot, name) in GDN_PARAMS.iter().map(|q| q.name).enumerate() {
        let num = numeric_grad(p.tensors()[slot], eps, |v| {
            let mut q = p.clone();
            *q.tensors_mut()[slot] = v.to_vec();
            loss(&q, &x)
        });
        let e = rel_rms_f64(gr.tensors()[slot], &num);
        eprintln!("reference d{name:<14} vs finite differences: rel RMS {e:.2e}");
        assert!(e <= 1e-6, "reference d{name}: rel RMS {e:.3e} against finite differences");
    }
    let num = numeric_grad(&x, eps, |y| loss(&p, y));
    let e = rel_rms_f64(&dx, &num);
    eprintln!("reference dx              vs finite differences: rel RMS {e:.2e}");
    assert!(e <= 1e-6, "reference dx: rel RMS {e:.3e} against finite differences");
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
    let tx = up(g, &[n, dims.d_model], &f32v(&x));
    let tdout = up(g, &[n, dims.d_model], &f32v(&dout));
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
        let rd = |t: &Tensor| f64v(&read(g, t));
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
    let got_out = read(g, &out);
    let e = rel_err(&got_out, &want_out);
    eprintln!("block out {tag}: rel max err {e:.2e}, rel RMS {:.2e}", rel_rms(&got_out, &want_out));
    assert!(e <= 1e-4, "block out {tag}: relative error {e:.3e}");
    let mut worst = 0.0f64;
    for (slot, name) in GDN_PARAMS.iter().map(|q| q.name).enumerate() {
        let got = read(g, grads.tensors()[slot]);
        let e = rel_rms(&got, want_gr.tensors()[slot]);
        eprintln!("block d{name:<14} {tag}: rel RMS {e:.2e}");
        worst = worst.max(e);
        assert!(e <= 1e-4, "block d{name} {tag}: rel RMS {e:.3e}");
    }
    let e = rel_rms(&read(g, &dx), &want_dx);
    eprintln!("block dx              {tag}: rel RMS {e:.2e} (worst parameter {worst:.2e})");
    assert!(e <= 1e-4, "block dx {tag}: rel RMS {e:.3e}");
    if !cpu_scan {
        // a second backward with `accumulate` adds the same gradients (and dx) again
        g.run(|b| gdn::gdn_backward(b, &p, &tx, seqs, &acts, &tdout, &grads, Some(&dx), true)).unwrap();
        let twice = |v: &[f64]| v.iter().map(|x| 2.0 * x).collect::<Vec<_>>();
        for (slot, name) in GDN_PARAMS.iter().map(|q| q.name).enumerate() {
            let e = rel_rms(&read(g, grads.tensors()[slot]), &twice(want_gr.tensors()[slot]));
            assert!(e <= 1e-4, "block d{name} accumulated twice {tag}: rel RMS {e:.3e}");
        }
        let e = rel_rms(&read(g, &dx), &twice(&want_dx));
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
        let o = read(g, &out);
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
