//! Rotary position embedding, Hugging Face rotate-half convention (shaders/rope.wgsl).
//! Tested in tests/kernels/rope.rs.
use super::groups_for;
use crate::gpu::{Batch, Gpu, Kernel, Tensor};
use anyhow::Result;
use serde::{Deserialize, Serialize};

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

/// How RoPE's inverse frequencies theta^(-2i/d) are rescaled, with Hugging Face
/// transformers' names and formulas (`modeling_rope_utils.py`); GGUF files describe the same
/// with `{arch}.rope.scaling.*` metadata or a `rope_freqs.weight` tensor. The formulas are
/// in [`cpu::inv_freq`]; `io::config` checks the values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1+: wavelengths shorter than original / high_freq_factor kept, longer than
    /// original / low_freq_factor divided by `factor`, those between interpolated smoothly.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// YaRN: frequencies that turn fewer than `beta_slow` times over the original context
    /// divided by `factor`, more than `beta_fast` times kept, a linear ramp (over dimension
    /// indices) between; cos and sin multiplied by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        attention_factor: f64,
        /// The correction range rounded outwards to whole dimensions (transformers' default).
        #[serde(default = "yes")]
        truncate: bool,
    },
    /// Frequency i divided by `factors[i]` (llama.cpp's `rope_freqs.weight`, [head_dim / 2],
    /// which its converter writes for Llama 3.x instead of metadata).
    FreqFactors { factors: Vec<f32> },
}

fn yes() -> bool {
    true
}

impl RopeScaling {
    /// YaRN's default attention factor (transformers' `get_mscale`): 0.1 ln(factor) + 1 for
    /// factor > 1, else 1; with DeepSeek's `mscale` and `mscale_all_dim` (both nonzero) the
    /// ratio of that formula at each.
    pub fn yarn_attention_factor(factor: f64, mscale: Option<f64>, mscale_all_dim: Option<f64>) -> f64 {
        let m = |scale: f64| if factor <= 1.0 { 1.0 } else { 0.1 * scale * factor.ln() + 1.0 };
        match (mscale, mscale_all_dim) {
            (Some(a), Some(b)) if a != 0.0 && b != 0.0 => m(a) / m(b),
            _ => m(1.0),
        }
    }
}

/// cos/sin tables [max_pos, dim/2], computed in f64: angle = pos * inv_freq[i], the inverse
/// frequencies theta^(-2i/dim) after any RoPE scaling ([`cpu::inv_freq`]), both tables
/// multiplied by the scaling's attention factor (YaRN's; 1 otherwise).
#[derive(Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
    pub max_pos: usize,
    pub dim: usize,
}

impl RopeTables {
    /// Plain RoPE (no scaling).
    pub fn new(gpu: &Gpu, theta: f64, dim: usize, max_pos: usize) -> Result<RopeTables> {
        RopeTables::with_scaling(gpu, theta, dim, max_pos, None)
    }

    pub fn with_scaling(gpu: &Gpu, theta: f64, dim: usize, max_pos: usize, scaling: Option<&RopeScaling>) -> Result<RopeTables> {
        let (c, s) = cpu::tables(theta, dim, max_pos, scaling);
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
/// each pair is rotated by the negative angle (with no attention factor RoPE is orthogonal, so
/// this is also its inverse).
pub fn rope_backward(b: &mut Batch, x: &Tensor, heads: usize, tab: &RopeTables, pos0: usize, seqs: usize) {
    rope_entry(b, "rope_backward", x, heads, tab, pos0, seqs);
}

fn rope_entry(b: &mut Batch, entry: &'static str, x: &Tensor, heads: usize, tab: &RopeTables, pos0: usize, seqs: usize) {
    let tokens = x.numel() / (heads * tab.dim);
    assert!(seqs >= 1 && tokens.is_multiple_of(seqs), "{tokens} tokens are not {seqs} sequences of one length");
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
    use super::RopeScaling;
    use std::f64::consts::PI;

    /// The inverse frequencies theta^(-2i/dim), i < dim/2, rescaled as `scaling` says, with
    /// the formulas of Hugging Face transformers' `modeling_rope_utils.py` (linear, llama3,
    /// yarn) and llama.cpp's per-frequency divisors (`rope_freqs.weight`).
    pub fn inv_freq(theta: f64, dim: usize, scaling: Option<&RopeScaling>) -> Vec<f64> {
        let d = dim as f64;
        let plain = (0..dim / 2).map(move |i| theta.powf(-2.0 * i as f64 / d));
        match scaling {
            None => plain.collect(),
            Some(&RopeScaling::Linear { factor }) => plain.map(|f| f / factor).collect(),
            Some(RopeScaling::FreqFactors { factors }) => {
                assert_eq!(factors.len(), dim / 2, "RoPE frequency factors for head dim {dim}");
                plain.zip(factors).map(|(f, &k)| f / k as f64).collect()
            }
            Some(&RopeScaling::Llama3 { factor, low_freq_factor: lo, high_freq_factor: hi, original_max_position_embeddings }) => {
                let context = original_max_position_embeddings as f64;
                plain
                    .map(|f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < context / hi {
                            f
                        } else if wavelen > context / lo {
                            f / factor
                        } else {
                            let smooth = (context / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            Some(&RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, truncate, .. }) => {
                // the (fractional) dimension index whose frequency turns `rotations` times
                // over the original context
                let index =
                    |rotations: f64| d * (original_max_position_embeddings as f64 / (rotations * 2.0 * PI)).ln() / (2.0 * theta.ln());
                let (mut low, mut high) = (index(beta_fast), index(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                // ramp 0: the frequency kept (extrapolated), 1: divided by factor (interpolated)
                plain
                    .enumerate()
                    .map(|(i, f)| {
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        f / factor * ramp + f * (1.0 - ramp)
                    })
                    .collect()
            }
        }
    }

    /// What cos and sin are multiplied by: YaRN's attention factor, else 1.
    pub fn attention_factor(scaling: Option<&RopeScaling>) -> f64 {
        match scaling {
            Some(&RopeScaling::Yarn { attention_factor, .. }) => attention_factor,
            _ => 1.0,
        }
    }

    /// cos and sin [max_pos, dim/2] of pos * inv_freq[i], times the attention factor.
    pub fn tables(theta: f64, dim: usize, max_pos: usize, scaling: Option<&RopeScaling>) -> (Vec<f64>, Vec<f64>) {
        let freqs = inv_freq(theta, dim, scaling);
        let m = attention_factor(scaling);
        let angles = || (0..max_pos).flat_map(|pos| freqs.iter().map(move |f| pos as f64 * f));
        (angles().map(|a| m * a.cos()).collect(), angles().map(|a| m * a.sin()).collect())
    }

    /// Rotate-half RoPE on x [tokens, heads, dim] in place, token t at position pos0 + t.
    pub fn rope(x: &mut [f64], heads: usize, dim: usize, theta: f64, scaling: Option<&RopeScaling>, pos0: usize) {
        rotate(x, heads, dim, theta, scaling, pos0, 1.0);
    }

    /// The adjoint of [`rope`] (rotation by the negative angle, same attention factor), in
    /// place; with no attention factor also its inverse.
    pub fn rope_backward(x: &mut [f64], heads: usize, dim: usize, theta: f64, scaling: Option<&RopeScaling>, pos0: usize) {
        rotate(x, heads, dim, theta, scaling, pos0, -1.0);
    }

    fn rotate(x: &mut [f64], heads: usize, dim: usize, theta: f64, scaling: Option<&RopeScaling>, pos0: usize, sign: f64) {
        let half = dim / 2;
        let (freqs, m) = (inv_freq(theta, dim, scaling), attention_factor(scaling));
        for (th, v) in x.chunks_mut(dim).enumerate() {
            let pos = pos0 + th / heads;
            for (i, f) in freqs.iter().enumerate() {
                let a = sign * pos as f64 * f;
                let (c, s) = (m * a.cos(), m * a.sin());
                let (x1, x2) = (v[i], v[i + half]);
                v[i] = x1 * c - x2 * s;
                v[i + half] = x2 * c + x1 * s;
            }
        }
    }
}
