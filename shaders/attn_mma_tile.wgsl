// Causal attention of attn_mma_common.wgsl without matrix units (adapters that list no
// cooperative-matrix shape, e.g. lavapipe in CI): the same tiles, passes and f16 staging;
// each invocation forms its CPL scores of a block of SBW keys from its query row (held as
// f32 values of the f16-rounded q) and, in the second pass, adds p v into its part of that
// row's output (D / PARTS head dims), in f32 like the matrix units.
enable f16;

// #include attn_mma_common

const DL: u32 = D / (4u * PARTS); // vec4s of the output row per invocation

fn row4(r: u32, c4: u32) -> vec4<f32> {
    let off = r * DP + 4u * c4;
    return vec4<f32>(f32(kvs[off]), f32(kvs[off + 1u]), f32(kvs[off + 2u]), f32(kvs[off + 3u]));
}

// The scores of this invocation's CPL keys of the block at key jb of the tile into sc.
fn scores(qr: ptr<function, array<vec4<f32>, D / 4u>>, l: Lane, jb: u32) {
    for (var c = 0u; c < CPL; c++) {
        let kr = jb + l.col + c;
        var acc = vec4<f32>(0.0);
        for (var d4 = 0u; d4 < D / 4u; d4++) { acc = fma((*qr)[d4], row4(kr, d4), acc); }
        sc[l.own + l.row * SBW + l.col + c] = acc.x + acc.y + acc.z + acc.w;
    }
}

@compute @workgroup_size(WG)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sg = li / SG;
    let lane = li % SG;
    let w = place(wid);
    let l = lane_of(w, sg, lane);
    stage_q(w, li);
    workgroupBarrier();
    var qr: array<vec4<f32>, D / 4u>;
    for (var d4 = 0u; d4 < D / 4u; d4++) { qr[d4] = row4(sg * 16u + l.row, d4); }
    var ms = vec2<f32>(NEG, 0.0);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        workgroupBarrier();
        stage_kv(w, j0, false, li);
        workgroupBarrier();
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            scores(&qr, l, jb);
            workgroupBarrier();
            ms = fold_stats(l, j0 + jb, ms);
            workgroupBarrier();
        }
    }
    let lse = combine_lse(l, sg, ms);
    let c0 = l.part * DL; // this invocation's first vec4 of the output row
    var acc: array<vec4<f32>, DL>;
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        workgroupBarrier();
        stage_kv(w, j0, true, li);
        workgroupBarrier();
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            scores(&qr, l, jb);
            workgroupBarrier();
            probs(l, j0 + jb, lse);
            workgroupBarrier();
            for (var kk = 0u; kk < SBW; kk++) {
                let pr = f32(ps[l.own + l.row * SBW + kk]);
                for (var x = 0u; x < DL; x++) { acc[x] = fma(vec4<f32>(pr), row4(BC + jb + kk, c0 + x), acc[x]); }
            }
        }
    }
    for (var x = 0u; x < DL; x++) {
        for (var u = 0u; u < 4u; u++) { store_o(w, l.i, 4u * (c0 + x) + u, acc[x][u]); }
    }
}
