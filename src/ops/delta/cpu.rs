//! The f64 naive per-token gated delta rule and its hand-written reverse-mode backward:
//! the reference every GPU kernel of this family is tested against (tests/kernels/delta.rs, whose
//! first test checks it against finite differences).
//!
//! Per (b, h), with state S [dv, dk] (row v, column k), optional L2 normalisation of q and
//! k (`x / sqrt(sum x^2 + 1e-6)`, fla's convention) and query scale s:
//!
//! ```text
//! S' = exp(g_t) S_{t-1};  p = S' k_t;  delta = beta_t (v_t - p);  S_t = S' + delta k_t^T
//! o_t = s S_t q_t
//! ```
use super::{DeltaInputs, DeltaShape, L2_EPS};

/// The inputs of the references, as f64 slices.
pub type Inputs<'a> = DeltaInputs<'a, [f64]>;

/// `x / sqrt(sum x^2 + eps)` and the factor `1 / sqrt(sum x^2 + eps)`.
fn l2n(x: &[f64]) -> (Vec<f64>, f64) {
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() + L2_EPS).sqrt();
    (x.iter().map(|v| v * r).collect(), r)
}

/// Backward of `y = x r, r = 1 / sqrt(|x|^2 + eps)`: dx = r (dy - y (y . dy)).
pub(super) fn l2n_bwd(y: &[f64], r: f64, dy: &[f64]) -> Vec<f64> {
    let dot: f64 = y.iter().zip(dy).map(|(a, b)| a * b).sum();
    y.iter().zip(dy).map(|(yv, dyv)| r * (dyv - yv * dot)).collect()
}

/// Row (b, t, h) of q or k [B, T, H, dk], L2-normalised when `s.l2norm`, and its factor
/// (1 without the norm).
pub(super) fn qk_rows(s: &DeltaShape, x: &[f64], b: usize, t: usize, h: usize) -> (Vec<f64>, f64) {
    let r = s.row(b, t, h);
    let xr = &x[r * s.dk..(r + 1) * s.dk];
    if s.l2norm {
        l2n(xr)
    } else {
        (xr.to_vec(), 1.0)
    }
}

/// Forward: returns (o [B, T, H, dv], final state [B, H, dv, dk]).
/// `h0` is the initial state [B, H, dv, dk] (zeros when `None`).
pub fn forward(s: &DeltaShape, x: &Inputs) -> (Vec<f64>, Vec<f64>) {
    let Inputs { q, k, v, g, beta, h0 } = *x;
    let (dk, dv) = (s.dk, s.dv);
    let scale = s.scale as f64;
    let mut o = vec![0.0; s.b * s.t * s.h * dv];
    let mut ht = vec![0.0; s.state_len()];
    for b in 0..s.b {
        for h in 0..s.h {
            let st = &mut ht[(b * s.h + h) * dv * dk..(b * s.h + h + 1) * dv * dk];
            if let Some(h0) = h0 {
                st.copy_from_slice(&h0[(b * s.h + h) * dv * dk..(b * s.h + h + 1) * dv * dk]);
            }
            for t in 0..s.t {
                let r = s.row(b, t, h);
                let (qt, _) = qk_rows(s, q, b, t, h);
                let (kt, _) = qk_rows(s, k, b, t, h);
                let a = g[r].exp();
                let bt = beta[r];
                for i in 0..dv {
                    let srow = &mut st[i * dk..(i + 1) * dk];
                    let mut p = 0.0;
                    for j in 0..dk {
                        srow[j] *= a;
                        p += srow[j] * kt[j];
                    }
                    let delta = bt * (v[r * dv + i] - p);
                    let mut oi = 0.0;
                    for j in 0..dk {
                        srow[j] += delta * kt[j];
                        oi += srow[j] * qt[j];
                    }
                    o[r * dv + i] = scale * oi;
                }
            }
        }
    }
    (o, ht)
}

/// Gradients of the naive recurrence, shapes as the inputs.
#[derive(Clone, Debug)]
pub struct Grads {
    pub dq: Vec<f64>,
    pub dk: Vec<f64>,
    pub dv: Vec<f64>,
    pub dg: Vec<f64>,
    pub dbeta: Vec<f64>,
    /// Gradient w.r.t. the initial state [B, H, dv, dk] (also when no `h0` was given: the
    /// gradient w.r.t. a zero initial state).
    pub dh0: Vec<f64>,
}

impl Grads {
    /// Zeros, shaped as the inputs of shape `s` (and dh0 as the state).
    pub fn zeros(s: &DeltaShape) -> Grads {
        let r = s.rows();
        Grads {
            dq: vec![0.0; r * s.dk],
            dk: vec![0.0; r * s.dk],
            dv: vec![0.0; r * s.dv],
            dg: vec![0.0; r],
            dbeta: vec![0.0; r],
            dh0: vec![0.0; s.state_len()],
        }
    }
}

/// Reverse-mode backward of [`forward`] given d(o) and optionally d(final state).
pub fn backward(s: &DeltaShape, x: &Inputs, do_: &[f64], dht: Option<&[f64]>) -> Grads {
    let Inputs { q, k, v, g, beta, h0 } = *x;
    let (dk, dv) = (s.dk, s.dv);
    let n = dv * dk;
    let scale = s.scale as f64;
    let mut gr = Grads::zeros(s);
    for b in 0..s.b {
        for h in 0..s.h {
            let bh = b * s.h + h;
            // states[t] = S_t (states[0] = S_{-1} = h0), plus per-step p and delta
            let mut states = vec![0.0; (s.t + 1) * n];
            if let Some(h0) = h0 {
                states[..n].copy_from_slice(&h0[bh * n..(bh + 1) * n]);
            }
            let mut ps = vec![0.0; s.t * dv];
            let mut deltas = vec![0.0; s.t * dv];
            let mut qs = Vec::with_capacity(s.t);
            let mut ks = Vec::with_capacity(s.t);
            for t in 0..s.t {
                let r = s.row(b, t, h);
                let (qt, rq) = qk_rows(s, q, b, t, h);
                let (kt, rk) = qk_rows(s, k, b, t, h);
                let a = g[r].exp();
                let (prev, next) = states.split_at_mut((t + 1) * n);
                let prev = &prev[t * n..];
                let next = &mut next[..n];
                for i in 0..dv {
                    let mut p = 0.0;
                    for j in 0..dk {
                        next[i * dk + j] = a * prev[i * dk + j];
                        p += next[i * dk + j] * kt[j];
                    }
                    let delta = beta[r] * (v[r * dv + i] - p);
                    ps[t * dv + i] = p;
                    deltas[t * dv + i] = delta;
                    for j in 0..dk {
                        next[i * dk + j] += delta * kt[j];
                    }
                }
                qs.push((qt, rq));
                ks.push((kt, rk));
            }
            // reverse sweep; ds = dL/dS_t
            let mut ds = match dht {
                Some(d) => d[bh * n..(bh + 1) * n].to_vec(),
                None => vec![0.0; n],
            };
            for t in (0..s.t).rev() {
                let r = s.row(b, t, h);
                let (qt, rq) = &qs[t];
                let (kt, rk) = &ks[t];
                let a = g[r].exp();
                let st = &states[(t + 1) * n..(t + 2) * n];
                let sprev = &states[t * n..(t + 1) * n];
                let dot = &do_[r * dv..(r + 1) * dv];
                // o = s S_t q
                let mut dqh = vec![0.0; dk];
                for i in 0..dv {
                    for j in 0..dk {
                        ds[i * dk + j] += scale * dot[i] * qt[j];
                        dqh[j] += scale * st[i * dk + j] * dot[i];
                    }
                }
                // S_t = S' + delta k^T ; delta = beta (v - p) ; p = S' k ; S' = a S_{t-1}
                let mut dkh = vec![0.0; dk];
                let mut dbeta = 0.0;
                let mut da = 0.0;
                for i in 0..dv {
                    let mut ddelta = 0.0;
                    for j in 0..dk {
                        ddelta += ds[i * dk + j] * kt[j];
                        dkh[j] += ds[i * dk + j] * deltas[t * dv + i];
                    }
                    dbeta += ddelta * (v[r * dv + i] - ps[t * dv + i]);
                    gr.dv[r * dv + i] = beta[r] * ddelta;
                    let dp = -beta[r] * ddelta;
                    for j in 0..dk {
                        // dS' = dS + dp k^T ; dk += S'^T dp
                        let sp = a * sprev[i * dk + j];
                        dkh[j] += sp * dp;
                        let dsp = ds[i * dk + j] + dp * kt[j];
                        da += dsp * sprev[i * dk + j];
                        ds[i * dk + j] = a * dsp;
                    }
                }
                gr.dbeta[r] = dbeta;
                gr.dg[r] = da * a;
                let (dqr, dkr) = if s.l2norm { (l2n_bwd(qt, *rq, &dqh), l2n_bwd(kt, *rk, &dkh)) } else { (dqh, dkh) };
                gr.dq[r * dk..(r + 1) * dk].copy_from_slice(&dqr);
                gr.dk[r * dk..(r + 1) * dk].copy_from_slice(&dkr);
            }
            gr.dh0[bh * n..(bh + 1) * n].copy_from_slice(&ds);
        }
    }
    gr
}
