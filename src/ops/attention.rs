//! Causal GQA softmax attention with online softmax and fused attention statistics
//! (shaders/attention.wgsl), and its backward for training (shaders/attention_bwd.wgsl).
//! No T x T matrix is ever stored. Tested in tests/kernels/attention.rs.
use crate::gpu::{Batch, Gpu, Kernel, Tensor};
use anyhow::Result;

/// The fields both shaders' parameters start with: query rows, query and kv heads, head dim.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Dims {
    t: u32,
    heads: u32,
    kv_heads: u32,
    dim: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    dims: Dims,
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
    /// Independent sequences in the buffers (a batch): sequence n's queries are rows
    /// n*T .. n*T+T-1, its keys rows n*(pos0+T) ..; with 1 the keys may be a longer cache.
    pub seqs: usize,
}

impl AttnShape {
    fn dims(&self, t: usize) -> Dims {
        Dims { t: t as u32, heads: self.heads as u32, kv_heads: self.kv_heads as u32, dim: self.dim as u32 }
    }

    /// Query rows per sequence of a q of `q_numel` elements.
    fn rows(&self, q_numel: usize) -> usize {
        assert!(self.seqs >= 1 && q_numel % (self.seqs * self.heads * self.dim) == 0, "q is not {} sequences of whole rows", self.seqs);
        q_numel / (self.seqs * self.heads * self.dim)
    }
}

/// The head-dim specialisation (D constant of the shaders) for a head dim <= 256.
fn dmax(dim: usize) -> u32 {
    if dim <= 64 {
        64
    } else if dim <= 128 {
        128
    } else {
        256
    }
}

/// o [T, H*d] = softmax(q k^T * scale) v over keys 0..=pos, with q [T, H*d] and
/// k, v [>= pos0 + T, Hkv*d]; stats [T, H, 2] gets each row's (mean distance, entropy).
/// With `s.seqs` > 1, every buffer holds that many such sequences one after the other
/// (k, v exactly pos0 + T rows each).
pub fn attention(b: &mut Batch, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, stats: &Tensor, s: AttnShape) {
    assert!(s.dim <= 256, "head dim {} > 256", s.dim);
    assert_eq!(s.heads % s.kv_heads, 0);
    let t = s.rows(q.numel());
    let kv_rows = (s.pos0 + t) * s.kv_heads * s.dim;
    if s.seqs == 1 {
        assert!(k.numel() >= kv_rows, "KV cache too short");
    } else {
        assert!(k.numel() == s.seqs * kv_rows && v.numel() == k.numel(), "k, v: expected {} sequences of {} rows", s.seqs, s.pos0 + t);
    }
    assert_eq!(stats.numel(), s.seqs * t * s.heads * 2);
    let dmax = dmax(s.dim);
    let br = rows_per_group(b.gpu, t, s.heads, false);
    let kernel = Kernel::new("attention", "attention").with("D", dmax).with("BC", 2048 / dmax).with("BR", br as u32);
    let p = Params {
        dims: s.dims(t),
        pos0: s.pos0 as u32,
        q_stride: (s.heads * s.dim) as u32,
        kv_stride: (s.kv_heads * s.dim) as u32,
        scale: s.scale,
    };
    let binds = [q.into(), k.into(), v.into(), o.into(), stats.into()];
    b.dispatch(&kernel, &p, &binds, [t.div_ceil(br) as u32, (s.heads * s.seqs) as u32, 1]);
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdParams {
    dims: Dims,
    q_stride: u32,
    kv_stride: u32,
    scale: f32,
    split: u32,
}

/// Rows per workgroup: 64 for the query-row passes (measured on the H200 at T = 512, 16
/// rows made the forward slower: each thread's work is unchanged and the tile loads get
/// fewer hands); for the key pass of the backward 16 when 64 leaves too few workgroups
/// (T = 512, 9 heads: 72), which took it from 3.8 to 1.6 ms there.
/// [`GpuOptions::attention_rows`](crate::gpu::GpuOptions::attention_rows) forces the choice (tests cover both tile heights).
fn rows_per_group(gpu: &Gpu, t: usize, heads: usize, key_pass: bool) -> usize {
    if let Some(r) = gpu.options().attention_rows {
        return r;
    }
    if !key_pass || t.div_ceil(64) * heads >= 1024 {
        64
    } else {
        16
    }
}

/// Per-row scratch of [`attention_backward`]: `stats` [T, H, 2] = (log-sum-exp of the
/// scaled scores, delta = dO . O) of every query row and head, written by the query pass
/// and read by the key pass.
/// With grouped-query attention, `part_k`/`part_v` [T, H, d] hold each query head's share
/// of dk/dv (the key pass then runs one workgroup per query head, not per kv head).
pub struct AttnBwdScratch {
    pub stats: Tensor,
    pub part_k: Tensor,
    pub part_v: Tensor,
}

impl AttnBwdScratch {
    /// For `t` rows of `heads` query heads of dimension `dim`.
    pub fn new(gpu: &Gpu, t: usize, heads: usize, dim: usize) -> Result<AttnBwdScratch> {
        Ok(AttnBwdScratch {
            stats: gpu.zeros(&[t, heads, 2])?,
            part_k: gpu.zeros(&[t, heads * dim])?,
            part_v: gpu.zeros(&[t, heads * dim])?,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.stats.bytes() + self.part_k.bytes() + self.part_v.bytes()
    }
}

/// Backward of causal [`attention`] for training (pos0 = 0, S = T; `s.seqs` sequences of
/// T rows one after the other in every buffer): from q [T, H*d],
/// k, v [T, Hkv*d] (post-RoPE, as given to the forward), its output o [T, H*d] and the
/// output gradient dout [T, H*d], OVERWRITE dq [T, H*d], dk, dv [T, Hkv*d]. Two
/// dispatches: a query-parallel pass (row log-sum-exp and delta into `scratch`, then dq)
/// and a key-parallel pass (dk, dv, summed over the query heads of each kv head).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    b: &mut Batch,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    dq: &Tensor,
    dk: &Tensor,
    dv: &Tensor,
    scratch: &AttnBwdScratch,
    s: AttnShape,
) {
    assert!(s.dim <= 256, "head dim {} > 256", s.dim);
    assert_eq!(s.heads % s.kv_heads, 0);
    assert_eq!(s.pos0, 0, "attention_backward is for training: pos0 must be 0");
    let t = s.rows(q.numel());
    let (qn, kvn) = (s.seqs * t * s.heads * s.dim, s.seqs * t * s.kv_heads * s.dim);
    assert_eq!(q.numel(), qn);
    for (name, x) in [("k", k), ("v", v), ("dk", dk), ("dv", dv)] {
        assert_eq!(x.numel(), kvn, "{name}: expected [T={t}, {}] (S must equal T)", s.kv_heads * s.dim);
    }
    for (name, x) in [("o", o), ("dout", dout), ("dq", dq)] {
        assert_eq!(x.numel(), qn, "{name}: expected [T={t}, {}]", s.heads * s.dim);
    }
    assert_eq!(scratch.stats.numel(), s.seqs * t * s.heads * 2, "scratch made for another T or head count");
    if t == 0 {
        return;
    }
    let dmax = dmax(s.dim);
    let p = BwdParams {
        dims: s.dims(t),
        q_stride: (s.heads * s.dim) as u32,
        kv_stride: (s.kv_heads * s.dim) as u32,
        scale: s.scale,
        split: (s.heads > s.kv_heads) as u32,
    };
    let kern = |entry, br: usize| Kernel::new("attention_bwd", entry).with("D", dmax).with("BC", 2048 / dmax).with("BR", br as u32);
    let (brq, brk) = (rows_per_group(b.gpu, t, s.heads, false), rows_per_group(b.gpu, t, s.heads * s.seqs, true));
    let (groups, kgroups) = (t.div_ceil(brq) as u32, t.div_ceil(brk) as u32);
    let st = &scratch.stats;
    b.dispatch(
        &kern("attn_bwd_q", brq),
        &p,
        &[q.into(), k.into(), v.into(), dout.into(), st.into(), dq.into(), o.into()],
        [groups, (s.heads * s.seqs) as u32, 1],
    );
    if p.split == 0 {
        b.dispatch(
            &kern("attn_bwd_kv", brk),
            &p,
            &[q.into(), k.into(), v.into(), dout.into(), st.into(), dk.into(), dv.into()],
            [kgroups, (s.kv_heads * s.seqs) as u32, 1],
        );
        return;
    }
    assert_eq!(scratch.part_k.numel(), qn, "scratch made for another head dim");
    let (pk, pv) = (&scratch.part_k, &scratch.part_v);
    let group = (s.heads / s.kv_heads) as u32;
    b.dispatch(
        &kern("attn_bwd_kv", brk),
        &p,
        &[q.into(), k.into(), v.into(), dout.into(), st.into(), pk.into(), pv.into()],
        [kgroups, (s.kv_heads * s.seqs) as u32, group],
    );
    let reduce = Kernel::new("attention_bwd", "attn_bwd_reduce").with("D", dmax).with("BC", 2048 / dmax);
    // row-wise: every sequence's rows in one pass
    let all_rows = BwdParams { dims: s.dims(s.seqs * t), ..p };
    b.dispatch(&reduce, &all_rows, &[pk.into(), pv.into(), dk.into(), dv.into()], super::groups_for(b.gpu, kvn, 256));
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

    /// Naive backward of causal attention with the full probability matrix: given the
    /// output gradient dout [T, H*d], returns (dq [T, H*d], dk [S, Hkv*d], dv [S, Hkv*d]).
    pub fn attention_backward(q: &[f64], k: &[f64], v: &[f64], dout: &[f64], s: AttnShape) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (h, hkv, d) = (s.heads, s.kv_heads, s.dim);
        let t = q.len() / (h * d);
        let scale = s.scale as f64;
        let mut dq = vec![0.0; q.len()];
        let mut dk = vec![0.0; k.len()];
        let mut dv = vec![0.0; v.len()];
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        for i in 0..t {
            let pi = s.pos0 + i;
            for hh in 0..h {
                let g = hh / (h / hkv);
                let qrow = (i * h + hh) * d..(i * h + hh + 1) * d;
                let (qi, doi) = (&q[qrow.clone()], &dout[qrow.clone()]);
                let kvrow = |j: usize| (j * hkv + g) * d..(j * hkv + g + 1) * d;
                let scores: Vec<f64> = (0..=pi).map(|j| dot(qi, &k[kvrow(j)]) * scale).collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
                let p: Vec<f64> = scores.iter().map(|x| (x - m).exp() / z).collect();
                let dp: Vec<f64> = (0..=pi).map(|j| dot(doi, &v[kvrow(j)])).collect();
                // delta = sum_j p_j dp_j = dO . O
                let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..=pi {
                    let ds = p[j] * (dp[j] - delta);
                    let r = kvrow(j);
                    for c in 0..d {
                        dq[qrow.start + c] += scale * ds * k[r.start + c];
                        dk[r.start + c] += scale * ds * qi[c];
                        dv[r.start + c] += p[j] * doi[c];
                    }
                }
            }
        }
        (dq, dk, dv)
    }
}
