// Causal attention of attn_mma_common.wgsl without matrix units (adapters that list no
// cooperative-matrix shape, e.g. lavapipe in CI): the same tiles, passes and f16 staging,
// the products of attn_mma_frag_tile.wgsl; in the second pass each invocation adds p v
// into its part of its row's output (D / PARTS head dims), in f32 like the matrix units.
enable f16;

// #include attn_mma_common
// #include attn_mma_frag_tile

const DL: u32 = D / (4u * PARTS); // vec4s of the output row per invocation

@compute @workgroup_size(WG)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sg = li / SG;
    let w = place(wid);
    let l = lane_of(w, sg, li % SG);
    stage_q(w, li);
    workgroupBarrier();
    var qr = own_row(sg * 16u, l);
    let lse = lse_pass(w, l, sg, li, &qr);
    let c0 = l.part * DL; // this invocation's first vec4 of the output row
    var acc: array<vec4<f32>, DL>;
    var ahead = kv_ahead(w, 0u, true, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, true, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            block_dots(&qr, l, jb);
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
