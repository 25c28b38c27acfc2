// The backward of attn_bwd_mma_common.wgsl on cooperative matrices: each subgroup holds
// its 16 rows' operands (q and dO in the query pass, k and v in the key pass) as fragments
// for the whole kernel and its gradient rows in D / 16 accumulators per output, all named
// variables in straight-line code.
enable f16;
enable wgpu_cooperative_matrix;

// #include attn_mma_common
// #include attn_bwd_mma_common

alias FA = coop_mat16x16<f16, A>;
alias FC = coop_mat16x16<f32, C>;

// Rows r .. r + 15 of kvs, head dims 16 c .., as the left operand.
fn fa(r: u32, c: u32) -> FA {
    return coopLoadT<FA>(&kvs[r * DP + c * 16u], DP);
}

// The same rows transposed (head dims x rows), as the right operand.
fn fbt(r: u32, c: u32) -> coop_mat16x16<f16, B> {
    return coopLoad<coop_mat16x16<f16, B>>(&kvs[r * DP + c * 16u], DP);
}

// The same rows (rows x head dims) as the right operand.
fn fb(r: u32, c: u32) -> coop_mat16x16<f16, B> {
    return coopLoadT<coop_mat16x16<f16, B>>(&kvs[r * DP + c * 16u], DP);
}

// (16 rows of the a fragments) x (rows r .. r + 15 of kvs)^T: a 16 x 16 block of dot products.
fn dots(r: u32, a0: FA, a1: FA, a2: FA, a3: FA, a4: FA, a5: FA, a6: FA, a7: FA) -> FC {
    var s = FC();
    s = coopMultiplyAdd(a0, fbt(r, 0u), s);
    s = coopMultiplyAdd(a1, fbt(r, 1u), s);
    s = coopMultiplyAdd(a2, fbt(r, 2u), s);
    s = coopMultiplyAdd(a3, fbt(r, 3u), s);
    if (D > 64u) {
        s = coopMultiplyAdd(a4, fbt(r, 4u), s);
        s = coopMultiplyAdd(a5, fbt(r, 5u), s);
        s = coopMultiplyAdd(a6, fbt(r, 6u), s);
        s = coopMultiplyAdd(a7, fbt(r, 7u), s);
    }
    return s;
}

// Accumulator x (head dims 16 c ..) times m into g1 (or dv into o) through the
// subgroup's block of sc; `row` this lane's row of the output, or past its end.
fn emit(x: FC, l: Lane, c: u32, kv: bool, dv: bool, row: u32, valid: bool, col0: u32, m: f32) {
    coopStoreT(x, &sc[l.own], 16u);
    workgroupBarrier();
    for (var u = l.part * (16u / PARTS); u < (l.part + 1u) * (16u / PARTS); u++) {
        let v = m * sc[l.own + l.row * 16u + u];
        if (valid) {
            if (dv) { store_dv(row, col0, c * 16u + u, v); } else { store_g(kv, row, col0, c * 16u + u, v); }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn attn_bwd_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let w = place(wid);
    let l = lane_of(w, sg, lane);
    let sa = do_scale();
    let delta = row_delta(w, l, sg);
    let r = sg * 16u;
    stage_q(w, li);
    workgroupBarrier();
    let q0 = fa(r, 0u);
    let q1 = fa(r, 1u);
    let q2 = fa(r, 2u);
    let q3 = fa(r, 3u);
    var q4 = FA();
    var q5 = FA();
    var q6 = FA();
    var q7 = FA();
    if (D > 64u) {
        q4 = fa(r, 4u);
        q5 = fa(r, 5u);
        q6 = fa(r, 6u);
        q7 = fa(r, 7u);
    }
    workgroupBarrier();
    stage_do(w.r0 + w.i0, select(0u, min(BR, p.t - w.i0), w.i0 < p.t), BR, w.h * p.dim, 0u, li, sa);
    workgroupBarrier();
    let d0 = fa(r, 0u);
    let d1 = fa(r, 1u);
    let d2 = fa(r, 2u);
    let d3 = fa(r, 3u);
    var d4 = FA();
    var d5 = FA();
    var d6 = FA();
    var d7 = FA();
    if (D > 64u) {
        d4 = fa(r, 4u);
        d5 = fa(r, 5u);
        d6 = fa(r, 6u);
        d7 = fa(r, 7u);
    }
    // each row's log-sum-exp, as the forward's first pass
    var ms = vec2<f32>(NEG, 0.0);
    var ahead = kv_ahead(w, 0u, false, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, false, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            coopStoreT(dots(jb, q0, q1, q2, q3, q4, q5, q6, q7), &sc[l.own], SBW);
            if (SBW > 16u) { coopStoreT(dots(jb + 16u, q0, q1, q2, q3, q4, q5, q6, q7), &sc[l.own + 16u], SBW); }
            workgroupBarrier();
            ms = fold_stats(l, j0 + jb, ms);
            workgroupBarrier();
        }
    }
    let lse = combine_lse(l, sg, ms);
    put_stats(w, l, lse, delta);
    var a0 = FC();
    var a1 = FC();
    var a2 = FC();
    var a3 = FC();
    var a4 = FC();
    var a5 = FC();
    var a6 = FC();
    var a7 = FC();
    ahead = kv_ahead(w, 0u, true, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, true, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            coopStoreT(dots(jb, q0, q1, q2, q3, q4, q5, q6, q7), &sc[l.own], SBW);
            coopStoreT(dots(BC + jb, d0, d1, d2, d3, d4, d5, d6, d7), &sc2[l.own], SBW);
            if (SBW > 16u) {
                coopStoreT(dots(jb + 16u, q0, q1, q2, q3, q4, q5, q6, q7), &sc[l.own + 16u], SBW);
                coopStoreT(dots(BC + jb + 16u, d0, d1, d2, d3, d4, d5, d6, d7), &sc2[l.own + 16u], SBW);
            }
            workgroupBarrier();
            ds_q(l, j0 + jb, lse, sa * delta);
            workgroupBarrier();
            for (var x = 0u; x < SBW / 16u; x++) {
                let ds = coopLoadT<FA>(&ps[l.own + x * 16u], SBW);
                let kr = jb + x * 16u;
                a0 = coopMultiplyAdd(ds, fb(kr, 0u), a0);
                a1 = coopMultiplyAdd(ds, fb(kr, 1u), a1);
                a2 = coopMultiplyAdd(ds, fb(kr, 2u), a2);
                a3 = coopMultiplyAdd(ds, fb(kr, 3u), a3);
                if (D > 64u) {
                    a4 = coopMultiplyAdd(ds, fb(kr, 4u), a4);
                    a5 = coopMultiplyAdd(ds, fb(kr, 5u), a5);
                    a6 = coopMultiplyAdd(ds, fb(kr, 6u), a6);
                    a7 = coopMultiplyAdd(ds, fb(kr, 7u), a7);
                }
            }
        }
    }
    let m = p.scale / sa;
    let row = w.r0 + l.i;
    let valid = l.i < p.t;
    let col0 = w.h * p.dim;
    emit(a0, l, 0u, false, false, row, valid, col0, m);
    emit(a1, l, 1u, false, false, row, valid, col0, m);
    emit(a2, l, 2u, false, false, row, valid, col0, m);
    emit(a3, l, 3u, false, false, row, valid, col0, m);
    if (D > 64u) {
        emit(a4, l, 4u, false, false, row, valid, col0, m);
        emit(a5, l, 5u, false, false, row, valid, col0, m);
        emit(a6, l, 6u, false, false, row, valid, col0, m);
        emit(a7, l, 7u, false, false, row, valid, col0, m);
    }
}

@compute @workgroup_size(WG)
fn attn_bwd_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let g = wid.y % p.kv_heads;
    let r0 = (wid.y / p.kv_heads) * p.t;
    let j0 = wid.x * BR;
    var l: Lane;
    l.own = sg * 16u * SBW;
    l.row = lane % 16u;
    l.part = lane / 16u;
    l.col = l.part * CPL;
    let key = j0 + sg * 16u + l.row;
    let sa = do_scale();
    let r = sg * 16u;
    let nk = select(0u, min(BR, p.t - j0), j0 < p.t);
    stage(1u, r0 + j0, nk, BR, p.kv_stride, g * p.dim, 0u, li);
    workgroupBarrier();
    let k0 = fa(r, 0u);
    let k1 = fa(r, 1u);
    let k2 = fa(r, 2u);
    let k3 = fa(r, 3u);
    var k4 = FA();
    var k5 = FA();
    var k6 = FA();
    var k7 = FA();
    if (D > 64u) {
        k4 = fa(r, 4u);
        k5 = fa(r, 5u);
        k6 = fa(r, 6u);
        k7 = fa(r, 7u);
    }
    workgroupBarrier();
    stage(2u, r0 + j0, nk, BR, p.kv_stride, g * p.dim, 0u, li);
    workgroupBarrier();
    let v0 = fa(r, 0u);
    let v1 = fa(r, 1u);
    let v2 = fa(r, 2u);
    let v3 = fa(r, 3u);
    var v4 = FA();
    var v5 = FA();
    var v6 = FA();
    var v7 = FA();
    if (D > 64u) {
        v4 = fa(r, 4u);
        v5 = fa(r, 5u);
        v6 = fa(r, 6u);
        v7 = fa(r, 7u);
    }
    var k_0 = FC();
    var k_1 = FC();
    var k_2 = FC();
    var k_3 = FC();
    var k_4 = FC();
    var k_5 = FC();
    var k_6 = FC();
    var k_7 = FC();
    var v_0 = FC();
    var v_1 = FC();
    var v_2 = FC();
    var v_3 = FC();
    var v_4 = FC();
    var v_5 = FC();
    var v_6 = FC();
    var v_7 = FC();
    let group = p.heads / p.kv_heads;
    for (var h = g * group; h < (g + 1u) * group; h++) {
        for (var i0 = j0; i0 < p.t; i0 += BC) {
            workgroupBarrier();
            let nq = min(BC, p.t - i0);
            stage(0u, r0 + i0, nq, BC, p.q_stride, h * p.dim, 0u, li);
            stage_do(r0 + i0, nq, BC, h * p.dim, BC, li, sa);
            stage_qst(r0, i0, h, li);
            workgroupBarrier();
            for (var jb = 0u; jb < BC && i0 + jb < p.t; jb += SBW) {
                coopStoreT(dots(jb, k0, k1, k2, k3, k4, k5, k6, k7), &sc[l.own], SBW);
                coopStoreT(dots(BC + jb, v0, v1, v2, v3, v4, v5, v6, v7), &sc2[l.own], SBW);
                if (SBW > 16u) {
                    coopStoreT(dots(jb + 16u, k0, k1, k2, k3, k4, k5, k6, k7), &sc[l.own + 16u], SBW);
                    coopStoreT(dots(BC + jb + 16u, v0, v1, v2, v3, v4, v5, v6, v7), &sc2[l.own + 16u], SBW);
                }
                workgroupBarrier();
                ds_kv(l, key, i0, jb, sa);
                workgroupBarrier();
                for (var x = 0u; x < SBW / 16u; x++) {
                    let pa = coopLoadT<FA>(&pp[l.own + x * 16u], SBW);
                    let da = coopLoadT<FA>(&ps[l.own + x * 16u], SBW);
                    let qr = jb + x * 16u;
                    let dr = BC + jb + x * 16u;
                    v_0 = coopMultiplyAdd(pa, fb(dr, 0u), v_0);
                    v_1 = coopMultiplyAdd(pa, fb(dr, 1u), v_1);
                    v_2 = coopMultiplyAdd(pa, fb(dr, 2u), v_2);
                    v_3 = coopMultiplyAdd(pa, fb(dr, 3u), v_3);
                    k_0 = coopMultiplyAdd(da, fb(qr, 0u), k_0);
                    k_1 = coopMultiplyAdd(da, fb(qr, 1u), k_1);
                    k_2 = coopMultiplyAdd(da, fb(qr, 2u), k_2);
                    k_3 = coopMultiplyAdd(da, fb(qr, 3u), k_3);
                    if (D > 64u) {
                        v_4 = coopMultiplyAdd(pa, fb(dr, 4u), v_4);
                        v_5 = coopMultiplyAdd(pa, fb(dr, 5u), v_5);
                        v_6 = coopMultiplyAdd(pa, fb(dr, 6u), v_6);
                        v_7 = coopMultiplyAdd(pa, fb(dr, 7u), v_7);
                        k_4 = coopMultiplyAdd(da, fb(qr, 4u), k_4);
                        k_5 = coopMultiplyAdd(da, fb(qr, 5u), k_5);
                        k_6 = coopMultiplyAdd(da, fb(qr, 6u), k_6);
                        k_7 = coopMultiplyAdd(da, fb(qr, 7u), k_7);
                    }
                }
            }
        }
    }
    let row = r0 + key;
    let valid = key < p.t;
    let col0 = g * p.dim;
    let mk = p.scale / sa;
    let mv = 1.0 / sa;
    emit(k_0, l, 0u, true, false, row, valid, col0, mk);
    emit(k_1, l, 1u, true, false, row, valid, col0, mk);
    emit(k_2, l, 2u, true, false, row, valid, col0, mk);
    emit(k_3, l, 3u, true, false, row, valid, col0, mk);
    emit(v_0, l, 0u, true, true, row, valid, col0, mv);
    emit(v_1, l, 1u, true, true, row, valid, col0, mv);
    emit(v_2, l, 2u, true, true, row, valid, col0, mv);
    emit(v_3, l, 3u, true, true, row, valid, col0, mv);
    if (D > 64u) {
        emit(k_4, l, 4u, true, false, row, valid, col0, mk);
        emit(k_5, l, 5u, true, false, row, valid, col0, mk);
        emit(k_6, l, 6u, true, false, row, valid, col0, mk);
        emit(k_7, l, 7u, true, false, row, valid, col0, mk);
        emit(v_4, l, 4u, true, true, row, valid, col0, mv);
        emit(v_5, l, 5u, true, true, row, valid, col0, mv);
        emit(v_6, l, 6u, true, true, row, valid, col0, mv);
        emit(v_7, l, 7u, true, true, row, valid, col0, mv);
    }
}
