// Element-wise kernels: embedding gather, residual add, SwiGLU, and the backward of
// SwiGLU and of the embedding gather.
// Thread id is folded over a 2-D grid: id = (wid.y * nwg.x + wid.x) * WG + lid.x.

const WG: u32 = 256u;

struct Params {
    n: u32,      // elements (add, swiglu, swiglu_bwd), tokens (embed) or unique ids (embed_bwd)
    cols: u32,   // row width (embed, embed_bwd)
    row0: u32,   // first table row held by this binding (embed: table split over bindings)
    nrows: u32,  // table rows in this binding (embed)
    u0: u32,     // embed_bwd: first unique id of this dispatch
    nuniq: u32,  // embed_bwd: unique ids in the whole CSR
    _pad0: u32,
    _pad1: u32,
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

// dgate = dact * up * silu'(gate), dup = dact * silu(gate)
@group(0) @binding(1) var<storage, read> sb_gate: array<f32>;
@group(0) @binding(2) var<storage, read> sb_up: array<f32>;
@group(0) @binding(3) var<storage, read> sb_dact: array<f32>;
@group(0) @binding(4) var<storage, read_write> sb_dgate: array<f32>;
@group(0) @binding(5) var<storage, read_write> sb_dup: array<f32>;

@compute @workgroup_size(WG)
fn swiglu_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = sb_gate[i];
    let sg = 1.0 / (1.0 + exp(-g));
    let d = sb_dact[i];
    sb_dgate[i] = d * sb_up[i] * sg * (1.0 + g * (1.0 - sg));
    sb_dup[i] = d * g * sg;
}

// Embedding backward without atomics: csr = [unique ids (nuniq, ascending) | offsets
// (nuniq + 1) | positions grouped by id]. One workgroup per unique id u0 + k adds the dx
// rows of its positions to its table row (the binding holds rows row0 ..).
@group(0) @binding(1) var<storage, read> eb_csr: array<u32>;
@group(0) @binding(2) var<storage, read> eb_dx: array<f32>;
@group(0) @binding(3) var<storage, read_write> eb_table: array<f32>;

@compute @workgroup_size(WG)
fn embed_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = wid.y * nwg.x + wid.x;
    if (k >= p.n) { return; }
    let u = p.u0 + k;
    let id = eb_csr[u];
    let beg = eb_csr[p.nuniq + u];
    let end = eb_csr[p.nuniq + u + 1u];
    let pos = 2u * p.nuniq + 1u;
    let dst = (id - p.row0) * p.cols;
    for (var c = lid.x; c < p.cols; c += WG) {
        var acc = 0.0;
        for (var j = beg; j < end; j++) {
            acc += eb_dx[eb_csr[pos + j] * p.cols + c];
        }
        eb_table[dst + c] += acc;
    }
}
