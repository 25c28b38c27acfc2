//! The architecture description every loader produces (Hugging Face `config.json` or GGUF metadata).
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
}
