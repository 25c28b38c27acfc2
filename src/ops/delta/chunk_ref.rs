//! An f64 model of the chunked algorithm the WGSL kernels run (same decomposition, same
//! intermediates, any chunk size), for tests and for debugging the kernels one by one.
//! Checked against the naive recurrence ([`super::cpu`]) in tests/kernels/delta.rs.
//! Within a chunk, rows are tokens; H = S^T is the [dk, dv] state entering the chunk.
//!
//! Forward, per chunk, gamma = inclusive cumsum of g, L = last valid row:
//! ```text
//! A_ij = beta_i exp(gamma_i - gamma_j) k_i.k_j (i > j);  T = (I + A)^-1
//! W = T diag(beta exp(gamma)) K;  U = T diag(beta) V;  Vn = U - W H
//! O = s [diag(exp(gamma)) Q H + (Q K^T o M) Vn],  M_ij = exp(gamma_i - gamma_j) [j <= i]
//! H <- exp(gamma_L) H + K^T diag(exp(gamma_L - gamma)) Vn
//! ```
//! Backward: see [`backward`].
use super::cpu::{l2n_bwd, qk_rows, Grads, Inputs};
use super::DeltaShape;

/// Intermediates of the chunked forward of one (b, h).
#[derive(Clone, Debug, Default)]
pub struct Chunks {
    /// inclusive cumsum of g within each chunk, `[T]`
    pub gamma: Vec<f64>,
    /// (I + A)^-1 per chunk [NT, C, C]
    pub tinv: Vec<f64>,
    /// w [T, dk], u [T, dv], v_new [T, dv]
    pub w: Vec<f64>,
    pub u: Vec<f64>,
    pub vn: Vec<f64>,
    /// state entering each chunk, [NT, dk, dv]
    pub h: Vec<f64>,
}

struct Head {
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    g: Vec<f64>,
    beta: Vec<f64>,
    rq: Vec<f64>,
    rk: Vec<f64>,
}

/// The inputs of head (b, h), q and k L2-normalised when `s.l2norm`.
fn gather(s: &DeltaShape, b: usize, h: usize, x: &Inputs) -> Head {
    let dv = s.dv;
    let mut hd = Head { q: vec![], k: vec![], v: vec![], g: vec![], beta: vec![], rq: vec![], rk: vec![] };
    for t in 0..s.t {
        let r = s.row(b, t, h);
        for (src, dst, rr) in [(x.q, &mut hd.q, &mut hd.rq), (x.k, &mut hd.k, &mut hd.rk)] {
            let (y, f) = qk_rows(s, src, b, t, h);
            dst.extend(y);
            rr.push(f);
        }
        hd.v.extend_from_slice(&x.v[r * dv..(r + 1) * dv]);
        hd.g.push(x.g[r]);
        hd.beta.push(x.beta[r]);
    }
    hd
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Chunked forward of one head; `hs` is H [dk, dv] on entry, the final state on exit.
fn head_forward(s: &DeltaShape, c: usize, x: &Head, hs: &mut [f64], o: &mut [f64]) -> Chunks {
    let (dk, dv, t) = (s.dk, s.dv, s.t);
    let sc = s.scale as f64;
    let nt = t.div_ceil(c);
    let mut ch = Chunks {
        gamma: vec![0.0; t],
        tinv: vec![0.0; nt * c * c],
        w: vec![0.0; t * dk],
        u: vec![0.0; t * dv],
        vn: vec![0.0; t * dv],
        h: vec![0.0; nt * dk * dv],
    };
    for n in 0..nt {
        let t0 = n * c;
        let l = (t - t0).min(c);
        let mut acc = 0.0;
        for i in 0..l {
            acc += x.g[t0 + i];
            ch.gamma[t0 + i] = acc;
        }
        let gm = &ch.gamma[t0..t0 + l];
        let kr = |i: usize| &x.k[(t0 + i) * dk..(t0 + i + 1) * dk];
        let qr = |i: usize| &x.q[(t0 + i) * dk..(t0 + i + 1) * dk];
        // T = (I + A)^-1 by forward substitution, row by row
        let ti = &mut ch.tinv[n * c * c..(n + 1) * c * c];
        for i in 0..l {
            let a: Vec<f64> = (0..i).map(|j| x.beta[t0 + i] * (gm[i] - gm[j]).exp() * dot(kr(i), kr(j))).collect();
            for col in 0..i {
                let mut v = -a[col];
                for j in col + 1..i {
                    v -= a[j] * ti[j * c + col];
                }
                ti[i * c + col] = v;
            }
            ti[i * c + i] = 1.0;
        }
        for i in 0..l {
            for j in 0..=i {
                let tij = ti[i * c + j];
                let bw = x.beta[t0 + j] * gm[j].exp();
                for d in 0..dk {
                    ch.w[(t0 + i) * dk + d] += tij * bw * kr(j)[d];
                }
                for d in 0..dv {
                    ch.u[(t0 + i) * dv + d] += tij * x.beta[t0 + j] * x.v[(t0 + j) * dv + d];
                }
            }
        }
        ch.h[n * dk * dv..(n + 1) * dk * dv].copy_from_slice(hs);
        for i in 0..l {
            for e in 0..dv {
                let mut wh = 0.0;
                for d in 0..dk {
                    wh += ch.w[(t0 + i) * dk + d] * hs[d * dv + e];
                }
                ch.vn[(t0 + i) * dv + e] = ch.u[(t0 + i) * dv + e] - wh;
            }
        }
        for i in 0..l {
            for e in 0..dv {
                let mut qh = 0.0;
                for d in 0..dk {
                    qh += qr(i)[d] * hs[d * dv + e];
                }
                let mut intra = 0.0;
                for j in 0..=i {
                    intra += (gm[i] - gm[j]).exp() * dot(qr(i), kr(j)) * ch.vn[(t0 + j) * dv + e];
                }
                o[(t0 + i) * dv + e] = sc * (gm[i].exp() * qh + intra);
            }
        }
        let gl = gm[l - 1];
        for d in 0..dk {
            for e in 0..dv {
                let mut upd = 0.0;
                for (j, gj) in gm.iter().enumerate() {
                    upd += (gl - gj).exp() * kr(j)[d] * ch.vn[(t0 + j) * dv + e];
                }
                hs[d * dv + e] = gl.exp() * hs[d * dv + e] + upd;
            }
        }
    }
    ch
}

/// Head (b, h)'s part of a state [B, H, dv, dk] transposed to the [dk, dv] layout of the
/// chunked model (zeros without a state).
fn head_state(s: &DeltaShape, b: usize, h: usize, state: Option<&[f64]>) -> Vec<f64> {
    let (dk, dv) = (s.dk, s.dv);
    let mut hs = vec![0.0; dk * dv];
    if let Some(state) = state {
        let st = &state[(b * s.h + h) * dv * dk..];
        for e in 0..dv {
            for d in 0..dk {
                hs[d * dv + e] = st[e * dk + d];
            }
        }
    }
    hs
}

/// The inverse of [`head_state`]: writes `hs` [dk, dv] into head (b, h) of `out` [B, H, dv, dk].
fn put_head_state(s: &DeltaShape, b: usize, h: usize, hs: &[f64], out: &mut [f64]) {
    let (dk, dv) = (s.dk, s.dv);
    let st = &mut out[(b * s.h + h) * dv * dk..];
    for e in 0..dv {
        for d in 0..dk {
            st[e * dk + d] = hs[d * dv + e];
        }
    }
}

/// The chunked forward of head (b, h): its inputs, final state [dk, dv], o [T, dv] and
/// intermediates.
fn run_head(s: &DeltaShape, c: usize, x: &Inputs, b: usize, h: usize) -> (Head, Vec<f64>, Vec<f64>, Chunks) {
    let hd = gather(s, b, h, x);
    let mut hs = head_state(s, b, h, x.h0);
    let mut oh = vec![0.0; s.t * s.dv];
    let ch = head_forward(s, c, &hd, &mut hs, &mut oh);
    (hd, hs, oh, ch)
}

/// Chunked forward with chunk size `c`: (o [B, T, H, dv], ht [B, H, dv, dk], per-(b, h)
/// intermediates).
pub fn forward(s: &DeltaShape, c: usize, x: &Inputs) -> (Vec<f64>, Vec<f64>, Vec<Chunks>) {
    let dv = s.dv;
    let mut o = vec![0.0; s.rows() * dv];
    let mut ht = vec![0.0; s.state_len()];
    let mut all = vec![];
    for b in 0..s.b {
        for h in 0..s.h {
            let (_, hs, oh, ch) = run_head(s, c, x, b, h);
            all.push(ch);
            for t in 0..s.t {
                let r = s.row(b, t, h);
                o[r * dv..(r + 1) * dv].copy_from_slice(&oh[t * dv..(t + 1) * dv]);
            }
            put_head_state(s, b, h, &hs, &mut ht);
        }
    }
    (o, ht, all)
}

/// Chunked backward with chunk size `c`, following the kernels:
/// ```text
/// dVn_loc = s (Q K^T o M)^T dO;  dS = s (dO Vn^T) o M;  dgamma += rowsum(dS o QK^T) - colsum(..)
/// reverse over chunks (dHe = dL/d(state leaving the chunk)):
///   dVn = dVn_loc + diag(F) K dHe;  dHe <- exp(gamma_L) dHe + s Q^T diag(exp(gamma)) dO - W^T dVn
/// dQ = s diag(exp(gamma)) dO H^T + dS K;  dK = diag(F) Vn dHe^T + dS^T Q;  dW = -dVn H^T
/// dT = dU (beta V)^T + dW (beta exp(gamma) K)^T;  dA = -T^T tril(dT) T^T (strict)
/// then dK, dV, dbeta, dgamma through A, W, U;  dg = reverse cumsum of dgamma; L2 norm.
/// ```
pub fn backward(s: &DeltaShape, c: usize, x: &Inputs, do_: &[f64], dht: Option<&[f64]>) -> Grads {
    let (dk, dv, t) = (s.dk, s.dv, s.t);
    let sc = s.scale as f64;
    let nt = t.div_ceil(c);
    let mut gr = Grads::zeros(s);
    for b in 0..s.b {
        for h in 0..s.h {
            let (x, _, _, ch) = run_head(s, c, x, b, h);
            let mut dout = vec![0.0; t * dv];
            for tt in 0..t {
                let r = s.row(b, tt, h);
                dout[tt * dv..(tt + 1) * dv].copy_from_slice(&do_[r * dv..(r + 1) * dv]);
            }
            let kr = |i: usize| &x.k[i * dk..(i + 1) * dk];
            let qr = |i: usize| &x.q[i * dk..(i + 1) * dk];
            let dor = |i: usize| &dout[i * dv..(i + 1) * dv];
            let vnr = |i: usize| &ch.vn[i * dv..(i + 1) * dv];
            let mut dgam = vec![0.0; t];
            let mut dvn = vec![0.0; t * dv];
            let mut dsm = vec![0.0; nt * c * c];
            // chunk-local: dVn_loc, dS, dgamma from the intra-chunk attention
            for n in 0..nt {
                let t0 = n * c;
                let l = (t - t0).min(c);
                let gm = &ch.gamma[t0..t0 + l];
                for i in 0..l {
                    for j in 0..=i {
                        let m = (gm[i] - gm[j]).exp();
                        let qk = dot(qr(t0 + i), kr(t0 + j));
                        let ds = sc * m * dot(dor(t0 + i), vnr(t0 + j));
                        dsm[n * c * c + i * c + j] = ds;
                        dgam[t0 + i] += ds * qk;
                        dgam[t0 + j] -= ds * qk;
                        for e in 0..dv {
                            dvn[(t0 + j) * dv + e] += sc * m * qk * dout[(t0 + i) * dv + e];
                        }
                    }
                }
            }
            // reverse state pass
            let mut dhe = head_state(s, b, h, dht);
            let mut dh = vec![0.0; nt * dk * dv];
            for n in (0..nt).rev() {
                let t0 = n * c;
                let l = (t - t0).min(c);
                let gm = &ch.gamma[t0..t0 + l];
                let gl = gm[l - 1];
                dh[n * dk * dv..(n + 1) * dk * dv].copy_from_slice(&dhe);
                for i in 0..l {
                    let f = (gl - gm[i]).exp();
                    for e in 0..dv {
                        let mut a = 0.0;
                        for d in 0..dk {
                            a += kr(t0 + i)[d] * dhe[d * dv + e];
                        }
                        dvn[(t0 + i) * dv + e] += f * a;
                    }
                }
                for d in 0..dk {
                    for e in 0..dv {
                        let mut a = gl.exp() * dhe[d * dv + e];
                        for i in 0..l {
                            a += sc * gm[i].exp() * qr(t0 + i)[d] * dout[(t0 + i) * dv + e];
                            a -= ch.w[(t0 + i) * dk + d] * dvn[(t0 + i) * dv + e];
                        }
                        dhe[d * dv + e] = a;
                    }
                }
            }
            put_head_state(s, b, h, &dhe, &mut gr.dh0);
            // dq, dk, dw and their dgamma
            let mut dqh = vec![0.0; t * dk];
            let mut dkh = vec![0.0; t * dk];
            let mut dw = vec![0.0; t * dk];
            for n in 0..nt {
                let t0 = n * c;
                let l = (t - t0).min(c);
                let gm = &ch.gamma[t0..t0 + l];
                let gl = gm[l - 1];
                let hn = &ch.h[n * dk * dv..(n + 1) * dk * dv];
                let dhn = &dh[n * dk * dv..(n + 1) * dk * dv];
                let mut hdh = 0.0;
                for z in 0..dk * dv {
                    hdh += hn[z] * dhn[z];
                }
                dgam[t0 + l - 1] += gl.exp() * hdh;
                for i in 0..l {
                    let (ti, f) = (t0 + i, (gl - gm[i]).exp());
                    for d in 0..dk {
                        let (mut aq, mut ak, mut aw) = (0.0, 0.0, 0.0);
                        for e in 0..dv {
                            aq += dout[ti * dv + e] * hn[d * dv + e];
                            ak += ch.vn[ti * dv + e] * dhn[d * dv + e];
                            aw += dvn[ti * dv + e] * hn[d * dv + e];
                        }
                        let aq = sc * gm[i].exp() * aq;
                        let ak = f * ak;
                        dgam[ti] += qr(ti)[d] * aq - kr(ti)[d] * ak;
                        dgam[t0 + l - 1] += kr(ti)[d] * ak;
                        let (mut sq, mut sk) = (0.0, 0.0);
                        for j in 0..l {
                            sq += dsm[n * c * c + i * c + j] * kr(t0 + j)[d];
                            sk += dsm[n * c * c + j * c + i] * qr(t0 + j)[d];
                        }
                        dqh[ti * dk + d] = aq + sq;
                        dkh[ti * dk + d] = ak + sk;
                        dw[ti * dk + d] = -aw;
                    }
                }
            }
            // WY backward
            let mut dvv = vec![0.0; t * dv];
            let mut dbeta = vec![0.0; t];
            for n in 0..nt {
                let t0 = n * c;
                let l = (t - t0).min(c);
                let gm = &ch.gamma[t0..t0 + l];
                let ti = &ch.tinv[n * c * c..(n + 1) * c * c];
                let bt = |i: usize| x.beta[t0 + i];
                // dT (strictly lower)
                let mut dt = vec![0.0; c * c];
                for i in 0..l {
                    for a in 0..i {
                        let du: f64 = (0..dv).map(|e| dvn[(t0 + i) * dv + e] * x.v[(t0 + a) * dv + e]).sum();
                        let dwk: f64 = (0..dk).map(|d| dw[(t0 + i) * dk + d] * kr(t0 + a)[d]).sum();
                        dt[i * c + a] = bt(a) * (du + gm[a].exp() * dwk);
                    }
                }
                // dA = -T^T dT T^T, strictly lower
                let mut y = vec![0.0; c * c];
                for i in 0..l {
                    for j in 0..l {
                        y[i * c + j] = (0..l).map(|a| dt[i * c + a] * ti[j * c + a]).sum();
                    }
                }
                for i in 0..l {
                    for j in 0..i {
                        let da: f64 = -(0..l).map(|a| ti[a * c + i] * y[a * c + j]).sum::<f64>();
                        let m = (gm[i] - gm[j]).exp();
                        let kk = dot(kr(t0 + i), kr(t0 + j));
                        let e = da * m * kk;
                        dbeta[t0 + i] += e;
                        dgam[t0 + i] += bt(i) * e;
                        dgam[t0 + j] -= bt(i) * e;
                        let dd = da * bt(i) * m;
                        for d in 0..dk {
                            dkh[(t0 + i) * dk + d] += dd * kr(t0 + j)[d];
                            dkh[(t0 + j) * dk + d] += dd * kr(t0 + i)[d];
                        }
                    }
                }
                // through W = T diag(beta e^gamma) K and U = T diag(beta) V
                for i in 0..l {
                    let ew = gm[i].exp();
                    for d in 0..dk {
                        let dx: f64 = (i..l).map(|a| ti[a * c + i] * dw[(t0 + a) * dk + d]).sum();
                        dkh[(t0 + i) * dk + d] += bt(i) * ew * dx;
                        dbeta[t0 + i] += ew * kr(t0 + i)[d] * dx;
                        dgam[t0 + i] += bt(i) * ew * kr(t0 + i)[d] * dx;
                    }
                    for e in 0..dv {
                        let dx: f64 = (i..l).map(|a| ti[a * c + i] * dvn[(t0 + a) * dv + e]).sum();
                        dvv[(t0 + i) * dv + e] = bt(i) * dx;
                        dbeta[t0 + i] += x.v[(t0 + i) * dv + e] * dx;
                    }
                }
            }
            // scatter, reverse cumsum of dgamma, L2 norm backward
            for n in 0..nt {
                let t0 = n * c;
                let l = (t - t0).min(c);
                let mut acc = 0.0;
                for i in (0..l).rev() {
                    acc += dgam[t0 + i];
                    let r = s.row(b, t0 + i, h);
                    gr.dg[r] = acc;
                }
            }
            for tt in 0..t {
                let r = s.row(b, tt, h);
                gr.dbeta[r] = dbeta[tt];
                gr.dv[r * dv..(r + 1) * dv].copy_from_slice(&dvv[tt * dv..(tt + 1) * dv]);
                for (dst, xh, dxh, rr) in [(&mut gr.dq, &x.q, &dqh, x.rq[tt]), (&mut gr.dk, &x.k, &dkh, x.rk[tt])] {
                    let y = &xh[tt * dk..(tt + 1) * dk];
                    let dy = &dxh[tt * dk..(tt + 1) * dk];
                    let dx = if s.l2norm { l2n_bwd(y, rr, dy) } else { dy.to_vec() };
                    dst[r * dk..(r + 1) * dk].copy_from_slice(&dx);
                }
            }
        }
    }
    gr
}
