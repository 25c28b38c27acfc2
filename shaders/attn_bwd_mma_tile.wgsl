// The backward of attn_bwd_mma_common.wgsl without matrix units (lavapipe in CI): the same
// tiles, staging and scalar passes, the products of attn_mma_frag_tile.wgsl; each
// invocation holds its row's operands (q and dO, or k and v) and adds its part of the
// row's gradients (D / PARTS head dims) in f32.
enable f16;

// #include attn_mma_common
// #include attn_bwd_mma_common
// #include attn_mma_frag_tile

const DL: u32 = D / (4u * PARTS); // vec4s of a gradient row per invocation

// block_dots into sc2.
fn block_dots2(a: ptr<function, array<vec4<f32>, D / 4u>>, l: Lane, r: u32) {
    for (var c = 0u; c < CPL; c++) { sc2[l.own + l.row * SBW + l.col + c] = dot_row(a, r + l.col + c); }
}

@compute @workgroup_size(WG)
fn attn_bwd_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sg = li / SG;
    let w = place(wid);
    let l = lane_of(w, sg, li % SG);
    let sa = do_scale();
    let delta = row_delta(w, l, sg);
    stage_q(w, li);
    workgroupBarrier();
    var qr = own_row(sg * 16u, l);
    workgroupBarrier();
    stage_do(w.r0 + w.i0, select(0u, min(BR, p.t - w.i0), w.i0 < p.t), BR, w.h * p.dim, 0u, li, sa);
    workgroupBarrier();
    var dr = own_row(sg * 16u, l);
    let lse = lse_pass(w, l, sg, li, &qr);
    put_stats(w, l, lse, delta);
    let c0 = l.part * DL;
    var acc: array<vec4<f32>, DL>;
    var ahead = kv_ahead(w, 0u, true, li);
    for (var j0 = 0u; j0 <= w.last; j0 += BC) {
        kv_next(&ahead, w, j0, true, li);
        for (var jb = 0u; jb < BC && j0 + jb <= w.last; jb += SBW) {
            block_dots(&qr, l, jb);
            block_dots2(&dr, l, BC + jb);
            workgroupBarrier();
            ds_q(l, j0 + jb, lse, sa * delta);
            workgroupBarrier();
            for (var kk = 0u; kk < SBW; kk++) {
                let ds = f32(ps[l.own + l.row * SBW + kk]);
                for (var x = 0u; x < DL; x++) { acc[x] = fma(vec4<f32>(ds), row4(jb + kk, c0 + x), acc[x]); }
            }
        }
    }
    if (l.i < p.t) {
        for (var x = 0u; x < DL; x++) {
            for (var u = 0u; u < 4u; u++) { store_g(false, w.r0 + l.i, w.h * p.dim, 4u * (c0 + x) + u, acc[x][u] * p.scale / sa); }
        }
    }
}

@compute @workgroup_size(WG)
fn attn_bwd_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let sg = li / SG;
    let lane = li % SG;
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
    let nk = select(0u, min(BR, p.t - j0), j0 < p.t);
    stage(1u, r0 + j0, nk, BR, p.kv_stride, g * p.dim, 0u, li);
    workgroupBarrier();
    var kr = own_row(sg * 16u, l);
    workgroupBarrier();
    stage(2u, r0 + j0, nk, BR, p.kv_stride, g * p.dim, 0u, li);
    workgroupBarrier();
    var vr = own_row(sg * 16u, l);
    let c0 = l.part * DL;
    var dk: array<vec4<f32>, DL>;
    var dv: array<vec4<f32>, DL>;
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
                block_dots(&kr, l, jb);
                block_dots2(&vr, l, BC + jb);
                workgroupBarrier();
                ds_kv(l, key, i0, jb, sa);
                workgroupBarrier();
                for (var kk = 0u; kk < SBW; kk++) {
                    let e = l.own + l.row * SBW + kk;
                    let pr = f32(pp[e]);
                    let ds = f32(ps[e]);
                    for (var x = 0u; x < DL; x++) {
                        dv[x] = fma(vec4<f32>(pr), row4(BC + jb + kk, c0 + x), dv[x]);
                        dk[x] = fma(vec4<f32>(ds), row4(jb + kk, c0 + x), dk[x]);
                    }
                }
            }
        }
    }
    if (key < p.t) {
        for (var x = 0u; x < DL; x++) {
            for (var u = 0u; u < 4u; u++) {
                store_g(true, r0 + key, g * p.dim, 4u * (c0 + x) + u, dk[x][u] * p.scale / sa);
                store_dv(r0 + key, g * p.dim, 4u * (c0 + x) + u, dv[x][u] / sa);
            }
        }
    }
}
