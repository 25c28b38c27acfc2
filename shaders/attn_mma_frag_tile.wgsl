// The fallback's products of the staged tiles (kvs, rows of DP halves) and the first pass,
// shared by the forward (attn_mma_tile.wgsl) and the backward (attn_bwd_mma_tile.wgsl):
// each invocation holds its row's operand as f32 values of the staged f16 and forms its
// CPL dot products of a block in f32, as the matrix units do.

// Head dims 4 c4 .. of kvs row r.
fn row4(r: u32, c4: u32) -> vec4<f32> {
    let off = r * DP + 4u * c4;
    return vec4<f32>(f32(kvs[off]), f32(kvs[off + 1u]), f32(kvs[off + 2u]), f32(kvs[off + 3u]));
}

// a . (kvs row r).
fn dot_row(a: ptr<function, array<vec4<f32>, D / 4u>>, r: u32) -> f32 {
    var acc = vec4<f32>(0.0);
    for (var d4 = 0u; d4 < D / 4u; d4++) { acc = fma((*a)[d4], row4(r, d4), acc); }
    return acc.x + acc.y + acc.z + acc.w;
}

// This invocation's row of kvs (row l.row of its subgroup's 16 from r).
fn own_row(r: u32, l: Lane) -> array<vec4<f32>, D / 4u> {
    var a: array<vec4<f32>, D / 4u>;
    for (var d4 = 0u; d4 < D / 4u; d4++) { a[d4] = row4(r + l.row, d4); }
    return a;
}

// This invocation's CPL dots of `a` with kvs rows r + l.col .. into its block of sc.
fn block_dots(a: ptr<function, array<vec4<f32>, D / 4u>>, l: Lane, r: u32) {
    for (var c = 0u; c < CPL; c++) { sc[l.own + l.row * SBW + l.col + c] = dot_row(a, r + l.col + c); }
}

// The first pass: each query row's log-sum-exp over the key tiles (qr: this row's q).
fn lse_pass(w: Place, l: Lane, sg: u32, li: u32, qr: ptr<function, array<vec4<f32>, D / 4u>>) -> f32 {
    var ms = vec2<f32>(NEG, 0.0);
    var ahead = kv_ahead(w, 0u, false, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, false, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            block_dots(qr, l, jb);
            workgroupBarrier();
            ms = fold_stats(l, j0 + jb, ms);
            workgroupBarrier();
        }
    }
    return combine_lse(l, sg, ms);
}
