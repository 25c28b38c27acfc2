// The tiled GEMM of mma_common.wgsl without matrix units (adapters that list no
// cooperative-matrix shape, e.g. lavapipe in CI): the same tiles, staging and output, with
// the product of the staged f16 tiles done by each invocation on BM / TM rows x 4 columns
// (f32 accumulation of exact f16 products, as the matrix units do).
enable f16;

// #include mma_common

const TN: u32 = BN / 4u; // invocations along j
const TM: u32 = WG / TN; // invocations along i
const RM: u32 = BM / TM; // rows per invocation

fn a_st(i: u32, r: u32) -> f32 {
    return f32(as_[staged(i, r, TA, SA)]);
}

fn b_st(j: u32, r: u32) -> f32 {
    return f32(bs[staged(j, r, TB, SB)]);
}

@compute @workgroup_size(WG)
fn mma(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i0 = wid.y * BM;
    let j0 = wid.x * BN;
    let ti = li / TN;
    let tj = li % TN;
    var acc: array<vec4<f32>, RM>;
    a_scale();
    let rb = reduction_part(wid.z);
    let re = min(p.nr, rb + p.rchunk); // r_end, from uniform values (the loop has barriers)
    var next = load_slice(i0, j0, rb, li);
    for (var r0 = rb; r0 < re; r0 += BK) {
        workgroupBarrier();
        store_slice(next, li);
        workgroupBarrier();
        if (r0 + BK < re) {
            next = load_slice(i0, j0, r0 + BK, li);
        }
        for (var kk = 0u; kk < BK; kk++) {
            let j = 4u * tj;
            let bv = vec4<f32>(b_st(j, kk), b_st(j + 1u, kk), b_st(j + 2u, kk), b_st(j + 3u, kk));
            for (var q = 0u; q < RM; q++) {
                acc[q] = fma(vec4<f32>(a_st(ti * RM + q, kk)), bv, acc[q]);
            }
        }
    }
    for (var q = 0u; q < RM; q++) {
        let gi = i0 + ti * RM + q;
        let gj = j0 + 4u * tj;
        store_c(gi, gj, acc[q].x);
        store_c(gi, gj + 1u, acc[q].y);
        store_c(gi, gj + 2u, acc[q].z);
        store_c(gi, gj + 3u, acc[q].w);
    }
}
