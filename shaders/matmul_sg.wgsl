// Matmul for CPU adapters (lavapipe / llvmpipe) with 8-lane subgroups:
//   Y[m, ycol + n] (=|+=) sum_k X[m, k] * W[n, k] + bias[n]     (same contract as matmul.wgsl)
//
// Why a second kernel: llvmpipe runs 8 invocations as one SIMD vector, but every
// storage or workgroup-memory load whose address is not a compile-time constant becomes
// a loop over the 8 lanes (about 20 cycles per lane and component), while arithmetic
// is nearly free. So the cost of a matmul is the number of elements each invocation
// loads: the naive kernel loads 2 per FMA, matmul.wgsl (4x4 or 8x8 register tiles fed
// from workgroup memory) 0.5 or 0.25, plus staging. Here one subgroup (= one workgroup of SG = 8 invocations)
// computes a 64 x 64 tile of Y with no workgroup memory and no barriers: per k, lane l
// loads X[m0 + l + 8j, k] (j < 8; 8 loads) and W[n, k] for its own 8 columns
// n0 + 4l + {0..3} and n0 + 32 + 4l + {0..3} (8 loads); the 64 X values reach every lane
// through subgroupShuffle (a register permute) and feed 64 x 8 FMAs: 16 loads per 512
// FMAs, 1/32 per FMA. (32 rows instead of 64: 12 loads per 256 FMAs, about 30% slower.)
// Loops are written out because llvmpipe keeps loops over private arrays in memory.
// Rows and columns past the end are clamped for loading and skipped for storing.
// The host uses it only when the adapter is a CPU with subgroups of exactly 8.

alias WT = f32; // f16-switch

const SG: u32 = 8u; // subgroup size = workgroup size
const BM: u32 = 64u;
const BN: u32 = 64u;

struct Params {
    m: u32,
    n: u32,
    k: u32,
    ldy: u32,
    ycol: u32,
    has_bias: u32,
    accumulate: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

fn xat(r: u32, k: u32) -> f32 {
    return x[min(r, p.m - 1u) * p.k + k];
}

// W rows c .. c + 3 at column k
fn w4(c: u32, k: u32) -> vec4<f32> {
    let l = p.n - 1u;
    return vec4<f32>(f32(w[min(c, l) * p.k + k]), f32(w[min(c + 1u, l) * p.k + k]),
                     f32(w[min(c + 2u, l) * p.k + k]), f32(w[min(c + 3u, l) * p.k + k]));
}

// X[row, k] held by lane `l` as `a`, for every lane
fn bc(a: f32, l: u32) -> vec4<f32> {
    return vec4<f32>(subgroupShuffle(a, l));
}

fn store4(gm: u32, gn0: u32, v: vec4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        let gn = gn0 + j;
        if (gn >= p.n) { return; }
        var o = v[j];
        if (p.has_bias != 0u) { o += bias[gn]; }
        let yi = gm * p.ldy + p.ycol + gn;
        if (p.accumulate != 0u) { o += y[yi]; }
        y[yi] = o;
    }
}

fn store_row(gm: u32, n0: u32, c: vec4<f32>, d: vec4<f32>) {
    if (gm >= p.m) { return; }
    store4(gm, n0, c);
    store4(gm, n0 + BN / 2u, d);
}

@compute @workgroup_size(SG)
fn matmul_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN + lane * 4u;
    // c_r: row m0 + r, columns n0 .. n0 + 3; d_r: columns n0 + 32 .. n0 + 35
    var c00 = vec4<f32>(0.0); var c01 = vec4<f32>(0.0); var c02 = vec4<f32>(0.0); var c03 = vec4<f32>(0.0); var c04 = vec4<f32>(0.0); var c05 = vec4<f32>(0.0); var c06 = vec4<f32>(0.0); var c07 = vec4<f32>(0.0);
    var c08 = vec4<f32>(0.0); var c09 = vec4<f32>(0.0); var c10 = vec4<f32>(0.0); var c11 = vec4<f32>(0.0); var c12 = vec4<f32>(0.0); var c13 = vec4<f32>(0.0); var c14 = vec4<f32>(0.0); var c15 = vec4<f32>(0.0);
    var c16 = vec4<f32>(0.0); var c17 = vec4<f32>(0.0); var c18 = vec4<f32>(0.0); var c19 = vec4<f32>(0.0); var c20 = vec4<f32>(0.0); var c21 = vec4<f32>(0.0); var c22 = vec4<f32>(0.0); var c23 = vec4<f32>(0.0);
    var c24 = vec4<f32>(0.0); var c25 = vec4<f32>(0.0); var c26 = vec4<f32>(0.0); var c27 = vec4<f32>(0.0); var c28 = vec4<f32>(0.0); var c29 = vec4<f32>(0.0); var c30 = vec4<f32>(0.0); var c31 = vec4<f32>(0.0);
    var c32 = vec4<f32>(0.0); var c33 = vec4<f32>(0.0); var c34 = vec4<f32>(0.0); var c35 = vec4<f32>(0.0); var c36 = vec4<f32>(0.0); var c37 = vec4<f32>(0.0); var c38 = vec4<f32>(0.0); var c39 = vec4<f32>(0.0);
    var c40 = vec4<f32>(0.0); var c41 = vec4<f32>(0.0); var c42 = vec4<f32>(0.0); var c43 = vec4<f32>(0.0); var c44 = vec4<f32>(0.0); var c45 = vec4<f32>(0.0); var c46 = vec4<f32>(0.0); var c47 = vec4<f32>(0.0);
    var c48 = vec4<f32>(0.0); var c49 = vec4<f32>(0.0); var c50 = vec4<f32>(0.0); var c51 = vec4<f32>(0.0); var c52 = vec4<f32>(0.0); var c53 = vec4<f32>(0.0); var c54 = vec4<f32>(0.0); var c55 = vec4<f32>(0.0);
    var c56 = vec4<f32>(0.0); var c57 = vec4<f32>(0.0); var c58 = vec4<f32>(0.0); var c59 = vec4<f32>(0.0); var c60 = vec4<f32>(0.0); var c61 = vec4<f32>(0.0); var c62 = vec4<f32>(0.0); var c63 = vec4<f32>(0.0);
    var d00 = vec4<f32>(0.0); var d01 = vec4<f32>(0.0); var d02 = vec4<f32>(0.0); var d03 = vec4<f32>(0.0); var d04 = vec4<f32>(0.0); var d05 = vec4<f32>(0.0); var d06 = vec4<f32>(0.0); var d07 = vec4<f32>(0.0);
    var d08 = vec4<f32>(0.0); var d09 = vec4<f32>(0.0); var d10 = vec4<f32>(0.0); var d11 = vec4<f32>(0.0); var d12 = vec4<f32>(0.0); var d13 = vec4<f32>(0.0); var d14 = vec4<f32>(0.0); var d15 = vec4<f32>(0.0);
    var d16 = vec4<f32>(0.0); var d17 = vec4<f32>(0.0); var d18 = vec4<f32>(0.0); var d19 = vec4<f32>(0.0); var d20 = vec4<f32>(0.0); var d21 = vec4<f32>(0.0); var d22 = vec4<f32>(0.0); var d23 = vec4<f32>(0.0);
    var d24 = vec4<f32>(0.0); var d25 = vec4<f32>(0.0); var d26 = vec4<f32>(0.0); var d27 = vec4<f32>(0.0); var d28 = vec4<f32>(0.0); var d29 = vec4<f32>(0.0); var d30 = vec4<f32>(0.0); var d31 = vec4<f32>(0.0);
    var d32 = vec4<f32>(0.0); var d33 = vec4<f32>(0.0); var d34 = vec4<f32>(0.0); var d35 = vec4<f32>(0.0); var d36 = vec4<f32>(0.0); var d37 = vec4<f32>(0.0); var d38 = vec4<f32>(0.0); var d39 = vec4<f32>(0.0);
    var d40 = vec4<f32>(0.0); var d41 = vec4<f32>(0.0); var d42 = vec4<f32>(0.0); var d43 = vec4<f32>(0.0); var d44 = vec4<f32>(0.0); var d45 = vec4<f32>(0.0); var d46 = vec4<f32>(0.0); var d47 = vec4<f32>(0.0);
    var d48 = vec4<f32>(0.0); var d49 = vec4<f32>(0.0); var d50 = vec4<f32>(0.0); var d51 = vec4<f32>(0.0); var d52 = vec4<f32>(0.0); var d53 = vec4<f32>(0.0); var d54 = vec4<f32>(0.0); var d55 = vec4<f32>(0.0);
    var d56 = vec4<f32>(0.0); var d57 = vec4<f32>(0.0); var d58 = vec4<f32>(0.0); var d59 = vec4<f32>(0.0); var d60 = vec4<f32>(0.0); var d61 = vec4<f32>(0.0); var d62 = vec4<f32>(0.0); var d63 = vec4<f32>(0.0);
    for (var k = 0u; k < p.k; k++) {
        // lane l holds X[m0 + l + 8j, k] in a<j>
        let a0 = xat(m0 + lane, k);
        let a1 = xat(m0 + lane + 8u, k);
        let a2 = xat(m0 + lane + 16u, k);
        let a3 = xat(m0 + lane + 24u, k);
        let a4 = xat(m0 + lane + 32u, k);
        let a5 = xat(m0 + lane + 40u, k);
        let a6 = xat(m0 + lane + 48u, k);
        let a7 = xat(m0 + lane + 56u, k);
        let b0 = w4(n0, k);
        let b1 = w4(n0 + BN / 2u, k);
        let s00 = bc(a0, 0u); c00 = fma(s00, b0, c00); d00 = fma(s00, b1, d00);
        let s01 = bc(a0, 1u); c01 = fma(s01, b0, c01); d01 = fma(s01, b1, d01);
        let s02 = bc(a0, 2u); c02 = fma(s02, b0, c02); d02 = fma(s02, b1, d02);
        let s03 = bc(a0, 3u); c03 = fma(s03, b0, c03); d03 = fma(s03, b1, d03);
        let s04 = bc(a0, 4u); c04 = fma(s04, b0, c04); d04 = fma(s04, b1, d04);
        let s05 = bc(a0, 5u); c05 = fma(s05, b0, c05); d05 = fma(s05, b1, d05);
        let s06 = bc(a0, 6u); c06 = fma(s06, b0, c06); d06 = fma(s06, b1, d06);
        let s07 = bc(a0, 7u); c07 = fma(s07, b0, c07); d07 = fma(s07, b1, d07);
        let s08 = bc(a1, 0u); c08 = fma(s08, b0, c08); d08 = fma(s08, b1, d08);
        let s09 = bc(a1, 1u); c09 = fma(s09, b0, c09); d09 = fma(s09, b1, d09);
        let s10 = bc(a1, 2u); c10 = fma(s10, b0, c10); d10 = fma(s10, b1, d10);
        let s11 = bc(a1, 3u); c11 = fma(s11, b0, c11); d11 = fma(s11, b1, d11);
        let s12 = bc(a1, 4u); c12 = fma(s12, b0, c12); d12 = fma(s12, b1, d12);
        let s13 = bc(a1, 5u); c13 = fma(s13, b0, c13); d13 = fma(s13, b1, d13);
        let s14 = bc(a1, 6u); c14 = fma(s14, b0, c14); d14 = fma(s14, b1, d14);
        let s15 = bc(a1, 7u); c15 = fma(s15, b0, c15); d15 = fma(s15, b1, d15);
        let s16 = bc(a2, 0u); c16 = fma(s16, b0, c16); d16 = fma(s16, b1, d16);
        let s17 = bc(a2, 1u); c17 = fma(s17, b0, c17); d17 = fma(s17, b1, d17);
        let s18 = bc(a2, 2u); c18 = fma(s18, b0, c18); d18 = fma(s18, b1, d18);
        let s19 = bc(a2, 3u); c19 = fma(s19, b0, c19); d19 = fma(s19, b1, d19);
        let s20 = bc(a2, 4u); c20 = fma(s20, b0, c20); d20 = fma(s20, b1, d20);
        let s21 = bc(a2, 5u); c21 = fma(s21, b0, c21); d21 = fma(s21, b1, d21);
        let s22 = bc(a2, 6u); c22 = fma(s22, b0, c22); d22 = fma(s22, b1, d22);
        let s23 = bc(a2, 7u); c23 = fma(s23, b0, c23); d23 = fma(s23, b1, d23);
        let s24 = bc(a3, 0u); c24 = fma(s24, b0, c24); d24 = fma(s24, b1, d24);
        let s25 = bc(a3, 1u); c25 = fma(s25, b0, c25); d25 = fma(s25, b1, d25);
        let s26 = bc(a3, 2u); c26 = fma(s26, b0, c26); d26 = fma(s26, b1, d26);
        let s27 = bc(a3, 3u); c27 = fma(s27, b0, c27); d27 = fma(s27, b1, d27);
        let s28 = bc(a3, 4u); c28 = fma(s28, b0, c28); d28 = fma(s28, b1, d28);
        let s29 = bc(a3, 5u); c29 = fma(s29, b0, c29); d29 = fma(s29, b1, d29);
        let s30 = bc(a3, 6u); c30 = fma(s30, b0, c30); d30 = fma(s30, b1, d30);
        let s31 = bc(a3, 7u); c31 = fma(s31, b0, c31); d31 = fma(s31, b1, d31);
        let s32 = bc(a4, 0u); c32 = fma(s32, b0, c32); d32 = fma(s32, b1, d32);
        let s33 = bc(a4, 1u); c33 = fma(s33, b0, c33); d33 = fma(s33, b1, d33);
        let s34 = bc(a4, 2u); c34 = fma(s34, b0, c34); d34 = fma(s34, b1, d34);
        let s35 = bc(a4, 3u); c35 = fma(s35, b0, c35); d35 = fma(s35, b1, d35);
        let s36 = bc(a4, 4u); c36 = fma(s36, b0, c36); d36 = fma(s36, b1, d36);
        let s37 = bc(a4, 5u); c37 = fma(s37, b0, c37); d37 = fma(s37, b1, d37);
        let s38 = bc(a4, 6u); c38 = fma(s38, b0, c38); d38 = fma(s38, b1, d38);
        let s39 = bc(a4, 7u); c39 = fma(s39, b0, c39); d39 = fma(s39, b1, d39);
        let s40 = bc(a5, 0u); c40 = fma(s40, b0, c40); d40 = fma(s40, b1, d40);
        let s41 = bc(a5, 1u); c41 = fma(s41, b0, c41); d41 = fma(s41, b1, d41);
        let s42 = bc(a5, 2u); c42 = fma(s42, b0, c42); d42 = fma(s42, b1, d42);
        let s43 = bc(a5, 3u); c43 = fma(s43, b0, c43); d43 = fma(s43, b1, d43);
        let s44 = bc(a5, 4u); c44 = fma(s44, b0, c44); d44 = fma(s44, b1, d44);
        let s45 = bc(a5, 5u); c45 = fma(s45, b0, c45); d45 = fma(s45, b1, d45);
        let s46 = bc(a5, 6u); c46 = fma(s46, b0, c46); d46 = fma(s46, b1, d46);
        let s47 = bc(a5, 7u); c47 = fma(s47, b0, c47); d47 = fma(s47, b1, d47);
        let s48 = bc(a6, 0u); c48 = fma(s48, b0, c48); d48 = fma(s48, b1, d48);
        let s49 = bc(a6, 1u); c49 = fma(s49, b0, c49); d49 = fma(s49, b1, d49);
        let s50 = bc(a6, 2u); c50 = fma(s50, b0, c50); d50 = fma(s50, b1, d50);
        let s51 = bc(a6, 3u); c51 = fma(s51, b0, c51); d51 = fma(s51, b1, d51);
        let s52 = bc(a6, 4u); c52 = fma(s52, b0, c52); d52 = fma(s52, b1, d52);
        let s53 = bc(a6, 5u); c53 = fma(s53, b0, c53); d53 = fma(s53, b1, d53);
        let s54 = bc(a6, 6u); c54 = fma(s54, b0, c54); d54 = fma(s54, b1, d54);
        let s55 = bc(a6, 7u); c55 = fma(s55, b0, c55); d55 = fma(s55, b1, d55);
        let s56 = bc(a7, 0u); c56 = fma(s56, b0, c56); d56 = fma(s56, b1, d56);
        let s57 = bc(a7, 1u); c57 = fma(s57, b0, c57); d57 = fma(s57, b1, d57);
        let s58 = bc(a7, 2u); c58 = fma(s58, b0, c58); d58 = fma(s58, b1, d58);
        let s59 = bc(a7, 3u); c59 = fma(s59, b0, c59); d59 = fma(s59, b1, d59);
        let s60 = bc(a7, 4u); c60 = fma(s60, b0, c60); d60 = fma(s60, b1, d60);
        let s61 = bc(a7, 5u); c61 = fma(s61, b0, c61); d61 = fma(s61, b1, d61);
        let s62 = bc(a7, 6u); c62 = fma(s62, b0, c62); d62 = fma(s62, b1, d62);
        let s63 = bc(a7, 7u); c63 = fma(s63, b0, c63); d63 = fma(s63, b1, d63);
    }
    store_row(m0 + 0u, n0, c00, d00);
    store_row(m0 + 1u, n0, c01, d01);
    store_row(m0 + 2u, n0, c02, d02);
    store_row(m0 + 3u, n0, c03, d03);
    store_row(m0 + 4u, n0, c04, d04);
    store_row(m0 + 5u, n0, c05, d05);
    store_row(m0 + 6u, n0, c06, d06);
    store_row(m0 + 7u, n0, c07, d07);
    store_row(m0 + 8u, n0, c08, d08);
    store_row(m0 + 9u, n0, c09, d09);
    store_row(m0 + 10u, n0, c10, d10);
    store_row(m0 + 11u, n0, c11, d11);
    store_row(m0 + 12u, n0, c12, d12);
    store_row(m0 + 13u, n0, c13, d13);
    store_row(m0 + 14u, n0, c14, d14);
    store_row(m0 + 15u, n0, c15, d15);
    store_row(m0 + 16u, n0, c16, d16);
    store_row(m0 + 17u, n0, c17, d17);
    store_row(m0 + 18u, n0, c18, d18);
    store_row(m0 + 19u, n0, c19, d19);
    store_row(m0 + 20u, n0, c20, d20);
    store_row(m0 + 21u, n0, c21, d21);
    store_row(m0 + 22u, n0, c22, d22);
    store_row(m0 + 23u, n0, c23, d23);
    store_row(m0 + 24u, n0, c24, d24);
    store_row(m0 + 25u, n0, c25, d25);
    store_row(m0 + 26u, n0, c26, d26);
    store_row(m0 + 27u, n0, c27, d27);
    store_row(m0 + 28u, n0, c28, d28);
    store_row(m0 + 29u, n0, c29, d29);
    store_row(m0 + 30u, n0, c30, d30);
    store_row(m0 + 31u, n0, c31, d31);
    store_row(m0 + 32u, n0, c32, d32);
    store_row(m0 + 33u, n0, c33, d33);
    store_row(m0 + 34u, n0, c34, d34);
    store_row(m0 + 35u, n0, c35, d35);
    store_row(m0 + 36u, n0, c36, d36);
    store_row(m0 + 37u, n0, c37, d37);
    store_row(m0 + 38u, n0, c38, d38);
    store_row(m0 + 39u, n0, c39, d39);
    store_row(m0 + 40u, n0, c40, d40);
    store_row(m0 + 41u, n0, c41, d41);
    store_row(m0 + 42u, n0, c42, d42);
    store_row(m0 + 43u, n0, c43, d43);
    store_row(m0 + 44u, n0, c44, d44);
    store_row(m0 + 45u, n0, c45, d45);
    store_row(m0 + 46u, n0, c46, d46);
    store_row(m0 + 47u, n0, c47, d47);
    store_row(m0 + 48u, n0, c48, d48);
    store_row(m0 + 49u, n0, c49, d49);
    store_row(m0 + 50u, n0, c50, d50);
    store_row(m0 + 51u, n0, c51, d51);
    store_row(m0 + 52u, n0, c52, d52);
    store_row(m0 + 53u, n0, c53, d53);
    store_row(m0 + 54u, n0, c54, d54);
    store_row(m0 + 55u, n0, c55, d55);
    store_row(m0 + 56u, n0, c56, d56);
    store_row(m0 + 57u, n0, c57, d57);
    store_row(m0 + 58u, n0, c58, d58);
    store_row(m0 + 59u, n0, c59, d59);
    store_row(m0 + 60u, n0, c60, d60);
    store_row(m0 + 61u, n0, c61, d61);
    store_row(m0 + 62u, n0, c62, d62);
    store_row(m0 + 63u, n0, c63, d63);
}
