// Element-wise kernels: embedding gather, residual add, SwiGLU.
// Thread id is folded over a 2-D grid: id = (wid.y * nwg.x + wid.x) * WG + lid.x.

const WG: u32 = 256u;

struct Params {
    n: u32,      // elements (add, swiglu) or tokens (embed)
    cols: u32,   // row width (embed)
    row0: u32,   // first table row held by this binding (embed: table split over bindings)
    nrows: u32,  // table rows in this binding (embed)
}

@group(0) @binding(0) var<uniform> p: Params;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid.x;
}

// out[t, :] = table[ids[t], :] for the ids this table slice holds.
@group(0) @binding(1) var<storage, read> e_ids: array<u32>;
@group(0) @binding(2) var<storage, read> e_table: array<f32>;
@group(0) @binding(3) var<storage, read_write> e_out: array<f32>;

@compute @workgroup_size(WG)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n * p.cols) { return; }
    let t = i / p.cols;
    let c = i % p.cols;
    let id = e_ids[t];
    if (id < p.row0 || id >= p.row0 + p.nrows) { return; }
    e_out[i] = e_table[(id - p.row0) * p.cols + c];
}

// y += x
@group(0) @binding(1) var<storage, read> a_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> a_y: array<f32>;

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    a_y[i] = a_y[i] + a_x[i];
}

// out = silu(gate) * up
@group(0) @binding(1) var<storage, read> s_gate: array<f32>;
@group(0) @binding(2) var<storage, read> s_up: array<f32>;
@group(0) @binding(3) var<storage, read_write> s_out: array<f32>;

@compute @workgroup_size(WG)
fn swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = s_gate[i];
    s_out[i] = g / (1.0 + exp(-g)) * s_up[i];
}
