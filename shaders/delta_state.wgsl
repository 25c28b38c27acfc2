// Gated delta rule, the sequential passes over chunks (chunk C = 64), one workgroup per
// (block of BV value columns, b*H + h). The state H = S^T [dk, dv] (column block) lives
// in registers (RB rows x 4 columns per invocation) with a copy in workgroup memory.
//
// delta_fwd_state  for each chunk: h[n] = H (state entering the chunk);
//                  v_new = u - w H;  H <- exp(gamma_L) H + Khat^T diag(exp(gamma_L - gamma)) v_new
//                  and the final state ht [B, H, dv, dk] when asked for.
// delta_bwd_state  reverse over chunks with dH = dL/d(state leaving the chunk), from d(ht):
//                  dh[n] = dH;  dv_new = dv_new_local + diag(exp(gamma_L - gamma)) Khat dH;
//                  dH <- exp(gamma_L) dH + s Qhat^T diag(exp(gamma)) dO - w^T dv_new;
//                  and dh0 = dH at the start, [B, H, dv, dk].
//
// The pass is a chain of 2 ceil(T / 64) dependent steps, so it is bound by memory latency:
// w, k, q rows are read straight from memory (each shared by the BV / 4 invocations of a
// row group, through the cache), with the next step's values loaded before the current
// step's products; three barriers per chunk around the workgroup copies of H and v_new,
// which share one array (four at S2 = 2, for the hand-over of the partial products). Part (a) uses 4 x 4 thread tiles (4 chunk rows x 4 value columns),
// split over S2 halves of the dk reduction, part (b) RB x 4 (state rows x value columns);
// 4 BV S2 invocations.
//
// DK is dk rounded up to 64, 128 or 256; BV in {8, 16, 32}; the host checks that the
// workgroup memory (4 * (max(DK, 128) * BV + 192) bytes) fits the adapter.

// #include delta_common (Params, C, L2_EPS, F_L2, the uniform p, T4 tiles, tri)

const DK: u32 = 128u;
const BV: u32 = 16u;
const BV4: u32 = BV / 4u;
// At DK >= 128 two invocations share each (4 chunk rows x 4 value columns) tile of part
// (a), one per half of the dk reduction, and part (b) has 32 row groups: twice the
// invocations, each with half the work, so that twice the warps hide the latency of the
// dependent chain (H200, (4, 4096, 16, 128), BV = 32: forward 1.13 -> 1.04 ms, backward
// 1.51 -> 1.40 ms). It works only while two workgroups fit an SM's registers: part (a)
// keeps two dk-columns in flight (not four), and the backward loads dv_new_local and dO
// after its products (with four columns and early loads, the pass took 1.56 / 2.19 ms).
const S2: u32 = select(1u, 2u, DK >= 128u);
const NTH: u32 = 4u * BV * S2;
// state rows per invocation (16 S2 row groups) and their count in vec4s
const RB: u32 = DK / (16u * S2);
const RB4: u32 = RB / 4u;
const DK4: u32 = DK / 4u;

const F_H0: u32 = 2u;
const F_HT: u32 = 4u;

// One workgroup array serves both halves of a chunk step: the copy of H [k][v] that part
// (a) reads, then (after a barrier) what part (b) reads: forward the decayed v_new
// [c][v], backward s exp(gamma) dO [c][v] and -dv_new [64 + c][v]. Sharing it keeps a
// workgroup's memory at DK * BV floats (max(DK, 128) * BV backward), so that on a large
// problem every workgroup of the pass is resident at once: the pass is a chain of
// dependent steps, and a second wave of workgroups would double its time.
const SMN: u32 = max(DK, 2u * C) * BV4;
var<workgroup> sm: array<vec4<f32>, SMN>;
var<workgroup> gsm: array<f32, 64>;
var<workgroup> qsm: array<f32, 64>;
var<workgroup> ksm: array<f32, 64>;

// acc += (4 rows x 4 ks: r0..r3 are the rows' vec4s along k at vec4 column k4) times H
fn t4k(acc: T4, x: T4, k4: u32, vg: u32) -> T4 {
    let hb = 4u * k4 * BV4 + vg;
    var o = t4fma(acc, vec4<f32>(x.r0.x, x.r1.x, x.r2.x, x.r3.x), sm[hb]);
    o = t4fma(o, vec4<f32>(x.r0.y, x.r1.y, x.r2.y, x.r3.y), sm[hb + BV4]);
    o = t4fma(o, vec4<f32>(x.r0.z, x.r1.z, x.r2.z, x.r3.z), sm[hb + 2u * BV4]);
    return t4fma(o, vec4<f32>(x.r0.w, x.r1.w, x.r2.w, x.r3.w), sm[hb + 3u * BV4]);
}

// The invocation's state rows cg * RB .. cg * RB + RB - 1 (RB = 4, 8 or 16) in 1, 2 or 4
// tiles; unused tiles stay zero.
struct HT {
    g0: T4,
    g1: T4,
    g2: T4,
    g3: T4,
}

fn ht_get(h: HT, r: u32) -> vec4<f32> {
    let g = r / 4u;
    if (g == 0u) {
        return t4row(h.g0, r % 4u);
    }
    if (g == 1u) {
        return t4row(h.g1, r % 4u);
    }
    if (g == 2u) {
        return t4row(h.g2, r % 4u);
    }
    return t4row(h.g3, r % 4u);
}

fn ht_scale(h: HT, s: f32) -> HT {
    var o = h;
    o.g0 = t4scale(h.g0, s);
    if (RB4 > 1u) {
        o.g1 = t4scale(h.g1, s);
    }
    if (RB4 > 2u) {
        o.g2 = t4scale(h.g2, s);
        o.g3 = t4scale(h.g3, s);
    }
    return o;
}

// one token's values at the invocation's RB state rows (RB4 vec4s; unused ones zero)
struct KR {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

// h += x outer y
fn ht_fma(h: HT, x: KR, y: vec4<f32>) -> HT {
    var o = h;
    o.g0 = t4fma(h.g0, x.a, y);
    if (RB4 > 1u) {
        o.g1 = t4fma(h.g1, x.b, y);
    }
    if (RB4 > 2u) {
        o.g2 = t4fma(h.g2, x.c, y);
        o.g3 = t4fma(h.g3, x.d, y);
    }
    return o;
}

// Part (a) at S2 = 2, after the barrier that ends the reads of the state copy: the second
// dk half's invocation leaves its partial products in the copy's rows c0 .. c0 + 3, where
// the first half's invocation of the same tile adds them (and then overwrites the slot).
fn stash_half(acc: T4, kh: u32, c0: u32, vg: u32) {
    if (S2 > 1u) {
        if (kh == 1u) {
            for (var r = 0u; r < 4u; r++) {
                sm[(c0 + r) * BV4 + vg] = t4row(acc, r);
            }
        }
        workgroupBarrier();
    }
}

// ---------------------------------------------------------------- delta_fwd_state
@group(0) @binding(1) var<storage, read> fs_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fs_w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fs_u: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> fs_aux: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> fs_h0: array<f32>;
@group(0) @binding(6) var<storage, read_write> fs_h: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> fs_vn: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> fs_ht: array<f32>;

// the state [dk, dv] row k (zero past dk), columns 4 v4 .. 4 v4 + 3, of h0 [B, H, dv, dk]
fn fs_h0_at(bh: u32, v4: u32, k: u32) -> vec4<f32> {
    let base = (bh * p.dv + v4 * 4u) * p.dk + min(k, p.dk - 1u);
    let v = vec4<f32>(fs_h0[base], fs_h0[base + p.dk], fs_h0[base + 2u * p.dk], fs_h0[base + 3u * p.dk]);
    return select(vec4<f32>(0.0), v, k < p.dk);
}

fn fs_h0_t4(bh: u32, v4: u32, k: u32) -> T4 {
    return T4(fs_h0_at(bh, v4, k), fs_h0_at(bh, v4, k + 1u), fs_h0_at(bh, v4, k + 2u), fs_h0_at(bh, v4, k + 3u));
}

// w rows (vec4 offsets w0..w3) at vec4 column k4 (clamped: H rows past dk are zero)
fn fs_wq(w0: u32, w1: u32, w2: u32, w3: u32, k4: u32, dk4: u32) -> T4 {
    let kk = min(k4, dk4 - 1u);
    return T4(fs_w[w0 + kk], fs_w[w1 + kk], fs_w[w2 + kk], fs_w[w3 + kk]);
}

fn fs_k4(base: u32, k4: u32, dk4: u32) -> vec4<f32> {
    return select(vec4<f32>(0.0), fs_k[base + min(k4, dk4 - 1u)], k4 < dk4);
}

// the invocation's RB4 vec4s of k row c of the chunk (row clamped, zero past dk)
fn fs_krow(rbase: u32, c: u32, len: u32, k40: u32, dk4: u32) -> KR {
    let kb = (rbase + min(c, len - 1u) * p.h) * dk4;
    var x = KR(fs_k4(kb, k40, dk4), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (RB4 > 1u) {
        x.b = fs_k4(kb, k40 + 1u, dk4);
    }
    if (RB4 > 2u) {
        x.c = fs_k4(kb, k40 + 2u, dk4);
        x.d = fs_k4(kb, k40 + 3u, dk4);
    }
    return x;
}

@compute @workgroup_size(NTH)
fn delta_fwd_state(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let dk4 = p.dk / 4u;
    let dv4 = p.dv / 4u;
    let cg = lid / BV4;
    let vg = lid % BV4;
    let v4 = wid.x * BV4 + vg;
    let vok = v4 < dv4;
    let vc = min(v4, dv4 - 1u);
    let l2 = (p.flags & F_L2) != 0u;
    let k40 = cg * RB4;
    // part (a): chunk rows 4 (cg % 16) .. + 3, dk half kh (vec4 columns ka .. ka + DK4 / S2)
    let kh = cg / 16u;
    let ka = kh * (DK4 / S2);

    var hr = HT(t4z(), t4z(), t4z(), t4z());
    if ((p.flags & F_H0) != 0u && vok) {
        hr.g0 = fs_h0_t4(bh, v4, cg * RB);
        if (RB4 > 1u) {
            hr.g1 = fs_h0_t4(bh, v4, cg * RB + 4u);
        }
        if (RB4 > 2u) {
            hr.g2 = fs_h0_t4(bh, v4, cg * RB + 8u);
            hr.g3 = fs_h0_t4(bh, v4, cg * RB + 12u);
        }
    }

    for (var n = 0u; n < p.nt; n++) {
        let t0 = n * C;
        let len = min(C, p.t - t0);
        let rbase = (b * p.t + t0) * p.h + hh;
        for (var i = lid; i < C; i += NTH) {
            let a = fs_aux[rbase + min(i, len - 1u) * p.h];
            gsm[i] = a.x;
            ksm[i] = select(1.0, a.z, l2);
        }
        let hbase = (bh * p.nt + n) * p.dk;
        for (var r = 0u; r < RB; r++) {
            let k = cg * RB + r;
            let hv = ht_get(hr, r);
            sm[k * BV4 + vg] = hv;
            if (vok && k < p.dk) {
                fs_h[(hbase + k) * dv4 + v4] = hv;
            }
        }
        // this invocation's u rows, loaded early (clamped; masked below)
        let c0 = 4u * (cg % 16u);
        let r0 = rbase + min(c0, len - 1u) * p.h;
        let r1 = rbase + min(c0 + 1u, len - 1u) * p.h;
        let r2 = rbase + min(c0 + 2u, len - 1u) * p.h;
        let r3 = rbase + min(c0 + 3u, len - 1u) * p.h;
        let u = T4(fs_u[r0 * dv4 + vc], fs_u[r1 * dv4 + vc], fs_u[r2 * dv4 + vc], fs_u[r3 * dv4 + vc]);
        workgroupBarrier();

        // (a) v_new = u - w H; two dk-columns (vec4) a step, the next step's w values
        // loaded before this step's products
        let w0 = r0 * dk4;
        let w1 = r1 * dk4;
        let w2 = r2 * dk4;
        let w3 = r3 * dk4;
        var acc = t4z();
        var xa = fs_wq(w0, w1, w2, w3, ka, dk4);
        var xb = fs_wq(w0, w1, w2, w3, ka + 1u, dk4);
        for (var k4 = ka; k4 < ka + DK4 / S2; k4 += 2u) {
            let na = fs_wq(w0, w1, w2, w3, k4 + 2u, dk4);
            let nb = fs_wq(w0, w1, w2, w3, k4 + 3u, dk4);
            acc = t4k(acc, xa, k4, vg);
            acc = t4k(acc, xb, k4 + 1u, vg);
            xa = na;
            xb = nb;
        }
        let gl = gsm[len - 1u];
        // the H copy is read: its memory takes the second half's partial products, then
        // (same invocation, same slot) the decayed v_new
        workgroupBarrier();
        stash_half(acc, kh, c0, vg);
        if (kh == 0u) {
            for (var r = 0u; r < 4u; r++) {
                let c = c0 + r;
                var vn = vec4<f32>(0.0);
                if (c < len && vok) {
                    vn = t4row(u, r) - t4row(acc, r);
                    if (S2 > 1u) {
                        vn -= sm[c * BV4 + vg];
                    }
                    fs_vn[(rbase + c * p.h) * dv4 + v4] = vn;
                }
                // decayed, times the key's norm factor (k rows are read raw below)
                sm[c * BV4 + vg] = vn * (exp(gl - gsm[c]) * ksm[c]);
            }
        }
        workgroupBarrier();

        // (b) H <- exp(gamma_L) H + Khat^T (decayed v_new), all 64 rows (those past the
        // chunk's end have zero v_new), four a step with the next step's k rows loaded ahead
        hr = ht_scale(hr, exp(gl));
        if (RB4 <= 2u) {
            // eight rows a step (DK <= 128: 16 vec4 in flight)
            var g0 = fs_krow(rbase, 0u, len, k40, dk4);
            var g1 = fs_krow(rbase, 1u, len, k40, dk4);
            var g2 = fs_krow(rbase, 2u, len, k40, dk4);
            var g3 = fs_krow(rbase, 3u, len, k40, dk4);
            var g4 = fs_krow(rbase, 4u, len, k40, dk4);
            var g5 = fs_krow(rbase, 5u, len, k40, dk4);
            var g6 = fs_krow(rbase, 6u, len, k40, dk4);
            var g7 = fs_krow(rbase, 7u, len, k40, dk4);
            for (var c = 0u; c < C; c += 8u) {
                let n0 = fs_krow(rbase, c + 8u, len, k40, dk4);
                let n1 = fs_krow(rbase, c + 9u, len, k40, dk4);
                let n2 = fs_krow(rbase, c + 10u, len, k40, dk4);
                let n3 = fs_krow(rbase, c + 11u, len, k40, dk4);
                let n4 = fs_krow(rbase, c + 12u, len, k40, dk4);
                let n5 = fs_krow(rbase, c + 13u, len, k40, dk4);
                let n6 = fs_krow(rbase, c + 14u, len, k40, dk4);
                let n7 = fs_krow(rbase, c + 15u, len, k40, dk4);
                hr = ht_fma(hr, g0, sm[c * BV4 + vg]);
                hr = ht_fma(hr, g1, sm[(c + 1u) * BV4 + vg]);
                hr = ht_fma(hr, g2, sm[(c + 2u) * BV4 + vg]);
                hr = ht_fma(hr, g3, sm[(c + 3u) * BV4 + vg]);
                hr = ht_fma(hr, g4, sm[(c + 4u) * BV4 + vg]);
                hr = ht_fma(hr, g5, sm[(c + 5u) * BV4 + vg]);
                hr = ht_fma(hr, g6, sm[(c + 6u) * BV4 + vg]);
                hr = ht_fma(hr, g7, sm[(c + 7u) * BV4 + vg]);
                g0 = n0;
                g1 = n1;
                g2 = n2;
                g3 = n3;
                g4 = n4;
                g5 = n5;
                g6 = n6;
                g7 = n7;
            }
        } else {
            var g0 = fs_krow(rbase, 0u, len, k40, dk4);
            var g1 = fs_krow(rbase, 1u, len, k40, dk4);
            var g2 = fs_krow(rbase, 2u, len, k40, dk4);
            var g3 = fs_krow(rbase, 3u, len, k40, dk4);
            for (var c = 0u; c < C; c += 4u) {
                let n0 = fs_krow(rbase, c + 4u, len, k40, dk4);
                let n1 = fs_krow(rbase, c + 5u, len, k40, dk4);
                let n2 = fs_krow(rbase, c + 6u, len, k40, dk4);
                let n3 = fs_krow(rbase, c + 7u, len, k40, dk4);
                hr = ht_fma(hr, g0, sm[c * BV4 + vg]);
                hr = ht_fma(hr, g1, sm[(c + 1u) * BV4 + vg]);
                hr = ht_fma(hr, g2, sm[(c + 2u) * BV4 + vg]);
                hr = ht_fma(hr, g3, sm[(c + 3u) * BV4 + vg]);
                g0 = n0;
                g1 = n1;
                g2 = n2;
                g3 = n3;
            }
        }
        workgroupBarrier();
    }

    if ((p.flags & F_HT) != 0u && vok) {
        for (var r = 0u; r < RB; r++) {
            let k = cg * RB + r;
            if (k < p.dk) {
                let base = (bh * p.dv + v4 * 4u) * p.dk + k;
                let hv = ht_get(hr, r);
                fs_ht[base] = hv.x;
                fs_ht[base + p.dk] = hv.y;
                fs_ht[base + 2u * p.dk] = hv.z;
                fs_ht[base + 3u * p.dk] = hv.w;
            }
        }
    }
}

// ---------------------------------------------------------------- delta_bwd_state
@group(0) @binding(1) var<storage, read> bs_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bs_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bs_w: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> bs_do: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bs_aux: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> bs_dht: array<f32>;
@group(0) @binding(7) var<storage, read_write> bs_dh: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> bs_dvn: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> bs_dh0: array<f32>;

fn bs_dht_at(bh: u32, v4: u32, k: u32) -> vec4<f32> {
    let base = (bh * p.dv + v4 * 4u) * p.dk + min(k, p.dk - 1u);
    let v = vec4<f32>(bs_dht[base], bs_dht[base + p.dk], bs_dht[base + 2u * p.dk], bs_dht[base + 3u * p.dk]);
    return select(vec4<f32>(0.0), v, k < p.dk);
}

fn bs_dht_t4(bh: u32, v4: u32, k: u32) -> T4 {
    return T4(bs_dht_at(bh, v4, k), bs_dht_at(bh, v4, k + 1u), bs_dht_at(bh, v4, k + 2u), bs_dht_at(bh, v4, k + 3u));
}

fn bs_kq(k0: u32, k1: u32, k2: u32, k3: u32, k4: u32, dk4: u32) -> T4 {
    let kk = min(k4, dk4 - 1u);
    return T4(bs_k[k0 + kk], bs_k[k1 + kk], bs_k[k2 + kk], bs_k[k3 + kk]);
}

// q (which = 0) or w (which = 1) at vec4 column k4 of the row at vec4 offset base
fn bs_x4(which: u32, base: u32, k4: u32, dk4: u32) -> vec4<f32> {
    let idx = base + min(k4, dk4 - 1u);
    var v: vec4<f32>;
    if (which == 0u) {
        v = bs_q[idx];
    } else {
        v = bs_w[idx];
    }
    return select(vec4<f32>(0.0), v, k4 < dk4);
}

fn bs_row(which: u32, rbase: u32, c: u32, len: u32, k40: u32, dk4: u32) -> KR {
    let kb = (rbase + min(c, len - 1u) * p.h) * dk4;
    var x = KR(bs_x4(which, kb, k40, dk4), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    if (RB4 > 1u) {
        x.b = bs_x4(which, kb, k40 + 1u, dk4);
    }
    if (RB4 > 2u) {
        x.c = bs_x4(which, kb, k40 + 2u, dk4);
        x.d = bs_x4(which, kb, k40 + 3u, dk4);
    }
    return x;
}

@compute @workgroup_size(NTH)
fn delta_bwd_state(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let dk4 = p.dk / 4u;
    let dv4 = p.dv / 4u;
    let cg = lid / BV4;
    let vg = lid % BV4;
    let v4 = wid.x * BV4 + vg;
    let vok = v4 < dv4;
    let vc = min(v4, dv4 - 1u);
    let l2 = (p.flags & F_L2) != 0u;
    let k40 = cg * RB4;
    // part (a): chunk rows 4 (cg % 16) .. + 3, dk half kh (vec4 columns ka .. ka + DK4 / S2)
    let kh = cg / 16u;
    let ka = kh * (DK4 / S2);

    var hr = HT(t4z(), t4z(), t4z(), t4z());
    if ((p.flags & F_HT) != 0u && vok) {
        hr.g0 = bs_dht_t4(bh, v4, cg * RB);
        if (RB4 > 1u) {
            hr.g1 = bs_dht_t4(bh, v4, cg * RB + 4u);
        }
        if (RB4 > 2u) {
            hr.g2 = bs_dht_t4(bh, v4, cg * RB + 8u);
            hr.g3 = bs_dht_t4(bh, v4, cg * RB + 12u);
        }
    }

    for (var nn = 0u; nn < p.nt; nn++) {
        let n = p.nt - 1u - nn;
        let t0 = n * C;
        let len = min(C, p.t - t0);
        let rbase = (b * p.t + t0) * p.h + hh;
        for (var i = lid; i < C; i += NTH) {
            let a = bs_aux[rbase + min(i, len - 1u) * p.h];
            gsm[i] = a.x;
            qsm[i] = select(1.0, a.y, l2);
            ksm[i] = select(1.0, a.z, l2);
        }
        let hbase = (bh * p.nt + n) * p.dk;
        for (var r = 0u; r < RB; r++) {
            let k = cg * RB + r;
            let hv = ht_get(hr, r);
            sm[k * BV4 + vg] = hv;
            if (vok && k < p.dk) {
                bs_dh[(hbase + k) * dv4 + v4] = hv;
            }
        }
        // this invocation's chunk rows (clamped; masked below)
        let c0 = 4u * (cg % 16u);
        let r0 = rbase + min(c0, len - 1u) * p.h;
        let r1 = rbase + min(c0 + 1u, len - 1u) * p.h;
        let r2 = rbase + min(c0 + 2u, len - 1u) * p.h;
        let r3 = rbase + min(c0 + 3u, len - 1u) * p.h;
        workgroupBarrier();

        // (a) dv_new = dv_new_local + diag(exp(gamma_L - gamma)) Khat dH, k rows from memory
        let k0 = r0 * dk4;
        let k1 = r1 * dk4;
        let k2 = r2 * dk4;
        let k3 = r3 * dk4;
        var acc = t4z();
        var xa = bs_kq(k0, k1, k2, k3, ka, dk4);
        var xb = bs_kq(k0, k1, k2, k3, ka + 1u, dk4);
        for (var k4 = ka; k4 < ka + DK4 / S2; k4 += 2u) {
            let na = bs_kq(k0, k1, k2, k3, k4 + 2u, dk4);
            let nb = bs_kq(k0, k1, k2, k3, k4 + 3u, dk4);
            acc = t4k(acc, xa, k4, vg);
            acc = t4k(acc, xb, k4 + 1u, vg);
            xa = na;
            xb = nb;
        }
        // dv_new_local and dO rows, loaded after the products (fewer live registers)
        let dl = T4(bs_dvn[r0 * dv4 + vc], bs_dvn[r1 * dv4 + vc], bs_dvn[r2 * dv4 + vc], bs_dvn[r3 * dv4 + vc]);
        let dov = T4(bs_do[r0 * dv4 + vc], bs_do[r1 * dv4 + vc], bs_do[r2 * dv4 + vc], bs_do[r3 * dv4 + vc]);
        let gl = gsm[len - 1u];
        // the dH copy is read: its memory takes the second half's partial products, then
        // (same invocation, same slot) s exp(gamma) dO, and -dv_new
        workgroupBarrier();
        stash_half(acc, kh, c0, vg);
        if (kh == 0u) {
            for (var r = 0u; r < 4u; r++) {
                let c = c0 + r;
                var dvn = vec4<f32>(0.0);
                var dos = vec4<f32>(0.0);
                if (c < len && vok) {
                    var kd = t4row(acc, r);
                    if (S2 > 1u) {
                        kd += sm[c * BV4 + vg];
                    }
                    dvn = t4row(dl, r) + kd * (exp(gl - gsm[c]) * ksm[c]);
                    bs_dvn[(rbase + c * p.h) * dv4 + v4] = dvn;
                    // q rows are read raw below: fold in the query's norm factor
                    dos = t4row(dov, r) * (p.scale * exp(gsm[c]) * qsm[c]);
                }
                sm[c * BV4 + vg] = dos;
                sm[(C + c) * BV4 + vg] = -dvn;
            }
        }
        workgroupBarrier();

        // (b) dH <- exp(gamma_L) dH + Qhat^T (s exp(gamma) dO) + w^T (-dv_new)
        hr = ht_scale(hr, exp(gl));
        if (RB4 <= 2u) {
            // four rows of q and of w a step (DK <= 128: 16 vec4 in flight)
            var q0 = bs_row(0u, rbase, 0u, len, k40, dk4);
            var q1 = bs_row(0u, rbase, 1u, len, k40, dk4);
            var q2 = bs_row(0u, rbase, 2u, len, k40, dk4);
            var q3 = bs_row(0u, rbase, 3u, len, k40, dk4);
            var w0 = bs_row(1u, rbase, 0u, len, k40, dk4);
            var w1 = bs_row(1u, rbase, 1u, len, k40, dk4);
            var w2 = bs_row(1u, rbase, 2u, len, k40, dk4);
            var w3 = bs_row(1u, rbase, 3u, len, k40, dk4);
            for (var c = 0u; c < C; c += 4u) {
                let m0 = bs_row(0u, rbase, c + 4u, len, k40, dk4);
                let m1 = bs_row(0u, rbase, c + 5u, len, k40, dk4);
                let m2 = bs_row(0u, rbase, c + 6u, len, k40, dk4);
                let m3 = bs_row(0u, rbase, c + 7u, len, k40, dk4);
                let m4 = bs_row(1u, rbase, c + 4u, len, k40, dk4);
                let m5 = bs_row(1u, rbase, c + 5u, len, k40, dk4);
                let m6 = bs_row(1u, rbase, c + 6u, len, k40, dk4);
                let m7 = bs_row(1u, rbase, c + 7u, len, k40, dk4);
                hr = ht_fma(hr, q0, sm[c * BV4 + vg]);
                hr = ht_fma(hr, w0, sm[(C + c) * BV4 + vg]);
                hr = ht_fma(hr, q1, sm[(c + 1u) * BV4 + vg]);
                hr = ht_fma(hr, w1, sm[(C + c + 1u) * BV4 + vg]);
                hr = ht_fma(hr, q2, sm[(c + 2u) * BV4 + vg]);
                hr = ht_fma(hr, w2, sm[(C + c + 2u) * BV4 + vg]);
                hr = ht_fma(hr, q3, sm[(c + 3u) * BV4 + vg]);
                hr = ht_fma(hr, w3, sm[(C + c + 3u) * BV4 + vg]);
                q0 = m0;
                q1 = m1;
                q2 = m2;
                q3 = m3;
                w0 = m4;
                w1 = m5;
                w2 = m6;
                w3 = m7;
            }
        } else {
            var q0 = bs_row(0u, rbase, 0u, len, k40, dk4);
            var q1 = bs_row(0u, rbase, 1u, len, k40, dk4);
            var w0 = bs_row(1u, rbase, 0u, len, k40, dk4);
            var w1 = bs_row(1u, rbase, 1u, len, k40, dk4);
            for (var c = 0u; c < C; c += 2u) {
                let m0 = bs_row(0u, rbase, c + 2u, len, k40, dk4);
                let m1 = bs_row(0u, rbase, c + 3u, len, k40, dk4);
                let m2 = bs_row(1u, rbase, c + 2u, len, k40, dk4);
                let m3 = bs_row(1u, rbase, c + 3u, len, k40, dk4);
                hr = ht_fma(hr, q0, sm[c * BV4 + vg]);
                hr = ht_fma(hr, w0, sm[(C + c) * BV4 + vg]);
                hr = ht_fma(hr, q1, sm[(c + 1u) * BV4 + vg]);
                hr = ht_fma(hr, w1, sm[(C + c + 1u) * BV4 + vg]);
                q0 = m0;
                q1 = m1;
                w0 = m2;
                w1 = m3;
            }
        }
        workgroupBarrier();
    }

    if ((p.flags & F_H0) != 0u && vok) {
        for (var r = 0u; r < RB; r++) {
            let k = cg * RB + r;
            if (k < p.dk) {
                let base = (bh * p.dv + v4 * 4u) * p.dk + k;
                let hv = ht_get(hr, r);
                bs_dh0[base] = hv.x;
                bs_dh0[base + p.dk] = hv.y;
                bs_dh0[base + 2u * p.dk] = hv.z;
                bs_dh0[base + 3u * p.dk] = hv.w;
            }
        }
    }
}
