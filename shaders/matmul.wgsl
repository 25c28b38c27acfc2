// Tiled matmul: Y[m, ycol + n] (=|+=) sum_k X[m, k] * W[n, k] + bias[n]
// X [M, K] row-major f32; W [N, K] row-major (nn.Linear layout), stored as WT
// (f32, or f16 when compiled with `enable f16;` and WT = f16); f32 accumulation.
// Y rows have stride ldy so a split over N writes column slices of one output.
//
// A 256-invocation (16 x 16) workgroup computes a BM x BN tile of Y, stepping through K
// in slices of BK staged in workgroup memory as vec4s along M (for X) and N (for W).
// Invocation (tr, tc) owns RM groups of 4 rows (4 tr + i, and 64 + 4 tr + i when RM = 2)
// and RN groups of 4 columns likewise: a (4 RM) x (4 RN) register tile; per k it reads
// RM + RN vec4s from workgroup memory and does 16 RM RN FMAs as whole-vec4 operations on
// named accumulators (with loops over private arrays instead, some drivers keep the tile
// in memory: 50x slower on an H200).
// The host picks BM = 64 RM and BN = 64 RN: (64, 64, 1, 1) for small outputs,
// (128, 128, 2, 2) for large ones.

alias WT = f32; // f16-switch

const BM: u32 = 128u;
const BN: u32 = 128u;
const RM: u32 = 2u; // BM / 64
const RN: u32 = 2u; // BN / 64
const BK: u32 = 16u;
const WG: u32 = 256u;
const TX: u32 = 16u; // invocations along N = BN / (4 RN)
const TY: u32 = 16u; // invocations along M = BM / (4 RM)

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

var<workgroup> xs: array<vec4<f32>, BK * BM / 4u>; // xs[kk * BM/4 + q] = X[m0 + 4q .. 4q + 3, k0 + kk]
var<workgroup> ws: array<vec4<f32>, BK * BN / 4u>; // ws[kk * BN/4 + q] = W[n0 + 4q .. 4q + 3, k0 + kk]

fn xat(r: u32, c: u32) -> f32 {
    if (r < p.m && c < p.k) { return x[r * p.k + c]; }
    return 0.0;
}

fn wat(r: u32, c: u32) -> f32 {
    if (r < p.n && c < p.k) { return f32(w[r * p.k + c]); }
    return 0.0;
}

// Y[gm, gn0 .. gn0 + 3] from one accumulator
fn store4(gm: u32, gn0: u32, v: vec4<f32>) {
    if (gm >= p.m) { return; }
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

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tr = li / TX;
    let tc = li % TX;
    // rows m0 + 4 tr + i (group 0) and m0 + 4 (TY + tr) + i (group 1);
    // columns n0 + 4 tc + j (group 0) and n0 + 4 (TX + tc) + j (group 1).
    // a<g><i>_<h>: row i of row group g times column group h
    var a00_0 = vec4<f32>(0.0); var a01_0 = vec4<f32>(0.0); var a02_0 = vec4<f32>(0.0); var a03_0 = vec4<f32>(0.0);
    var a00_1 = vec4<f32>(0.0); var a01_1 = vec4<f32>(0.0); var a02_1 = vec4<f32>(0.0); var a03_1 = vec4<f32>(0.0);
    var a10_0 = vec4<f32>(0.0); var a11_0 = vec4<f32>(0.0); var a12_0 = vec4<f32>(0.0); var a13_0 = vec4<f32>(0.0);
    var a10_1 = vec4<f32>(0.0); var a11_1 = vec4<f32>(0.0); var a12_1 = vec4<f32>(0.0); var a13_1 = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // stage X[m0.., k0..] and W[n0.., k0..]; consecutive invocations read along k
        for (var e = li; e < BK * BM / 4u; e += WG) {
            let kk = e % BK;
            let q = e / BK;
            let r = m0 + 4u * q;
            let gk = k0 + kk;
            xs[kk * (BM / 4u) + q] = vec4<f32>(xat(r, gk), xat(r + 1u, gk), xat(r + 2u, gk), xat(r + 3u, gk));
        }
        for (var e = li; e < BK * BN / 4u; e += WG) {
            let kk = e % BK;
            let q = e / BK;
            let c = n0 + 4u * q;
            let gk = k0 + kk;
            ws[kk * (BN / 4u) + q] = vec4<f32>(wat(c, gk), wat(c + 1u, gk), wat(c + 2u, gk), wat(c + 3u, gk));
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let x0 = xs[kk * (BM / 4u) + tr];
            let w0 = ws[kk * (BN / 4u) + tc];
            a00_0 = fma(vec4<f32>(x0.x), w0, a00_0);
            a01_0 = fma(vec4<f32>(x0.y), w0, a01_0);
            a02_0 = fma(vec4<f32>(x0.z), w0, a02_0);
            a03_0 = fma(vec4<f32>(x0.w), w0, a03_0);
            if (RN == 2u) {
                let w1 = ws[kk * (BN / 4u) + TX + tc];
                a00_1 = fma(vec4<f32>(x0.x), w1, a00_1);
                a01_1 = fma(vec4<f32>(x0.y), w1, a01_1);
                a02_1 = fma(vec4<f32>(x0.z), w1, a02_1);
                a03_1 = fma(vec4<f32>(x0.w), w1, a03_1);
            }
            if (RM == 2u) {
                let x1 = xs[kk * (BM / 4u) + TY + tr];
                a10_0 = fma(vec4<f32>(x1.x), w0, a10_0);
                a11_0 = fma(vec4<f32>(x1.y), w0, a11_0);
                a12_0 = fma(vec4<f32>(x1.z), w0, a12_0);
                a13_0 = fma(vec4<f32>(x1.w), w0, a13_0);
                if (RN == 2u) {
                    let w1 = ws[kk * (BN / 4u) + TX + tc];
                    a10_1 = fma(vec4<f32>(x1.x), w1, a10_1);
                    a11_1 = fma(vec4<f32>(x1.y), w1, a11_1);
                    a12_1 = fma(vec4<f32>(x1.z), w1, a12_1);
                    a13_1 = fma(vec4<f32>(x1.w), w1, a13_1);
                }
            }
        }
        workgroupBarrier();
    }

    let r0 = m0 + 4u * tr;
    let r1 = m0 + 4u * (TY + tr);
    let c0 = n0 + 4u * tc;
    let c1 = n0 + 4u * (TX + tc);
    store4(r0, c0, a00_0);
    store4(r0 + 1u, c0, a01_0);
    store4(r0 + 2u, c0, a02_0);
    store4(r0 + 3u, c0, a03_0);
    if (RN == 2u) {
        store4(r0, c1, a00_1);
        store4(r0 + 1u, c1, a01_1);
        store4(r0 + 2u, c1, a02_1);
        store4(r0 + 3u, c1, a03_1);
    }
    if (RM == 2u) {
        store4(r1, c0, a10_0);
        store4(r1 + 1u, c0, a11_0);
        store4(r1 + 2u, c0, a12_0);
        store4(r1 + 3u, c0, a13_0);
        if (RN == 2u) {
            store4(r1, c1, a10_1);
            store4(r1 + 1u, c1, a11_1);
            store4(r1 + 2u, c1, a12_1);
            store4(r1 + 3u, c1, a13_1);
        }
    }
}
