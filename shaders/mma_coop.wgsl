// The tiled GEMM of mma_common.wgsl on cooperative matrices (tensor cores): 16 x 16 x 16
// f16 products accumulated in f32. The workgroup is SGM x SGN subgroups (WG = SGM SGN
// subgroup size, which the host sets from the adapter's fixed subgroup size); subgroup s
// owns an (FM 16) x (FN 16) block of the tile: FM x FN accumulators, FM 2 or 4 and FN 2
// (the host's two tiles), named and multiplied in straight-line code (an array of them
// indexed in loops went to local memory on the H200). The output goes one 16 x 16 block
// at a time through a per-subgroup scratch in workgroup memory.
enable f16;
enable wgpu_cooperative_matrix;

// #include mma_common

const SGM: u32 = 2u;
const SGN: u32 = 4u;
const SG: u32 = WG / (SGM * SGN); // subgroup size
const FM: u32 = BM / (16u * SGM);
const FN: u32 = BN / (16u * SGN);

var<workgroup> scratch: array<f32, 256u * SGM * SGN>;

// Fragment n of B (r x j) at r = kk of the staged slice for the subgroup's columns from sj:
// column-major when staged along r, row-major along j; fragment m of A (i x r) alike.
fn ldb(n: u32, sj: u32, kk: u32) -> coop_mat16x16<f16, B> {
    let j = sj + 16u * n;
    if (TB == 0u) { return coopLoad<coop_mat16x16<f16, B>>(&bs[j * SB + kk], SB); }
    return coopLoadT<coop_mat16x16<f16, B>>(&bs[kk * SB + j], SB);
}

fn lda(m: u32, si: u32, kk: u32) -> coop_mat16x16<f16, A> {
    let i = si + 16u * m;
    if (TA == 0u) { return coopLoadT<coop_mat16x16<f16, A>>(&as_[i * SA + kk], SA); }
    return coopLoad<coop_mat16x16<f16, A>>(&as_[kk * SA + i], SA);
}

// Accumulator c into C[gi.., gj..] through the subgroup's scratch at own.
fn emit(c: coop_mat16x16<f32, C>, own: u32, lane: u32, gi: u32, gj: u32) {
    coopStoreT(c, &scratch[own], 16u);
    workgroupBarrier();
    for (var e = lane; e < 256u; e += SG) {
        store_c(gi + e / 16u, gj + e % 16u, scratch[own + e]);
    }
    workgroupBarrier();
}

@compute @workgroup_size(WG)
fn mma(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let i0 = wid.y * BM;
    let j0 = wid.x * BN;
    let si = (sg / SGN) * FM * 16u;
    let sj = (sg % SGN) * FN * 16u;
    var c00 = coop_mat16x16<f32, C>();
    var c01 = coop_mat16x16<f32, C>();
    var c10 = coop_mat16x16<f32, C>();
    var c11 = coop_mat16x16<f32, C>();
    var c20 = coop_mat16x16<f32, C>();
    var c21 = coop_mat16x16<f32, C>();
    var c30 = coop_mat16x16<f32, C>();
    var c31 = coop_mat16x16<f32, C>();
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
        for (var kk = 0u; kk < BK; kk += 16u) {
            let b0 = ldb(0u, sj, kk);
            let b1 = ldb(1u, sj, kk);
            let a0 = lda(0u, si, kk);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            let a1 = lda(1u, si, kk);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            if (FM > 2u) {
                let a2 = lda(2u, si, kk);
                c20 = coopMultiplyAdd(a2, b0, c20);
                c21 = coopMultiplyAdd(a2, b1, c21);
                let a3 = lda(3u, si, kk);
                c30 = coopMultiplyAdd(a3, b0, c30);
                c31 = coopMultiplyAdd(a3, b1, c31);
            }
        }
    }
    let own = sg * 256u;
    let gi = i0 + si;
    let gj = j0 + sj;
    emit(c00, own, lane, gi, gj);
    emit(c01, own, lane, gi, gj + 16u);
    emit(c10, own, lane, gi + 16u, gj);
    emit(c11, own, lane, gi + 16u, gj + 16u);
    if (FM > 2u) {
        emit(c20, own, lane, gi + 32u, gj);
        emit(c21, own, lane, gi + 32u, gj + 16u);
        emit(c30, own, lane, gi + 48u, gj);
        emit(c31, own, lane, gi + 48u, gj + 16u);
    }
}
