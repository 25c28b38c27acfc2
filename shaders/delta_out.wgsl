// Gated delta rule, chunk-parallel attention-like parts; one workgroup (256 threads, 4x4
// thread tiles over 64 x 64 blocks) per (chunk, b*H + h). M_ij = exp(gamma_i - gamma_j)
// for j <= i inside a chunk, else 0; s = query scale; hats are the (optionally)
// L2-normalised q, k.
//
// delta_fwd_out    o = s [diag(exp(gamma)) Qhat H + (Qhat Khat^T o M) v_new]
//                  with H = h[n] the state entering the chunk [dk, dv]; with F_STORE_P it
//                  keeps P = s (Qhat Khat^T o M) for the backward.
// delta_bwd_local  P = s (Qhat Khat^T o M) (or the forward's, F_HAVE_P), dS = s (dO v_new^T) o M:
//                  dv_new_local = P^T dO, ds[n] = dS, and the intra-chunk part of dgamma:
//                  aux.w = rowsum(dS o QK^T) - colsum(dS o QK^T) (starts the accumulator).

// #include delta_common (Params, C, L2_EPS, F_L2, the uniform p, T4 tiles, tri)

// flags: the forward keeps P (lower tiles, for the backward); the backward finds it kept
const F_STORE_P: u32 = 16u;
const F_HAVE_P: u32 = 32u;

// P packed lower-triangular with diagonal: (i, j <= i) at i (i + 1) / 2 + j
var<workgroup> pm: array<f32, 2080>;
var<workgroup> tl: array<vec4<f32>, 256>;
var<workgroup> gsm: array<f32, 64>;
var<workgroup> qsm: array<f32, 64>;
var<workgroup> ksm: array<f32, 64>;

// ---------------------------------------------------------------- delta_fwd_out
@group(0) @binding(1) var<storage, read> fo_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fo_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fo_vn: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> fo_h: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> fo_aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> fo_o: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> fo_p: array<vec4<f32>>;

// one invocation's share of a transposed [8][64] tile pair: rows c = (lid % 128) / 2 of
// the source, vec4 column k0 / 4 + lid % 2; `which` = lid / 128 picks the first or second
// tile (each 128 vec4s: [kk][c / 4] with component c % 4)
fn st_t8(lid: u32, xv: vec4<f32>) {
    let which = lid / 128u;
    let c = (lid % 128u) / 2u;
    let tb = which * 128u + (lid % 2u) * 64u + c / 4u;
    tl[tb][c % 4u] = xv.x;
    tl[tb + 16u][c % 4u] = xv.y;
    tl[tb + 32u][c % 4u] = xv.z;
    tl[tb + 48u][c % 4u] = xv.w;
}

// qhat (which = 0) or khat (which = 1) row c, vec4 column k0 / 4 + lid % 2 (zero outside)
fn fo_qk(lid: u32, k0: u32, len: u32, rbase: u32, dk4: u32) -> vec4<f32> {
    let which = lid / 128u;
    let c = (lid % 128u) / 2u;
    let x4 = k0 / 4u + lid % 2u;
    let idx = (rbase + min(c, len - 1u) * p.h) * dk4 + min(x4, dk4 - 1u);
    var xv: vec4<f32>;
    if (which == 0u) {
        xv = fo_q[idx] * qsm[c];
    } else {
        xv = fo_k[idx] * ksm[c];
    }
    return select(vec4<f32>(0.0), xv, c < len && x4 < dk4);
}

// H row k0 + (lid - 128) / 16, vec4 column c0 + lid % 16 (invocations 128..255; zero outside)
fn fo_hrow(lid: u32, k0: u32, c0: u32, hbase: u32, dv4: u32) -> vec4<f32> {
    let kk = k0 + (lid - 128u) / 16u;
    let x4 = c0 + lid % 16u;
    let v = fo_h[(hbase + min(kk, p.dk - 1u)) * dv4 + min(x4, dv4 - 1u)];
    return select(vec4<f32>(0.0), v, kk < p.dk && x4 < dv4);
}

// v_new row j0 + lid / 16, vec4 column c0 + lid % 16 (zero outside)
fn fo_vrow(lid: u32, j0: u32, c0: u32, len: u32, rbase: u32, dv4: u32) -> vec4<f32> {
    let j = j0 + lid / 16u;
    let x4 = c0 + lid % 16u;
    let v = fo_vn[(rbase + min(j, len - 1u) * p.h) * dv4 + min(x4, dv4 - 1u)];
    return select(vec4<f32>(0.0), v, j < len && x4 < dv4);
}

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

    // Qhat Khat^T on the lower blocks: Q^T tile [kk][i] at 0, K^T tile [kk][j] at 128;
    // the next step's values are loaded into registers before this step's products; thread
    // tiles (ai, aj) = low_tile(lid) for this product
    let at = low_tile(lid);
    let ai = at.x;
    let aj = at.y;
    var acc = t4z();
    var nx = fo_qk(lid, 0u, len, rbase, dk4);
    for (var k0 = 0u; k0 < p.dk; k0 += 8u) {
        st_t8(lid, nx);
        workgroupBarrier();
        nx = fo_qk(lid, k0 + 8u, len, rbase, dk4);
        if (aj <= ai) {
            for (var kk = 0u; kk < 8u; kk++) {
                acc = t4fma(acc, tl[kk * 16u + ai], tl[128u + kk * 16u + aj]);
            }
        }
        workgroupBarrier();
    }
    let store_p = (p.flags & F_STORE_P) != 0u;
    let pbase = (bh * p.nt + n) * 64u;
    if (aj <= ai) {
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ai + r;
            let row = t4row(acc, r);
            var pv = vec4<f32>(0.0);
            for (var cc = 0u; cc < 4u; cc++) {
                let j = 4u * aj + cc;
                if (j <= i) {
                    pv[cc] = p.scale * exp(gsm[i] - gsm[j]) * row[cc];
                    pm[tri(i) + j] = pv[cc];
                }
            }
            if (store_p) {
                fo_p[(pbase + i) * 16u + aj] = pv;
            }
        }
    }
    workgroupBarrier();

    let hbase = (bh * p.nt + n) * p.dk;
    let i0 = 4u * ti;
    for (var c0 = 0u; c0 < dv4; c0 += 16u) {
        var o = t4z();
        // inter-chunk: Qhat H, Q^T tile [kk][i] at 0, H tile [kk][v] at 128
        var hx: vec4<f32>;
        if (lid < 128u) {
            hx = fo_qk(lid, 0u, len, rbase, dk4);
        } else {
            hx = fo_hrow(lid, 0u, c0, hbase, dv4);
        }
        for (var k0 = 0u; k0 < p.dk; k0 += 8u) {
            if (lid < 128u) {
                st_t8(lid, hx);
            } else {
                tl[lid] = hx;
            }
            workgroupBarrier();
            if (lid < 128u) {
                hx = fo_qk(lid, k0 + 8u, len, rbase, dk4);
            } else {
                hx = fo_hrow(lid, k0 + 8u, c0, hbase, dv4);
            }
            for (var kk = 0u; kk < 8u; kk++) {
                o = t4fma(o, tl[kk * 16u + ti], tl[128u + kk * 16u + tj]);
            }
            workgroupBarrier();
        }
        o = t4rows(o, p.scale * exp(vec4<f32>(gsm[i0], gsm[i0 + 1u], gsm[i0 + 2u], gsm[i0 + 3u])));
        // intra-chunk: P v_new, v_new tile [jj][v]
        var vx = fo_vrow(lid, 0u, c0, len, rbase, dv4);
        for (var j0 = 0u; j0 < len; j0 += 16u) {
            tl[lid] = vx;
            workgroupBarrier();
            vx = fo_vrow(lid, j0 + 16u, c0, len, rbase, dv4);
            if (j0 <= i0 + 3u) {
                let b0 = tri(i0);
                let b1 = tri(i0 + 1u);
                let b2 = tri(i0 + 2u);
                let b3 = tri(i0 + 3u);
                for (var j2 = 0u; j2 < 16u; j2++) {
                    let j = j0 + j2;
                    let pv = vec4<f32>(
                        select(0.0, pm[b0 + j], j <= i0),
                        select(0.0, pm[b1 + j], j <= i0 + 1u),
                        select(0.0, pm[b2 + j], j <= i0 + 2u),
                        select(0.0, pm[b3 + j], j <= i0 + 3u));
                    o = t4fma(o, pv, tl[j2 * 16u + tj]);
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let i = i0 + r;
            if (i < len && c0 + tj < dv4) {
                fo_o[(rbase + i * p.h) * dv4 + c0 + tj] = t4row(o, r);
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
@group(0) @binding(8) var<storage, read> bl_p: array<vec4<f32>>;

// row c = (lid % 128) / 2 at vec4 column x0 + lid % 2 of qhat / khat (ps = 0) or
// dO / v_new (ps = 1), the first or second by lid / 128 (zero outside)
fn bl_ld(lid: u32, ps: u32, x0: u32, len: u32, rbase: u32, n4: u32) -> vec4<f32> {
    let which = lid / 128u;
    let c = (lid % 128u) / 2u;
    let x4 = x0 + lid % 2u;
    let idx = (rbase + min(c, len - 1u) * p.h) * n4 + min(x4, n4 - 1u);
    var xv: vec4<f32>;
    if (ps == 0u) {
        if (which == 0u) {
            xv = bl_q[idx] * qsm[c];
        } else {
            xv = bl_k[idx] * ksm[c];
        }
    } else {
        if (which == 0u) {
            xv = bl_do[idx];
        } else {
            xv = bl_vn[idx];
        }
    }
    return select(vec4<f32>(0.0), xv, c < len && x4 < n4);
}

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

    // qk = Qhat Khat^T and dp = dO v_new^T on the lower blocks, the next step's values
    // loaded before this step's products; thread tiles (ai, aj) = low_tile(lid) up to the
    // dgamma sums
    let at = low_tile(lid);
    let ai = at.x;
    let aj = at.y;
    // with F_HAVE_P the forward's P (lower tiles) replaces the Qhat Khat^T product
    let have_p = (p.flags & F_HAVE_P) != 0u;
    var qk = t4z();
    var dp = t4z();
    for (var ps = select(0u, 1u, have_p); ps < 2u; ps++) {
        let n4 = select(dk4, dv4, ps == 1u);
        var nx = bl_ld(lid, ps, 0u, len, rbase, n4);
        for (var x0 = 0u; x0 < n4; x0 += 2u) {
            st_t8(lid, nx);
            workgroupBarrier();
            nx = bl_ld(lid, ps, x0 + 2u, len, rbase, n4);
            if (aj <= ai) {
                var t = t4z();
                for (var kk = 0u; kk < 8u; kk++) {
                    t = t4fma(t, tl[kk * 16u + ai], tl[128u + kk * 16u + aj]);
                }
                if (ps == 0u) {
                    qk = T4(qk.r0 + t.r0, qk.r1 + t.r1, qk.r2 + t.r2, qk.r3 + t.r3);
                } else {
                    dp = T4(dp.r0 + t.r0, dp.r1 + t.r1, dp.r2 + t.r2, dp.r3 + t.r3);
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
        let i = 4u * ai + r;
        var dsv = vec4<f32>(0.0);
        let qkr = t4row(qk, r);
        let dpr = t4row(dp, r);
        var pr = vec4<f32>(0.0);
        if (have_p && aj <= ai) {
            pr = bl_p[(dsbase + i) * 16u + aj];
        }
        for (var cc = 0u; cc < 4u; cc++) {
            let j = 4u * aj + cc;
            if (j <= i && i < len) {
                let m = p.scale * exp(gsm[i] - gsm[j]);
                let pv = select(m * qkr[cc], pr[cc], have_p);
                pm[tri(i) + j] = pv;
                dsv[cc] = m * dpr[cc];
                // dS o QK^T = dP o P
                let gv = dpr[cc] * pv;
                rowp[r] += gv;
                colp[cc] += gv;
            } else if (j <= i) {
                pm[tri(i) + j] = 0.0;
            }
        }
        bl_ds[(dsbase + i) * 16u + aj] = dsv;
    }
    tl[aj * 16u + ai] = rowp;
    workgroupBarrier();
    var dgam = 0.0;
    if (lid < C) {
        for (var x = 0u; x < 16u; x++) {
            dgam += tl[x * 16u + lid / 4u][lid % 4u];
        }
    }
    workgroupBarrier();
    tl[ai * 16u + aj] = colp;
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
        var o = t4z();
        let j0 = 4u * ti;
        for (var i0 = 0u; i0 < len; i0 += 16u) {
            let ii = lid / 16u;
            let x4 = lid % 16u;
            var xv = vec4<f32>(0.0);
            if (i0 + ii < len && c0 + x4 < dv4) {
                xv = bl_do[(rbase + (i0 + ii) * p.h) * dv4 + c0 + x4];
            }
            tl[lid] = xv;
            workgroupBarrier();
            if (i0 + 15u >= j0) {
                for (var i2 = 0u; i2 < 16u; i2++) {
                    let i = i0 + i2;
                    let bi = tri(i) + j0;
                    let pv = vec4<f32>(
                        select(0.0, pm[bi], j0 <= i),
                        select(0.0, pm[bi + 1u], j0 + 1u <= i),
                        select(0.0, pm[bi + 2u], j0 + 2u <= i),
                        select(0.0, pm[bi + 3u], j0 + 3u <= i));
                    o = t4fma(o, pv, tl[i2 * 16u + tj]);
                }
            }
            workgroupBarrier();
        }
        for (var r = 0u; r < 4u; r++) {
            let j = 4u * ti + r;
            if (j < len && c0 + tj < dv4) {
                bl_dvn[(rbase + j * p.h) * dv4 + c0 + tj] = t4row(o, r);
            }
        }
    }
}
