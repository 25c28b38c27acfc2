// KL(teacher || student) over the vocabulary from a chunk of logits rows (src/ops/kl.rs):
//   loss[row0 + r] = sum_v p_t (log p_t - log p_s),   p = softmax(logits[r, :])
// and, when p.grad != 0, the student logits row is overwritten with its gradient
//   zs[r, v] = scale * (p_s - p_t).
// One workgroup per row (rows folded over a 2-D grid), the vocabulary looped:
// pass 1 keeps a running (max, sum of exp) per invocation for both models at once (x:
// student, y: teacher), merged over the workgroup; pass 2 forms the KL terms and the
// gradient. log p_t - log p_s is taken as (zt - zs) - (lse_t - lse_s), so identical
// logits give exactly 0.

const WG: u32 = 256u;

struct Params {
    rows: u32,
    vocab: u32,
    row0: u32,   // index of the chunk's first row in loss
    grad: u32,   // 1: overwrite zs with the gradient
    scale: f32,  // gradient scale (e.g. 1 / tokens)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> zs: array<f32>; // student logits [rows, vocab] -> gradient
@group(0) @binding(2) var<storage, read> zt: array<f32>;       // teacher logits [rows, vocab]
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;

var<workgroup> red_m: array<vec2<f32>, WG>;
var<workgroup> red_s: array<vec2<f32>, WG>;
var<workgroup> red_k: array<f32, WG>;

const NEG: f32 = -3.0e38;

@compute @workgroup_size(WG)
fn kl_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; } // uniform per workgroup
    let base = row * p.vocab;

    // pass 1: running max and sum of exp(z - max), student and teacher together
    var m = vec2<f32>(NEG, NEG);
    var s = vec2<f32>(0.0, 0.0);
    for (var c = lid.x; c < p.vocab; c += WG) {
        let z = vec2<f32>(zs[base + c], zt[base + c]);
        let mn = max(m, z);
        s = s * exp(m - mn) + exp(z - mn);
        m = mn;
    }
    red_m[lid.x] = m;
    red_s[lid.x] = s;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (lid.x < h) {
            let m1 = red_m[lid.x];
            let m2 = red_m[lid.x + h];
            let mn = max(m1, m2);
            red_s[lid.x] = red_s[lid.x] * exp(m1 - mn) + red_s[lid.x + h] * exp(m2 - mn);
            red_m[lid.x] = mn;
        }
        workgroupBarrier();
    }
    let lse = red_m[0] + log(red_s[0]); // (student, teacher) log-sum-exp
    let shift = lse.y - lse.x;

    // pass 2: KL terms and gradient
    var kl = 0.0;
    for (var c = lid.x; c < p.vocab; c += WG) {
        let a = zs[base + c];
        let t = zt[base + c];
        let pt = exp(t - lse.y);
        kl += pt * ((t - a) - shift);
        if (p.grad != 0u) {
            zs[base + c] = p.scale * (exp(a - lse.x) - pt);
        }
    }
    red_k[lid.x] = kl;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if (lid.x < h) { red_k[lid.x] += red_k[lid.x + h]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { loss[p.row0 + row] = red_k[0]; }
}
