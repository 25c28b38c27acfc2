//! Causal GQA softmax attention with online softmax and fused attention statistics
//! (shaders/attention.wgsl), its backward for training (shaders/attention_bwd.wgsl), and,
//! for the callers that read no statistics at f16 precision, the same attention and its
//! backward on f16 tiles and the matrix units ([`attention_mma`]: shaders/attn_mma_common,
//! _coop, _tile; [`attention_backward_mma`]: shaders/attn_bwd_mma_common, _coop, _tile; both
//! fallbacks share shaders/attn_mma_frag_tile.wgsl).
//! No T x T matrix is ever stored. Tested in tests/kernels/attention.rs.
use super::mma::MmaPath;
use crate::gpu::{Batch, Gpu, Kernel, Precision, Tensor};
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
        assert!(
            self.seqs >= 1 && q_numel.is_multiple_of(self.seqs * self.heads * self.dim),
            "q is not {} sequences of whole rows",
            self.seqs
        );
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
    let (t, p) = forward_params(q, k, v, o, s);
    assert_eq!(stats.numel(), s.seqs * t * s.heads * 2);
    let dmax = dmax(s.dim);
    let br = rows_per_group(b.gpu, t, s.heads, false);
    let kernel = Kernel::new("attention", "attention").with("D", dmax).with("BC", 2048 / dmax).with("BR", br as u32);
    let binds = [q.into(), k.into(), v.into(), o.into(), stats.into()];
    b.dispatch(&kernel, &p, &binds, [t.div_ceil(br) as u32, (s.heads * s.seqs) as u32, 1]);
}

/// The forward's checks of its buffers; returns the query rows per sequence and the
/// kernels' parameters.
fn forward_params(q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, s: AttnShape) -> (usize, Params) {
    assert_eq!(s.heads % s.kv_heads, 0);
    let t = s.rows(q.numel());
    let kv_rows = (s.pos0 + t) * s.kv_heads * s.dim;
    if s.seqs == 1 {
        assert!(k.numel() >= kv_rows && v.numel() >= kv_rows, "KV cache too short");
    } else {
        assert!(k.numel() == s.seqs * kv_rows && v.numel() == k.numel(), "k, v: expected {} sequences of {} rows", s.seqs, s.pos0 + t);
    }
    assert_eq!(o.numel(), q.numel(), "o: expected the shape of q");
    let p = Params {
        dims: s.dims(t),
        pos0: s.pos0 as u32,
        q_stride: (s.heads * s.dim) as u32,
        kv_stride: (s.kv_heads * s.dim) as u32,
        scale: s.scale,
    };
    (t, p)
}

/// The output of [`attention`] for a caller that reads no statistics: with the context's
/// precision f16 on an adapter with cooperative matrices, where [`attention_mma`] can run,
/// on it (f16 operands, f32 scores, softmax and sums); otherwise [`attention`], with `stats`
/// as its scratch (the f16 tiles' fallback is for testing their tiling: on ordinary
/// invocations the f32 kernel is faster, 0.17 vs 3.7 s at T 512 on lavapipe).
pub fn attention_out(b: &mut Batch, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, stats: &Tensor, s: AttnShape) {
    if mma_attention(b.gpu, s.dim) {
        attention_mma(b, q, k, v, o, s);
    } else {
        attention(b, q, k, v, o, stats, s);
    }
}

/// Whether [`attention_out`] and [`attention_backward_auto`] run on the matrix units:
/// precision f16, cooperative matrices, and
/// [`GpuOptions::attention_mma`](crate::gpu::GpuOptions::attention_mma) not off.
pub fn mma_attention(gpu: &Gpu, dim: usize) -> bool {
    let wanted = gpu.options().attention_mma.unwrap_or(true);
    wanted && gpu.info.precision == Precision::F16 && gpu.info.coop16 && mma_kernel(gpu, dim, "attn_bwd_kv").is_some()
}

/// The f16-tile attention kernel `entry` (the forward's `attn_fwd`, or the backward's
/// `attn_bwd_q` / `attn_bwd_kv`) for head dim `dim` on this adapter: cooperative matrices
/// where it has them (with a subgroup of 16, 32 or 64), else the fallback with the same
/// tiles. None where it cannot run (no SHADER_F16, head dim > 128, too little workgroup
/// memory).
fn mma_kernel(gpu: &Gpu, dim: usize, entry: &'static str) -> Option<Kernel> {
    if !super::mma::available(gpu) || dim > 128 {
        return None;
    }
    let path = MmaPath::auto(gpu);
    let sg = match path {
        MmaPath::Coop => gpu.info.min_subgroup_size,
        MmaPath::Tile => 32,
    };
    if ![16, 32, 64].contains(&sg) {
        return None;
    }
    let d = if dim <= 64 { 64 } else { 128 };
    let backward = entry != "attn_fwd";
    // tiles of 32 keys, blocks of scores of 32 keys at head dim 64, 16 at 128 (fastest on
    // the H200: shaders/attn_mma_common.wgsl), 16 where workgroup memory is short. Workgroup
    // memory: the K and V tiles (f16, rows of d + 8); per subgroup 16 x sbw f32 scores and
    // f16 probabilities (the backward: two of each); a (max, sum) per row and part; the
    // backward's (L, delta) per staged query.
    let bc = 32;
    let smem = |sbw: u32| {
        let blocks = if backward { 64 * sbw * 2 * (4 + 2) + bc * 8 } else { 64 * sbw * (4 + 2) };
        2 * bc * (d + 8) * 2 + blocks + 64 * (sg / 16) * 8
    };
    let first = if d == 64 { 32 } else { 16 };
    let sbw = [first, 16].into_iter().find(|&w| smem(w) <= gpu.limits.max_compute_workgroup_storage_size)?;
    let shader = match (path, backward) {
        (MmaPath::Coop, false) => "attn_mma_coop",
        (MmaPath::Tile, false) => "attn_mma_tile",
        (MmaPath::Coop, true) => "attn_bwd_mma_coop",
        (MmaPath::Tile, true) => "attn_bwd_mma_tile",
    };
    Some(Kernel::new(shader, entry).with("D", d).with("BC", bc).with("SBW", sbw).with("SG", sg))
}

/// [`attention`]'s output without its statistics, on f16 tiles (shaders/attn_mma_*.wgsl):
/// q, k, v rounded to f16, scores summed in f32, probabilities rounded to f16 for the sum
/// over v (in f32). Head dim <= 128; panics where the adapter cannot run it (no SHADER_F16).
pub fn attention_mma(b: &mut Batch, q: &Tensor, k: &Tensor, v: &Tensor, o: &Tensor, s: AttnShape) {
    let kernel = mma_kernel(b.gpu, s.dim, "attn_fwd")
        .unwrap_or_else(|| panic!("attention_mma: no f16 attention kernel for head dim {} on {}", s.dim, b.gpu.info.name));
    let (t, p) = forward_params(q, k, v, o, s);
    if t == 0 {
        return;
    }
    b.dispatch(&kernel, &p, &[q.into(), k.into(), v.into(), o.into()], [t.div_ceil(64) as u32, (s.heads * s.seqs) as u32, 1]);
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
    let t = backward_checks([q, k, v, o, dout, dq, dk, dv], scratch, s);
    if t == 0 {
        return;
    }
    let qn = s.seqs * t * s.heads * s.dim;
    let kvn = s.seqs * t * s.kv_heads * s.dim;
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

/// The backward's checks of its buffers (q, k, v, o, dout, dq, dk, dv); returns T.
fn backward_checks(x: [&Tensor; 8], scratch: &AttnBwdScratch, s: AttnShape) -> usize {
    assert_eq!(s.heads % s.kv_heads, 0);
    assert_eq!(s.pos0, 0, "attention_backward is for training: pos0 must be 0");
    let t = s.rows(x[0].numel());
    let (qn, kvn) = (s.seqs * t * s.heads * s.dim, s.seqs * t * s.kv_heads * s.dim);
    for (name, i) in [("k", 1), ("v", 2), ("dk", 6), ("dv", 7)] {
        assert_eq!(x[i].numel(), kvn, "{name}: expected [T={t}, {}] (S must equal T)", s.kv_heads * s.dim);
    }
    for (name, i) in [("o", 3), ("dout", 4), ("dq", 5)] {
        assert_eq!(x[i].numel(), qn, "{name}: expected [T={t}, {}]", s.heads * s.dim);
    }
    assert_eq!(scratch.stats.numel(), s.seqs * t * s.heads * 2, "scratch made for another T or head count");
    t
}

/// [`attention_backward`] on f16 tiles (shaders/attn_bwd_mma_*.wgsl): q, k, v and dO
/// (scaled by a power of two from max |dO|) rounded to f16, p and ds too; scores, softmax,
/// delta and every sum f32. Two dispatches (and one max |dO| pass): a query-parallel pass
/// (L and delta into `scratch.stats`, then dq) and a key-parallel one (dk, dv, summed over
/// each kv head's query heads inside the workgroup). Head dim <= 128; panics where the
/// adapter cannot run it.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_mma(
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
    let kern = |entry| {
        mma_kernel(b.gpu, s.dim, entry)
            .unwrap_or_else(|| panic!("attention_backward_mma: no f16 kernel for head dim {} on {}", s.dim, b.gpu.info.name))
    };
    let (kq, kkv) = (kern("attn_bwd_q"), kern("attn_bwd_kv"));
    let t = backward_checks([q, k, v, o, dout, dq, dk, dv], scratch, s);
    if t == 0 {
        return;
    }
    let amx = super::mma::dy_scale(b, dout, s.heads * s.dim);
    let (_, p) = forward_params(q, k, v, o, s);
    let (st, groups) = (&scratch.stats, t.div_ceil(64) as u32);
    b.dispatch(
        &kq,
        &p,
        &[q.into(), k.into(), v.into(), o.into(), dout.into(), st.into(), dq.into(), (&amx).into()],
        [groups, (s.heads * s.seqs) as u32, 1],
    );
    b.dispatch(
        &kkv,
        &p,
        &[q.into(), k.into(), v.into(), dv.into(), dout.into(), st.into(), dk.into(), (&amx).into()],
        [groups, (s.kv_heads * s.seqs) as u32, 1],
    );
}

/// [`attention_backward_mma`] where [`mma_attention`] says so, else [`attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_auto(
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
    if mma_attention(b.gpu, s.dim) {
        attention_backward_mma(b, q, k, v, o, dout, dq, dk, dv, scratch, s);
    } else {
        attention_backward(b, q, k, v, o, dout, dq, dk, dv, scratch, s);
    }
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
