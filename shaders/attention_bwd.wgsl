// Backward of causal GQA softmax attention (shaders/attention.wgsl) for training:
// queries and keys share positions (pos0 = 0, S = T), query row i sees keys 0 ..= i.
// No T x T matrix is stored; probabilities are recomputed from each row's log-sum-exp.
//
// q, o, dout, dq [T, q_stride] (head h at column h * dim); k, v, dk, dv [T, kv_stride]
// (kv head g at g * dim); query head h reads kv head h / (heads / kv_heads).
// With s_ij = scale q_i.k_j, p_ij = exp(s_ij - lse_i), dp_ij = dO_i.v_j,
// delta_i = dO_i.O_i and ds_ij = p_ij (dp_ij - delta_i):
//   dq_i = scale sum_j ds_ij k_j,   dk_j = scale sum_{h in group} sum_i ds_ij q_i,
//   dv_j = sum_{h in group} sum_i p_ij dO_i.
//
// Two entry points, dispatched in this order:
//   attn_bwd_q:  one workgroup = BR query rows (one per thread) of one head. Recomputes
//                lse_i online over the key tiles, forms delta_i, writes (lse_i, delta_i) to
//                stats [T, heads, 2], then sweeps the key tiles again for dq_i.
//   attn_bwd_kv: one workgroup = BR key rows (one per thread) of one kv head. Sweeps the
//                query tiles i >= j of every query head of the group, reading stats, and
//                writes dk_j and dv_j (the GQA sum stays inside the thread: no atomics).
// Tiles of BC rows of two head-dim vectors are staged in workgroup memory (2 * BC * D
// floats = 16 KiB with BC = 2048 / D). D is the largest head dim the build supports.
//
// Batches: workgroup row y = sequence * heads + head (attn_bwd_q) or sequence * kv_heads +
// kv head (attn_bwd_kv); sequence n owns rows n*T .. n*T+T-1 of every buffer.

const BR: u32 = 64u;
const BC: u32 = 32u;
const D: u32 = 64u;

struct Params {
    t: u32,
    heads: u32,
    kv_heads: u32,
    dim: u32,
    q_stride: u32,
    kv_stride: u32,
    scale: f32,
    // attn_bwd_kv: 0 = one workgroup sums every query head of its kv head into dk/dv;
    // 1 = workgroup z handles query head z of the group and writes its own partial dk/dv
    // rows at that head's column (layout [T, q_stride]), summed by attn_bwd_reduce.
    split: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
// attn_bwd_q writes dq to `g1` and reads o from `aux`; attn_bwd_kv writes dk to `g1` and
// dv to `aux` (one slot for o and dv keeps both entry points on bindings 1..7).
@group(0) @binding(6) var<storage, read_write> g1: array<f32>;
@group(0) @binding(7) var<storage, read_write> aux: array<f32>;

const D4: u32 = D / 4u;

var<workgroup> ta: array<vec4<f32>, BC * D4>;
var<workgroup> tb: array<vec4<f32>, BC * D4>;

const NEG: f32 = -3.0e38;

// Which buffer load4 reads (SRC_O is `aux`).
const SRC_Q: u32 = 0u;
const SRC_K: u32 = 1u;
const SRC_V: u32 = 2u;
const SRC_O: u32 = 3u;
const SRC_DO: u32 = 4u;

fn load4(which: u32, base: u32, d4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var c = 0u; c < 4u; c++) {
        let d = d4 * 4u + c;
        if (d < p.dim) {
            switch which {
                case SRC_Q: { r[c] = q[base + d]; }
                case SRC_K: { r[c] = k[base + d]; }
                case SRC_V: { r[c] = v[base + d]; }
                case SRC_O: { r[c] = aux[base + d]; }
                default: { r[c] = dout[base + d]; }
            }
        }
    }
    return r;
}

fn store4(to_aux: bool, base: u32, d4: u32, x: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        let d = d4 * 4u + c;
        if (d < p.dim) {
            if (to_aux) { aux[base + d] = x[c]; } else { g1[base + d] = x[c]; }
        }
    }
}

fn hsum(x: vec4<f32>) -> f32 {
    return x.x + x.y + x.z + x.w;
}

@compute @workgroup_size(BR)
fn attn_bwd_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.y % p.heads;
    let r0 = (wid.y / p.heads) * p.t; // this sequence's first row
    let i0 = wid.x * BR;
    let i = i0 + lid.x;
    let valid = i < p.t;
    let kvh = h / (p.heads / p.kv_heads);
    let qoff = (r0 + i) * p.q_stride + h * p.dim;
    let koff = r0 * p.kv_stride + kvh * p.dim;

    var qr: array<vec4<f32>, D4>;
    var dor: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    var delta = 0.0;
    for (var d4 = 0u; d4 < D4; d4++) {
        acc[d4] = vec4<f32>(0.0);
        var qv = vec4<f32>(0.0);
        var dv = vec4<f32>(0.0);
        if (valid) {
            qv = load4(SRC_Q, qoff, d4) * p.scale;
            dv = load4(SRC_DO, qoff, d4);
            delta += dot(dv, load4(SRC_O, qoff, d4));
        }
        qr[d4] = qv;
        dor[d4] = dv;
    }

    let last = min(i0 + BR, p.t) - 1u; // last key any row of this group needs

    // sweep 1: the row's log-sum-exp, online over the key tiles
    var m = NEG;
    var l = 0.0;
    for (var j0 = 0u; j0 <= last; j0 += BC) {
        for (var e = lid.x; e < BC * D4; e += BR) {
            let j = j0 + e / D4;
            var kv = vec4<f32>(0.0);
            if (j <= last) { kv = load4(SRC_K, j * p.kv_stride + koff, e % D4); }
            ta[e] = kv;
        }
        workgroupBarrier();
        if (valid && j0 <= i) {
            var s: array<f32, BC>;
            var tmax = NEG;
            for (var jj = 0u; jj < BC; jj++) {
                var a4 = vec4<f32>(0.0);
                for (var d4 = 0u; d4 < D4; d4++) { a4 = fma(qr[d4], ta[jj * D4 + d4], a4); }
                var sc = hsum(a4);
                if (j0 + jj > i) { sc = NEG; }
                s[jj] = sc;
                tmax = max(tmax, sc);
            }
            let mn = max(m, tmax);
            l = l * exp(m - mn);
            for (var jj = 0u; jj < BC; jj++) {
                if (j0 + jj <= i) { l += exp(s[jj] - mn); }
            }
            m = mn;
        }
        workgroupBarrier();
    }
    let lse = m + log(l);

    // sweep 2: dq_i = scale sum_j p_ij (dp_ij - delta_i) k_j
    for (var j0 = 0u; j0 <= last; j0 += BC) {
        for (var e = lid.x; e < BC * D4; e += BR) {
            let j = j0 + e / D4;
            var kv = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if (j <= last) {
                kv = load4(SRC_K, j * p.kv_stride + koff, e % D4);
                vv = load4(SRC_V, j * p.kv_stride + koff, e % D4);
            }
            ta[e] = kv;
            tb[e] = vv;
        }
        workgroupBarrier();
        if (valid && j0 <= i) {
            for (var jj = 0u; jj < BC; jj++) {
                if (j0 + jj <= i) {
                    var a4 = vec4<f32>(0.0);
                    var b4 = vec4<f32>(0.0);
                    for (var d4 = 0u; d4 < D4; d4++) {
                        a4 = fma(qr[d4], ta[jj * D4 + d4], a4);
                        b4 = fma(dor[d4], tb[jj * D4 + d4], b4);
                    }
                    let pj = exp(hsum(a4) - lse);
                    let ds = vec4<f32>(pj * (hsum(b4) - delta));
                    for (var d4 = 0u; d4 < D4; d4++) { acc[d4] = fma(ds, ta[jj * D4 + d4], acc[d4]); }
                }
            }
        }
        workgroupBarrier();
    }

    if (valid) {
        for (var d4 = 0u; d4 < D4; d4++) { store4(false, qoff, d4, acc[d4] * p.scale); }
        let si = ((r0 + i) * p.heads + h) * 2u;
        stats[si] = lse;
        stats[si + 1u] = delta;
    }
}

@compute @workgroup_size(BR)
fn attn_bwd_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = wid.y % p.kv_heads;
    let r0 = (wid.y / p.kv_heads) * p.t; // this sequence's first row
    let j0 = wid.x * BR;
    let j = j0 + lid.x;
    let valid = j < p.t;
    let group = p.heads / p.kv_heads;
    let koff = (r0 + j) * p.kv_stride + g * p.dim;

    var kr: array<vec4<f32>, D4>;
    var vr: array<vec4<f32>, D4>;
    var dk: array<vec4<f32>, D4>;
    var dv: array<vec4<f32>, D4>;
    for (var d4 = 0u; d4 < D4; d4++) {
        dk[d4] = vec4<f32>(0.0);
        dv[d4] = vec4<f32>(0.0);
        var kv = vec4<f32>(0.0);
        var vv = vec4<f32>(0.0);
        if (valid) {
            kv = load4(SRC_K, koff, d4) * p.scale;
            vv = load4(SRC_V, koff, d4);
        }
        kr[d4] = kv;
        vr[d4] = vv;
    }

    let h_first = select(0u, wid.z, p.split == 1u);
    let h_count = select(group, 1u, p.split == 1u);
    for (var hh = h_first; hh < h_first + h_count; hh++) {
        let h = g * group + hh;
        // query tiles from the first row that sees any key of this group (BC divides BR)
        for (var i0 = j0; i0 < p.t; i0 += BC) {
            for (var e = lid.x; e < BC * D4; e += BR) {
                let i = i0 + e / D4;
                var qv = vec4<f32>(0.0);
                var dov = vec4<f32>(0.0);
                if (i < p.t) {
                    let qoff = (r0 + i) * p.q_stride + h * p.dim;
                    qv = load4(SRC_Q, qoff, e % D4);
                    dov = load4(SRC_DO, qoff, e % D4);
                }
                ta[e] = qv;
                tb[e] = dov;
            }
            workgroupBarrier();
            if (valid && i0 + BC > j) {
                for (var ii = 0u; ii < BC; ii++) {
                    let i = i0 + ii;
                    if (i >= j && i < p.t) {
                        let si = ((r0 + i) * p.heads + h) * 2u;
                        let lse = stats[si];
                        let delta = stats[si + 1u];
                        var a4 = vec4<f32>(0.0);
                        var b4 = vec4<f32>(0.0);
                        for (var d4 = 0u; d4 < D4; d4++) {
                            a4 = fma(kr[d4], ta[ii * D4 + d4], a4);
                            b4 = fma(vr[d4], tb[ii * D4 + d4], b4);
                        }
                        let pj = exp(hsum(a4) - lse);
                        let ds = vec4<f32>(pj * (hsum(b4) - delta));
                        let pv = vec4<f32>(pj);
                        for (var d4 = 0u; d4 < D4; d4++) {
                            dv[d4] = fma(pv, tb[ii * D4 + d4], dv[d4]);
                            dk[d4] = fma(ds, ta[ii * D4 + d4], dk[d4]);
                        }
                    }
                }
            }
            workgroupBarrier();
        }
    }

    if (valid) {
        let soff = select(koff, (r0 + j) * p.q_stride + (g * group + wid.z) * p.dim, p.split == 1u);
        for (var d4 = 0u; d4 < D4; d4++) {
            store4(false, soff, d4, dk[d4] * p.scale);
            store4(true, soff, d4, dv[d4]);
        }
    }
}

// attn_bwd_reduce (after a split attn_bwd_kv): dk/dv [T, kv_stride] = the sums of the
// per-query-head partials [T, q_stride] over each kv head's group; one thread per element.
// (p.t is every row here: the host passes sequences * T.)
@group(0) @binding(1) var<storage, read> part_k: array<f32>;
@group(0) @binding(2) var<storage, read> part_v: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_k: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_v: array<f32>;

@compute @workgroup_size(256)
fn attn_bwd_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let idx = (wid.y * nwg.x + wid.x) * 256u + lid.x;
    if (idx >= p.t * p.kv_heads * p.dim) { return; }
    let d = idx % p.dim;
    let jg = idx / p.dim;
    let g = jg % p.kv_heads;
    let j = jg / p.kv_heads;
    let group = p.heads / p.kv_heads;
    var sk = 0.0;
    var sv = 0.0;
    for (var hh = 0u; hh < group; hh++) {
        let o = j * p.q_stride + (g * group + hh) * p.dim + d;
        sk += part_k[o];
        sv += part_v[o];
    }
    out_k[j * p.kv_stride + g * p.dim + d] = sk;
    out_v[j * p.kv_stride + g * p.dim + d] = sv;
}
