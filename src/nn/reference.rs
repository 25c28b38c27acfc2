//! A plain-Rust f64 forward of the teacher and of a hybrid student, written independently
//! of the GPU path from the CPU references of each op: the oracle for the whole-model tests.
use super::gdn;
use crate::io::checkpoint::{gdn_name, Checkpoint, GDN_PARAMS};
use crate::io::{HostTensor, ModelConfig, ModelFiles};
use crate::ops::{attention, elementwise, matmul, rmsnorm, rope};
use std::collections::HashMap;

type Tensors = HashMap<String, HostTensor>;

fn w(files: &Tensors, name: &str) -> Vec<f64> {
    files[name].data.iter().map(|&x| x as f64).collect()
}

fn wo(files: &Tensors, name: &str) -> Option<Vec<f64>> {
    files.contains_key(name).then(|| w(files, name))
}

/// Logits [T, V] of a teacher for token ids at positions 0..T.
pub fn forward_logits(files: &ModelFiles, ids: &[u32]) -> Vec<f64> {
    decoder_logits(&files.config, &files.tensors, |_| false, ids)
}

/// Logits [T, V] of a hybrid student.
pub fn hybrid_logits(ck: &Checkpoint, ids: &[u32]) -> Vec<f64> {
    decoder_logits(&ck.config.base, &ck.tensors, |l| ck.config.is_gdn(l), ids)
}

fn gdn_block(files: &Tensors, l: usize, x: &[f64], t: usize) -> Vec<f64> {
    let p: gdn::cpu::Params = GDN_PARAMS.iter().map(|q| w(files, &gdn_name(l, q.name))).collect();
    gdn::cpu::forward(&p, x, (1, t)).0
}

fn decoder_logits(c: &ModelConfig, files: &Tensors, is_gdn: impl Fn(usize) -> bool, ids: &[u32]) -> Vec<f64> {
    let d = c.hidden_size;
    let eps = c.rms_norm_eps as f64;
    let mut x = elementwise::cpu::embed(ids, &w(files, "model.embed_tokens.weight"), d);
    for i in 0..c.num_hidden_layers {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        let hn = rmsnorm::cpu::rmsnorm(&x, &w(files, &n("input_layernorm.weight")), eps);
        let ao = if is_gdn(i) { gdn_block(files, i, &hn, ids.len()) } else { attn_block(files, c, i, &hn) };
        x.iter_mut().zip(&ao).for_each(|(a, b)| *a += b);
        let hn = rmsnorm::cpu::rmsnorm(&x, &w(files, &n("post_attention_layernorm.weight")), eps);
        let gate = matmul::cpu::linear(&hn, &w(files, &n("mlp.gate_proj.weight")), None, d);
        let upv = matmul::cpu::linear(&hn, &w(files, &n("mlp.up_proj.weight")), None, d);
        let act = elementwise::cpu::swiglu(&gate, &upv);
        let down = matmul::cpu::linear(&act, &w(files, &n("mlp.down_proj.weight")), None, c.intermediate_size);
        x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
    }
    let hn = rmsnorm::cpu::rmsnorm(&x, &w(files, "model.norm.weight"), eps);
    let head = if files.contains_key("lm_head.weight") { "lm_head.weight" } else { "model.embed_tokens.weight" };
    matmul::cpu::linear(&hn, &w(files, head), None, d)
}

/// Softmax attention of layer i on normed input hn, after W_o.
fn attn_block(files: &Tensors, c: &ModelConfig, i: usize, hn: &[f64]) -> Vec<f64> {
    let (d, hd, h, hkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
    let eps = c.rms_norm_eps as f64;
    let n = |s: &str| format!("model.layers.{i}.{s}");
    {
        let proj = |name: &str| {
            let bias = wo(files, &n(&format!("self_attn.{name}_proj.bias")));
            matmul::cpu::linear(hn, &w(files, &n(&format!("self_attn.{name}_proj.weight"))), bias.as_deref(), d)
        };
        let (mut q, mut k, v) = (proj("q"), proj("k"), proj("v"));
        if let (Some(qw), Some(kw)) = (wo(files, &n("self_attn.q_norm.weight")), wo(files, &n("self_attn.k_norm.weight"))) {
            q = rmsnorm::cpu::rmsnorm(&q, &qw, eps);
            k = rmsnorm::cpu::rmsnorm(&k, &kw, eps);
        }
        rope::cpu::rope(&mut q, h, hd, c.rope_theta as f64, c.rope_scaling.as_ref(), 0);
        rope::cpu::rope(&mut k, hkv, hd, c.rope_theta as f64, c.rope_scaling.as_ref(), 0);
        let shape = attention::AttnShape { heads: h, kv_heads: hkv, dim: hd, pos0: 0, scale: 1.0 / (hd as f32).sqrt(), seqs: 1 };
        let (ctx, _) = attention::cpu::attention(&q, &k, &v, shape);
        matmul::cpu::linear(&ctx, &w(files, &n("self_attn.o_proj.weight")), None, h * hd)
    }
}
