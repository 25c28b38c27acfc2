//! Rotary position embedding, Hugging Face rotate-half convention (shaders/rope.wgsl).
//! Tested in tests/kernels/rope.rs.
use super::groups_for;
use crate::gpu::{Batch, Gpu, Kernel, Tensor};
use anyhow::Result;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tokens: u32,
    heads: u32,
    dim: u32,
    pos0: u32,
    seq_len: u32,
    _pad: [u32; 3],
}

/// cos/sin tables [max_pos, dim/2], computed in f64: angle = pos * theta^(-2i/dim).
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub max_pos: usize,
    pub dim: usize,
}

impl RopeTables {
    pub fn new(gpu: &Gpu, theta: f64, dim: usize, max_pos: usize) -> Result<RopeTables> {
        let (c, s) = cpu::tables(theta, dim, max_pos);
        let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<_>>();
        Ok(RopeTables { cos: gpu.upload(&[max_pos, dim / 2], &f(c))?, sin: gpu.upload(&[max_pos, dim / 2], &f(s))?, max_pos, dim })
    }
}

/// Rotate x viewed as [tokens, heads, dim] in place: `seqs` sequences of tokens / seqs
/// rows each, token t of a sequence at position pos0 + t.
pub fn rope(b: &mut Batch, x: &Tensor, heads: usize, tab: &RopeTables, pos0: usize, seqs: usize) {
    rope_entry(b, "rope", x, heads, tab, pos0, seqs);
}

/// The adjoint of [`rope`], in place on a gradient dx viewed as [tokens, heads, dim]:
/// each pair is rotated by the negative angle (RoPE is orthogonal, so this is also its inverse).
pub fn rope_backward(b: &mut Batch, x: &Tensor, heads: usize, tab: &RopeTables, pos0: usize, seqs: usize) {
    rope_entry(b, "rope_backward", x, heads, tab, pos0, seqs);
}

fn rope_entry(b: &mut Batch, entry: &'static str, x: &Tensor, heads: usize, tab: &RopeTables, pos0: usize, seqs: usize) {
    let tokens = x.numel() / (heads * tab.dim);
    assert!(seqs >= 1 && tokens % seqs == 0, "{tokens} tokens are not {seqs} sequences of one length");
    let seq_len = tokens / seqs;
    assert!(pos0 + seq_len <= tab.max_pos, "position {} past the RoPE table ({})", pos0 + seq_len, tab.max_pos);
    let p = Params {
        tokens: tokens as u32,
        heads: heads as u32,
        dim: tab.dim as u32,
        pos0: pos0 as u32,
        seq_len: seq_len.max(1) as u32,
        _pad: [0; 3],
    };
    let groups = groups_for(b.gpu, tokens * heads * tab.dim / 2, 256);
    b.dispatch(&Kernel::new("rope", entry), &p, &[x.into(), (&tab.cos).into(), (&tab.sin).into()], groups);
}

pub mod cpu {
    pub fn tables(theta: f64, dim: usize, max_pos: usize) -> (Vec<f64>, Vec<f64>) {
        let half = dim / 2;
        let mut c = Vec::with_capacity(max_pos * half);
        let mut s = Vec::with_capacity(max_pos * half);
        for pos in 0..max_pos {
            for i in 0..half {
                let a = pos as f64 * theta.powf(-2.0 * i as f64 / dim as f64);
                c.push(a.cos());
                s.push(a.sin());
            }
        }
        (c, s)
    }

    /// Rotate-half RoPE on x [tokens, heads, dim] in place.
    pub fn rope(x: &mut [f64], heads: usize, dim: usize, theta: f64, pos0: usize) {
        rotate(x, heads, dim, theta, pos0, 1.0);
    }

    /// The adjoint (= inverse) of [`rope`]: rotation by the negative angle, in place.
    pub fn rope_backward(x: &mut [f64], heads: usize, dim: usize, theta: f64, pos0: usize) {
        rotate(x, heads, dim, theta, pos0, -1.0);
    }

    fn rotate(x: &mut [f64], heads: usize, dim: usize, theta: f64, pos0: usize, sign: f64) {
        let half = dim / 2;
        for (th, v) in x.chunks_mut(dim).enumerate() {
            let pos = pos0 + th / heads;
            for i in 0..half {
                let a = sign * pos as f64 * theta.powf(-2.0 * i as f64 / dim as f64);
                let (x1, x2) = (v[i], v[i + half]);
                v[i] = x1 * a.cos() - x2 * a.sin();
                v[i + half] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
}
