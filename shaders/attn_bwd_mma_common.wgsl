// Backward of the f16-tile attention (attn_mma_common.wgsl, which every backward shader
// includes first) for training (pos0 = 0), shared by the cooperative-matrix kernels
// (attn_bwd_mma_coop.wgsl) and their fallback (attn_bwd_mma_tile.wgsl). With
// p_ij = exp(scale q_i.k_j - L_i), dp_ij = dO_i.v_j, delta_i = dO_i.O_i and
// ds_ij = p_ij (dp_ij - delta_i): dq_i = scale sum_j ds_ij k_j, dk_j = scale sum_i ds_ij q_i,
// dv_j = sum_i p_ij dO_i (the sums over i run over every query head of k_j's group).
//
// attn_bwd_q (a workgroup per 64 query rows of a head, as the forward): L_i by the
// forward's first pass, delta_i from O and dO in f32, both into `stats` [T, H, 2] for the
// key pass; then per block of keys the scores and dO.v into sc / sc2, ds into ps (f16),
// and dq += ds k. attn_bwd_kv (a workgroup per 64 keys of a kv head, subgroup s the keys
// 16 s ..): per query tile of every head of the group (Q into kvs rows 0 .., dO into rows
// BC ..), the transposed scores and v.dO into sc / sc2, p and ds of each (key, query) into
// pp / ps (f16), dv += p dO and dk += ds q.
//
// dO is scaled by a power of two from max |dO| (amx, mma_absmax.wgsl) before its f16
// rounding, its largest magnitude to [2^6, 2^7): gradients of a KL loss lie far below f16's
// normal range, and the headroom keeps dO.v and ds inside it; the outputs are scaled back.
// Bindings: o is read (delta) by the query pass and is dv for the key pass; g1 is dq / dk.

@group(0) @binding(5) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;
@group(0) @binding(7) var<storage, read_write> g1: array<f32>;
@group(0) @binding(8) var<storage, read> amx: array<u32>;

var<workgroup> sc2: array<f32, 64u * SBW>;
var<workgroup> pp: array<f16, 64u * SBW>;
// the key pass: (L, delta) of the staged queries
var<workgroup> qst: array<vec2<f32>, BC>;

fn do_scale() -> f32 {
    let mx = bitcast<f32>(amx[0]);
    if (mx > 0.0 && mx < 3.0e38) { return exp2(clamp(6.0 - floor(log2(mx)), -100.0, 100.0)); }
    return 1.0;
}

// Rows row0 .. row0 + n of dO (head columns from col0), the first `valid` real, scaled by
// sa, into kvs from row dst (as `stage`).
fn stage_do(row0: u32, valid: u32, n: u32, col0: u32, dst: u32, li: u32, sa: f32) {
    let aligned = (p.q_stride % 4u) == 0u && (col0 % 4u) == 0u;
    for (var e = li; e < n * (D / 4u); e += WG) {
        let r = e / (D / 4u);
        let c = (e % (D / 4u)) * 4u;
        var x = vec4<f32>(0.0);
        if (r < valid && c < p.dim) {
            let base = (row0 + r) * p.q_stride + col0 + c;
            if (aligned && c + 3u < p.dim) {
                x = dout[base / 4u];
            } else {
                for (var u = 0u; u < 4u; u++) {
                    if (c + u < p.dim) { x[u] = dout[(base + u) / 4u][(base + u) % 4u]; }
                }
            }
        }
        put4(dst + r, c, x * sa);
    }
}

// delta of this invocation's query row (all invocations call it): dO . O in f32, each of
// the row's PARTS invocations summing D / PARTS head dims.
fn row_delta(w: Place, l: Lane, sg: u32) -> f32 {
    var acc = 0.0;
    if (l.i < p.t) {
        let base = (w.r0 + l.i) * p.q_stride + w.h * p.dim;
        for (var d = l.part; d < p.dim; d += PARTS) {
            acc += dout[(base + d) / 4u][(base + d) % 4u] * o[base + d];
        }
    }
    red[(sg * 16u + l.row) * PARTS + l.part] = vec2<f32>(acc, 0.0);
    workgroupBarrier();
    var s = 0.0;
    for (var u = 0u; u < PARTS; u++) { s += red[(sg * 16u + l.row) * PARTS + u].x; }
    workgroupBarrier();
    return s;
}

// The query pass: (L, delta) of the row into stats.
fn put_stats(w: Place, l: Lane, lse: f32, delta: f32) {
    if (l.part == 0u && l.i < p.t) {
        let si = ((w.r0 + l.i) * p.heads + w.h) * 2u;
        stats[si] = lse;
        stats[si + 1u] = delta;
    }
}

// The query pass: ds of this lane's CPL keys of the block at key jb (scores in sc, scaled
// dO.v in sc2) into ps; sdelta = sa delta.
fn ds_q(l: Lane, jb: u32, lse: f32, sdelta: f32) {
    for (var c = 0u; c < CPL; c++) {
        let e = l.own + l.row * SBW + l.col + c;
        var ds = 0.0;
        if (jb + l.col + c <= l.pos) { ds = exp(p.scale * sc[e] - lse) * (sc2[e] - sdelta); }
        ps[e] = f16(ds);
    }
}

// The key pass: the (L, delta) of query rows i0 .. i0 + BC of head h into qst.
fn stage_qst(r0: u32, i0: u32, h: u32, li: u32) {
    if (li < BC) {
        var x = vec2<f32>(0.0);
        if (i0 + li < p.t) {
            let si = ((r0 + i0 + li) * p.heads + h) * 2u;
            x = vec2<f32>(stats[si], stats[si + 1u]);
        }
        qst[li] = x;
    }
}

// The key pass: p and ds of key `key` (this lane's row) and its CPL queries of the block
// at tile column jb (query i0 + jb ..; transposed scores in sc, v.dO in sc2) into pp, ps.
fn ds_kv(l: Lane, key: u32, i0: u32, jb: u32, sa: f32) {
    for (var c = 0u; c < CPL; c++) {
        let e = l.own + l.row * SBW + l.col + c;
        let qi = i0 + jb + l.col + c;
        var pr = 0.0;
        var ds = 0.0;
        if (qi < p.t && key <= qi) {
            let st = qst[jb + l.col + c];
            pr = exp(p.scale * sc[e] - st.x);
            ds = pr * (sc2[e] - sa * st.y);
        }
        pp[e] = f16(pr);
        ps[e] = f16(ds);
    }
}

// dq (query pass) or dk (key pass, `kv`) element into g1, dv into o.
fn store_g(kv: bool, row: u32, col0: u32, d: u32, x: f32) {
    if (d >= p.dim) { return; }
    if (kv) { g1[row * p.kv_stride + col0 + d] = x; } else { g1[row * p.q_stride + col0 + d] = x; }
}

fn store_dv(row: u32, col0: u32, d: u32, x: f32) {
    if (d < p.dim) { o[row * p.kv_stride + col0 + d] = x; }
}
