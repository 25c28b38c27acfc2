// Tiled matmul: Y[m, ycol + n] (=|+=) sum_k X[m, k] * W[n, k] + bias[n]
// X [M, K] row-major f32; W [N, K] row-major (nn.Linear layout), stored as WT
// (f32, or f16 when compiled with `enable f16;` and WT = f16); f32 accumulation.
// A 256-thread workgroup computes a BM x BN tile, each thread a TM x TN block,
// stepping through K in slices of BK staged in workgroup memory.
// Y rows have stride ldy so a split over N writes column slices of one output.

alias WT = f32; // f16-switch

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;
const TM: u32 = 4u;
const TN: u32 = 4u;
const WG: u32 = 256u; // (BM / TM) * (BN / TN)

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

var<workgroup> xs: array<f32, BK * BM>; // xs[kk * BM + mm]
var<workgroup> ws: array<f32, BK * BN>; // ws[kk * BN + nn]

@compute @workgroup_size(WG)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let tr = li / (BN / TN); // thread row in the tile
    let tc = li % (BN / TN);
    var acc: array<f32, 16>; // TM * TN
    for (var i = 0u; i < TM * TN; i++) { acc[i] = 0.0; }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // stage X[m0.., k0..] and W[n0.., k0..]; reads run along k (contiguous)
        for (var e = li; e < BM * BK; e += WG) {
            let mm = e / BK;
            let kk = e % BK;
            let gm = m0 + mm;
            let gk = k0 + kk;
            var v = 0.0;
            if (gm < p.m && gk < p.k) { v = x[gm * p.k + gk]; }
            xs[kk * BM + mm] = v;
        }
        for (var e = li; e < BN * BK; e += WG) {
            let nn = e / BK;
            let kk = e % BK;
            let gn = n0 + nn;
            let gk = k0 + kk;
            var v = 0.0;
            if (gn < p.n && gk < p.k) { v = f32(w[gn * p.k + gk]); }
            ws[kk * BN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < TM; i++) { a[i] = xs[kk * BM + tr * TM + i]; }
            for (var j = 0u; j < TN; j++) { b[j] = ws[kk * BN + tc + j * (BN / TN)]; }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * TN + j] = fma(a[i], b[j], acc[i * TN + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let gm = m0 + tr * TM + i;
        if (gm >= p.m) { continue; }
        for (var j = 0u; j < TN; j++) {
            let gn = n0 + tc + j * (BN / TN);
            if (gn >= p.n) { continue; }
            var v = acc[i * TN + j];
            if (p.has_bias != 0u) { v += bias[gn]; }
            let yi = gm * p.ldy + p.ycol + gn;
            if (p.accumulate != 0u) { v += y[yi]; }
            y[yi] = v;
        }
    }
}
