//! The teacher: a Llama-family decoder (Llama/SmolLM2/Mistral, Qwen2 biases, Qwen3 q/k
//! norms) running on the GPU, with a KV cache, fused attention statistics and a hook
//! that lets calibration capture each layer's activations.
use super::{ModelConfig, ModelFiles};
use crate::gpu::{Batch, Gpu, Tensor};
use crate::ops::{self, attention::AttnShape, rope::RopeTables};
use anyhow::{anyhow, Context as _, Result};

/// One decoder layer's weights on the GPU.
pub struct Layer {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

pub struct Teacher {
    pub cfg: ModelConfig,
    pub embed: Tensor,
    pub norm: Tensor,
    /// The LM head: the embedding table itself when embeddings are tied.
    pub lm_head: Tensor,
    pub layers: Vec<Layer>,
    pub rope: RopeTables,
}

/// Per-layer KV cache, [max_len, kv_heads * head_dim] each.
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    pub max_len: usize,
}

/// The activations of one layer's attention block, handed to a forward hook.
pub struct AttnActs<'a> {
    pub layer: usize,
    /// The layer input after its input RMSNorm, [T, D] (what a converted layer reads).
    pub normed: &'a Tensor,
    /// The attention context before W_o, [T, H * d].
    pub context: &'a Tensor,
    /// The attention output after W_o, [T, D] (what a converted layer must match).
    pub output: &'a Tensor,
    /// Per-row (mean distance, entropy), [T, H, 2].
    pub stats: &'a Tensor,
}

/// What a forward pass should do beyond the plain computation.
#[derive(Default)]
pub struct ForwardOpts<'h> {
    /// Layers whose attention output is zeroed (residual kept): the AR policy's probe.
    pub skip_attn: Vec<usize>,
    /// Called after every layer's attention, inside the same batch.
    pub hook: Option<&'h mut dyn FnMut(&mut Batch, AttnActs) -> Result<()>>,
}

fn up(gpu: &Gpu, files: &ModelFiles, name: &str) -> Result<Tensor> {
    let t = files.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor {name}", files.source))?;
    gpu.upload(&t.shape, &t.data).with_context(|| format!("uploading {name}"))
}

fn up_opt(gpu: &Gpu, files: &ModelFiles, name: &str) -> Result<Option<Tensor>> {
    files.tensors.contains_key(name).then(|| up(gpu, files, name)).transpose()
}

impl Teacher {
    pub fn new(gpu: &Gpu, files: &ModelFiles) -> Result<Teacher> {
        let cfg = files.config.clone();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = |s: &str| format!("model.layers.{i}.{s}");
            layers.push(Layer {
                input_norm: up(gpu, files, &n("input_layernorm.weight"))?,
                post_norm: up(gpu, files, &n("post_attention_layernorm.weight"))?,
                q: up(gpu, files, &n("self_attn.q_proj.weight"))?,
                k: up(gpu, files, &n("self_attn.k_proj.weight"))?,
                v: up(gpu, files, &n("self_attn.v_proj.weight"))?,
                o: up(gpu, files, &n("self_attn.o_proj.weight"))?,
                q_bias: up_opt(gpu, files, &n("self_attn.q_proj.bias"))?,
                k_bias: up_opt(gpu, files, &n("self_attn.k_proj.bias"))?,
                v_bias: up_opt(gpu, files, &n("self_attn.v_proj.bias"))?,
                q_norm: up_opt(gpu, files, &n("self_attn.q_norm.weight"))?,
                k_norm: up_opt(gpu, files, &n("self_attn.k_norm.weight"))?,
                gate: up(gpu, files, &n("mlp.gate_proj.weight"))?,
                up: up(gpu, files, &n("mlp.up_proj.weight"))?,
                down: up(gpu, files, &n("mlp.down_proj.weight"))?,
            });
        }
        let embed = up(gpu, files, "model.embed_tokens.weight")?;
        let lm_head = if files.tensors.contains_key("lm_head.weight") { up(gpu, files, "lm_head.weight")? } else { embed.clone() };
        let rope = RopeTables::new(gpu, cfg.rope_theta as f64, cfg.head_dim, cfg.max_position_embeddings.max(1))?;
        Ok(Teacher { norm: up(gpu, files, "model.norm.weight")?, embed, lm_head, layers, rope, cfg })
    }

    pub fn kv_cache(&self, gpu: &Gpu, max_len: usize) -> Result<KvCache> {
        let w = self.cfg.num_key_value_heads * self.cfg.head_dim;
        let n = self.cfg.num_hidden_layers;
        Ok(KvCache {
            k: (0..n).map(|_| gpu.zeros(&[max_len, w])).collect::<Result<_>>()?,
            v: (0..n).map(|_| gpu.zeros(&[max_len, w])).collect::<Result<_>>()?,
            max_len,
        })
    }

    pub fn attn_shape(&self, pos0: usize) -> AttnShape {
        let c = &self.cfg;
        AttnShape { heads: c.num_attention_heads, kv_heads: c.num_key_value_heads, dim: c.head_dim, pos0, scale: 1.0 / (c.head_dim as f32).sqrt() }
    }

    /// Run tokens `ids` [T] (u32) at positions pos0.. through all layers, writing K/V into
    /// `cache`; returns the final-normed hidden states [T, D].
    pub fn forward(&self, b: &mut Batch, cache: &KvCache, ids: &Tensor, pos0: usize, mut opts: ForwardOpts) -> Result<Tensor> {
        let g = b.gpu;
        let c = &self.cfg;
        let t = ids.numel();
        anyhow::ensure!(pos0 + t <= cache.max_len, "sequence of {} tokens exceeds the KV cache ({})", pos0 + t, cache.max_len);
        anyhow::ensure!(pos0 + t <= self.rope.max_pos, "position {} exceeds the model's context ({})", pos0 + t, self.rope.max_pos);
        let (d, hd, h, hkv) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads);
        let x = g.zeros(&[t, d])?;
        let hn = g.zeros(&[t, d])?;
        let q = g.zeros(&[t, h * hd])?;
        let k = g.zeros(&[t, hkv * hd])?;
        let v = g.zeros(&[t, hkv * hd])?;
        let (qn, kn) = if c.qk_norm { (Some(g.zeros(&[t, h * hd])?), Some(g.zeros(&[t, hkv * hd])?)) } else { (None, None) };
        let ctx = g.zeros(&[t, h * hd])?;
        let ao = g.zeros(&[t, d])?;
        let stats = g.zeros(&[t, h, 2])?;
        let gate = g.zeros(&[t, c.intermediate_size])?;
        let upb = g.zeros(&[t, c.intermediate_size])?;
        let act = g.zeros(&[t, c.intermediate_size])?;
        let kv_row = (hkv * hd * 4) as u64;

        ops::elementwise::embed(b, ids, &self.embed, &x);
        for (i, l) in self.layers.iter().enumerate() {
            ops::norm::rmsnorm(b, &x, &l.input_norm, c.rms_norm_eps, &hn);
            ops::matmul::linear(b, &hn, &l.q, l.q_bias.as_ref(), &q, false);
            ops::matmul::linear(b, &hn, &l.k, l.k_bias.as_ref(), &k, false);
            ops::matmul::linear(b, &hn, &l.v, l.v_bias.as_ref(), &v, false);
            let (qr, kr) = match (&qn, &kn, &l.q_norm, &l.k_norm) {
                (Some(qn), Some(kn), Some(wq), Some(wk)) => {
                    ops::norm::rmsnorm(b, &q, wq, c.rms_norm_eps, qn);
                    ops::norm::rmsnorm(b, &k, wk, c.rms_norm_eps, kn);
                    (qn, kn)
                }
                _ => (&q, &k),
            };
            ops::rope::rope(b, qr, h, &self.rope, pos0);
            ops::rope::rope(b, kr, hkv, &self.rope, pos0);
            b.copy(kr, 0, &cache.k[i], pos0 as u64 * kv_row, t as u64 * kv_row);
            b.copy(&v, 0, &cache.v[i], pos0 as u64 * kv_row, t as u64 * kv_row);
            ops::attention::attention(b, qr, &cache.k[i], &cache.v[i], &ctx, &stats, self.attn_shape(pos0));
            ops::matmul::linear(b, &ctx, &l.o, None, &ao, false);
            if let Some(hook) = opts.hook.as_deref_mut() {
                hook(b, AttnActs { layer: i, normed: &hn, context: &ctx, output: &ao, stats: &stats })?;
            }
            if !opts.skip_attn.contains(&i) {
                ops::elementwise::add(b, &ao, &x);
            }
            ops::norm::rmsnorm(b, &x, &l.post_norm, c.rms_norm_eps, &hn);
            ops::matmul::linear(b, &hn, &l.gate, None, &gate, false);
            ops::matmul::linear(b, &hn, &l.up, None, &upb, false);
            ops::elementwise::swiglu(b, &gate, &upb, &act);
            ops::matmul::linear(b, &act, &l.down, None, &x, true);
        }
        ops::norm::rmsnorm(b, &x, &self.norm, c.rms_norm_eps, &hn);
        Ok(hn)
    }

    /// logits [rows, V] for rows `row0..row0+rows` of the final hidden states.
    pub fn logits(&self, b: &mut Batch, hidden: &Tensor, row0: usize, rows: usize) -> Result<Tensor> {
        let d = self.cfg.hidden_size;
        let out = b.gpu.zeros(&[rows, self.cfg.vocab_size])?;
        let src = b.gpu.zeros(&[rows, d])?;
        b.copy(hidden, (row0 * d * 4) as u64, &src, 0, (rows * d * 4) as u64);
        ops::matmul::linear(b, &src, &self.lm_head, None, &out, false);
        Ok(out)
    }

    /// Rows of logits that fit one binding (so the NLL over a long text is chunked).
    pub fn logit_rows_per_chunk(&self, gpu: &Gpu) -> usize {
        (gpu.max_binding as usize / (self.cfg.vocab_size * 4)).clamp(1, 512)
    }
}
