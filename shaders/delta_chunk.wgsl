// Gated delta rule, chunk-parallel preparation (chunk C = 64 tokens):
//
// delta_prep   four invocations per row (b, t, h): aux[row] = (gamma, rq, rk, 0), where
//              gamma = inclusive cumsum of g inside the token's chunk and rq, rk are the
//              L2-norm factors 1 / sqrt(sum x^2 + 1e-6) of q and k (1 without l2norm).
//              The last component is the dgamma accumulator of the backward ps.
// delta_intra  one workgroup per (chunk, b*H + h):
//              A_ij = beta_i exp(gamma_i - gamma_j) khat_i . khat_j (i > j),
//              T = (I + A)^-1 (in-place forward substitution in workgroup memory),
//              w = T diag(beta exp(gamma)) Khat, u = T diag(beta) V; optionally T itself
//              and (Khat Khat^T) o exp(gamma_i - gamma_j) (for the backward).
//
// Layouts: k [B, T, H, dk], v [B, T, H, dv] (vec4 rows; dk, dv multiples of 4),
// beta [B, T, H], aux [B, T, H] x vec4, w/u like k/v, tinv [B*H, NT, 64, 64].
// Only exponentials of gamma_i - gamma_j (i >= j) and gamma_j (<= 0) are taken.

// #include delta_common (Params, C, L2_EPS, F_L2, the uniform p, T4 tiles, tri)

const F_STORE_T: u32 = 8u;

// ---------------------------------------------------------------- delta_prep
@group(0) @binding(1) var<storage, read> pr_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pr_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> pr_g: array<f32>;
@group(0) @binding(4) var<storage, read_write> pr_aux: array<vec4<f32>>;

// 64 rows per workgroup, 4 invocations per row (adjacent rows are adjacent in memory, so
// the q / k loads of a warp cover whole 64-byte runs); partial sums meet in `tile`.
@compute @workgroup_size(256)
fn delta_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let nrows = p.b * p.t * p.h;
    let row = (wid.x + wid.y * nwg.x) * 64u + lid / 4u;
    let part = lid % 4u;
    let r = min(row, nrows - 1u);
    let hh = r % p.h;
    let bt = r / p.h;
    let t = bt % p.t;
    let b = bt / p.t;
    let t0 = (t / C) * C;
    var gam = 0.0;
    for (var s = t0 + part; s <= t; s += 4u) {
        gam += pr_g[(b * p.t + s) * p.h + hh];
    }
    let l2 = (p.flags & F_L2) != 0u;
    var sq = 0.0;
    var sk = 0.0;
    if (l2) {
        let d4 = p.dk / 4u;
        for (var i = part; i < d4; i += 4u) {
            let a = pr_q[r * d4 + i];
            let c = pr_k[r * d4 + i];
            sq += dot(a, a);
            sk += dot(c, c);
        }
    }
    tile[lid] = vec4<f32>(gam, sq, sk, 0.0);
    workgroupBarrier();
    if (part == 0u && row < nrows) {
        let s4 = tile[lid] + tile[lid + 1u] + tile[lid + 2u] + tile[lid + 3u];
        var rq = 1.0;
        var rk = 1.0;
        if (l2) {
            rq = 1.0 / sqrt(s4.y + L2_EPS);
            rk = 1.0 / sqrt(s4.z + L2_EPS);
        }
        pr_aux[r] = vec4<f32>(s4.x, rq, rk, 0.0);
    }
}

// ---------------------------------------------------------------- delta_intra
@group(0) @binding(1) var<storage, read> in_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> in_v: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> in_beta: array<f32>;
@group(0) @binding(4) var<storage, read> in_aux: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> in_w: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> in_u: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> in_tinv: array<f32>;
@group(0) @binding(8) var<storage, read_write> in_kkm: array<vec4<f32>>;

var<workgroup> gs: array<f32, 64>;
var<workgroup> bs: array<f32, 64>;
var<workgroup> ks: array<f32, 64>;
// A, then T, packed lower-triangular with diagonal: (i, j <= i) at i (i + 1) / 2 + j.
// Reading (i, j > i) stays inside the array (at most 2079) and is masked by the reader.
var<workgroup> tm: array<f32, 2080>;
var<workgroup> tile: array<vec4<f32>, 256>;

fn tsc(f: u32) -> f32 {
    return tile[f / 4u][f % 4u];
}

// khat row lid / 4 at vec4 column k0 / 4 + lid % 4 (zero outside)
fn in_kt(lid: u32, k0: u32, len: u32, rbase: u32, dk4: u32) -> vec4<f32> {
    let c = lid / 4u;
    let x4 = k0 / 4u + lid % 4u;
    let v = in_k[(rbase + min(c, len - 1u) * p.h) * dk4 + min(x4, dk4 - 1u)] * ks[c];
    return select(vec4<f32>(0.0), v, c < len && x4 < dk4);
}

// row j0 + lid / 16 at vec4 column c0 + lid % 16 of beta exp(gamma) khat (ps = 0) or
// beta v (ps = 1) (zero outside)
fn in_x(lid: u32, ps: u32, j0: u32, c0: u32, len: u32, rbase: u32, n4: u32) -> vec4<f32> {
    let j = j0 + lid / 16u;
    let x4 = c0 + lid % 16u;
    let jc = min(j, len - 1u);
    let idx = (rbase + jc * p.h) * n4 + min(x4, n4 - 1u);
    var v: vec4<f32>;
    if (ps == 0u) {
        v = in_k[idx] * (ks[jc] * bs[jc] * exp(gs[jc]));
    } else {
        v = in_v[idx] * bs[jc];
    }
    return select(vec4<f32>(0.0), v, j < len && x4 < n4);
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

    // kk = Khat Khat^T on the lower blocks; thread tile (ai, aj) = low_tile(lid): rows 4ai..,
    // columns 4aj..; tile[kk * 16 + c / 4][c % 4] = khat[c, k0 + kk], the next step loaded ahead
    let at = low_tile(lid);
    let ai = at.x;
    let aj = at.y;
    var acc = t4z();
    var kx = in_kt(lid, 0u, len, rbase, dk4);
    for (var k0 = 0u; k0 < p.dk; k0 += 16u) {
        let c = lid / 4u;
        let tb = (lid % 4u) * 64u + c / 4u;
        tile[tb][c % 4u] = kx.x;
        tile[tb + 16u][c % 4u] = kx.y;
        tile[tb + 32u][c % 4u] = kx.z;
        tile[tb + 48u][c % 4u] = kx.w;
        workgroupBarrier();
        kx = in_kt(lid, k0 + 16u, len, rbase, dk4);
        if (aj <= ai) {
            for (var kk = 0u; kk < 16u; kk++) {
                acc = t4fma(acc, tile[kk * 16u + ai], tile[kk * 16u + aj]);
            }
        }
        workgroupBarrier();
    }
    // with F_STORE_T also kkm = (Khat Khat^T) o exp(gamma_i - gamma_j), strictly lower
    // (lower tiles only), for the backward's WY pass
    let store_t = (p.flags & F_STORE_T) != 0u;
    let kbase = (bh * p.nt + n) * 64u;
    if (aj <= ai) {
        for (var r = 0u; r < 4u; r++) {
            let i = 4u * ai + r;
            let row = t4row(acc, r);
            var kv = vec4<f32>(0.0);
            for (var cc = 0u; cc < 4u; cc++) {
                let j = 4u * aj + cc;
                if (j < i) {
                    let e = exp(gs[i] - gs[j]) * row[cc];
                    tm[tri(i) + j] = bs[i] * e;
                    kv[cc] = e;
                } else if (j == i) {
                    tm[tri(i) + i] = 1.0;
                }
            }
            if (store_t) {
                in_kkm[(kbase + i) * 16u + aj] = kv;
            }
        }
    }
    workgroupBarrier();

    // T = (I + A)^-1, blocked by 16. Diagonal blocks: a copy of their A in `tile`, then one
    // invocation per (block, column) by forward substitution down the column.
    {
        let kb = lid / 64u;
        let f = lid % 64u;
        for (var e = f; e < 256u; e += 64u) {
            let r = e / 16u;
            let c = e % 16u;
            var av = 0.0;
            if (c < r) {
                av = tm[tri(16u * kb + r) + 16u * kb + c];
            }
            tile[(kb * 256u + e) / 4u][e % 4u] = av;
        }
    }
    workgroupBarrier();
    if (lid < 64u) {
        let kb = lid / 16u;
        let c = lid % 16u;
        let o = 16u * kb;
        for (var r = c + 1u; r < 16u; r++) {
            var v = -tsc(kb * 256u + r * 16u + c);
            for (var j = c + 1u; j < r; j++) {
                v -= tsc(kb * 256u + r * 16u + j) * tm[tri(o + j) + o + c];
            }
            tm[tri(o + r) + o + c] = v;
        }
    }
    workgroupBarrier();
    // Off-diagonal blocks by doubling, with M = I + A block lower triangular and
    // M^-1 = [[T_AA, 0], [-T_BB A_BA T_AA, T_BB]]: first the 16-blocks (1,0) and (3,2),
    // then the 32-block of rows 32.. and columns ..31. Each X = A T goes through `tile`;
    // -T X then takes A's slot in tm (A of a block is read only before its slot is written).
    // element e of the two 16-blocks: block q = e / 256 (rows 32 q + 16.., columns 32 q..),
    // row r, column c; X_q in tile floats e
    for (var stage = 0u; stage < 2u; stage++) {
        for (var e = lid; e < 512u; e += 256u) {
            let ob = 32u * (e / 256u);
            let r = (e % 256u) / 16u;
            let c = e % 16u;
            let ar = tri(ob + 16u + r) + ob;
            var s = 0.0;
            if (stage == 0u) {
                // X = A(2q+1, 2q) T(2q, 2q)
                for (var m = c; m < 16u; m++) {
                    s += tm[ar + m] * tm[tri(ob + m) + ob + c];
                }
                tile[e / 4u][e % 4u] = s;
            } else {
                // T(2q+1, 2q) = -T(2q+1, 2q+1) X
                for (var m = 0u; m <= r; m++) {
                    s += tm[ar + 16u + m] * tsc(e - r * 16u + m * 16u);
                }
                tm[ar + c] = -s;
            }
        }
        workgroupBarrier();
    }
    {
        // rows r = lid / 8 of the 32-block, columns c0 .. c0 + 3
        let r = lid / 8u;
        let c0 = 4u * (lid % 8u);
        let ar = tri(32u + r);
        var x = vec4<f32>(0.0);
        for (var m = c0; m < 32u; m++) {
            let tb = tri(m) + c0;
            let tv = vec4<f32>(tm[tb], select(0.0, tm[tb + 1u], m >= c0 + 1u), select(0.0, tm[tb + 2u], m >= c0 + 2u), select(0.0, tm[tb + 3u], m >= c0 + 3u));
            x = fma(vec4<f32>(tm[ar + m]), tv, x);
        }
        tile[lid] = x;
        workgroupBarrier();
        var y = vec4<f32>(0.0);
        for (var m = 0u; m <= r; m++) {
            y = fma(vec4<f32>(tm[ar + 32u + m]), tile[m * 8u + lid % 8u], y);
        }
        tm[ar + c0] = -y.x;
        tm[ar + c0 + 1u] = -y.y;
        tm[ar + c0 + 2u] = -y.z;
        tm[ar + c0 + 3u] = -y.w;
    }
    workgroupBarrier();
    // rows past the chunk's end: A = 0 there, so T_i = e_i already

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
            var o = t4z();
            var xv = in_x(lid, ps, 0u, c0, len, rbase, n4);
            for (var j0 = 0u; j0 < len; j0 += 16u) {
                tile[lid] = xv;
                workgroupBarrier();
                xv = in_x(lid, ps, j0 + 16u, c0, len, rbase, n4);
                if (j0 <= 4u * ti + 3u) {
                    let i0 = 4u * ti;
                    let b0 = tri(i0);
                    let b1 = tri(i0 + 1u);
                    let b2 = tri(i0 + 2u);
                    let b3 = tri(i0 + 3u);
                    for (var j2 = 0u; j2 < 16u; j2++) {
                        let jx = j0 + j2;
                        let tv = vec4<f32>(
                            select(0.0, tm[b0 + jx], jx <= i0),
                            select(0.0, tm[b1 + jx], jx <= i0 + 1u),
                            select(0.0, tm[b2 + jx], jx <= i0 + 2u),
                            select(0.0, tm[b3 + jx], jx <= i0 + 3u));
                        o = t4fma(o, tv, tile[j2 * 16u + tj]);
                    }
                }
                workgroupBarrier();
            }
            for (var r = 0u; r < 4u; r++) {
                let i = 4u * ti + r;
                if (i < len && c0 + tj < n4) {
                    if (ps == 0u) {
                        in_w[(rbase + i * p.h) * dk4 + c0 + tj] = t4row(o, r);
                    } else {
                        in_u[(rbase + i * p.h) * dv4 + c0 + tj] = t4row(o, r);
                    }
                }
            }
        }
    }
}
