//! Training kernels (shaders/optim.wgsl): gradient global norm, scaled sums, MSE loss + gradient +
//! cosine sums, AdamW with clipping. Everything stays on the GPU; only the 16-byte loss
//! summary is read back when the caller wants it. Tested in tests/kernels/optim.rs.
use super::groups_for;
use crate::gpu::{Batch, Gpu, Kernel, Tensor};
use anyhow::Result;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    offset: u32,
    f: [f32; 8],
    _pad: [u32; 2],
}

const WG: usize = 256;

fn wgs(n: usize) -> usize {
    n.div_ceil(WG).max(1)
}

/// Scratch for two-stage reductions: `partials` holds one vec4 per workgroup.
pub struct Reducer {
    pub partials: Tensor,
    pub out: Tensor,
}

impl Reducer {
    /// Room for reductions over up to `max_elems` elements in total per sum.
    pub fn new(gpu: &Gpu, max_elems: usize, outputs: usize) -> Result<Reducer> {
        Ok(Reducer { partials: gpu.zeros(&[wgs(max_elems) + 64, 4])?, out: gpu.zeros(&[outputs.max(1), 4])? })
    }
}

/// out[slot].x = sum over `tensors` of sum of squares (the squared global gradient norm).
pub fn sum_squares(b: &mut Batch, tensors: &[&Tensor], red: &Reducer, slot: usize) {
    partial_sums(b, tensors, None, red, slot);
}

/// out[slot].x = scale * sum over `tensors` of their elements (e.g. a mean loss from per-row losses).
pub fn sum(b: &mut Batch, tensors: &[&Tensor], scale: f32, red: &Reducer, slot: usize) {
    partial_sums(b, tensors, Some(scale), red, slot);
}

/// Sums of squares (`scale` None) or scaled sums over several tensors into out[slot].x.
fn partial_sums(b: &mut Batch, tensors: &[&Tensor], scale: Option<f32>, red: &Reducer, slot: usize) {
    let mut off = 0;
    for t in tensors {
        let n = t.numel();
        let mut p = Params { n: n as u32, offset: off as u32, ..Default::default() };
        if let Some(s) = scale {
            p.f[0] = s;
            p.f[1] = 1.0;
        }
        b.dispatch(&Kernel::new("optim", "sq_partials"), &p, &[(*t).into(), (&red.partials).into()], groups_for(b.gpu, n, WG));
        off += wgs(n);
    }
    assert!(off <= red.partials.rows(), "reducer too small");
    finish(b, red, off, slot);
}

fn finish(b: &mut Batch, red: &Reducer, parts: usize, slot: usize) {
    let p = Params { n: parts as u32, offset: slot as u32, ..Default::default() };
    b.dispatch(&Kernel::new("optim", "sum_partials"), &p, &[(&red.partials).into(), (&red.out).into()], [1, 1, 1]);
}

/// dy = 2 (y - t) / N; out[slot] = (sum (y-t)^2, sum y t, sum y^2, sum t^2).
pub fn mse(b: &mut Batch, y: &Tensor, t: &Tensor, dy: &Tensor, red: &Reducer, slot: usize) {
    mse_scaled(b, y, t, dy, red, slot, 2.0 / y.numel() as f32);
}

/// As [`mse`] with dy = scale (y - t) (e.g. 2 / (N * micro-batches)).
pub fn mse_scaled(b: &mut Batch, y: &Tensor, t: &Tensor, dy: &Tensor, red: &Reducer, slot: usize, scale: f32) {
    let n = y.numel();
    assert_eq!(n, t.numel());
    let mut p = Params { n: n as u32, ..Default::default() };
    p.f[0] = scale;
    b.dispatch(&Kernel::new("optim", "mse"), &p, &[y.into(), t.into(), dy.into(), (&red.partials).into()], groups_for(b.gpu, n, WG));
    finish(b, red, wgs(n), slot);
}

/// The summary `mse` leaves: loss (mean squared error) and cosine similarity.
pub fn mse_summary(sums: [f32; 4], n: usize) -> (f64, f64) {
    let [se, yt, yy, tt] = sums.map(|v| v as f64);
    (se / n as f64, yt / (yy.sqrt() * tt.sqrt()).max(1e-30))
}

#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Global gradient-norm clip (0: none).
    pub max_norm: f32,
}

impl Default for AdamW {
    fn default() -> AdamW {
        AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_norm: 1.0 }
    }
}

/// One AdamW step (1-based `step`) on a parameter; `norm` is the Reducer whose out[0].x
/// holds the squared global gradient norm (from `sum_squares`).
#[allow(clippy::too_many_arguments)]
pub fn adamw(b: &mut Batch, o: &AdamW, step: u32, param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor, norm: &Reducer) {
    let n = param.numel();
    let bc1 = 1.0 - (o.beta1 as f64).powi(step as i32);
    let bc2 = 1.0 - (o.beta2 as f64).powi(step as i32);
    let p = Params {
        n: n as u32,
        offset: 0,
        f: [o.lr, o.beta1, o.beta2, o.eps, o.weight_decay, bc1 as f32, bc2 as f32, o.max_norm],
        _pad: [0; 2],
    };
    b.dispatch(
        &Kernel::new("optim", "adamw"),
        &p,
        &[param.into(), grad.into(), m.into(), v.into(), (&norm.out).into()],
        groups_for(b.gpu, n, WG),
    );
}

pub mod cpu {
    use super::AdamW;

    /// AdamW with global-norm clipping over several tensors, in f64; returns the norm.
    pub fn adamw(o: &AdamW, step: u32, params: &mut [Vec<f64>], grads: &[Vec<f64>], m: &mut [Vec<f64>], v: &mut [Vec<f64>]) -> f64 {
        let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let scale = if o.max_norm > 0.0 { (o.max_norm as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
        let (b1, b2) = (o.beta1 as f64, o.beta2 as f64);
        let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(m.iter_mut()).zip(v.iter_mut()) {
            for i in 0..p.len() {
                let gi = g[i] * scale;
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                p[i] =
                    p[i] * (1.0 - o.lr as f64 * o.weight_decay as f64) - o.lr as f64 * (m[i] / bc1) / ((v[i] / bc2).sqrt() + o.eps as f64);
            }
        }
        norm
    }
}
