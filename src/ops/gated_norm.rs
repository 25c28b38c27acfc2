//! Gated RMSNorm per head, the output norm of the Gated DeltaNet block, forward and
//! backward (shaders/gated_norm.wgsl): `y = rmsnorm(o) * w * silu(z)`. Tested in
//! tests/kernels/gated_norm.rs and, split over small bindings, tests/kernels/gdn_act.rs.
use super::gdn_act::colsum;
use super::{row_split, view};
use crate::gpu::{grid, Batch, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

/// Gated RMSNorm over rows of `w.numel()` elements: y = o rstd w silu(z),
/// rstd = 1 / sqrt(mean(o^2) + eps) (one row per token and head), also written out.
pub fn gated_norm_forward(b: &mut Batch, o: &Tensor, z: &Tensor, w: &Tensor, eps: f32, y: &Tensor, rstd: &Tensor) {
    let cols = w.numel();
    let rows = o.numel() / cols;
    assert_eq!(o.numel(), rows * cols, "gated_norm_forward: o {:?} vs w {:?}", o.shape, w.shape);
    assert_eq!(z.numel(), o.numel(), "gated_norm_forward: z {:?} vs o {:?}", z.shape, o.shape);
    assert_eq!(y.numel(), o.numel(), "gated_norm_forward: y {:?} vs o {:?}", y.shape, o.shape);
    assert_eq!(rstd.numel(), rows, "gated_norm_forward: rstd {:?} for {rows} rows", rstd.shape);
    let [o, z, y] = [o, z, y].map(|t| view(t, rows, cols));
    let rstd = view(rstd, rows, 1);
    for c in row_split(b.gpu, rows, [&o, &z, &y, &rstd]) {
        let p = Params { rows: c.rows as u32, cols: cols as u32, eps, _pad: 0 };
        let [o, z, y, rstd] = c.binds;
        b.dispatch(&Kernel::new("gated_norm", "gnorm_fwd"), &p, &[o, z, w.into(), y, rstd], grid(b.gpu, c.rows as u32));
    }
}

/// Backward of [`gated_norm_forward`]: do and dz from dy (overwritten), dw (+)= the sum
/// over rows. `scratch` is any tensor of at least `o.numel()` elements.
#[allow(clippy::too_many_arguments)]
pub fn gated_norm_backward(
    b: &mut Batch,
    o: &Tensor,
    z: &Tensor,
    w: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
    d_o: &Tensor,
    dz: &Tensor,
    dw: &Tensor,
    scratch: &Tensor,
    accumulate: bool,
) {
    let cols = w.numel();
    let rows = o.numel() / cols;
    assert_eq!(o.numel(), rows * cols, "gated_norm_backward: o {:?} vs w {:?}", o.shape, w.shape);
    for t in [z, dy, d_o, dz] {
        assert_eq!(t.numel(), o.numel(), "gated_norm_backward: {:?} vs o {:?}", t.shape, o.shape);
    }
    assert_eq!(rstd.numel(), rows, "gated_norm_backward: rstd {:?} for {rows} rows", rstd.shape);
    assert_eq!(dw.numel(), cols, "gated_norm_backward: dw {:?} vs w {:?}", dw.shape, w.shape);
    assert!(scratch.numel() >= o.numel(), "gated_norm_backward: scratch {:?} smaller than o {:?}", scratch.shape, o.shape);
    let [o, z, dy, d_o, dz, tmp] = [o, z, dy, d_o, dz, scratch].map(|t| view(t, rows, cols));
    let rstd = view(rstd, rows, 1);
    for c in row_split(b.gpu, rows, [&o, &z, &rstd, &dy, &d_o, &dz, &tmp]) {
        let p = Params { rows: c.rows as u32, cols: cols as u32, eps: 0.0, _pad: 0 };
        let [o, z, rstd, dy, d_o, dz, tmp] = c.binds;
        b.dispatch(&Kernel::new("gated_norm", "gnorm_bwd"), &p, &[o, z, w.into(), rstd, dy, d_o, dz, tmp], grid(b.gpu, c.rows as u32));
    }
    colsum(b, &tmp, dw, accumulate);
}

/// The f64 references.
pub mod cpu {
    use crate::ops::gdn_act::cpu::{silu, silu_grad};

    /// (y, rstd) of the gated RMSNorm over rows of w.len().
    pub fn gated_norm_forward(o: &[f64], z: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
        let c = w.len();
        let mut y = vec![0.0; o.len()];
        let mut rstd = vec![0.0; o.len() / c];
        for (r, row) in o.chunks(c).enumerate() {
            let rs = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
            rstd[r] = rs;
            for j in 0..c {
                y[r * c + j] = row[j] * rs * w[j] * silu(z[r * c + j]);
            }
        }
        (y, rstd)
    }

    /// (do, dz, dw) of the gated RMSNorm.
    pub fn gated_norm_backward(o: &[f64], z: &[f64], w: &[f64], eps: f64, dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let c = w.len();
        let (mut d_o, mut dz, mut dw) = (vec![0.0; o.len()], vec![0.0; o.len()], vec![0.0; c]);
        for (r, row) in o.chunks(c).enumerate() {
            let rs = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
            let mut dot = 0.0;
            let mut dn = vec![0.0; c];
            for j in 0..c {
                let i = r * c + j;
                let n = row[j] * rs;
                let s = silu(z[i]);
                dn[j] = dy[i] * w[j] * s;
                dot += dn[j] * n;
                dz[i] = dy[i] * n * w[j] * silu_grad(z[i]);
                dw[j] += dy[i] * n * s;
            }
            for j in 0..c {
                d_o[r * c + j] = rs * (dn[j] - row[j] * rs * dot / c as f64);
            }
        }
        (d_o, dz, dw)
    }
}
