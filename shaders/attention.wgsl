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
//
// Batches: workgroup row y = sequence * heads + head. Sequence n's queries are rows
// n*T .. n*T+T-1 of q, o and stats, its keys rows n*(pos0+T) .. of k and v (one sequence
// needs no batch layout: its k/v may be a longer cache).

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

// Head vectors are held as D/4 vec4s; loops run to the constant D/4 (zero padding past
// `dim`) so compilers unroll them and keep q, the accumulator and the scores in registers.
const D4: u32 = D / 4u;

var<workgroup> ks: array<vec4<f32>, BC * D4>;
var<workgroup> vs: array<vec4<f32>, BC * D4>;

const NEG: f32 = -3.0e38;

fn load4(buf_is_k: bool, base: u32, d4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        let d = d4 * 4u + c;
        if (d < p.dim) {
            if (buf_is_k) { r[c] = k[base + d]; } else { r[c] = v[base + d]; }
        }
    }
    return r;
}

@compute @workgroup_size(BR)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y % p.heads;
    let r0 = (wid.y / p.heads) * p.t; // this sequence's first query row
    let k0 = (wid.y / p.heads) * (p.pos0 + p.t); // and first key row
    let i0 = wid.x * BR;
    let i = i0 + lid.x;
    let valid = i < p.t;
    let pi = p.pos0 + i;
    let kvh = h / (p.heads / p.kv_heads);
    let qoff = (r0 + i) * p.q_stride + h * p.dim;
    let koff = kvh * p.dim;

    var qr: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var d4 = 0u; d4 < D4; d4++) {
        acc[d4] = vec4<f32>(0.0);
        var qv = vec4<f32>(0.0);
        for (var c = 0u; c < 4u; c++) {
            let d = d4 * 4u + c;
            if (valid && d < p.dim) { qv[c] = q[qoff + d] * p.scale; }
        }
        qr[d4] = qv;
    }
    var m = NEG;
    var l = 0.0;
    var ent = 0.0;
    var dist = 0.0;

    let last = p.pos0 + min(i0 + BR, p.t) - 1u; // last key any row of this group needs
    for (var j0 = 0u; j0 <= last; j0 += BC) {
        for (var e = lid.x; e < BC * D4; e += BR) {
            let j = j0 + e / D4;
            let d4 = e % D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (j <= last) {
                kv = load4(true, (k0 + j) * p.kv_stride + koff, d4);
                vv = load4(false, (k0 + j) * p.kv_stride + koff, d4);
            }
            ks[e] = kv;
            vs[e] = vv;
        }
        workgroupBarrier();
        if (valid && j0 <= pi) {
            var s: array<f32, BC>;
            var tmax = NEG;
            for (var jj = 0u; jj < BC; jj++) {
                var acc4 = vec4<f32>(0.0);
                for (var d4 = 0u; d4 < D4; d4++) { acc4 = fma(qr[d4], ks[jj * D4 + d4], acc4); }
                var dot = acc4.x + acc4.y + acc4.z + acc4.w;
                if (j0 + jj > pi) { dot = NEG; }
                s[jj] = dot;
                tmax = max(tmax, dot);
            }
            let mn = max(m, tmax);
            let corr = exp(m - mn);
            ent = corr * (ent + l * (m - mn));
            l = l * corr;
            dist = dist * corr;
            for (var d4 = 0u; d4 < D4; d4++) { acc[d4] = acc[d4] * corr; }
            for (var jj = 0u; jj < BC; jj++) {
                let j = j0 + jj;
                if (j <= pi) {
                    let sm = s[jj] - mn;
                    let pj = exp(sm);
                    l += pj;
                    ent += pj * sm;
                    dist += pj * max(f32(pi - j), 0.5);
                    for (var d4 = 0u; d4 < D4; d4++) { acc[d4] = fma(vec4<f32>(pj), vs[jj * D4 + d4], acc[d4]); }
                }
            }
            m = mn;
        }
        workgroupBarrier();
    }
    if (valid) {
        let inv = 1.0 / l;
        for (var d4 = 0u; d4 < D4; d4++) {
            let a = acc[d4] * inv;
            for (var c = 0u; c < 4u; c++) {
                let d = d4 * 4u + c;
                if (d < p.dim) { o[qoff + d] = a[c]; }
            }
        }
        let si = ((r0 + i) * p.heads + h) * 2u;
        stats[si] = dist * inv;
        stats[si + 1u] = log(l) - ent * inv;
    }
}
