// Causal attention of attn_mma_common.wgsl on cooperative matrices (tensor cores): per
// SBW keys a subgroup forms its 16 x SBW block of scores (SBW / 16 accumulators) from its
// Q fragments (held for the whole kernel) and the staged K tile, and in the second pass
// adds p v into its 16 x D output (D / 16 accumulators). Fragments and accumulators are named variables in
// straight-line code (arrays of them indexed in loops went to local memory on the H200).
enable f16;
enable wgpu_cooperative_matrix;

// #include attn_mma_common

// Fragment c (head dims 16 c ..) of the subgroup's Q rows (row-major in kvs).
fn qa(sg: u32, c: u32) -> coop_mat16x16<f16, A> {
    return coopLoadT<coop_mat16x16<f16, A>>(&kvs[sg * 16u * DP + c * 16u], DP);
}

// K^T for keys 16 nb .. of the tile, head dims 16 c ..: (d, key) at key DP + d (column-major).
fn kb(nb: u32, c: u32) -> coop_mat16x16<f16, B> {
    return coopLoad<coop_mat16x16<f16, B>>(&kvs[nb * 16u * DP + c * 16u], DP);
}

// V for keys 16 nb .., head dims 16 c ..: (key, d) at (BC + key) DP + d (row-major).
fn vb(nb: u32, c: u32) -> coop_mat16x16<f16, B> {
    return coopLoadT<coop_mat16x16<f16, B>>(&kvs[(BC + nb * 16u) * DP + c * 16u], DP);
}

// Scores of the subgroup's rows and keys 16 nb .. of the tile.
fn score(nb: u32, q0: coop_mat16x16<f16, A>, q1: coop_mat16x16<f16, A>, q2: coop_mat16x16<f16, A>, q3: coop_mat16x16<f16, A>, q4: coop_mat16x16<f16, A>, q5: coop_mat16x16<f16, A>, q6: coop_mat16x16<f16, A>, q7: coop_mat16x16<f16, A>) -> coop_mat16x16<f32, C> {
    var s = coop_mat16x16<f32, C>();
    s = coopMultiplyAdd(q0, kb(nb, 0u), s);
    s = coopMultiplyAdd(q1, kb(nb, 1u), s);
    s = coopMultiplyAdd(q2, kb(nb, 2u), s);
    s = coopMultiplyAdd(q3, kb(nb, 3u), s);
    if (D > 64u) {
        s = coopMultiplyAdd(q4, kb(nb, 4u), s);
        s = coopMultiplyAdd(q5, kb(nb, 5u), s);
        s = coopMultiplyAdd(q6, kb(nb, 6u), s);
        s = coopMultiplyAdd(q7, kb(nb, 7u), s);
    }
    return s;
}

// Accumulator x (head dims 16 c ..) of the output through the subgroup's block of sc (its
// first 16 x 16).
fn emit(x: coop_mat16x16<f32, C>, w: Place, l: Lane, c: u32) {
    coopStoreT(x, &sc[l.own], 16u);
    workgroupBarrier();
    for (var u = l.part * (16u / PARTS); u < (l.part + 1u) * (16u / PARTS); u++) {
        store_o(w, l.i, c * 16u + u, sc[l.own + l.row * 16u + u]);
    }
    workgroupBarrier();
}

// The subgroup's scores of the SBW keys from 16 nb of the tile into its block of sc.
fn scores(nb: u32, l: Lane, q0: coop_mat16x16<f16, A>, q1: coop_mat16x16<f16, A>, q2: coop_mat16x16<f16, A>, q3: coop_mat16x16<f16, A>, q4: coop_mat16x16<f16, A>, q5: coop_mat16x16<f16, A>, q6: coop_mat16x16<f16, A>, q7: coop_mat16x16<f16, A>) {
    coopStoreT(score(nb, q0, q1, q2, q3, q4, q5, q6, q7), &sc[l.own], SBW);
    if (SBW > 16u) {
        coopStoreT(score(nb + 1u, q0, q1, q2, q3, q4, q5, q6, q7), &sc[l.own + 16u], SBW);
    }
}

@compute @workgroup_size(WG)
fn attn_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let w = place(wid);
    let l = lane_of(w, sg, lane);
    stage_q(w, li);
    workgroupBarrier();
    let q0 = qa(sg, 0u);
    let q1 = qa(sg, 1u);
    let q2 = qa(sg, 2u);
    let q3 = qa(sg, 3u);
    var q4 = coop_mat16x16<f16, A>();
    var q5 = coop_mat16x16<f16, A>();
    var q6 = coop_mat16x16<f16, A>();
    var q7 = coop_mat16x16<f16, A>();
    if (D > 64u) {
        q4 = qa(sg, 4u);
        q5 = qa(sg, 5u);
        q6 = qa(sg, 6u);
        q7 = qa(sg, 7u);
    }
    // first pass: each row's log-sum-exp
    var ms = vec2<f32>(NEG, 0.0);
    var ahead = kv_ahead(w, 0u, false, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, false, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            scores(jb / 16u, l, q0, q1, q2, q3, q4, q5, q6, q7);
            workgroupBarrier();
            ms = fold_stats(l, j0 + jb, ms);
            workgroupBarrier();
        }
    }
    let lse = combine_lse(l, sg, ms);
    // second pass: o = sum exp(scale s - lse) v
    var o0 = coop_mat16x16<f32, C>();
    var o1 = coop_mat16x16<f32, C>();
    var o2 = coop_mat16x16<f32, C>();
    var o3 = coop_mat16x16<f32, C>();
    var o4 = coop_mat16x16<f32, C>();
    var o5 = coop_mat16x16<f32, C>();
    var o6 = coop_mat16x16<f32, C>();
    var o7 = coop_mat16x16<f32, C>();
    ahead = kv_ahead(w, 0u, true, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, true, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            scores(jb / 16u, l, q0, q1, q2, q3, q4, q5, q6, q7);
            workgroupBarrier();
            probs(l, j0 + jb, lse);
            workgroupBarrier();
            for (var u = 0u; u < SBW / 16u; u++) {
                let pa = coopLoadT<coop_mat16x16<f16, A>>(&ps[l.own + u * 16u], SBW);
                let nb = jb / 16u + u;
                o0 = coopMultiplyAdd(pa, vb(nb, 0u), o0);
                o1 = coopMultiplyAdd(pa, vb(nb, 1u), o1);
                o2 = coopMultiplyAdd(pa, vb(nb, 2u), o2);
                o3 = coopMultiplyAdd(pa, vb(nb, 3u), o3);
                if (D > 64u) {
                    o4 = coopMultiplyAdd(pa, vb(nb, 4u), o4);
                    o5 = coopMultiplyAdd(pa, vb(nb, 5u), o5);
                    o6 = coopMultiplyAdd(pa, vb(nb, 6u), o6);
                    o7 = coopMultiplyAdd(pa, vb(nb, 7u), o7);
                }
            }
        }
    }
    emit(o0, w, l, 0u);
    emit(o1, w, l, 1u);
    emit(o2, w, l, 2u);
    emit(o3, w, l, 3u);
    if (D > 64u) {
        emit(o4, w, l, 4u);
        emit(o5, w, l, 5u);
        emit(o6, w, l, 6u);
        emit(o7, w, l, 7u);
    }
}
