// Rotary position embedding, Hugging Face rotate-half convention, in place on
// x[t, h, :] (head dim d): for i < d/2, with angle = (pos0 + t mod seq_len) * inv_freq[i]
// (theta^(-2i/d) after any RoPE scaling; x holds tokens / seq_len sequences of seq_len
// tokens, each from position pos0),
//   x[i]       <- x[i] cos - x[i + d/2] sin
//   x[i + d/2] <- x[i + d/2] cos + x[i] sin
// cos/sin come from host tables [max_pos, d/2] computed in f64 (times YaRN's attention
// factor where the scaling has one).
// rope_backward applies the adjoint (the rotation by the negative angle) to a gradient.

const WG: u32 = 256u;

struct Params {
    tokens: u32,
    heads: u32,
    dim: u32,
    pos0: u32,
    seq_len: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;

fn rotate(i: u32, sgn: f32) {
    let half = p.dim / 2u;
    if (i >= p.tokens * p.heads * half) { return; }
    let j = i % half;
    let th = i / half;          // t * heads + h
    let t = (th / p.heads) % p.seq_len;
    let base = th * p.dim;
    let tab = (p.pos0 + t) * half + j;
    let c = cos_t[tab];
    let s = sgn * sin_t[tab];
    let x1 = x[base + j];
    let x2 = x[base + j + half];
    x[base + j] = x1 * c - x2 * s;
    x[base + j + half] = x2 * c + x1 * s;
}

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    rotate((wid.y * nwg.x + wid.x) * WG + lid.x, 1.0);
}

@compute @workgroup_size(WG)
fn rope_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    rotate((wid.y * nwg.x + wid.x) * WG + lid.x, -1.0);
}
