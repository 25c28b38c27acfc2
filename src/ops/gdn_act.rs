//! Element-wise pieces of the Gated DeltaNet block, forward and backward
//! (shaders/gdn_act.wgsl): SiLU, the decay gate `g = -exp(A_log) softplus(za + dt_bias)`
//! with the write strength `beta = sigmoid(zb)`, and a two-stage column sum that reduces
//! per-token parameter gradients over tokens. Tested in tests/kernels/gdn_act.rs (split over
//! small bindings included).
use super::{groups_for, row_split, view};
use crate::gpu::{Batch, Binding, DType, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    n: u32,
    heads: u32,
    rows_per: u32,
    accumulate: u32,
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: usize = 256;

/// y = silu(z) = z sigmoid(z) (z, the pre-activation, is left as is for the backward).
pub fn silu_forward(b: &mut Batch, z: &Tensor, y: &Tensor) {
    assert_eq!(z.numel(), y.numel(), "silu_forward: z {:?} vs y {:?}", z.shape, y.shape);
    elementwise(b, "silu_fwd", z, y);
}

/// d = d * silu'(z) in place: the gradient with respect to the output of the SiLU becomes
/// the gradient with respect to its input z.
pub fn silu_backward(b: &mut Batch, z: &Tensor, d: &Tensor) {
    assert_eq!(z.numel(), d.numel(), "silu_backward: z {:?} vs d {:?}", z.shape, d.shape);
    elementwise(b, "silu_bwd", z, d);
}

fn elementwise(b: &mut Batch, entry: &'static str, x: &Tensor, y: &Tensor) {
    let n = x.numel();
    let (x, y) = (view(x, n, 1), view(y, n, 1));
    for c in row_split(b.gpu, n, [&x, &y]) {
        let p = Params { n: c.rows as u32, ..Default::default() };
        b.dispatch(&Kernel::new("gdn_act", entry), &p, &c.binds, groups_for(b.gpu, c.rows, WG));
    }
}

/// For za, zb viewed as [N, H]: g = -exp(a_log[h]) softplus(za + dt_bias[h]) and
/// beta = sigmoid(zb).
pub fn gate_forward(b: &mut Batch, za: &Tensor, zb: &Tensor, a_log: &Tensor, dt_bias: &Tensor, g: &Tensor, beta: &Tensor) {
    let h = a_log.numel();
    let n = za.numel();
    assert!(h > 0 && n.is_multiple_of(h), "gate_forward: za {:?} is not [N, {h}]", za.shape);
    assert_eq!(dt_bias.numel(), h, "gate_forward: dt_bias {:?} vs A_log {:?}", dt_bias.shape, a_log.shape);
    for t in [zb, g, beta] {
        assert_eq!(t.numel(), n, "gate_forward: {:?} vs za {:?}", t.shape, za.shape);
    }
    let rows = n / h;
    let [za, zb, g, beta] = [za, zb, g, beta].map(|t| view(t, rows, h));
    for c in row_split(b.gpu, rows, [&za, &zb, &g, &beta]) {
        let p = Params { n: (c.rows * h) as u32, heads: h as u32, ..Default::default() };
        let [za, zb, g, beta] = c.binds;
        let binds = [za, zb, a_log.into(), dt_bias.into(), g, beta];
        b.dispatch(&Kernel::new("gdn_act", "gate_fwd"), &p, &binds, groups_for(b.gpu, c.rows * h, WG));
    }
}

/// Backward of [`gate_forward`]. In place: `dg` (dL/dg) becomes dL/dza and `dbeta` (dL/dbeta)
/// becomes dL/dzb. `da_log` and `ddt_bias` ([H]) get the sums over tokens
/// (`+=` when `accumulate`). `scratch` is any tensor of at least N * H elements.
#[allow(clippy::too_many_arguments)]
pub fn gate_backward(
    b: &mut Batch,
    za: &Tensor,
    beta: &Tensor,
    a_log: &Tensor,
    dt_bias: &Tensor,
    dg: &Tensor,
    dbeta: &Tensor,
    scratch: &Tensor,
    da_log: &Tensor,
    ddt_bias: &Tensor,
    accumulate: bool,
) {
    let h = a_log.numel();
    let n = za.numel();
    assert!(h > 0 && n.is_multiple_of(h), "gate_backward: za {:?} is not [N, {h}]", za.shape);
    for t in [beta, dg, dbeta] {
        assert_eq!(t.numel(), n, "gate_backward: {:?} vs za {:?}", t.shape, za.shape);
    }
    for t in [dt_bias, da_log, ddt_bias] {
        assert_eq!(t.numel(), h, "gate_backward: {:?} vs A_log {:?}", t.shape, a_log.shape);
    }
    assert!(scratch.numel() >= n, "gate_backward: scratch {:?} smaller than {n}", scratch.shape);
    let rows = n / h;
    let [za, beta, dg, dbeta, tmp] = [za, beta, dg, dbeta, scratch].map(|t| view(t, rows, h));
    for c in row_split(b.gpu, rows, [&za, &beta, &dg, &dbeta, &tmp]) {
        let p = Params { n: (c.rows * h) as u32, heads: h as u32, ..Default::default() };
        let [za, beta, dg, dbeta, tmp] = c.binds;
        let binds = [za, beta, a_log.into(), dt_bias.into(), dg, dbeta, tmp];
        b.dispatch(&Kernel::new("gdn_act", "gate_bwd"), &p, &binds, groups_for(b.gpu, c.rows * h, WG));
    }
    colsum(b, &tmp, da_log, accumulate);
    colsum(b, &dg, ddt_bias, accumulate);
}

/// out[c] (+)= sum_r x[r, c] for x viewed as [rows, out.numel()]: passes sum ranges of
/// 256 rows in parallel into partial sums until one range is left.
pub fn colsum(b: &mut Batch, x: &Tensor, out: &Tensor, accumulate: bool) {
    let cols = out.numel();
    assert!(cols > 0, "colsum: empty output");
    let rows = x.numel() / cols;
    let x = view(x, rows, cols);
    if rows == 0 {
        if !accumulate {
            colsum_binding(b, super::dummy(b), 0, cols, out.into(), false);
        }
        return;
    }
    for (i, c) in row_split(b.gpu, rows, [&x]).enumerate() {
        let [x] = c.binds;
        colsum_binding(b, x, c.rows, cols, out.into(), accumulate || i > 0);
    }
}

/// [`colsum`] over bindings: out[c] (+)= sum_r x[r * cols + c] for r < rows.
pub(crate) fn colsum_binding(b: &mut Batch, x: Binding, rows: usize, cols: usize, out: Binding, accumulate: bool) {
    let k = Kernel::new("gdn_act", "colsum_partial");
    let gx = cols.div_ceil(64) as u32;
    let per = 256usize.max(rows.div_ceil(65535));
    if rows <= per {
        let p = Params {
            rows: rows as u32,
            cols: cols as u32,
            rows_per: rows.max(1) as u32,
            accumulate: accumulate as u32,
            ..Default::default()
        };
        b.dispatch(&k, &p, &[x, out], [gx, 1, 1]);
        return;
    }
    let splits = rows.div_ceil(per);
    let partial = b.gpu.empty(&[splits, cols], DType::F32).expect("colsum: partial sums");
    let p = Params { rows: rows as u32, cols: cols as u32, rows_per: per as u32, accumulate: 0, ..Default::default() };
    b.dispatch(&k, &p, &[x, (&partial).into()], [gx, splits as u32, 1]);
    colsum_binding(b, (&partial).into(), splits, cols, out, accumulate);
}

/// The f64 references, and the scalar functions the other GDN references share.
pub mod cpu {
    /// out[c] = scale * sum_r x[r, c] for x [rows, cols].
    pub fn colsum(x: &[f64], cols: usize, scale: f64) -> Vec<f64> {
        let mut y = vec![0.0; cols];
        for row in x.chunks(cols) {
            for (a, v) in y.iter_mut().zip(row) {
                *a += v;
            }
        }
        y.iter().map(|v| v * scale).collect()
    }

    pub fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
    pub fn silu(x: f64) -> f64 {
        x * sigmoid(x)
    }
    /// d silu / dz
    pub fn silu_grad(z: f64) -> f64 {
        let s = sigmoid(z);
        s * (1.0 + z * (1.0 - s))
    }
    pub fn softplus(x: f64) -> f64 {
        x.max(0.0) + (-x.abs()).exp().ln_1p()
    }
    /// inverse of softplus: x + ln(-expm1(-x))
    pub fn inv_softplus(y: f64) -> f64 {
        y + (-(-y).exp_m1()).ln()
    }

    /// (g, beta) for za, zb [N, H].
    pub fn gate_forward(za: &[f64], zb: &[f64], a_log: &[f64], dt_bias: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let h = a_log.len();
        let g = za.iter().enumerate().map(|(i, &a)| -a_log[i % h].exp() * softplus(a + dt_bias[i % h])).collect();
        let beta = zb.iter().map(|&b| sigmoid(b)).collect();
        (g, beta)
    }

    /// (dza, dzb, dA_log, ddt_bias) from dg, dbeta.
    pub fn gate_backward(
        za: &[f64],
        zb: &[f64],
        a_log: &[f64],
        dt_bias: &[f64],
        dg: &[f64],
        dbeta: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let h = a_log.len();
        let (mut da_log, mut ddt) = (vec![0.0; h], vec![0.0; h]);
        let mut dza = vec![0.0; za.len()];
        for i in 0..za.len() {
            let j = i % h;
            let a = a_log[j].exp();
            let u = za[i] + dt_bias[j];
            dza[i] = -dg[i] * a * sigmoid(u);
            ddt[j] += dza[i];
            da_log[j] += dg[i] * (-a * softplus(u));
        }
        let dzb = zb.iter().zip(dbeta).map(|(&z, &d)| d * sigmoid(z) * (1.0 - sigmoid(z))).collect();
        (dza, dzb, da_log, ddt)
    }
}
