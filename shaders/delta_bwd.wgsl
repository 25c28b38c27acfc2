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
//                 E = dA o exp(gamma_i - gamma_j) (Khat Khat^T) (the latter kept by delta_intra
//                 as kkm): dbeta = rowsum(E),
//                 dgamma += rowsum(beta o E) - colsum(beta o E).
// delta_bwd_wy_b  dkhat += (D + D^T) Khat + diag(beta exp(gamma)) T^T dw;
//                 dv = diag(beta) T^T du; dbeta += ...; dgamma += ...;
//                 dg = reverse cumsum of dgamma in the chunk; L2-norm backward of dq, dk.

// #include delta_common (Params, C, L2_EPS, F_L2, the uniform p, T4 tiles, tri)

var<workgroup> tl: array<vec4<f32>, 640>;
var<workgroup> gsm: array<f32, 64>;
var<workgroup> qsm: array<f32, 64>;
var<workgroup> ksm: array<f32, 64>;
var<workgroup> bsm: array<f32, 64>;
var<workgroup> ym: array<f32, 2080>;
// delta_bwd_wy_b's row sums (dgamma, and the L2-norm backward's row dots): a small array
// of its own, so that wy_b's workgroup memory stays near 12 KiB (more resident workgroups)
var<workgroup> rsm: array<f32, 192>;
// delta_bwd_wy_a's tiles: 256 vec4 (its row sums go to ym once ym is free), so that its
// workgroup memory stays near 13 KiB
var<workgroup> wt: array<vec4<f32>, 256>;

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

// Element e of a [8][64]-tile group: tile e / 128 holds, transposed, rows c = (e % 128) / 2
// at vec4 column e % 2 of its source ([xx][c / 4] with component c % 4).
fn st_t2(e: u32, xv: vec4<f32>) {
    let at = t2_at(e);
    tl[at.x][at.y] = xv.x;
    tl[at.x + 16u][at.y] = xv.y;
    tl[at.x + 32u][at.y] = xv.z;
    tl[at.x + 48u][at.y] = xv.w;
}

// (vec4 slot, component) of element e's first value in that layout; the other three
// go 16, 32, 48 slots further
fn t2_at(e: u32) -> vec2<u32> {
    let c = (e % 128u) / 2u;
    return vec2<u32>((e / 128u) * 128u + (e % 2u) * 64u + c / 4u, c % 4u);
}

// the dv-reduction tiles' element e (0..639) at vec4 column v0 + e % 2: dO, v_new, dv_new
// rows, then H, dH rows kb * 4 + c (zero outside)
fn dq_ldv(e: u32, v0: u32, kb: u32, len: u32, rbase: u32, hbase: u32, dv4: u32) -> vec4<f32> {
    let which = e / 128u;
    let c = (e % 128u) / 2u;
    let x4 = v0 + e % 2u;
    let xc = min(x4, dv4 - 1u);
    var xv: vec4<f32>;
    var ok = x4 < dv4;
    if (which < 3u) {
        let idx = (rbase + min(c, len - 1u) * p.h) * dv4 + xc;
        ok = ok && c < len;
        if (which == 0u) {
            xv = dq_do[idx];
        } else if (which == 1u) {
            xv = dq_vn[idx];
        } else {
            xv = dq_dvn[idx];
        }
    } else {
        let kc = kb * 4u + c;
        let idx = (hbase + min(kc, p.dk - 1u)) * dv4 + xc;
        ok = ok && kc < p.dk;
        if (which == 3u) {
            xv = dq_h[idx];
        } else {
            xv = dq_dh[idx];
        }
    }
    return select(vec4<f32>(0.0), xv, ok);
}

// the chunk-reduction tiles' element e (0..511) for rows j0..j0+7: dS row i (for the
// transposed tile), dS rows j, khat rows j, qhat rows j at vec4 column kb + e % 16
fn dq_ldj(e: u32, j0: u32, kb: u32, len: u32, rbase: u32, dsbase: u32, dk4: u32) -> vec4<f32> {
    let which = e / 128u;
    let f = e % 128u;
    let jc = min(j0, 56u);
    if (which == 0u) {
        return select(vec4<f32>(0.0), dq_ds[(dsbase + f / 2u) * 16u + jc / 4u + f % 2u], j0 < 64u);
    }
    let jj = f / 16u;
    let x4 = f % 16u;
    if (which == 1u) {
        return select(vec4<f32>(0.0), dq_ds[(dsbase + jc + jj) * 16u + x4], j0 < 64u);
    }
    let j = j0 + jj;
    let idx = (rbase + min(j, len - 1u) * p.h) * dk4 + min(kb + x4, dk4 - 1u);
    var xv: vec4<f32>;
    if (which == 2u) {
        xv = dq_k[idx] * ksm[min(j, 63u)];
    } else {
        xv = dq_q[idx] * qsm[min(j, 63u)];
    }
    return select(vec4<f32>(0.0), xv, j < len && kb + x4 < dk4);
}

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
        var aq = t4z();
        var ak = t4z();
        var aw = t4z();
        // reductions over dv, 8 columns a step: transposed tiles [vv][x] of
        // dO (0), v_new (128), dv_new (256) over rows i, and H (384), dH (512) over k;
        // the next step's values are loaded before this step's products
        for (var v0 = 0u; v0 < dv4; v0 += 2u) {
            st_t2(lid, dq_ldv(lid, v0, kb, len, rbase, hbase, dv4));
            st_t2(lid + 256u, dq_ldv(lid + 256u, v0, kb, len, rbase, hbase, dv4));
            if (lid < 128u) {
                st_t2(lid + 512u, dq_ldv(lid + 512u, v0, kb, len, rbase, hbase, dv4));
            }
            workgroupBarrier();
            if (lid < 128u) {
                hdh += dot(tl[384u + lid], tl[512u + lid]);
            }
            for (var vv = 0u; vv < 8u; vv++) {
                let hv = tl[384u + vv * 16u + tj];
                aq = t4fma(aq, tl[vv * 16u + ti], hv);
                ak = t4fma(ak, tl[128u + vv * 16u + ti], tl[512u + vv * 16u + tj]);
                aw = t4fma(aw, tl[256u + vv * 16u + ti], hv);
            }
            workgroupBarrier();
        }
        let i0 = 4u * ti;
        let g4 = vec4<f32>(gsm[i0], gsm[i0 + 1u], gsm[i0 + 2u], gsm[i0 + 3u]);
        aq = t4rows(aq, p.scale * exp(g4));
        ak = t4rows(ak, exp(gl - g4));
        for (var r = 0u; r < 4u; r++) {
            let i = i0 + r;
            if (i < len && kb + tj < dk4) {
                let idx = (rbase + i * p.h) * dk4 + kb + tj;
                let qv = dq_q[idx] * qsm[i];
                let kv = dq_k[idx] * ksm[i];
                let kd = dot(kv, t4row(ak, r));
                rowg[r] += dot(qv, t4row(aq, r)) - kd;
                tot += kd;
            }
        }
        // reductions over the chunk, 8 rows a step: dS^T tile [jj][i] = dS[i][j] (0),
        // dS tile [jj][i] = dS[j][i] (128), Khat [jj][k] (256), Qhat [jj][k] (384)
        for (var j0 = 0u; j0 < len; j0 += 8u) {
            let s0 = dq_ldj(lid, j0, kb, len, rbase, dsbase, dk4);
            if (lid < 128u) {
                st_t2(lid, s0);
            } else {
                tl[lid] = s0;
            }
            tl[lid + 256u] = dq_ldj(lid + 256u, j0, kb, len, rbase, dsbase, dk4);
            workgroupBarrier();
            // dS is lower triangular: rows i take j <= i into dq, j >= i into dk
            if (j0 <= 4u * ti + 3u) {
                for (var jj = 0u; jj < 8u; jj++) {
                    aq = t4fma(aq, tl[jj * 16u + ti], tl[256u + jj * 16u + tj]);
                }
            }
            if (j0 + 7u >= 4u * ti) {
                for (var jj = 0u; jj < 8u; jj++) {
                    ak = t4fma(ak, tl[128u + jj * 16u + ti], tl[384u + jj * 16u + tj]);
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            if (i < len && kb + tj < dk4) {
                let idx = (rbase + i * p.h) * dk4 + kb + tj;
                dq_dq[idx] = t4row(aq, r);
                dq_dk[idx] = t4row(ak, r);
                dq_dw[idx] = -t4row(aw, r);
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
@group(0) @binding(10) var<storage, read> wa_kkm: array<vec4<f32>>;

// row c = (lid % 128) / 2 at vec4 column x0 + lid % 2 of khat / dw (ps = 0) or v / du
// (ps = 1), the first or second by lid / 128 (zero outside)
fn wa_ld(lid: u32, ps: u32, x0: u32, len: u32, rbase: u32, n4: u32) -> vec4<f32> {
    let which = lid / 128u;
    let c = (lid % 128u) / 2u;
    let x4 = x0 + lid % 2u;
    let idx = (rbase + min(c, len - 1u) * p.h) * n4 + min(x4, n4 - 1u);
    var xv: vec4<f32>;
    if (ps == 0u) {
        if (which == 0u) {
            xv = wa_k[idx] * ksm[c];
        } else {
            xv = wa_dw[idx];
        }
    } else {
        if (which == 0u) {
            xv = wa_v[idx];
        } else {
            xv = wa_du[idx];
        }
    }
    return select(vec4<f32>(0.0), xv, c < len && x4 < n4);
}

@compute @workgroup_size(256)
fn delta_bwd_wy_a(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x;
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let t0 = n * C;
    let len = min(C, p.t - t0);
    let rbase = (b * p.t + t0) * p.h + hh;
    // every product here is on the lower blocks: permuted thread tiles
    let at = low_tile(lid);
    let ti = at.x;
    let tj = at.y;
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

    // dwk = dw Khat^T, duv = du V^T on the lower blocks (Khat Khat^T comes from the
    // forward's intra-chunk kernel, in kkm)
    var dwk = t4z();
    var duv = t4z();
    for (var ps = 0u; ps < 2u; ps++) {
        let n4 = select(dk4, dv4, ps == 1u);
        // [xx][i] tiles: Khat or V (0), dw or du (128); next step loaded ahead
        var nx = wa_ld(lid, ps, 0u, len, rbase, n4);
        for (var x0 = 0u; x0 < n4; x0 += 2u) {
            let at = t2_at(lid);
            wt[at.x][at.y] = nx.x;
            wt[at.x + 16u][at.y] = nx.y;
            wt[at.x + 32u][at.y] = nx.z;
            wt[at.x + 48u][at.y] = nx.w;
            workgroupBarrier();
            nx = wa_ld(lid, ps, x0 + 2u, len, rbase, n4);
            if (tj <= ti) {
                if (ps == 0u) {
                    for (var xx = 0u; xx < 8u; xx++) {
                        dwk = t4fma(dwk, wt[128u + xx * 16u + ti], wt[xx * 16u + tj]);
                    }
                } else {
                    for (var xx = 0u; xx < 8u; xx++) {
                        duv = t4fma(duv, wt[128u + xx * 16u + ti], wt[xx * 16u + tj]);
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
            let duvr = t4row(duv, r);
            let dwkr = t4row(dwk, r);
            for (var cc = 0u; cc < 4u; cc++) {
                let a = 4u * tj + cc;
                if (a < i) {
                    ym[tri(i) + a] = bsm[a] * (duvr[cc] + exp(gsm[a]) * dwkr[cc]);
                } else if (a == i) {
                    ym[tri(i) + a] = 0.0;
                }
            }
        }
    }
    workgroupBarrier();

    // Y = dT T^T: Y_ib = sum_a dT_ia T_ba; tile [aa][b] = T[b][a0 + aa]
    // (the next step's T values load before this step's products; after the last step,
    // the first of the dA loop below)
    var y = t4z();
    let bq = lid / 4u;
    let q4 = lid % 4u;
    var tv = wa_tinv[(tbase + bq) * 16u + q4];
    for (var a0 = 0u; a0 < len; a0 += 16u) {
        for (var e = 0u; e < 4u; e++) {
            wt[(q4 * 4u + e) * 16u + bq / 4u][bq % 4u] = tv[e];
        }
        workgroupBarrier();
        if (a0 + 16u < len) {
            tv = wa_tinv[(tbase + bq) * 16u + (a0 + 16u) / 4u + q4];
        } else {
            tv = wa_tinv[(tbase + lid / 16u) * 16u + lid % 16u];
        }
        if (tj <= ti) {
            let i0 = 4u * ti;
            let b0 = tri(i0);
            let b1 = tri(i0 + 1u);
            let b2 = tri(i0 + 2u);
            let b3 = tri(i0 + 3u);
            for (var aa = 0u; aa < 16u; aa++) {
                let a = a0 + aa;
                let dv4v = vec4<f32>(
                    select(0.0, ym[b0 + a], a < i0),
                    select(0.0, ym[b1 + a], a < i0 + 1u),
                    select(0.0, ym[b2 + a], a < i0 + 2u),
                    select(0.0, ym[b3 + a], a < i0 + 3u));
                y = t4fma(y, dv4v, wt[aa * 16u + tj]);
            }
        }
        workgroupBarrier();
    }
    if (tj <= ti) {
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            let yr = t4row(y, r);
            for (var cc = 0u; cc < 4u; cc++) {
                let bb = 4u * tj + cc;
                if (bb < i) {
                    ym[tri(i) + bb] = yr[cc];
                }
            }
        }
    }
    workgroupBarrier();

    // dA = -T^T Y: dA_ij = -sum_a T_ai Y_aj; tile [aa][i] = T[a0 + aa][i]
    var da = t4z();
    for (var a0 = 0u; a0 < len; a0 += 16u) {
        wt[lid] = tv;
        workgroupBarrier();
        tv = wa_tinv[(tbase + min(a0 + 16u, 48u) + lid / 16u) * 16u + lid % 16u];
        if (tj <= ti && a0 + 15u >= 4u * ti) {
            for (var aa = 0u; aa < 16u; aa++) {
                let a = a0 + aa;
                let ta = wt[aa * 16u + ti];
                var yv = vec4<f32>(0.0);
                for (var cc = 0u; cc < 4u; cc++) {
                    let j = 4u * tj + cc;
                    yv[cc] = select(0.0, ym[tri(a) + j], j < a);
                }
                da = t4fma(da, ta, yv);
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
        let dar = t4row(da, r);
        var kkr = vec4<f32>(0.0);
        if (tj <= ti) {
            kkr = wa_kkm[(tbase + i) * 16u + tj];
        }
        for (var cc = 0u; cc < 4u; cc++) {
            let j = 4u * tj + cc;
            if (j < i && i < len) {
                let m = exp(gsm[i] - gsm[j]);
                let dav = -dar[cc];
                let e = dav * kkr[cc];
                dv[cc] = dav * bsm[i] * m;
                rowe[r] += e;
                rowg[r] += bsm[i] * e;
                colg[cc] += bsm[i] * e;
            }
        }
        wa_dd[(tbase + i) * 16u + tj] = dv;
    }
    wt[tj * 16u + ti] = rowe;
    let ro = (tj * 16u + ti) * 4u;
    ym[ro] = rowg.x;
    ym[ro + 1u] = rowg.y;
    ym[ro + 2u] = rowg.z;
    ym[ro + 3u] = rowg.w;
    workgroupBarrier();
    var sb = 0.0;
    var sg = 0.0;
    if (lid < C) {
        for (var x = 0u; x < 16u; x++) {
            sb += wt[x * 16u + lid / 4u][lid % 4u];
            sg += ym[(x * 16u + lid / 4u) * 4u + lid % 4u];
        }
    }
    workgroupBarrier();
    wt[ti * 16u + tj] = colg;
    workgroupBarrier();
    if (lid < len) {
        for (var x = 0u; x < 16u; x++) {
            sg -= wt[x * 16u + lid / 4u][lid % 4u];
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

// element e (0..639) of wy_b's row-step tiles for rows j0..j0+7 and vec4 columns kb..:
// D rows i at vec4 column j0 / 4 + e % 2 (for the transposed tile), then rows j of D, T,
// khat, dw (zero outside)
fn wb_ld(e: u32, j0: u32, kb: u32, len: u32, rbase: u32, tbase: u32, dk4: u32) -> vec4<f32> {
    let which = e / 128u;
    let f = e % 128u;
    let jc = min(j0, 56u);
    if (which == 0u) {
        return wb_dd[(tbase + f / 2u) * 16u + jc / 4u + f % 2u];
    }
    let jj = f / 16u;
    let x4 = f % 16u;
    if (which == 1u) {
        return wb_dd[(tbase + jc + jj) * 16u + x4];
    }
    if (which == 2u) {
        return wb_tinv[(tbase + jc + jj) * 16u + x4];
    }
    let j = j0 + jj;
    let idx = (rbase + min(j, len - 1u) * p.h) * dk4 + min(kb + x4, dk4 - 1u);
    var xv: vec4<f32>;
    if (which == 3u) {
        xv = wb_k[idx] * ksm[min(j, 63u)];
    } else {
        xv = wb_dw[idx];
    }
    return select(vec4<f32>(0.0), xv, j < len && kb + x4 < dk4);
}

// stores wb_ld's element e: the first tile transposed ([jj][i] = D[i][j]), the rest as is
fn wb_st(e: u32, xv: vec4<f32>) {
    if (e < 128u) {
        let i = e / 2u;
        let q4 = e % 2u;
        tl[(q4 * 4u) * 16u + i / 4u][i % 4u] = xv.x;
        tl[(q4 * 4u + 1u) * 16u + i / 4u][i % 4u] = xv.y;
        tl[(q4 * 4u + 2u) * 16u + i / 4u][i % 4u] = xv.z;
        tl[(q4 * 4u + 3u) * 16u + i / 4u][i % 4u] = xv.w;
    } else {
        tl[e] = xv;
    }
}

// du row a0 + lid / 16 at vec4 column c0 + lid % 16 (zero outside)
fn wb_du_ld(lid: u32, a0: u32, c0: u32, len: u32, rbase: u32, dv4: u32) -> vec4<f32> {
    let a = a0 + lid / 16u;
    let x4 = c0 + lid % 16u;
    let v = wb_du[(rbase + min(a, len - 1u) * p.h) * dv4 + min(x4, dv4 - 1u)];
    return select(vec4<f32>(0.0), v, a < len && x4 < dv4);
}

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
    var x0 = wb_ld(lid, 0u, 0u, len, rbase, tbase, dk4);
    var x1 = wb_ld(lid + 256u, 0u, 0u, len, rbase, tbase, dk4);
    var x2 = wb_ld(min(lid + 512u, 639u), 0u, 0u, len, rbase, tbase, dk4);
    for (var kb = 0u; kb < dk4; kb += 16u) {
        var a1 = t4z();
        var a2 = t4z();
        // tiles over 8 chunk rows j: D^T [jj][i] = D[i][j] (0), D [jj][i] = D[j][i] (128),
        // T [jj][i] = T[j][i] (256), Khat [jj][k] (384), dw [jj][k] (512); the next step's
        // values (the next kb block's first after the last row step) load before this
        // step's products
        for (var j0 = 0u; j0 < len; j0 += 8u) {
            wb_st(lid, x0);
            wb_st(lid + 256u, x1);
            if (lid < 128u) {
                wb_st(lid + 512u, x2);
            }
            workgroupBarrier();
            var nj = j0 + 8u;
            var nk = kb;
            if (nj >= len) {
                nj = 0u;
                nk = kb + 16u;
            }
            x0 = wb_ld(lid, nj, nk, len, rbase, tbase, dk4);
            x1 = wb_ld(lid + 256u, nj, nk, len, rbase, tbase, dk4);
            x2 = wb_ld(min(lid + 512u, 639u), nj, nk, len, rbase, tbase, dk4);
            for (var jj = 0u; jj < 8u; jj++) {
                a1 = t4fma(a1, tl[jj * 16u + ti] + tl[128u + jj * 16u + ti], tl[384u + jj * 16u + tj]);
            }
            // T^T: rows i take j >= i only
            if (j0 + 7u >= 4u * ti) {
                for (var jj = 0u; jj < 8u; jj++) {
                    a2 = t4fma(a2, tl[256u + jj * 16u + ti], tl[512u + jj * 16u + tj]);
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
                let a2r = t4row(a2, r);
                let dkt = wb_dk[idx] + t4row(a1, r) + (bsm[i] * eg) * a2r;
                wb_dk[idx] = dkt;
                let kd = eg * dot(kv, a2r);
                rdb[r] += kd;
                rdg[r] += bsm[i] * kd;
                rkk[r] += dot(kv, dkt);
                rqq[r] += dot(wb_q[idx] * qsm[i], wb_dq[idx]);
            }
        }
    }
    // T [aa][i] = T[a][i] (0), du [aa][v] (256), 16 rows a step, the next step loaded ahead
    var tx = wb_tinv[tbase * 16u + lid];
    var ux = wb_du_ld(lid, 0u, 0u, len, rbase, dv4);
    for (var c0 = 0u; c0 < dv4; c0 += 16u) {
        var a3 = t4z();
        for (var a0 = 0u; a0 < len; a0 += 16u) {
            tl[lid] = tx;
            tl[256u + lid] = ux;
            workgroupBarrier();
            var na = a0 + 16u;
            var nc = c0;
            if (na >= len) {
                na = 0u;
                nc = c0 + 16u;
            }
            tx = wb_tinv[(tbase + na + lid / 16u) * 16u + lid % 16u];
            ux = wb_du_ld(lid, na, nc, len, rbase, dv4);
            if (a0 + 15u >= 4u * ti) {
                for (var a2i = 0u; a2i < 16u; a2i++) {
                    a3 = t4fma(a3, tl[a2i * 16u + ti], tl[256u + a2i * 16u + tj]);
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            if (i < len && c0 + tj < dv4) {
                let idx = (rbase + i * p.h) * dv4 + c0 + tj;
                let a3r = t4row(a3, r);
                wb_dv[idx] = a3r * bsm[i];
                rdb[r] += dot(wb_v[idx], a3r);
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
        rsm[lid] = dgam;
        rsm[64u + lid] = sk;
        rsm[128u + lid] = sq;
    }
    workgroupBarrier();
    if (lid < len) {
        var acc = 0.0;
        for (var i = lid; i < len; i++) {
            acc += rsm[i];
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
                    wb_dk[idx] = ksm[i] * (wb_dk[idx] - kh * rsm[64u + i]);
                    let qh = wb_q[idx] * qsm[i];
                    wb_dq[idx] = qsm[i] * (wb_dq[idx] - qh * rsm[128u + i]);
                }
            }
        }
    }
}
