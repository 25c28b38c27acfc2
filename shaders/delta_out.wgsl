// Gated delta rule, chunk-parallel attention-like parts; one workgroup (256 threads, 4x4
// thread tiles over 64 x 64 blocks) per (chunk, b*H + h). M_ij = exp(gamma_i - gamma_j)
// for j <= i inside a chunk, else 0; s = query scale; hats are the (optionally)
// L2-normalised q, k.
//
// delta_fwd_out    o = s [diag(exp(gamma)) Qhat H + (Qhat Khat^T o M) v_new]
//                  with H = h[n] the state entering the chunk [dk, dv].
// delta_bwd_local  P = s (Qhat Khat^T o M), dS = s (dO v_new^T) o M:
//                  dv_new_local = P^T dO, ds[n] = dS, and the intra-chunk part of dgamma:
//                  aux.w = rowsum(dS o QK^T) - colsum(dS o QK^T) (starts the accumulator).

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

// P packed lower-triangular with diagonal: (i, j <= i) at i (i + 1) / 2 + j
var<workgroup> pm: array<f32, 2080>;
var<workgroup> tl: array<vec4<f32>, 256>;
var<workgroup> gsm: array<f32, 64>;
var<workgroup> qsm: array<f32, 64>;
var<workgroup> ksm: array<f32, 64>;

fn tri(i: u32) -> u32 {
    return i * (i + 1u) / 2u;
}

// ---------------------------------------------------------------- delta_fwd_out
@group(0) @binding(1) var<storage, read> fo_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fo_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fo_vn: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> fo_h: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> fo_aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> fo_o: array<vec4<f32>>;

@compute @workgroup_size(256)
fn delta_fwd_out(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
        let a = fo_aux[rbase + min(lid, len - 1u) * p.h];
        gsm[lid] = a.x;
        qsm[lid] = select(1.0, a.y, l2);
        ksm[lid] = select(1.0, a.z, l2);
    }
    workgroupBarrier();

    // Qhat Khat^T on the lower blocks: Q^T tile [kk][i] at 0, K^T tile [kk][j] at 128
    var acc: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.dk; k0 += 8u) {
        let which = lid / 128u;
        let c = (lid % 128u) / 2u;
        let q4 = lid % 2u;
        var xv = vec4<f32>(0.0);
        if (c < len && k0 / 4u + q4 < dk4) {
            let idx = (rbase + c * p.h) * dk4 + k0 / 4u + q4;
            if (which == 0u) {
                xv = fo_q[idx] * qsm[c];
            } else {
                xv = fo_k[idx] * ksm[c];
            }
        }
        for (var e = 0u; e < 4u; e++) {
            tl[which * 128u + (q4 * 4u + e) * 16u + c / 4u][c % 4u] = xv[e];
        }
        workgroupBarrier();
        if (tj <= ti) {
            for (var kk = 0u; kk < 8u; kk++) {
                let a = tl[kk * 16u + ti];
                let bb = tl[128u + kk * 16u + tj];
                acc[0] += a.x * bb;
                acc[1] += a.y * bb;
                acc[2] += a.z * bb;
                acc[3] += a.w * bb;
            }
        }
        workgroupBarrier();
    }
    if (tj <= ti) {
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            for (var cc = 0u; cc < 4u; cc++) {
                let j = 4u * tj + cc;
                if (j <= i) {
                    pm[tri(i) + j] = p.scale * exp(gsm[i] - gsm[j]) * acc[r][cc];
                }
            }
        }
    }
    workgroupBarrier();

    let hbase = (bh * p.nt + n) * p.dk;
    for (var c0 = 0u; c0 < dv4; c0 += 16u) {
        var o: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            o[r] = vec4<f32>(0.0);
        }
        // inter-chunk: Qhat H, Q^T tile [kk][i] at 0, H tile [kk][v] at 128
        for (var k0 = 0u; k0 < p.dk; k0 += 8u) {
            if (lid < 128u) {
                let c = lid / 2u;
                let q4 = lid % 2u;
                var xv = vec4<f32>(0.0);
                if (c < len && k0 / 4u + q4 < dk4) {
                    xv = fo_q[(rbase + c * p.h) * dk4 + k0 / 4u + q4] * qsm[c];
                }
                for (var e = 0u; e < 4u; e++) {
                    tl[(q4 * 4u + e) * 16u + c / 4u][c % 4u] = xv[e];
                }
            } else {
                let e = lid - 128u;
                let kk = e / 16u;
                let x4 = e % 16u;
                var hv = vec4<f32>(0.0);
                if (k0 + kk < p.dk && c0 + x4 < dv4) {
                    hv = fo_h[(hbase + k0 + kk) * dv4 + c0 + x4];
                }
                tl[lid] = hv;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < 8u; kk++) {
                let a = tl[kk * 16u + ti];
                let hv = tl[128u + kk * 16u + tj];
                o[0] += a.x * hv;
                o[1] += a.y * hv;
                o[2] += a.z * hv;
                o[3] += a.w * hv;
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            o[r] *= p.scale * exp(gsm[4u * ti + r]);
        }
        // intra-chunk: P v_new, v_new tile [jj][v]
        for (var j0 = 0u; j0 < len; j0 += 16u) {
            let jj = lid / 16u;
            let x4 = lid % 16u;
            var xv = vec4<f32>(0.0);
            if (j0 + jj < len && c0 + x4 < dv4) {
                xv = fo_vn[(rbase + (j0 + jj) * p.h) * dv4 + c0 + x4];
            }
            tl[lid] = xv;
            workgroupBarrier();
            if (j0 <= 4u * ti + 3u) {
                for (var j2 = 0u; j2 < 16u; j2++) {
                    let j = j0 + j2;
                    let x = tl[j2 * 16u + tj];
                    for (var r = 0u; r < 4u; r++) {
                        let i = 4u * ti + r;
                        o[r] += select(0.0, pm[tri(i) + j], j <= i) * x;
                    }
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ti + r;
            if (i < len && c0 + tj < dv4) {
                fo_o[(rbase + i * p.h) * dv4 + c0 + tj] = o[r];
            }
        }
    }
}

// ---------------------------------------------------------------- delta_bwd_local
@group(0) @binding(1) var<storage, read> bl_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bl_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bl_vn: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bl_do: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> bl_aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> bl_ds: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> bl_dvn: array<vec4<f32>>;

@compute @workgroup_size(256)
fn delta_bwd_local(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
        let a = bl_aux[rbase + min(lid, len - 1u) * p.h];
        gsm[lid] = a.x;
        qsm[lid] = select(1.0, a.y, l2);
        ksm[lid] = select(1.0, a.z, l2);
    }
    workgroupBarrier();

    // qk = Qhat Khat^T and dp = dO v_new^T on the lower blocks
    var qk: array<vec4<f32>, 4>;
    var dp: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        qk[r] = vec4<f32>(0.0);
        dp[r] = vec4<f32>(0.0);
    }
    for (var ps = 0u; ps < 2u; ps++) {
        let n4 = select(dk4, dv4, ps == 1u);
        for (var x0 = 0u; x0 < n4; x0 += 2u) {
            let which = lid / 128u;
            let c = (lid % 128u) / 2u;
            let q4 = lid % 2u;
            var xv = vec4<f32>(0.0);
            if (c < len && x0 + q4 < n4) {
                if (ps == 0u) {
                    let idx = (rbase + c * p.h) * dk4 + x0 + q4;
                    if (which == 0u) {
                        xv = bl_q[idx] * qsm[c];
                    } else {
                        xv = bl_k[idx] * ksm[c];
                    }
                } else {
                    let idx = (rbase + c * p.h) * dv4 + x0 + q4;
                    if (which == 0u) {
                        xv = bl_do[idx];
                    } else {
                        xv = bl_vn[idx];
                    }
                }
            }
            for (var e = 0u; e < 4u; e++) {
                tl[which * 128u + (q4 * 4u + e) * 16u + c / 4u][c % 4u] = xv[e];
            }
            workgroupBarrier();
            if (tj <= ti) {
                for (var kk = 0u; kk < 8u; kk++) {
                    let a = tl[kk * 16u + ti];
                    let bb = tl[128u + kk * 16u + tj];
                    if (ps == 0u) {
                        qk[0] += a.x * bb;
                        qk[1] += a.y * bb;
                        qk[2] += a.z * bb;
                        qk[3] += a.w * bb;
                    } else {
                        dp[0] += a.x * bb;
                        dp[1] += a.y * bb;
                        dp[2] += a.z * bb;
                        dp[3] += a.w * bb;
                    }
                }
            }
            workgroupBarrier();
        }
    }

    // P, dS (written whole, zeros above the diagonal), and the dgamma partial sums
    var rowp = vec4<f32>(0.0);
    var colp = vec4<f32>(0.0);
    let dsbase = (bh * p.nt + n) * 64u;
    for (var r = 0u; r < 4u; r++) {
        let i = 4u * ti + r;
        var dsv = vec4<f32>(0.0);
        for (var cc = 0u; cc < 4u; cc++) {
            let j = 4u * tj + cc;
            if (j <= i && i < len) {
                let m = p.scale * exp(gsm[i] - gsm[j]);
                pm[tri(i) + j] = m * qk[r][cc];
                dsv[cc] = m * dp[r][cc];
                let gv = dsv[cc] * qk[r][cc];
                rowp[r] += gv;
                colp[cc] += gv;
            } else if (j <= i) {
                pm[tri(i) + j] = 0.0;
            }
        }
        bl_ds[(dsbase + i) * 16u + tj] = dsv;
    }
    tl[tj * 16u + ti] = rowp;
    workgroupBarrier();
    var dgam = 0.0;
    if (lid < C) {
        for (var x = 0u; x < 16u; x++) {
            dgam += tl[x * 16u + lid / 4u][lid % 4u];
        }
    }
    workgroupBarrier();
    tl[ti * 16u + tj] = colp;
    workgroupBarrier();
    if (lid < len) {
        for (var x = 0u; x < 16u; x++) {
            dgam -= tl[x * 16u + lid / 4u][lid % 4u];
        }
        bl_aux[rbase + lid * p.h].w = dgam;
    }
    workgroupBarrier();

    // dv_new_local[j] = sum_{i >= j} P_ij dO_i; thread rows j = 4ti.., dO tile [ii][v]
    for (var c0 = 0u; c0 < dv4; c0 += 16u) {
        var o: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            o[r] = vec4<f32>(0.0);
        }
        for (var i0 = 0u; i0 < len; i0 += 16u) {
            let ii = lid / 16u;
            let x4 = lid % 16u;
            var xv = vec4<f32>(0.0);
            if (i0 + ii < len && c0 + x4 < dv4) {
                xv = bl_do[(rbase + (i0 + ii) * p.h) * dv4 + c0 + x4];
            }
            tl[lid] = xv;
            workgroupBarrier();
            if (i0 + 15u >= 4u * ti) {
                for (var i2 = 0u; i2 < 16u; i2++) {
                    let i = i0 + i2;
                    let x = tl[i2 * 16u + tj];
                    for (var r = 0u; r < 4u; r++) {
                        let j = 4u * ti + r;
                        o[r] += select(0.0, pm[tri(i) + j], j <= i) * x;
                    }
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let j = 4u * ti + r;
            if (j < len && c0 + tj < dv4) {
                bl_dvn[(rbase + j * p.h) * dv4 + c0 + tj] = o[r];
            }
        }
    }
}
