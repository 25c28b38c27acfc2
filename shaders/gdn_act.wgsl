// Element-wise pieces of the Gated DeltaNet block (src/ops/gdn_act.rs), forward and backward:
//   silu_fwd        y = silu(z)                       (z, the pre-activation, is kept)
//   silu_bwd        d = d * silu'(z)                  (in place: dy becomes dz)
//   gate_fwd        g = -exp(A_log[h]) softplus(za + dt_bias[h]),  beta = sigmoid(zb)
//   gate_bwd        dg -> dza, dbeta -> dzb (in place) and t = dg * g, whose column sum
//                   over tokens is dA_log (the column sum of dza is ddt_bias)
//   colsum_partial  out[s, c] (=|+=) sum of x[r, c] over the s-th range of rows
// Thread ids are folded over a 2-D grid: id = (wid.y * nwg.x + wid.x) * WG + lid.x.

const WG: u32 = 256u;

struct Params {
    n: u32,          // elements (silu) or tokens x heads (gate)
    heads: u32,      // H (gate)
    rows_per: u32,   // rows per split (colsum_partial)
    accumulate: u32, // colsum_partial
    rows: u32,       // colsum_partial
    cols: u32,       // colsum_partial
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

// log(1 + u) for u >= 0, accurate in f32 for small u (WGSL has no log1p)
fn log1p_pos(u: f32) -> f32 {
    if (u < 0.0625) {
        // alternating series; the first omitted term is below 1e-11 relative
        var s = -1.0 / 9.0;
        s = fma(s, u, 1.0 / 8.0);
        s = fma(s, u, -1.0 / 7.0);
        s = fma(s, u, 1.0 / 6.0);
        s = fma(s, u, -1.0 / 5.0);
        s = fma(s, u, 1.0 / 4.0);
        s = fma(s, u, -1.0 / 3.0);
        s = fma(s, u, 1.0 / 2.0);
        s = fma(s, -u, 1.0);
        return s * u;
    }
    return log(1.0 + u);
}

// softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^-|x|)
fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log1p_pos(exp(-abs(x)));
}

// ---- SiLU ----
@group(0) @binding(1) var<storage, read> sf_z: array<f32>;
@group(0) @binding(2) var<storage, read_write> sf_y: array<f32>;

@compute @workgroup_size(WG)
fn silu_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let z = sf_z[i];
    sf_y[i] = z * sigmoid(z);
}

@group(0) @binding(1) var<storage, read> sb_z: array<f32>;
@group(0) @binding(2) var<storage, read_write> sb_d: array<f32>;

@compute @workgroup_size(WG)
fn silu_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let z = sb_z[i];
    let s = sigmoid(z);
    sb_d[i] = sb_d[i] * s * (1.0 + z * (1.0 - s));
}

// ---- gate (log decay) and write strength ----
@group(0) @binding(1) var<storage, read> gf_za: array<f32>;
@group(0) @binding(2) var<storage, read> gf_zb: array<f32>;
@group(0) @binding(3) var<storage, read> gf_alog: array<f32>;
@group(0) @binding(4) var<storage, read> gf_dt: array<f32>;
@group(0) @binding(5) var<storage, read_write> gf_g: array<f32>;
@group(0) @binding(6) var<storage, read_write> gf_beta: array<f32>;

@compute @workgroup_size(WG)
fn gate_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let h = i % p.heads;
    gf_g[i] = -exp(gf_alog[h]) * softplus(gf_za[i] + gf_dt[h]);
    gf_beta[i] = sigmoid(gf_zb[i]);
}

@group(0) @binding(1) var<storage, read> gb_za: array<f32>;
@group(0) @binding(2) var<storage, read> gb_beta: array<f32>;
@group(0) @binding(3) var<storage, read> gb_alog: array<f32>;
@group(0) @binding(4) var<storage, read> gb_dt: array<f32>;
@group(0) @binding(5) var<storage, read_write> gb_dg: array<f32>;    // in: dL/dg,    out: dL/dza
@group(0) @binding(6) var<storage, read_write> gb_dbeta: array<f32>; // in: dL/dbeta, out: dL/dzb
@group(0) @binding(7) var<storage, read_write> gb_t: array<f32>;     // out: dL/dg * g

@compute @workgroup_size(WG)
fn gate_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let h = i % p.heads;
    let a = exp(gb_alog[h]);
    let u = gb_za[i] + gb_dt[h];
    let dg = gb_dg[i];
    gb_t[i] = dg * (-a * softplus(u));
    gb_dg[i] = -dg * a * sigmoid(u);
    let beta = gb_beta[i];
    gb_dbeta[i] = gb_dbeta[i] * beta * (1.0 - beta);
}

// ---- column sums, two-stage: workgroup (x: 64 columns, y: split of rows) ----
@group(0) @binding(1) var<storage, read> cs_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cs_out: array<f32>;

const CS_COLS: u32 = 64u;
const CS_LANES: u32 = WG / CS_COLS;
var<workgroup> cs_part: array<f32, WG>;

@compute @workgroup_size(WG)
fn colsum_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x * CS_COLS + lid.x % CS_COLS;
    let lane = lid.x / CS_COLS;
    let r0 = wid.y * p.rows_per;
    let r1 = min(r0 + p.rows_per, p.rows);
    var acc = 0.0;
    if (c < p.cols) {
        for (var r = r0 + lane; r < r1; r += CS_LANES) {
            acc += cs_x[r * p.cols + c];
        }
    }
    cs_part[lid.x] = acc;
    workgroupBarrier();
    if (lane == 0u && c < p.cols) {
        var s = cs_part[lid.x];
        for (var l = 1u; l < CS_LANES; l++) {
            s += cs_part[l * CS_COLS + lid.x];
        }
        let o = wid.y * p.cols + c;
        if (p.accumulate != 0u) { s += cs_out[o]; }
        cs_out[o] = s;
    }
}
