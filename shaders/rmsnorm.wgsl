// RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * w.
// One workgroup per row; rows are folded over a 2-D grid. In-place use (y == x) is not
// allowed by WGSL aliasing rules, so callers pass distinct buffers.
//   rmsnorm:     x, w -> y
//   rmsnorm_bwd: x, w, dy -> dx (= or +=), inv = 1 / sqrt(mean(x^2) + eps) per row, with
//                dx = inv (w dy) - x inv^3 mean(x w dy)
//   rmsnorm_dw:  x, dy, inv -> out[s, c] (= or +=) sum of dy x inv over the s-th range of
//                rows (workgroup x: 64 columns, y: range of rows); their sum is dw

const WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    accumulate: u32, // rmsnorm_bwd: dx +=; rmsnorm_dw: out +=
    rows_per: u32,   // rmsnorm_dw: rows per range
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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

@group(0) @binding(1) var<storage, read> b_x: array<f32>;
@group(0) @binding(2) var<storage, read> b_w: array<f32>;
@group(0) @binding(3) var<storage, read> b_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> b_dx: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_inv: array<f32>;

var<workgroup> partial2: array<vec2<f32>, WG>;

@compute @workgroup_size(WG)
fn rmsnorm_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; } // uniform per workgroup
    let base = row * p.cols;
    // (sum x^2, sum x w dy)
    var acc = vec2<f32>(0.0, 0.0);
    for (var c = lid.x; c < p.cols; c += WG) {
        let v = b_x[base + c];
        acc += vec2<f32>(v * v, v * b_w[c] * b_dy[base + c]);
    }
    partial2[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { partial2[lid.x] += partial2[lid.x + s]; }
        workgroupBarrier();
    }
    let n = f32(p.cols);
    let inv = inverseSqrt(partial2[0].x / n + p.eps);
    let k = inv * inv * inv * partial2[0].y / n;
    for (var c = lid.x; c < p.cols; c += WG) {
        var g = inv * b_w[c] * b_dy[base + c] - b_x[base + c] * k;
        if (p.accumulate != 0u) { g += b_dx[base + c]; }
        b_dx[base + c] = g;
    }
    if (lid.x == 0u) { b_inv[row] = inv; }
}

@group(0) @binding(1) var<storage, read> d_x: array<f32>;
@group(0) @binding(2) var<storage, read> d_dy: array<f32>;
@group(0) @binding(3) var<storage, read> d_inv: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_out: array<f32>;

const DW_COLS: u32 = 64u;
const DW_LANES: u32 = 4u;
var<workgroup> dw_part: array<f32, 256>;

@compute @workgroup_size(256)
fn rmsnorm_dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * DW_COLS + lid.x % DW_COLS;
    let lane = lid.x / DW_COLS;
    let r0 = wid.y * p.rows_per;
    let r1 = min(r0 + p.rows_per, p.rows);
    var acc = 0.0;
    if (c < p.cols) {
        for (var r = r0 + lane; r < r1; r += DW_LANES) {
            acc += d_dy[r * p.cols + c] * d_x[r * p.cols + c] * d_inv[r];
        }
    }
    dw_part[lid.x] = acc;
    workgroupBarrier();
    if (lane == 0u && c < p.cols) {
        var s = dw_part[lid.x];
        for (var l = 1u; l < DW_LANES; l++) {
            s += dw_part[l * DW_COLS + lid.x];
        }
        let o = wid.y * p.cols + c;
        if (p.accumulate != 0u) { s += d_out[o]; }
        d_out[o] = s;
    }
}
