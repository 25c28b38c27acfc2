// RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * w.
// One workgroup per row; rows are folded over a 2-D grid. In-place use (y == x) is not
// allowed by WGSL aliasing rules, so callers pass distinct buffers.

const WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn rmsnorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; } // uniform per workgroup
    let base = row * p.cols;
    var ss = 0.0;
    for (var c = lid.x; c < p.cols; c += WG) {
        let v = x[base + c];
        ss += v * v;
    }
    partial[lid.x] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { partial[lid.x] += partial[lid.x + s]; }
        workgroupBarrier();
    }
    let inv = inverseSqrt(partial[0] / f32(p.cols) + p.eps);
    for (var c = lid.x; c < p.cols; c += WG) {
        y[base + c] = x[base + c] * inv * w[c];
    }
}
