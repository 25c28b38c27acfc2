// Gated RMSNorm per head (the output norm of the Gated DeltaNet block, src/ops/gated_norm.rs):
//   y = o * rstd * w * silu(z),   rstd = 1 / sqrt(mean(o^2) + eps)
// over rows of length d (one row per token and head). One workgroup per row; rows are
// folded over a 2-D grid.
//   gnorm_fwd: o, z, w -> y, rstd (rstd is kept for the backward)
//   gnorm_bwd: o, z, w, rstd, dy -> do, dz, t with t = dy * o * rstd * silu(z), whose
//              column sum over rows is dw

const WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> partial: array<f32, WG>;

fn row_id(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

// sum over the workgroup of v (every invocation gets the result)
fn wg_sum(lid: u32, v: f32) -> f32 {
    partial[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let r = partial[0];
    workgroupBarrier();
    return r;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@group(0) @binding(1) var<storage, read> f_o: array<f32>;
@group(0) @binding(2) var<storage, read> f_z: array<f32>;
@group(0) @binding(3) var<storage, read> f_w: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_y: array<f32>;
@group(0) @binding(5) var<storage, read_write> f_rstd: array<f32>;

@compute @workgroup_size(WG)
fn gnorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_id(wid, nwg);
    if (row >= p.rows) { return; } // uniform per workgroup
    let base = row * p.cols;
    var ss = 0.0;
    for (var c = lid.x; c < p.cols; c += WG) {
        let v = f_o[base + c];
        ss += v * v;
    }
    let rstd = inverseSqrt(wg_sum(lid.x, ss) / f32(p.cols) + p.eps);
    for (var c = lid.x; c < p.cols; c += WG) {
        let z = f_z[base + c];
        f_y[base + c] = f_o[base + c] * rstd * f_w[c] * (z * sigmoid(z));
    }
    if (lid.x == 0u) { f_rstd[row] = rstd; }
}

@group(0) @binding(1) var<storage, read> b_o: array<f32>;
@group(0) @binding(2) var<storage, read> b_z: array<f32>;
@group(0) @binding(3) var<storage, read> b_w: array<f32>;
@group(0) @binding(4) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(5) var<storage, read> b_dy: array<f32>;
@group(0) @binding(6) var<storage, read_write> b_do: array<f32>;
@group(0) @binding(7) var<storage, read_write> b_dz: array<f32>;
@group(0) @binding(8) var<storage, read_write> b_t: array<f32>;

@compute @workgroup_size(WG)
fn gnorm_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = row_id(wid, nwg);
    if (row >= p.rows) { return; } // uniform per workgroup
    let base = row * p.cols;
    let rstd = b_rstd[row];
    // n = o * rstd, s = silu(z), dn = dy * w * s; do = rstd * (dn - n * mean(dn * n))
    var dot = 0.0;
    for (var c = lid.x; c < p.cols; c += WG) {
        let z = b_z[base + c];
        let sig = sigmoid(z);
        let s = z * sig;
        let n = b_o[base + c] * rstd;
        let dy = b_dy[base + c];
        let w = b_w[c];
        let dn = dy * w * s;
        dot += dn * n;
        b_dz[base + c] = dy * n * w * sig * (1.0 + z * (1.0 - sig));
        b_t[base + c] = dy * n * s;
    }
    let mean_dn_n = wg_sum(lid.x, dot) / f32(p.cols);
    for (var c = lid.x; c < p.cols; c += WG) {
        let z = b_z[base + c];
        let s = z * sigmoid(z);
        let n = b_o[base + c] * rstd;
        let dn = b_dy[base + c] * b_w[c] * s;
        b_do[base + c] = rstd * (dn - n * mean_dn_n);
    }
}
