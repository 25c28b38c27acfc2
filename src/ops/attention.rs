//! Causal GQA softmax attention with online softmax and fused attention statistics
//! (shaders/attention.wgsl). No T x T matrix is ever stored.
use crate::gpu::{Batch, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    dim: u32,
    pos0: u32,
    q_stride: u32,
    kv_stride: u32,
    scale: f32,
}

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub dim: usize,
    /// Absolute position of the first query row (keys 0 ..= pos0 + i are visible to row i).
    pub pos0: usize,
    pub scale: f32,
}

const BR: usize = 64;

/// o [T, H*d] = softmax(q k^T * scale) v over keys 0..=pos, with q [T, H*d] and
/// k, v [>= pos0 + T, Hkv*d]; stats [T, H, 2] gets each row's (mean distance, entropy).
pub fn attention(b: &mut Batch, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, stats: &Tensor, s: AttnShape) {
    assert!(s.dim <= 256, "head dim {} > 256", s.dim);
    assert_eq!(s.heads % s.kv_heads, 0);
    let t = q.numel() / (s.heads * s.dim);
    assert!(k.numel() >= (s.pos0 + t) * s.kv_heads * s.dim, "KV cache too short");
    assert_eq!(stats.numel(), t * s.heads * 2);
    let dmax = if s.dim <= 64 {
        64
    } else if s.dim <= 128 {
        128
    } else {
        256
    };
    let kernel = Kernel::new("attention", "attention").with("D", dmax).with("BC", 2048 / dmax);
    let p = Params {
        t: t as u32,
        heads: s.heads as u32,
        kv_heads: s.kv_heads as u32,
        dim: s.dim as u32,
        pos0: s.pos0 as u32,
        q_stride: (s.heads * s.dim) as u32,
        kv_stride: (s.kv_heads * s.dim) as u32,
        scale: s.scale,
    };
    let binds = [q.into(), k.into(), v.into(), o.into(), stats.into()];
    b.dispatch(&kernel, &p, &binds, [t.div_ceil(BR) as u32, s.heads as u32, 1]);
}

pub mod cpu {
    use super::AttnShape;

    /// Naive causal attention with the full T x S probability matrix, plus per-row
    /// (mean distance, entropy); returns (o [T, H*d], stats [T, H, 2]).
    pub fn attention(q: &[f64], k: &[f64], v: &[f64], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
        let (h, hkv, d) = (s.heads, s.kv_heads, s.dim);
        let t = q.len() / (h * d);
        let mut o = vec![0.0; t * h * d];
        let mut stats = vec![0.0; t * h * 2];
        for i in 0..t {
            let pi = s.pos0 + i;
            for hh in 0..h {
                let g = hh / (h / hkv);
                let qi = &q[(i * h + hh) * d..(i * h + hh + 1) * d];
                let scores: Vec<f64> = (0..=pi)
                    .map(|j| {
                        let kj = &k[(j * hkv + g) * d..(j * hkv + g + 1) * d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                let mut dist = 0.0;
                let mut ent = 0.0;
                for (j, sc) in scores.iter().enumerate() {
                    let pj = (sc - m).exp() / z;
                    dist += pj * ((pi - j) as f64).max(0.5);
                    if pj > 0.0 {
                        ent -= pj * pj.ln();
                    }
                    let vj = &v[(j * hkv + g) * d..(j * hkv + g + 1) * d];
                    for (od, vd) in o[(i * h + hh) * d..(i * h + hh + 1) * d].iter_mut().zip(vj) {
                        *od += pj * vd;
                    }
                }
                stats[(i * h + hh) * 2] = dist;
                stats[(i * h + hh) * 2 + 1] = ent;
            }
        }
        (o, stats)
    }
}
