// max |x| over x[0 .. n) into out[0] as the bits of an f32 (atomicMax on u32: non-negative
// floats order as their bits), for the f16 scale of ops::mma's gradient products. out starts
// at 0 (a new buffer) and several dispatches (parts of x over bindings) may add to it.

const WG: u32 = 256u;

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<atomic<u32>>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn absmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    var m = 0.0;
    for (var i = wid.x * WG + li; i < p.n; i += nwg.x * WG) {
        m = max(m, abs(x[i]));
    }
    red[li] = m;
    for (var h = WG / 2u; h > 0u; h /= 2u) {
        workgroupBarrier();
        if (li < h) { red[li] = max(red[li], red[li + h]); }
    }
    if (li == 0u) { atomicMax(&out[0], bitcast<u32>(red[0])); }
}
