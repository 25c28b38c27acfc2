// Gated delta rule, chunk-parallel preparation (chunk C = 64 tokens):
//
// delta_prep   one invocation per row (b, t, h): aux[row] = (gamma, rq, rk, 0), where
//              gamma = inclusive cumsum of g inside the token's chunk and rq, rk are the
//              L2-norm factors 1 / sqrt(sum x^2 + 1e-6) of q and k (1 without l2norm).
//              The last component is the dgamma accumulator of the backward ps.
// delta_intra  one workgroup per (chunk, b*H + h):
//              A_ij = beta_i exp(gamma_i - gamma_j) khat_i . khat_j (i > j),
//              T = (I + A)^-1 (in-place forward substitution in workgroup memory),
//              w = T diag(beta exp(gamma)) Khat, u = T diag(beta) V; optionally T itself.
//
// Layouts: k [B, T, H, dk], v [B, T, H, dv] (vec4 rows; dk, dv multiples of 4),
// beta [B, T, H], aux [B, T, H] x vec4, w/u like k/v, tinv [B*H, NT, 64, 64].
// Only exponentials of gamma_i - gamma_j (i >= j) and gamma_j (<= 0) are taken.

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
const L2_EPS: f32 = 1e-6;
const F_L2: u32 = 1u;
const F_STORE_T: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;

// ---------------------------------------------------------------- delta_prep
@group(0) @binding(1) var<storage, read> pr_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pr_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> pr_g: array<f32>;
@group(0) @binding(4) var<storage, read_write> pr_aux: array<vec4<f32>>;

@compute @workgroup_size(64)
fn delta_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (r >= p.b * p.t * p.h) {
        return;
    }
    let hh = r % p.h;
    let bt = r / p.h;
    let t = bt % p.t;
    let b = bt / p.t;
    let t0 = (t / C) * C;
    var gam = 0.0;
    for (var s = t0; s <= t; s++) {
        gam += pr_g[(b * p.t + s) * p.h + hh];
    }
    var rq = 1.0;
    var rk = 1.0;
    if ((p.flags & F_L2) != 0u) {
        let d4 = p.dk / 4u;
        var sq = 0.0;
        var sk = 0.0;
        for (var i = 0u; i < d4; i++) {
            let a = pr_q[r * d4 + i];
            let c = pr_k[r * d4 + i];
            sq += dot(a, a);
            sk += dot(c, c);
        }
        rq = 1.0 / sqrt(sq + L2_EPS);
        rk = 1.0 / sqrt(sk + L2_EPS);
    }
    pr_aux[r] = vec4<f32>(gam, rq, rk, 0.0);
}

// ---------------------------------------------------------------- delta_intra
@group(0) @binding(1) var<storage, read> in_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in_v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> in_beta: array<f32>;
@group(0) @binding(4) var<storage, read> in_aux: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> in_w: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> in_u: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> in_tinv: array<f32>;

var<workgroup> gs: array<f32, 64>;
var<workgroup> bs: array<f32, 64>;
var<workgroup> ks: array<f32, 64>;
// T (first A) packed lower-triangular with diagonal: (i, j <= i) at i (i + 1) / 2 + j.
// Reading (i, j > i) stays inside the array (at most 2079) and is masked by the reader.
var<workgroup> tm: array<f32, 2080>;
var<workgroup> arow: array<f32, 64>;
var<workgroup> tile: array<vec4<f32>, 256>;

fn tri(i: u32) -> u32 {
    return i * (i + 1u) / 2u;
}

@compute @workgroup_size(256)
fn delta_intra(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
        var gm = in_aux[rbase + (len - 1u) * p.h].x;
        var bt = 0.0;
        var rk = 0.0;
        if (lid < len) {
            let a = in_aux[rbase + lid * p.h];
            gm = a.x;
            rk = select(1.0, a.z, l2);
            bt = in_beta[rbase + lid * p.h];
        }
        gs[lid] = gm;
        bs[lid] = bt;
        ks[lid] = rk;
    }
    workgroupBarrier();

    // kk = Khat Khat^T on the lower blocks; thread tile rows 4ti.., columns 4tj..
    var acc: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.dk; k0 += 16u) {
        // tile[kk * 16 + c / 4][c % 4] = khat[c, k0 + kk]
        let c = lid / 4u;
        let q4 = lid % 4u;
        var kv = vec4<f32>(0.0);
        if (c < len && k0 / 4u + q4 < dk4) {
            kv = in_k[(rbase + c * p.h) * dk4 + k0 / 4u + q4] * ks[c];
        }
        for (var e = 0u; e < 4u; e++) {
            tile[(q4 * 4u + e) * 16u + c / 4u][c % 4u] = kv[e];
        }
        workgroupBarrier();
        if (tj <= ti) {
            for (var kk = 0u; kk < 16u; kk++) {
                let a = tile[kk * 16u + ti];
                let bb = tile[kk * 16u + tj];
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
                if (j < i) {
                    tm[tri(i) + j] = bs[i] * exp(gs[i] - gs[j]) * acc[r][cc];
                } else if (j == i) {
                    tm[tri(i) + i] = 1.0;
                }
            }
        }
    }
    workgroupBarrier();

    // T = (I + A)^-1 row by row: T_ic = -A_ic - sum_{c < j < i} A_ij T_jc (rows past the
    // chunk's end keep A = 0, i.e. T_i = e_i)
    for (var i = 1u; i < len; i++) {
        let ri = tri(i);
        if (lid < i) {
            arow[lid] = tm[ri + lid];
        }
        workgroupBarrier();
        if (lid < i) {
            var acc1 = -arow[lid];
            for (var j = lid + 1u; j < i; j++) {
                acc1 -= arow[j] * tm[tri(j) + lid];
            }
            tm[ri + lid] = acc1;
        }
        workgroupBarrier();
    }

    if ((p.flags & F_STORE_T) != 0u) {
        let base = (bh * p.nt + n) * 4096u;
        for (var e = lid; e < 4096u; e += 256u) {
            let i = e / 64u;
            let j = e % 64u;
            var tv = 0.0;
            if (j <= i) {
                tv = tm[tri(i) + j];
            }
            in_tinv[base + e] = tv;
        }
    }

    // w = T (beta exp(gamma) Khat), u = T (beta V), 64-column blocks
    for (var ps = 0u; ps < 2u; ps++) {
        let n4 = select(dk4, dv4, ps == 1u);
        for (var c0 = 0u; c0 < n4; c0 += 16u) {
            var o: array<vec4<f32>, 4>;
            for (var r = 0u; r < 4u; r++) {
                o[r] = vec4<f32>(0.0);
            }
            for (var j0 = 0u; j0 < len; j0 += 16u) {
                let jj = lid / 16u;
                let c4 = lid % 16u;
                let j = j0 + jj;
                var xv = vec4<f32>(0.0);
                if (j < len && c0 + c4 < n4) {
                    if (ps == 0u) {
                        xv = in_k[(rbase + j * p.h) * dk4 + c0 + c4] * (ks[j] * bs[j] * exp(gs[j]));
                    } else {
                        xv = in_v[(rbase + j * p.h) * dv4 + c0 + c4] * bs[j];
                    }
                }
                tile[lid] = xv;
                workgroupBarrier();
                if (j0 <= 4u * ti + 3u) {
                    for (var j2 = 0u; j2 < 16u; j2++) {
                        let jx = j0 + j2;
                        let x = tile[j2 * 16u + tj];
                        for (var r = 0u; r < 4u; r++) {
                            let i = 4u * ti + r;
                            o[r] += select(0.0, tm[tri(i) + jx], jx <= i) * x;
                        }
                    }
                }
                workgroupBarrier();
            }
            for (var r = 0u; r < 4u; r++) {
                let i = 4u * ti + r;
                if (i < len && c0 + tj < n4) {
                    if (ps == 0u) {
                        in_w[(rbase + i * p.h) * dk4 + c0 + tj] = o[r];
                    } else {
                        in_u[(rbase + i * p.h) * dv4 + c0 + tj] = o[r];
                    }
                }
            }
        }
    }
}
