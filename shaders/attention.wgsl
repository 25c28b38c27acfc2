// Causal GQA softmax attention with online softmax (no T x T matrix), emitting per-row
// attention statistics in the same pass.
//
// q [T, q_stride] (head h at column h * dim), k/v [S, kv_stride] (kv head g at g * dim),
// query row i sits at absolute position pos0 + i and sees keys 0 ..= pos0 + i.
// Query head h reads kv head h / (heads / kv_heads).
// Outputs: o [T, q_stride]; stats [T, heads, 2] = (sum_j p_ij max(|i - j|, 0.5),
//                                                   -sum_j p_ij ln p_ij)  per query row.
// Entropy is kept online: with running max m, l = sum e^{s-m}, a = sum e^{s-m} (s - m),
// a rescale to m' gives a' = e^{m-m'} (a + l (m - m')), and H = ln l - a / l.
//
// One workgroup = BR query rows (one per thread) of one head; key tiles of BC rows are
// staged in workgroup memory. D is the largest head dim the build supports.

const BR: u32 = 64u;
const BC: u32 = 32u;
const D: u32 = 64u;

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    dim: u32,
    pos0: u32,
    q_stride: u32,
    kv_stride: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;

var<workgroup> ks: array<f32, BC * D>;
var<workgroup> vs: array<f32, BC * D>;

const NEG: f32 = -3.0e38;

@compute @workgroup_size(BR)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y;
    let i0 = wid.x * BR;
    let i = i0 + lid.x;
    let valid = i < p.t;
    let pi = p.pos0 + i;
    let kvh = h / (p.heads / p.kv_heads);
    let qoff = i * p.q_stride + h * p.dim;
    let koff = kvh * p.dim;

    var qr: array<f32, D>;
    var acc: array<f32, D>;
    for (var d = 0u; d < D; d++) {
        acc[d] = 0.0;
        qr[d] = 0.0;
        if (valid && d < p.dim) { qr[d] = q[qoff + d] * p.scale; }
    }
    var m = NEG;
    var l = 0.0;
    var ent = 0.0;
    var dist = 0.0;

    let last = p.pos0 + min(i0 + BR, p.t) - 1u; // last key any row of this group needs
    for (var j0 = 0u; j0 <= last; j0 += BC) {
        for (var e = lid.x; e < BC * D; e += BR) {
            let j = j0 + e / D;
            let d = e % D;
            var kv = 0.0;
            var vv = 0.0;
            if (j <= last && d < p.dim) {
                kv = k[j * p.kv_stride + koff + d];
                vv = v[j * p.kv_stride + koff + d];
            }
            ks[e] = kv;
            vs[e] = vv;
        }
        workgroupBarrier();
        if (valid && j0 <= pi) {
            var s: array<f32, BC>;
            var tmax = NEG;
            for (var jj = 0u; jj < BC; jj++) {
                s[jj] = NEG;
                if (j0 + jj <= pi) {
                    var dot = 0.0;
                    for (var d = 0u; d < p.dim; d++) { dot = fma(qr[d], ks[jj * D + d], dot); }
                    s[jj] = dot;
                    tmax = max(tmax, dot);
                }
            }
            let mn = max(m, tmax);
            let corr = exp(m - mn);
            ent = corr * (ent + l * (m - mn));
            l = l * corr;
            dist = dist * corr;
            for (var d = 0u; d < p.dim; d++) { acc[d] = acc[d] * corr; }
            for (var jj = 0u; jj < BC; jj++) {
                let j = j0 + jj;
                if (j <= pi) {
                    let sm = s[jj] - mn;
                    let pj = exp(sm);
                    l += pj;
                    ent += pj * sm;
                    dist += pj * max(f32(pi - j), 0.5);
                    for (var d = 0u; d < p.dim; d++) { acc[d] = fma(pj, vs[jj * D + d], acc[d]); }
                }
            }
            m = mn;
        }
        workgroupBarrier();
    }
    if (valid) {
        let inv = 1.0 / l;
        for (var d = 0u; d < p.dim; d++) { o[qoff + d] = acc[d] * inv; }
        let si = (i * p.heads + h) * 2u;
        stats[si] = dist * inv;
        stats[si + 1u] = log(l) - ent * inv;
    }
}
