// The tiled GEMM of mma_common.wgsl on cooperative matrices (tensor cores): 16 x 16 x 16
// f16 products accumulated in f32. The workgroup is SGM x SGN subgroups (WG = SGM SGN
// subgroup size, which the host sets from the adapter's fixed subgroup size); subgroup s
// owns an (FM 16) x (FN 16) block of the tile: FM x FN accumulators. The output goes one
// 16 x 16 block at a time through a per-subgroup scratch in workgroup memory.
enable f16;
enable wgpu_cooperative_matrix;

// #include mma_common

const SGM: u32 = 2u;
const SGN: u32 = 4u;
const SG: u32 = WG / (SGM * SGN); // subgroup size
const FM: u32 = BM / (16u * SGM);
const FN: u32 = BN / (16u * SGN);

var<workgroup> scratch: array<f32, 256u * SGM * SGN>;

@compute @workgroup_size(WG)
fn mma(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) lane: u32) {
    let i0 = wid.y * BM;
    let j0 = wid.x * BN;
    let si = (sg / SGN) * FM * 16u;
    let sj = (sg % SGN) * FN * 16u;
    var acc: array<coop_mat16x16<f32, C>, FM * FN>;
    for (var f = 0u; f < FM * FN; f++) {
        acc[f] = coop_mat16x16<f32, C>();
    }
    a_scale();
    var next = load_slice(i0, j0, 0u, li);
    for (var r0 = 0u; r0 < p.nr; r0 += BK) {
        workgroupBarrier();
        store_slice(next, li);
        workgroupBarrier();
        if (r0 + BK < p.nr) {
            next = load_slice(i0, j0, r0 + BK, li);
        }
        for (var kk = 0u; kk < BK; kk += 16u) {
            var bf: array<coop_mat16x16<f16, B>, FN>;
            for (var n = 0u; n < FN; n++) {
                // B(r, j) is bs[j BKP + r]: column-major, coopLoad
                bf[n] = coopLoad<coop_mat16x16<f16, B>>(&bs[(sj + 16u * n) * BKP + kk], BKP);
            }
            for (var m = 0u; m < FM; m++) {
                let af = coopLoadT<coop_mat16x16<f16, A>>(&as_[(si + 16u * m) * BKP + kk], BKP);
                for (var n = 0u; n < FN; n++) {
                    acc[m * FN + n] = coopMultiplyAdd(af, bf[n], acc[m * FN + n]);
                }
            }
        }
    }
    let own = sg * 256u;
    for (var f = 0u; f < FM * FN; f++) {
        coopStoreT(acc[f], &scratch[own], 16u);
        workgroupBarrier();
        let gi = i0 + si + 16u * (f / FN);
        let gj = j0 + sj + 16u * (f % FN);
        for (var e = lane; e < 256u; e += SG) {
            store_c(gi + e / 16u, gj + e % 16u, scratch[own + e]);
        }
        workgroupBarrier();
    }
}
