//! The decoder on the GPU: a Llama-family model (Llama/SmolLM2/Mistral, Qwen2 biases,
//! Qwen3 q/k norms) whose layers mix either softmax attention (the teacher: all of them)
//! or a Gated DeltaNet block (the hybrid student's converted layers). Prefill runs the
//! chunked scan, decoding the one-step recurrence; softmax layers keep a KV cache and
//! report fused attention statistics through a hook calibration uses.
use super::gdn::{self, GdnActs, GdnParams};
use crate::gpu::{Batch, Gpu, Tensor};
use crate::io::checkpoint::{gdn_name, Checkpoint, GDN_PARAMS};
use crate::io::{HostTensor, ModelConfig, ModelFiles};
use crate::ops::{self, attention::AttnShape, rope::RopeTables};
use anyhow::{anyhow, Context as _, Result};
use std::collections::HashMap;

/// Softmax attention weights of a layer.
pub struct Attn {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
}

/// What mixes tokens in a layer (one per layer, matched everywhere: the size difference
/// of the variants costs nothing worth an indirection on every softmax layer).
#[allow(clippy::large_enum_variant)]
pub enum Mixer {
    Attn(Attn),
    Gdn(Box<GdnParams>),
}

/// One decoder layer's weights on the GPU.
pub struct Layer {
    pub input_norm: Tensor,
    pub post_norm: Tensor,
    pub mixer: Mixer,
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

/// A Llama-family decoder on the GPU, teacher and student alike: the teacher's every
/// layer mixes with softmax attention, a hybrid student's converted layers with Gated
/// DeltaNet ([`Mixer`]).
pub struct Decoder {
    pub cfg: ModelConfig,
    pub embed: Tensor,
    pub norm: Tensor,
    /// The LM head: the embedding table itself when embeddings are tied.
    pub lm_head: Tensor,
    pub layers: Vec<Layer>,
    pub rope: RopeTables,
}

/// Per-layer decoding state: a KV cache [max_len, kv_heads * head_dim] for softmax layers,
/// the recurrent state [H, d, d] for GDN layers.
pub struct KvCache {
    pub k: Vec<Option<Tensor>>,
    pub v: Vec<Option<Tensor>>,
    pub state: Vec<Option<Tensor>>,
    pub max_len: usize,
}

impl KvCache {
    /// GPU bytes held: (the softmax layers' K and V caches, which grow with `max_len`; the
    /// GDN layers' recurrent states, which do not).
    pub fn bytes(&self) -> (u64, u64) {
        let sum = |v: &[Option<Tensor>]| v.iter().flatten().map(Tensor::bytes).sum::<u64>();
        (sum(&self.k) + sum(&self.v), sum(&self.state))
    }
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

/// One layer's activation buffers for T tokens. Inference reuses one set for every layer
/// (and `hn2` is `hn`); training keeps one set per layer for the backward.
pub struct LayerBufs {
    /// input RMSNorm output [T, D]
    pub hn: Tensor,
    /// post-attention RMSNorm output [T, D] (the same buffer as `hn` in inference)
    pub hn2: Tensor,
    /// q [T, H d] (roped in place unless q/k norms exist), k, v [T, Hkv d]
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    /// q/k after their per-head norms (Qwen3), roped in place
    pub qn: Option<Tensor>,
    pub kn: Option<Tensor>,
    /// attention context [T, H d], output [T, D], statistics [T, H, 2]
    pub ctx: Tensor,
    pub ao: Tensor,
    pub stats: Tensor,
    /// MLP gate/up projections and SwiGLU output [T, I]
    pub gate: Tensor,
    pub up: Tensor,
    pub act: Tensor,
}

impl LayerBufs {
    /// Buffers for `t` tokens; `shared_norm` makes `hn2` the same buffer as `hn`.
    pub fn new(g: &Gpu, c: &ModelConfig, t: usize, shared_norm: bool) -> Result<LayerBufs> {
        let (d, hd, h, hkv, i) = (c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size);
        let hn = g.zeros(&[t, d])?;
        let hn2 = if shared_norm { hn.clone() } else { g.zeros(&[t, d])? };
        let (qn, kn) = if c.qk_norm { (Some(g.zeros(&[t, h * hd])?), Some(g.zeros(&[t, hkv * hd])?)) } else { (None, None) };
        Ok(LayerBufs {
            hn,
            hn2,
            q: g.zeros(&[t, h * hd])?,
            k: g.zeros(&[t, hkv * hd])?,
            v: g.zeros(&[t, hkv * hd])?,
            qn,
            kn,
            ctx: g.zeros(&[t, h * hd])?,
            ao: g.zeros(&[t, d])?,
            stats: g.zeros(&[t, h, 2])?,
            gate: g.zeros(&[t, i])?,
            up: g.zeros(&[t, i])?,
            act: g.zeros(&[t, i])?,
        })
    }
}

/// What a forward pass should do beyond the plain computation.
/// A callback run after every layer's attention, inside the same batch.
pub type AttnHook<'h> = &'h mut dyn FnMut(&mut Batch, AttnActs) -> Result<()>;

#[derive(Default)]
pub struct ForwardOpts<'h> {
    /// Layers whose attention output is zeroed (residual kept): the AR policy's probe.
    pub skip_attn: Vec<usize>,
    /// Called after every layer's attention, inside the same batch.
    pub hook: Option<AttnHook<'h>>,
    /// The ids are this many independent sequences of equal length from position 0, one
    /// after the other (0 or 1: one sequence). A batch keeps no GDN state for later tokens.
    pub seqs: usize,
}

/// Uploads named host tensors, with errors naming the source.
struct Uploader<'a> {
    gpu: &'a Gpu,
    tensors: &'a HashMap<String, HostTensor>,
    source: &'a str,
}

impl Uploader<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| anyhow!("{}: missing tensor {name}", self.source))?;
        self.gpu.upload(&t.shape, &t.data).with_context(|| format!("uploading {name}"))
    }
    fn opt(&self, name: &str) -> Result<Option<Tensor>> {
        self.tensors.contains_key(name).then(|| self.get(name)).transpose()
    }
}

/// The GDN parameters of layer `l` (flash-linear-attention names), uploaded.
pub fn upload_gdn(gpu: &Gpu, tensors: &HashMap<String, HostTensor>, l: usize) -> Result<GdnParams> {
    gdn_params(&Uploader { gpu, tensors, source: "student" }, l)
}

fn gdn_params(u: &Uploader, l: usize) -> Result<GdnParams> {
    GDN_PARAMS.iter().map(|q| u.get(&gdn_name(l, q.name))).collect()
}

impl Decoder {
    /// The teacher: every layer softmax attention.
    pub fn new(gpu: &Gpu, files: &ModelFiles) -> Result<Decoder> {
        Self::build(gpu, &files.config, &files.tensors, &files.source, |_| false)
    }

    /// A hybrid student from its checkpoint.
    pub fn from_checkpoint(gpu: &Gpu, ck: &Checkpoint) -> Result<Decoder> {
        let hc = &ck.config;
        Self::build(gpu, &hc.base, &ck.tensors, "checkpoint", |l| hc.is_gdn(l))
    }

    /// Build from Hugging Face / taylorcal tensor names; `is_gdn(l)` picks GDN layers.
    pub fn build(
        gpu: &Gpu,
        cfg: &ModelConfig,
        tensors: &HashMap<String, HostTensor>,
        source: &str,
        is_gdn: impl Fn(usize) -> bool,
    ) -> Result<Decoder> {
        let u = Uploader { gpu, tensors, source };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let n = |s: &str| format!("model.layers.{i}.{s}");
            let mixer = if is_gdn(i) {
                Mixer::Gdn(Box::new(gdn_params(&u, i)?))
            } else {
                Mixer::Attn(Attn {
                    q: u.get(&n("self_attn.q_proj.weight"))?,
                    k: u.get(&n("self_attn.k_proj.weight"))?,
                    v: u.get(&n("self_attn.v_proj.weight"))?,
                    o: u.get(&n("self_attn.o_proj.weight"))?,
                    q_bias: u.opt(&n("self_attn.q_proj.bias"))?,
                    k_bias: u.opt(&n("self_attn.k_proj.bias"))?,
                    v_bias: u.opt(&n("self_attn.v_proj.bias"))?,
                    q_norm: u.opt(&n("self_attn.q_norm.weight"))?,
                    k_norm: u.opt(&n("self_attn.k_norm.weight"))?,
                })
            };
            layers.push(Layer {
                input_norm: u.get(&n("input_layernorm.weight"))?,
                post_norm: u.get(&n("post_attention_layernorm.weight"))?,
                mixer,
                gate: u.get(&n("mlp.gate_proj.weight"))?,
                up: u.get(&n("mlp.up_proj.weight"))?,
                down: u.get(&n("mlp.down_proj.weight"))?,
            });
        }
        let embed = u.get("model.embed_tokens.weight")?;
        let lm_head = if tensors.contains_key("lm_head.weight") { u.get("lm_head.weight")? } else { embed.clone() };
        let rope = RopeTables::with_scaling(
            gpu,
            cfg.rope_theta as f64,
            cfg.head_dim,
            cfg.max_position_embeddings.max(1),
            cfg.rope_scaling.as_ref(),
        )?;
        Ok(Decoder { norm: u.get("model.norm.weight")?, embed, lm_head, layers, rope, cfg: cfg.clone() })
    }

    /// Every parameter under its checkpoint name (Hugging Face Llama names for shared and
    /// softmax parts, flash-linear-attention names for GDN layers), in a fixed order; a tied
    /// LM head is listed once, as the embedding.
    pub fn params(&self) -> Vec<(String, &Tensor)> {
        let mut v: Vec<(String, &Tensor)> = vec![("model.embed_tokens.weight".into(), &self.embed)];
        for (i, l) in self.layers.iter().enumerate() {
            let n = |s: &str| format!("model.layers.{i}.{s}");
            v.push((n("input_layernorm.weight"), &l.input_norm));
            match &l.mixer {
                Mixer::Attn(a) => {
                    for (s, t) in [("q_proj.weight", &a.q), ("k_proj.weight", &a.k), ("v_proj.weight", &a.v), ("o_proj.weight", &a.o)] {
                        v.push((n(&format!("self_attn.{s}")), t));
                    }
                    for (s, t) in [
                        ("q_proj.bias", &a.q_bias),
                        ("k_proj.bias", &a.k_bias),
                        ("v_proj.bias", &a.v_bias),
                        ("q_norm.weight", &a.q_norm),
                        ("k_norm.weight", &a.k_norm),
                    ] {
                        if let Some(t) = t {
                            v.push((n(&format!("self_attn.{s}")), t));
                        }
                    }
                }
                Mixer::Gdn(p) => {
                    for (q, t) in GDN_PARAMS.iter().zip(p.tensors()) {
                        v.push((gdn_name(i, q.name), t));
                    }
                }
            }
            v.push((n("post_attention_layernorm.weight"), &l.post_norm));
            v.push((n("mlp.gate_proj.weight"), &l.gate));
            v.push((n("mlp.up_proj.weight"), &l.up));
            v.push((n("mlp.down_proj.weight"), &l.down));
        }
        v.push(("model.norm.weight".into(), &self.norm));
        if !self.lm_head.same_buffer(&self.embed) {
            v.push(("lm_head.weight".into(), &self.lm_head));
        }
        v
    }

    /// A decoder of the same structure with every parameter zero (and a tied head still
    /// tied): the gradient buffers of training.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Decoder> {
        let z = |t: &Tensor| gpu.zeros(&t.shape);
        let zo = |t: &Option<Tensor>| t.as_ref().map(z).transpose();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mixer = match &l.mixer {
                Mixer::Attn(a) => Mixer::Attn(Attn {
                    q: z(&a.q)?,
                    k: z(&a.k)?,
                    v: z(&a.v)?,
                    o: z(&a.o)?,
                    q_bias: zo(&a.q_bias)?,
                    k_bias: zo(&a.k_bias)?,
                    v_bias: zo(&a.v_bias)?,
                    q_norm: zo(&a.q_norm)?,
                    k_norm: zo(&a.k_norm)?,
                }),
                Mixer::Gdn(p) => Mixer::Gdn(Box::new(p.zeros_like(gpu)?)),
            };
            layers.push(Layer {
                input_norm: z(&l.input_norm)?,
                post_norm: z(&l.post_norm)?,
                mixer,
                gate: z(&l.gate)?,
                up: z(&l.up)?,
                down: z(&l.down)?,
            });
        }
        let embed = z(&self.embed)?;
        let lm_head = if self.lm_head.same_buffer(&self.embed) { embed.clone() } else { z(&self.lm_head)? };
        Ok(Decoder { cfg: self.cfg.clone(), embed, norm: z(&self.norm)?, lm_head, layers, rope: self.rope.clone() })
    }

    /// Read every parameter back to the host under its checkpoint name.
    pub fn to_host(&self, gpu: &Gpu) -> Result<HashMap<String, HostTensor>> {
        self.params().into_iter().map(|(n, t)| Ok((n, HostTensor::new(t.shape.clone(), gpu.read(t)?)))).collect()
    }

    /// Token ids the model has embeddings for: the embedding table's rows.
    pub fn vocab(&self) -> usize {
        self.embed.rows()
    }

    /// Upload token ids for [`Decoder::forward`], refusing any the model has no embedding
    /// for (the readers of `crate::data` refuse them first, naming the text).
    pub fn upload_ids(&self, gpu: &Gpu, ids: &[u32]) -> Result<Tensor> {
        crate::data::check_ids(ids, self.vocab(), "the token sequence")?;
        gpu.upload_u32(&[ids.len()], ids)
    }

    pub fn kv_cache(&self, gpu: &Gpu, max_len: usize) -> Result<KvCache> {
        let c = &self.cfg;
        let w = c.num_key_value_heads * c.head_dim;
        let (mut k, mut v, mut state) = (vec![], vec![], vec![]);
        for l in &self.layers {
            let attn = matches!(l.mixer, Mixer::Attn(_));
            k.push(if attn { Some(gpu.zeros(&[max_len, w])?) } else { None });
            v.push(if attn { Some(gpu.zeros(&[max_len, w])?) } else { None });
            state.push(if attn { None } else { Some(gpu.zeros(&[c.num_attention_heads, c.head_dim, c.head_dim])?) });
        }
        Ok(KvCache { k, v, state, max_len })
    }

    pub fn attn_shape(&self, pos0: usize) -> AttnShape {
        let c = &self.cfg;
        AttnShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            dim: c.head_dim,
            pos0,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            seqs: 1,
        }
    }

    /// Run tokens `ids` [T] (u32) at positions pos0.. through all layers, writing K/V into
    /// `cache`; returns the final-normed hidden states [T, D].
    pub fn forward(&self, b: &mut Batch, cache: &KvCache, ids: &Tensor, pos0: usize, mut opts: ForwardOpts) -> Result<Tensor> {
        let g = b.gpu;
        let c = &self.cfg;
        let t = ids.numel();
        let seqs = opts.seqs.max(1);
        anyhow::ensure!(t.is_multiple_of(seqs) && (seqs == 1 || pos0 == 0), "{t} tokens are not {seqs} whole sequences from position 0");
        let t_seq = t / seqs;
        anyhow::ensure!(pos0 + t <= cache.max_len, "sequence of {} tokens exceeds the KV cache ({})", pos0 + t, cache.max_len);
        anyhow::ensure!(pos0 + t_seq <= self.rope.max_pos, "position {} exceeds the model's context ({})", pos0 + t_seq, self.rope.max_pos);
        let x = g.zeros(&[t, c.hidden_size])?;
        let bufs = LayerBufs::new(g, c, t, true)?;
        let mut gdn_acts: Option<GdnActs> = None;
        let mut gdn_step: Option<GdnActs> = None;
        ops::elementwise::embed(b, ids, &self.embed, &x);
        for (i, l) in self.layers.iter().enumerate() {
            ops::rmsnorm::rmsnorm(b, &x, &l.input_norm, c.rms_norm_eps, &bufs.hn);
            match &l.mixer {
                Mixer::Attn(a) => {
                    let (kc, vc) = (cache.k[i].as_ref().expect("KV cache"), cache.v[i].as_ref().expect("KV cache"));
                    self.attn_forward(b, a, &bufs, kc, vc, pos0, seqs, opts.hook.is_some());
                    if let Some(hook) = opts.hook.as_deref_mut() {
                        hook(b, AttnActs { layer: i, normed: &bufs.hn, context: &bufs.ctx, output: &bufs.ao, stats: &bufs.stats })?;
                    }
                }
                Mixer::Gdn(p) => {
                    let state = cache.state[i].as_ref().expect("GDN state");
                    if t == 1 {
                        let acts = match gdn_step.take() {
                            Some(a) => a,
                            None => GdnActs::new(g, p.dims(), (1, 1), false)?,
                        };
                        gdn::gdn_recurrent_step(b, p, &bufs.hn, &acts, state, &bufs.ao)?;
                        gdn_step = Some(acts);
                    } else {
                        let acts = match gdn_acts.take() {
                            Some(a) => a,
                            None => GdnActs::new(g, p.dims(), (seqs, t_seq), false)?,
                        };
                        gdn::gdn_forward_inputs(b, p, &bufs.hn, &acts);
                        let h0 = (pos0 > 0).then_some(state);
                        let ht = if seqs == 1 { Some(g.zeros(&state.shape)?) } else { None };
                        let x = ops::delta::DeltaInputs { h0, ..acts.scan_inputs() };
                        ops::delta::chunk_forward_ws(b, &acts.scan, &x, &acts.o, ht.as_ref())?;
                        if let Some(ht) = &ht {
                            b.copy(ht, 0, state, 0, state.bytes());
                        }
                        gdn::gdn_forward_output(b, p, &acts, &bufs.ao);
                        gdn_acts = Some(acts);
                    }
                }
            }
            if !opts.skip_attn.contains(&i) {
                ops::elementwise::add(b, &bufs.ao, &x);
            }
            self.mlp_forward(b, l, &x, &bufs, &x);
        }
        ops::rmsnorm::rmsnorm(b, &x, &self.norm, c.rms_norm_eps, &bufs.hn);
        Ok(bufs.hn)
    }

    /// Softmax attention of one layer on `bufs.hn` [T, D] at positions pos0..: q, k, v
    /// projections (+ biases, q/k norms), RoPE, K/V written into the caches `kc`/`vc` at
    /// pos0, attention (with its statistics in `bufs.stats` when `stats`), W_o; leaves q
    /// (roped) in `bufs.q` (or `bufs.qn`), the context in `bufs.ctx`, the output in
    /// `bufs.ao`. With `seqs` > 1 the rows are that many sequences from position 0 and the
    /// caches hold exactly their rows.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_forward(&self, b: &mut Batch, a: &Attn, bufs: &LayerBufs, kc: &Tensor, vc: &Tensor, pos0: usize, seqs: usize, stats: bool) {
        let c = &self.cfg;
        let (h, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let t = bufs.hn.rows();
        let hn = &bufs.hn;
        ops::matmul::linear(b, hn, &a.q, a.q_bias.as_ref(), &bufs.q, false);
        ops::matmul::linear(b, hn, &a.k, a.k_bias.as_ref(), &bufs.k, false);
        ops::matmul::linear(b, hn, &a.v, a.v_bias.as_ref(), &bufs.v, false);
        let (qr, kr) = match (&bufs.qn, &bufs.kn, &a.q_norm, &a.k_norm) {
            (Some(qn), Some(kn), Some(wq), Some(wk)) => {
                ops::rmsnorm::rmsnorm(b, &bufs.q, wq, c.rms_norm_eps, qn);
                ops::rmsnorm::rmsnorm(b, &bufs.k, wk, c.rms_norm_eps, kn);
                (qn, kn)
            }
            _ => (&bufs.q, &bufs.k),
        };
        ops::rope::rope(b, qr, h, &self.rope, pos0, seqs);
        ops::rope::rope(b, kr, hkv, &self.rope, pos0, seqs);
        debug_assert!(seqs == 1 || pos0 == 0, "a batch of sequences starts at position 0");
        let kv_row = (hkv * hd * 4) as u64;
        b.copy(kr, 0, kc, pos0 as u64 * kv_row, t as u64 * kv_row);
        b.copy(&bufs.v, 0, vc, pos0 as u64 * kv_row, t as u64 * kv_row);
        let shape = AttnShape { seqs, ..self.attn_shape(pos0) };
        if stats {
            ops::attention::attention(b, qr, kc, vc, &bufs.ctx, &bufs.stats, shape);
        } else {
            ops::attention::attention_out(b, qr, kc, vc, &bufs.ctx, &bufs.stats, shape);
        }
        ops::matmul::linear(b, &bufs.ctx, &a.o, None, &bufs.ao, false);
    }

    /// The MLP half of a layer: hn2 = RMSNorm(x_mid), gate/up projections, SwiGLU into
    /// `bufs.act`, and `x_out (+)= act W_down^T` (`x_out` is `x_mid` itself in inference,
    /// where the residual sum happens in place; otherwise x_mid is copied into x_out first).
    pub fn mlp_forward(&self, b: &mut Batch, l: &Layer, x_mid: &Tensor, bufs: &LayerBufs, x_out: &Tensor) {
        let c = &self.cfg;
        ops::rmsnorm::rmsnorm(b, x_mid, &l.post_norm, c.rms_norm_eps, &bufs.hn2);
        ops::matmul::linear(b, &bufs.hn2, &l.gate, None, &bufs.gate, false);
        ops::matmul::linear(b, &bufs.hn2, &l.up, None, &bufs.up, false);
        ops::elementwise::swiglu(b, &bufs.gate, &bufs.up, &bufs.act);
        if !x_out.same_buffer(x_mid) {
            b.copy(x_mid, 0, x_out, 0, x_mid.bytes());
        }
        ops::matmul::linear(b, &bufs.act, &l.down, None, x_out, true);
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
