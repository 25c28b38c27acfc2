//! Next-token NLL over the vocabulary (src/ops/nll.rs, shaders/nll.wgsl) against the f64
//! reference, an ignored target included.
use crate::common::*;
use taylorcal::ops::nll;

#[test]
fn nll_matches_reference() {
    let g = gpu();
    let mut r = rng(8);
    let (rows, vocab) = (9, 1001);
    let logits = randn(&mut r, rows * vocab, 8.0);
    let mut targets: Vec<u32> = (0..rows as u32).map(|i| (i * 97 + 5) % vocab as u32).collect();
    targets[rows - 1] = nll::IGNORE;
    let out = g.zeros(&[rows]).unwrap();
    let (tl, tt) = (up(g, &[rows, vocab], &logits), g.upload_u32(&[rows], &targets).unwrap());
    g.run(|b| {
        nll::nll(b, &tl, &tt, &out);
        Ok(())
    })
    .unwrap();
    assert_close("nll", &read(g, &out), &nll::cpu::nll(&f64v(&logits), vocab, &targets), 1e-5);
}
