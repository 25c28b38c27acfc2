//! The architecture description every loader produces (Hugging Face `config.json` or GGUF metadata).
pub use crate::ops::rope::RopeScaling;
use serde::{Deserialize, Serialize};

/// Llama-family decoder variants the teacher forward supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama, SmolLM2, Mistral (no biases, no q/k norm).
    Llama,
    /// Qwen2: biases on q/k/v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k (`self_attn.q_norm` / `k_norm`), no biases.
    Qwen3,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// per-head RMSNorm on q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// RoPE frequency scaling (Llama 3.x, long-context Qwen); None: plain RoPE. Absent from
    /// configurations written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

impl RopeScaling {
    /// The first field (config.json name, under `rope_scaling.`) whose value the formulas
    /// cannot use, with what is wrong with it.
    pub fn invalid_field(&self, head_dim: usize) -> Option<(&'static str, String)> {
        let positive =
            |name: &'static str, v: f64| (!(v > 0.0 && v.is_finite())).then(|| (name, format!("must be a positive number, got {v}")));
        let context = |v: usize| (v == 0).then(|| ("rope_scaling.original_max_position_embeddings", "must be positive, got 0".to_string()));
        match *self {
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("rope_scaling.factor", factor)
                    .or_else(|| positive("rope_scaling.low_freq_factor", low_freq_factor))
                    .or_else(|| positive("rope_scaling.high_freq_factor", high_freq_factor))
                    .or_else(|| {
                        (high_freq_factor <= low_freq_factor).then(|| {
                            (
                                "rope_scaling.high_freq_factor",
                                format!("must be more than low_freq_factor ({low_freq_factor}), got {high_freq_factor}"),
                            )
                        })
                    })
                    .or_else(|| context(original_max_position_embeddings))
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings, beta_fast, beta_slow, attention_factor, .. } => {
                positive("rope_scaling.factor", factor)
                    .or_else(|| positive("rope_scaling.beta_fast", beta_fast))
                    .or_else(|| positive("rope_scaling.beta_slow", beta_slow))
                    .or_else(|| positive("rope_scaling.attention_factor", attention_factor))
                    .or_else(|| context(original_max_position_embeddings))
            }
            RopeScaling::FreqFactors { ref factors } => {
                if factors.len() != head_dim / 2 {
                    Some(("rope_freqs.weight", format!("has {} values, expected head_dim / 2 = {}", factors.len(), head_dim / 2)))
                } else {
                    let bad = factors.iter().find(|f| !(**f > 0.0 && f.is_finite()))?;
                    Some(("rope_freqs.weight", format!("holds {bad}; its divisors must be positive numbers")))
                }
            }
        }
    }
}
