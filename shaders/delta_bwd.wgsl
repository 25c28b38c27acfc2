// Gated delta rule backward, chunk-parallel parts after the reverse state ps; one
// workgroup (256 threads, 4x4 thread tiles over 64 x 64 blocks) per (chunk, b*H + h).
// H = h[n] (state entering chunk n), dH = dh[n] (gradient w.r.t. the state leaving it),
// L = last row of the chunk, F_i = exp(gamma_L - gamma_i), dgamma accumulates in aux.w.
//
// delta_bwd_dqkw  dqhat = s diag(exp(gamma)) dO H^T + dS Khat        (-> dq, pre-L2-norm)
//                 dkhat = diag(F) v_new dH^T + dS^T Qhat             (-> dk, partial)
//                 dw = -dv_new H^T
//                 dgamma_i += qhat_i . (s e^gamma_i dO_i H^T) - khat_i . (F_i v_new_i dH^T),
//                 dgamma_L += sum_i khat_i . (F_i v_new_i dH^T) + exp(gamma_L) <H, dH>.
// delta_bwd_wy_a  dT = du (beta V)^T + dw (beta exp(gamma) Khat)^T (strictly lower),
//                 dA = -T^T dT T^T; D = dA o beta_i exp(gamma_i - gamma_j) -> dd;
//                 E = dA o exp(gamma_i - gamma_j) (Khat Khat^T): dbeta = rowsum(E),
//                 dgamma += rowsum(beta o E) - colsum(beta o E).
// delta_bwd_wy_b  dkhat += (D + D^T) Khat + diag(beta exp(gamma)) T^T dw;
//                 dv = diag(beta) T^T du; dbeta += ...; dgamma += ...;
//                 dg = reverse cumsum of dgamma in the chunk; L2-norm backward of dq, dk.

struct Params {
    b: u32,
    t: u32,
    h: u32,
    dk: u32,
    dv: u32,
    nt: u32,
    flags: u32,
    scale: f32,
}

const C: u32 = 64u;
const F_L2: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> tl: array<vec4<f32>, 640>;
var<workgroup> gsm: array<f32, 64>;
var<workgroup> qsm: array<f32, 64>;
var<workgroup> ksm: array<f32, 64>;
var<workgroup> bsm: array<f32, 64>;
var<workgroup> ym: array<f32, 2080>;

fn tri(i: u32) -> u32 {
    return i * (i + 1u) / 2u;
}

// ---------------------------------------------------------------- delta_bwd_dqkw
@group(0) @binding(1) var<storage, read> dq_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dq_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> dq_do: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> dq_vn: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> dq_dvn: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> dq_h: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> dq_dh: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> dq_ds: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dq_aux: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> dq_dq: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> dq_dk: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> dq_dw: array<vec4<f32>>;

@compute @workgroup_size(256)
fn delta_bwd_dqkw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let t0 = n * C;
    let len = min(C, p.t - t0);
    let rbase = (b * p.t + t0) * p.h + hh;
    let ti = lid / 16u;
    let tj = lid % 16u;
    let dk4 = p.dk / 4u;
    let dv4 = p.dv / 4u;
    let l2 = (p.flags & F_L2) != 0u;
    if (lid < C) {
        let a = dq_aux[rbase + min(lid, len - 1u) * p.h];
        gsm[lid] = a.x;
        qsm[lid] = select(1.0, a.y, l2);
        ksm[lid] = select(1.0, a.z, l2);
    }
    workgroupBarrier();
    let gl = gsm[len - 1u];
    let hbase = (bh * p.nt + n) * p.dk;
    let dsbase = (bh * p.nt + n) * 64u;

    var rowg = vec4<f32>(0.0);
    var tot = 0.0;
    var hdh = 0.0;
    for (var kb = 0u; kb < dk4; kb += 16u) {
        var aq: array<vec4<f32>, 4>;
        var ak: array<vec4<f32>, 4>;
        var aw: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            aq[r] = vec4<f32>(0.0);
            ak[r] = vec4<f32>(0.0);
            aw[r] = vec4<f32>(0.0);
        }
        // reductions over dv, 8 columns a step: transposed tiles [vv][x] of
        // dO (0), v_new (128), dv_new (256) over rows i, and H (384), dH (512) over k
        for (var v0 = 0u; v0 < dv4; v0 += 2u) {
            for (var e = lid; e < 640u; e += 256u) {
                let which = e / 128u;
                let c = (e % 128u) / 2u;
                let q4 = e % 2u;
                var xv = vec4<f32>(0.0);
                if (which < 3u) {
                    if (c < len && v0 + q4 < dv4) {
                        let idx = (rbase + c * p.h) * dv4 + v0 + q4;
                        if (which == 0u) {
                            xv = dq_do[idx];
                        } else if (which == 1u) {
                            xv = dq_vn[idx];
                        } else {
                            xv = dq_dvn[idx];
                        }
                    }
                } else {
                    let kc = kb * 4u + c;
                    if (kc < p.dk && v0 + q4 < dv4) {
                        let idx = (hbase + kc) * dv4 + v0 + q4;
                        if (which == 3u) {
                            xv = dq_h[idx];
                        } else {
                            xv = dq_dh[idx];
                        }
                    }
                }
                for (var e2 = 0u; e2 < 4u; e2++) {
                    tl[which * 128u + (q4 * 4u + e2) * 16u + c / 4u][c % 4u] = xv[e2];
                }
            }
            workgroupBarrier();
            if (lid < 128u) {
                hdh += dot(tl[384u + lid], tl[512u + lid]);
            }
            for (var vv = 0u; vv < 8u; vv++) {
                let a0 = tl[vv * 16u + ti];
                let a1 = tl[128u + vv * 16u + ti];
                let a2 = tl[256u + vv * 16u + ti];
                let hv = tl[384u + vv * 16u + tj];
                let dhv = tl[512u + vv * 16u + tj];
                for (var r = 0u; r < 4u; r++) {
                    aq[r] += a0[r] * hv;
                    ak[r] += a1[r] * dhv;
                    aw[r] += a2[r] * hv;
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            aq[r] *= p.scale * exp(gsm[i]);
            ak[r] *= exp(gl - gsm[i]);
            if (i < len && kb + tj < dk4) {
                let idx = (rbase + i * p.h) * dk4 + kb + tj;
                let qv = dq_q[idx] * qsm[i];
                let kv = dq_k[idx] * ksm[i];
                let kd = dot(kv, ak[r]);
                rowg[r] += dot(qv, aq[r]) - kd;
                tot += kd;
            }
        }
        // reductions over the chunk, 8 rows a step: dS^T tile [jj][i] = dS[i][j] (0),
        // dS tile [jj][i] = dS[j][i] (128), Khat [jj][k] (256), Qhat [jj][k] (384)
        for (var j0 = 0u; j0 < len; j0 += 8u) {
            for (var e = lid; e < 512u; e += 256u) {
                let which = e / 128u;
                let f = e % 128u;
                if (which == 0u) {
                    let i = f / 2u;
                    let q4 = f % 2u;
                    let xv = dq_ds[(dsbase + i) * 16u + j0 / 4u + q4];
                    for (var e2 = 0u; e2 < 4u; e2++) {
                        tl[(q4 * 4u + e2) * 16u + i / 4u][i % 4u] = xv[e2];
                    }
                } else if (which == 1u) {
                    let jj = f / 16u;
                    let x4 = f % 16u;
                    tl[e] = dq_ds[(dsbase + j0 + jj) * 16u + x4];
                } else {
                    let jj = f / 16u;
                    let x4 = f % 16u;
                    let j = j0 + jj;
                    var xv = vec4<f32>(0.0);
                    if (j < len && kb + x4 < dk4) {
                        let idx = (rbase + j * p.h) * dk4 + kb + x4;
                        if (which == 2u) {
                            xv = dq_k[idx] * ksm[j];
                        } else {
                            xv = dq_q[idx] * qsm[j];
                        }
                    }
                    tl[e] = xv;
                }
            }
            workgroupBarrier();
            for (var jj = 0u; jj < 8u; jj++) {
                let st = tl[jj * 16u + ti];
                let sn = tl[128u + jj * 16u + ti];
                let kv = tl[256u + jj * 16u + tj];
                let qv = tl[384u + jj * 16u + tj];
                for (var r = 0u; r < 4u; r++) {
                    aq[r] += st[r] * kv;
                    ak[r] += sn[r] * qv;
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            if (i < len && kb + tj < dk4) {
                let idx = (rbase + i * p.h) * dk4 + kb + tj;
                dq_dq[idx] = aq[r];
                dq_dk[idx] = ak[r];
                dq_dw[idx] = -aw[r];
            }
        }
    }

    // dgamma: per-row sums over the 16 column threads, and the chunk-wide term of row L
    tl[tj * 16u + ti] = rowg;
    tl[256u + lid / 4u][lid % 4u] = tot + exp(gl) * hdh;
    workgroupBarrier();
    if (lid < len) {
        var dg = 0.0;
        for (var x = 0u; x < 16u; x++) {
            dg += tl[x * 16u + lid / 4u][lid % 4u];
        }
        if (lid == len - 1u) {
            var z = vec4<f32>(0.0);
            for (var x = 0u; x < 64u; x++) {
                z += tl[256u + x];
            }
            dg += z.x + z.y + z.z + z.w;
        }
        let ri = rbase + lid * p.h;
        dq_aux[ri].w = dq_aux[ri].w + dg;
    }
}

// ---------------------------------------------------------------- delta_bwd_wy_a
@group(0) @binding(1) var<storage, read> wa_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wa_v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> wa_beta: array<f32>;
@group(0) @binding(4) var<storage, read> wa_tinv: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> wa_dw: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> wa_du: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> wa_aux: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> wa_dd: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> wa_dbeta: array<f32>;

@compute @workgroup_size(256)
fn delta_bwd_wy_a(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let t0 = n * C;
    let len = min(C, p.t - t0);
    let rbase = (b * p.t + t0) * p.h + hh;
    let ti = lid / 16u;
    let tj = lid % 16u;
    let dk4 = p.dk / 4u;
    let dv4 = p.dv / 4u;
    let l2 = (p.flags & F_L2) != 0u;
    if (lid < C) {
        let a = wa_aux[rbase + min(lid, len - 1u) * p.h];
        gsm[lid] = a.x;
        ksm[lid] = select(1.0, a.z, l2);
        bsm[lid] = select(0.0, wa_beta[rbase + lid * p.h], lid < len);
    }
    workgroupBarrier();
    let tbase = (bh * p.nt + n) * 64u;

    // kk = Khat Khat^T, dwk = dw Khat^T, duv = du V^T on the lower blocks
    var kk: array<vec4<f32>, 4>;
    var dwk: array<vec4<f32>, 4>;
    var duv: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        kk[r] = vec4<f32>(0.0);
        dwk[r] = vec4<f32>(0.0);
        duv[r] = vec4<f32>(0.0);
    }
    for (var ps = 0u; ps < 2u; ps++) {
        let n4 = select(dk4, dv4, ps == 1u);
        for (var x0 = 0u; x0 < n4; x0 += 2u) {
            // [xx][i] tiles: Khat or V (0), dw or du (128)
            let which = lid / 128u;
            let c = (lid % 128u) / 2u;
            let q4 = lid % 2u;
            var xv = vec4<f32>(0.0);
            if (c < len && x0 + q4 < n4) {
                if (ps == 0u) {
                    let idx = (rbase + c * p.h) * dk4 + x0 + q4;
                    if (which == 0u) {
                        xv = wa_k[idx] * ksm[c];
                    } else {
                        xv = wa_dw[idx];
                    }
                } else {
                    let idx = (rbase + c * p.h) * dv4 + x0 + q4;
                    if (which == 0u) {
                        xv = wa_v[idx];
                    } else {
                        xv = wa_du[idx];
                    }
                }
            }
            for (var e = 0u; e < 4u; e++) {
                tl[which * 128u + (q4 * 4u + e) * 16u + c / 4u][c % 4u] = xv[e];
            }
            workgroupBarrier();
            if (tj <= ti) {
                for (var xx = 0u; xx < 8u; xx++) {
                    let xi = tl[xx * 16u + ti];
                    let xj = tl[xx * 16u + tj];
                    let di = tl[128u + xx * 16u + ti];
                    for (var r = 0u; r < 4u; r++) {
                        if (ps == 0u) {
                            kk[r] += xi[r] * xj;
                            dwk[r] += di[r] * xj;
                        } else {
                            duv[r] += di[r] * xj;
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }
    // dT (strictly lower) into ym
    if (tj <= ti) {
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            for (var cc = 0u; cc < 4u; cc++) {
                let a = 4u * tj + cc;
                if (a < i) {
                    ym[tri(i) + a] = bsm[a] * (duv[r][cc] + exp(gsm[a]) * dwk[r][cc]);
                } else if (a == i) {
                    ym[tri(i) + a] = 0.0;
                }
            }
        }
    }
    workgroupBarrier();

    // Y = dT T^T: Y_ib = sum_a dT_ia T_ba; tile [aa][b] = T[b][a0 + aa]
    var y: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        y[r] = vec4<f32>(0.0);
    }
    for (var a0 = 0u; a0 < len; a0 += 16u) {
        let bq = lid / 4u;
        let q4 = lid % 4u;
        let tv = wa_tinv[(tbase + bq) * 16u + a0 / 4u + q4];
        for (var e = 0u; e < 4u; e++) {
            tl[(q4 * 4u + e) * 16u + bq / 4u][bq % 4u] = tv[e];
        }
        workgroupBarrier();
        if (tj <= ti) {
            for (var aa = 0u; aa < 16u; aa++) {
                let a = a0 + aa;
                let tb = tl[aa * 16u + tj];
                for (var r = 0u; r < 4u; r++) {
                    let i = 4u * ti + r;
                    y[r] += select(0.0, ym[tri(i) + a], a < i) * tb;
                }
            }
        }
        workgroupBarrier();
    }
    if (tj <= ti) {
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            for (var cc = 0u; cc < 4u; cc++) {
                let bb = 4u * tj + cc;
                if (bb < i) {
                    ym[tri(i) + bb] = y[r][cc];
                }
            }
        }
    }
    workgroupBarrier();

    // dA = -T^T Y: dA_ij = -sum_a T_ai Y_aj; tile [aa][i] = T[a0 + aa][i]
    var da: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        da[r] = vec4<f32>(0.0);
    }
    for (var a0 = 0u; a0 < len; a0 += 16u) {
        tl[lid] = wa_tinv[(tbase + a0 + lid / 16u) * 16u + lid % 16u];
        workgroupBarrier();
        if (tj <= ti && a0 + 15u >= 4u * ti) {
            for (var aa = 0u; aa < 16u; aa++) {
                let a = a0 + aa;
                let ta = tl[aa * 16u + ti];
                var yv = vec4<f32>(0.0);
                for (var cc = 0u; cc < 4u; cc++) {
                    let j = 4u * tj + cc;
                    yv[cc] = select(0.0, ym[tri(a) + j], j < a);
                }
                for (var r = 0u; r < 4u; r++) {
                    da[r] += ta[r] * yv;
                }
            }
        }
        workgroupBarrier();
    }

    // D, dbeta and dgamma through A
    var rowe = vec4<f32>(0.0);
    var rowg = vec4<f32>(0.0);
    var colg = vec4<f32>(0.0);
    for (var r = 0u; r < 4u; r++) {
        let i = 4u * ti + r;
        var dv = vec4<f32>(0.0);
        for (var cc = 0u; cc < 4u; cc++) {
            let j = 4u * tj + cc;
            if (j < i && i < len) {
                let m = exp(gsm[i] - gsm[j]);
                let dav = -da[r][cc];
                let e = dav * m * kk[r][cc];
                dv[cc] = dav * bsm[i] * m;
                rowe[r] += e;
                rowg[r] += bsm[i] * e;
                colg[cc] += bsm[i] * e;
            }
        }
        wa_dd[(tbase + i) * 16u + tj] = dv;
    }
    tl[tj * 16u + ti] = rowe;
    tl[256u + tj * 16u + ti] = rowg;
    workgroupBarrier();
    var sb = 0.0;
    var sg = 0.0;
    if (lid < C) {
        for (var x = 0u; x < 16u; x++) {
            sb += tl[x * 16u + lid / 4u][lid % 4u];
            sg += tl[256u + x * 16u + lid / 4u][lid % 4u];
        }
    }
    workgroupBarrier();
    tl[ti * 16u + tj] = colg;
    workgroupBarrier();
    if (lid < len) {
        for (var x = 0u; x < 16u; x++) {
            sg -= tl[x * 16u + lid / 4u][lid % 4u];
        }
        let ri = rbase + lid * p.h;
        wa_dbeta[ri] = sb;
        wa_aux[ri].w = wa_aux[ri].w + sg;
    }
}

// ---------------------------------------------------------------- delta_bwd_wy_b
@group(0) @binding(1) var<storage, read> wb_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> wb_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> wb_v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> wb_beta: array<f32>;
@group(0) @binding(5) var<storage, read> wb_aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> wb_tinv: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> wb_dd: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> wb_dw: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> wb_du: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read_write> wb_dq: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> wb_dk: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> wb_dv: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read_write> wb_dbeta: array<f32>;
@group(0) @binding(14) var<storage, read_write> wb_dg: array<f32>;

@compute @workgroup_size(256)
fn delta_bwd_wy_b(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let t0 = n * C;
    let len = min(C, p.t - t0);
    let rbase = (b * p.t + t0) * p.h + hh;
    let ti = lid / 16u;
    let tj = lid % 16u;
    let dk4 = p.dk / 4u;
    let dv4 = p.dv / 4u;
    let l2 = (p.flags & F_L2) != 0u;
    if (lid < C) {
        let a = wb_aux[rbase + min(lid, len - 1u) * p.h];
        gsm[lid] = a.x;
        qsm[lid] = select(1.0, a.y, l2);
        ksm[lid] = select(1.0, a.z, l2);
        bsm[lid] = select(0.0, wb_beta[rbase + lid * p.h], lid < len);
    }
    workgroupBarrier();
    let tbase = (bh * p.nt + n) * 64u;

    var rdb = vec4<f32>(0.0);
    var rdg = vec4<f32>(0.0);
    var rkk = vec4<f32>(0.0);
    var rqq = vec4<f32>(0.0);
    for (var kb = 0u; kb < dk4; kb += 16u) {
        var a1: array<vec4<f32>, 4>;
        var a2: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            a1[r] = vec4<f32>(0.0);
            a2[r] = vec4<f32>(0.0);
        }
        // tiles over 8 chunk rows j: D^T [jj][i] = D[i][j] (0), D [jj][i] = D[j][i] (128),
        // T [jj][i] = T[j][i] (256), Khat [jj][k] (384), dw [jj][k] (512)
        for (var j0 = 0u; j0 < len; j0 += 8u) {
            for (var e = lid; e < 640u; e += 256u) {
                let which = e / 128u;
                let f = e % 128u;
                if (which == 0u) {
                    let i = f / 2u;
                    let q4 = f % 2u;
                    let xv = wb_dd[(tbase + i) * 16u + j0 / 4u + q4];
                    for (var e2 = 0u; e2 < 4u; e2++) {
                        tl[(q4 * 4u + e2) * 16u + i / 4u][i % 4u] = xv[e2];
                    }
                } else {
                    let jj = f / 16u;
                    let x4 = f % 16u;
                    let j = j0 + jj;
                    var xv = vec4<f32>(0.0);
                    if (which == 1u) {
                        xv = wb_dd[(tbase + j) * 16u + x4];
                    } else if (which == 2u) {
                        xv = wb_tinv[(tbase + j) * 16u + x4];
                    } else if (j < len && kb + x4 < dk4) {
                        let idx = (rbase + j * p.h) * dk4 + kb + x4;
                        if (which == 3u) {
                            xv = wb_k[idx] * ksm[j];
                        } else {
                            xv = wb_dw[idx];
                        }
                    }
                    tl[e] = xv;
                }
            }
            workgroupBarrier();
            for (var jj = 0u; jj < 8u; jj++) {
                let ds = tl[jj * 16u + ti] + tl[128u + jj * 16u + ti];
                let tn = tl[256u + jj * 16u + ti];
                let kv = tl[384u + jj * 16u + tj];
                let wv = tl[512u + jj * 16u + tj];
                for (var r = 0u; r < 4u; r++) {
                    a1[r] += ds[r] * kv;
                    a2[r] += tn[r] * wv;
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            if (i < len && kb + tj < dk4) {
                let idx = (rbase + i * p.h) * dk4 + kb + tj;
                let kv = wb_k[idx] * ksm[i];
                let eg = exp(gsm[i]);
                let dkt = wb_dk[idx] + a1[r] + (bsm[i] * eg) * a2[r];
                wb_dk[idx] = dkt;
                let kd = eg * dot(kv, a2[r]);
                rdb[r] += kd;
                rdg[r] += bsm[i] * kd;
                rkk[r] += dot(kv, dkt);
                rqq[r] += dot(wb_q[idx] * qsm[i], wb_dq[idx]);
            }
        }
    }
    for (var c0 = 0u; c0 < dv4; c0 += 16u) {
        var a3: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            a3[r] = vec4<f32>(0.0);
        }
        // T [aa][i] = T[a][i] (0), du [aa][v] (256), 16 rows a step
        for (var a0 = 0u; a0 < len; a0 += 16u) {
            let aa = lid / 16u;
            let x4 = lid % 16u;
            tl[lid] = wb_tinv[(tbase + a0 + aa) * 16u + x4];
            var xv = vec4<f32>(0.0);
            if (a0 + aa < len && c0 + x4 < dv4) {
                xv = wb_du[(rbase + (a0 + aa) * p.h) * dv4 + c0 + x4];
            }
            tl[256u + lid] = xv;
            workgroupBarrier();
            if (a0 + 15u >= 4u * ti) {
                for (var a2i = 0u; a2i < 16u; a2i++) {
                    let tn = tl[a2i * 16u + ti];
                    let uv = tl[256u + a2i * 16u + tj];
                    for (var r = 0u; r < 4u; r++) {
                        a3[r] += tn[r] * uv;
                    }
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            if (i < len && c0 + tj < dv4) {
                let idx = (rbase + i * p.h) * dv4 + c0 + tj;
                wb_dv[idx] = a3[r] * bsm[i];
                rdb[r] += dot(wb_v[idx], a3[r]);
            }
        }
    }

    // per-row sums over the 16 column threads
    tl[tj * 16u + ti] = rdb;
    tl[256u + tj * 16u + ti] = rdg;
    workgroupBarrier();
    var sb = 0.0;
    var sg = 0.0;
    if (lid < C) {
        for (var x = 0u; x < 16u; x++) {
            sb += tl[x * 16u + lid / 4u][lid % 4u];
            sg += tl[256u + x * 16u + lid / 4u][lid % 4u];
        }
    }
    workgroupBarrier();
    tl[tj * 16u + ti] = rkk;
    tl[256u + tj * 16u + ti] = rqq;
    workgroupBarrier();
    var sk = 0.0;
    var sq = 0.0;
    if (lid < C) {
        for (var x = 0u; x < 16u; x++) {
            sk += tl[x * 16u + lid / 4u][lid % 4u];
            sq += tl[256u + x * 16u + lid / 4u][lid % 4u];
        }
    }
    workgroupBarrier();
    // dgamma of the chunk rows -> reverse cumsum; the row dots for the L2-norm backward
    if (lid < C) {
        var dgam = 0.0;
        if (lid < len) {
            let ri = rbase + lid * p.h;
            dgam = wb_aux[ri].w + sg;
            wb_dbeta[ri] = wb_dbeta[ri] + sb;
        }
        ym[lid] = dgam;
        ym[64u + lid] = sk;
        ym[128u + lid] = sq;
    }
    workgroupBarrier();
    if (lid < len) {
        var acc = 0.0;
        for (var i = lid; i < len; i++) {
            acc += ym[i];
        }
        wb_dg[rbase + lid * p.h] = acc;
    }
    if (l2) {
        for (var kb = 0u; kb < dk4; kb += 16u) {
            for (var r = 0u; r < 4u; r++) {
                let i = 4u * ti + r;
                if (i < len && kb + tj < dk4) {
                    let idx = (rbase + i * p.h) * dk4 + kb + tj;
                    let kh = wb_k[idx] * ksm[i];
                    wb_dk[idx] = ksm[i] * (wb_dk[idx] - kh * ym[64u + i]);
                    let qh = wb_q[idx] * qsm[i];
                    wb_dq[idx] = qsm[i] * (wb_dq[idx] - qh * ym[128u + i]);
                }
            }
        }
    }
}
