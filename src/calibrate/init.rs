//! The student before any calibration: teacher tensors copied (converted layers get Q/O
//! and repeated K/V), new GDN parameters at flash-linear-attention's defaults, and the
//! output-gate variants of the zero-gate / small-gate strategies.
use crate::io::checkpoint::{gdn_name, HybridConfig};
use crate::io::HostTensor;
use anyhow::{Context as _, Result};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// Repeat GQA kv heads to `heads` heads: head h takes kv head h / (heads / kv_heads).
/// `w` is [kv_heads * d, cols] (rows per head contiguous).
pub fn repeat_kv(w: &[f32], kv_heads: usize, heads: usize, d: usize, cols: usize) -> Vec<f32> {
    let group = heads / kv_heads;
    (0..heads).flat_map(|h| w[(h / group) * d * cols..(h / group + 1) * d * cols].iter().copied()).collect()
}

/// Xavier-uniform with flash-linear-attention's gain 2^-2.5 for new projections.
fn xavier(rng: &mut impl Rng, rows: usize, cols: usize) -> HostTensor {
    let bound = 2f64.powf(-2.5) * (6.0 / (rows + cols) as f64).sqrt();
    HostTensor::new(vec![rows, cols], (0..rows * cols).map(|_| rng.random_range(-bound..bound) as f32).collect())
}

/// The naive student: teacher tensors copied (kept layers whole; converted layers get
/// Q/O copied and K/V with kv heads repeated), new GDN parameters at fla's defaults:
/// A ~ U(0, 16), A_log = ln A; dt log-uniform in [1e-3, 0.1] (floor 1e-4),
/// dt_bias = inverse softplus(dt); W_a, W_b, W_g Xavier-uniform (gain 2^-2.5); o_norm = 1.
/// Teacher q/k/v biases and q/k norms of converted layers are dropped.
pub fn init_student(cfg: &HybridConfig, teacher: &HashMap<String, HostTensor>, seed: u64) -> Result<HashMap<String, HostTensor>> {
    let c = &cfg.base;
    let (dm, h, hkv, d) = (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let get = |name: &str| teacher.get(name).cloned().with_context(|| format!("teacher has no tensor {name}"));
    let mut out = HashMap::new();
    for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] {
        if let Some(t) = teacher.get(name) {
            out.insert(name.to_string(), t.clone());
        }
    }
    for l in 0..c.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        for s in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            out.insert(p(s), get(&p(s))?);
        }
        if !cfg.is_gdn(l) {
            for (k, t) in teacher.iter().filter(|(k, _)| k.starts_with(&p("self_attn."))) {
                out.insert(k.clone(), t.clone());
            }
            continue;
        }
        let tq = get(&p("self_attn.q_proj.weight"))?;
        let tk = get(&p("self_attn.k_proj.weight"))?;
        let tv = get(&p("self_attn.v_proj.weight"))?;
        let to = get(&p("self_attn.o_proj.weight"))?;
        out.insert(gdn_name(l, "q_proj.weight"), tq);
        out.insert(gdn_name(l, "k_proj.weight"), HostTensor::new(vec![h * d, dm], repeat_kv(&tk.data, hkv, h, d, dm)));
        out.insert(gdn_name(l, "v_proj.weight"), HostTensor::new(vec![h * d, dm], repeat_kv(&tv.data, hkv, h, d, dm)));
        out.insert(gdn_name(l, "o_proj.weight"), to);
        out.insert(gdn_name(l, "a_proj.weight"), xavier(&mut rng, h, dm));
        out.insert(gdn_name(l, "b_proj.weight"), xavier(&mut rng, h, dm));
        out.insert(gdn_name(l, "g_proj.weight"), xavier(&mut rng, h * d, dm));
        let a_log: Vec<f32> = (0..h).map(|_| (rng.random_range(0.0f64..16.0).max(1e-12)).ln() as f32).collect();
        let dt_bias: Vec<f32> = (0..h)
            .map(|_| {
                let dt = (rng.random_range(0.0f64..1.0) * ((0.1f64).ln() - (1e-3f64).ln()) + (1e-3f64).ln()).exp().max(1e-4);
                super::phase1::inv_softplus(dt) as f32
            })
            .collect();
        out.insert(gdn_name(l, "A_log"), HostTensor::new(vec![h], a_log));
        out.insert(gdn_name(l, "dt_bias"), HostTensor::new(vec![h], dt_bias));
        out.insert(gdn_name(l, "o_norm.weight"), HostTensor::new(vec![d], vec![1.0; d]));
    }
    Ok(out)
}

/// The output-gate variants: W_g = 0 (zero-gate) or W_g *= 0.02 (small-gate).
pub fn scale_output_gate(tensors: &mut HashMap<String, HostTensor>, layers: &[usize], factor: f32) {
    for &l in layers {
        tensors.get_mut(&gdn_name(l, "g_proj.weight")).expect("g_proj").data.iter_mut().for_each(|w| *w *= factor);
    }
}
