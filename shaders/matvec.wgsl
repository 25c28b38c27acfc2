// Matrix-vector product for a few rows (decoding): Y[m, ycol + n] (=|+=) sum_k X[m, k] W[n, k] + bias[n]
// for m < M <= MV (= 4). One 64-invocation workgroup per output column n reads W's row n
// once (coalesced along k) for all M rows, so nothing is wasted on padding rows the way a
// 64-row tile would be. Same bindings and parameters as matmul.wgsl.

alias WT = f32; // f16-switch

const WG: u32 = 64u;
const MV: u32 = 4u;

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

var<workgroup> red: array<vec4<f32>, WG>;

@compute @workgroup_size(WG)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = wid.y * nwg.x + wid.x;
    if (n >= p.n) { return; } // uniform per workgroup
    var acc = vec4<f32>(0.0);
    for (var k = lid.x; k < p.k; k += WG) {
        let wv = f32(w[n * p.k + k]);
        var xv = vec4<f32>(0.0);
        for (var r = 0u; r < MV; r++) {
            if (r < p.m) { xv[r] = x[r * p.k + k]; }
        }
        acc = fma(xv, vec4<f32>(wv), acc);
    }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
        workgroupBarrier();
    }
    if (lid.x < p.m) {
        var v = red[0][lid.x];
        if (p.has_bias != 0u) { v += bias[n]; }
        let yi = lid.x * p.ldy + p.ycol + n;
        if (p.accumulate != 0u) { v += y[yi]; }
        y[yi] = v;
    }
}
