//! Next-token NLL over the vocabulary (shaders/nll.wgsl). Tested in tests/kernels/nll.rs.
use crate::gpu::{grid, Batch, Kernel, Tensor};

/// Target id that contributes nothing (the last position of a sequence).
pub const IGNORE: u32 = u32::MAX;

/// nll[r] = logsumexp(logits[r, :]) - logits[r, targets[r]]
pub fn nll(b: &mut Batch, logits: &Tensor, targets: &Tensor, out: &Tensor) {
    assert_eq!(targets.numel(), logits.rows());
    nll_rows(b, logits, targets, out, 0);
}

/// Score a chunk: logits rows are sequence rows `row0..row0 + logits.rows()`.
pub fn nll_rows(b: &mut Batch, logits: &Tensor, targets: &Tensor, out: &Tensor, row0: usize) {
    let vocab = logits.cols();
    let rows = logits.rows();
    assert!(row0 + rows <= targets.numel() && targets.numel() == out.numel());
    let p = [rows as u32, vocab as u32, row0 as u32, 0];
    b.dispatch(&Kernel::new("nll", "nll_rows"), &p, &[logits.into(), targets.into(), out.into()], grid(b.gpu, rows as u32));
}

pub mod cpu {
    pub fn log_softmax(row: &[f64]) -> Vec<f64> {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        row.iter().map(|v| v - lse).collect()
    }
    pub fn nll(logits: &[f64], vocab: usize, targets: &[u32]) -> Vec<f64> {
        logits.chunks(vocab).zip(targets).map(|(row, &t)| if t == super::IGNORE { 0.0 } else { -log_softmax(row)[t as usize] }).collect()
    }
}
