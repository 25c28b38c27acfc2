// Gated delta rule, the sequential passes over chunks (chunk C = 64), one workgroup per
// (block of BV value columns, b*H + h). The state H = S^T [dk, dv] (column block) lives
// in registers (thread tile RB rows x 4 columns) with a copy in workgroup memory.
//
// delta_fwd_state  for each chunk: h[n] = H (state entering the chunk);
//                  v_new = u - w H;  H <- exp(gamma_L) H + Khat^T diag(exp(gamma_L - gamma)) v_new
//                  and the final state ht [B, H, dv, dk] when asked for.
// delta_bwd_state  reverse over chunks with dH = dL/d(state leaving the chunk), from d(ht):
//                  dh[n] = dH;  dv_new = dv_new_local + diag(exp(gamma_L - gamma)) Khat dH;
//                  dH <- exp(gamma_L) dH + s Qhat^T diag(exp(gamma)) dO - w^T dv_new;
//                  and dh0 = dH at the start, [B, H, dv, dk].
//
// DK is dk rounded up to 64, 128 or 256; BV in {8, 16, 32, 64}; the host checks that the
// workgroup memory (4 * (DK * BV + 512 + 64 * BV + 192) bytes forward,
// 4 * (DK * BV + 512 + 128 * BV + 192) backward)
// fits the adapter.

struct Params {
    b: u32,
    t: u32,
    h: u32,
    dk: u32,
    dv: u32,
    nt: u32,
    flags: u32,
    scale: f32,
}

const C: u32 = 64u;
const DK: u32 = 128u;
const BV: u32 = 16u;
const BV4: u32 = BV / 4u;
const NTH: u32 = 4u * BV;
// state rows per thread (16 row groups) and their count in vec4s
const RB: u32 = DK / 16u;
const RB4: u32 = RB / 4u;
// dk-depth of the transposed w / khat tile in part (a)
const KT: u32 = 8u;
const TILE: u32 = 128u;
// chunk rows per khat / qhat / w tile in part (b)
const CT: u32 = TILE * 4u / DK;

const F_L2: u32 = 1u;
const F_H0: u32 = 2u;
const F_HT: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;

var<workgroup> hs: array<vec4<f32>, DK * BV4>;
var<workgroup> tl: array<vec4<f32>, TILE>;
var<workgroup> gsm: array<f32, 64>;
var<workgroup> qsm: array<f32, 64>;
var<workgroup> ksm: array<f32, 64>;
// forward: decayed v_new [c][v]
var<workgroup> fsm: array<vec4<f32>, C * BV4>;
// backward: s exp(gamma) dO [c][v] then -dv_new [64 + c][v]
var<workgroup> ysm: array<vec4<f32>, 2u * C * BV4>;

// ---------------------------------------------------------------- delta_fwd_state
@group(0) @binding(1) var<storage, read> fs_k: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> fs_w: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> fs_u: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> fs_aux: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> fs_h0: array<f32>;
@group(0) @binding(6) var<storage, read_write> fs_h: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> fs_vn: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> fs_ht: array<f32>;

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
    let l2 = (p.flags & F_L2) != 0u;

    var hr: array<vec4<f32>, RB>;
    for (var r = 0u; r < RB; r++) {
        hr[r] = vec4<f32>(0.0);
        let k = cg * RB + r;
        if ((p.flags & F_H0) != 0u && vok && k < p.dk) {
            let base = (bh * p.dv + v4 * 4u) * p.dk + k;
            hr[r] = vec4<f32>(fs_h0[base], fs_h0[base + p.dk], fs_h0[base + 2u * p.dk], fs_h0[base + 3u * p.dk]);
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
            hs[k * BV4 + vg] = hr[r];
            if (vok && k < p.dk) {
                fs_h[(hbase + k) * dv4 + v4] = hr[r];
            }
        }
        workgroupBarrier();

        // (a) v_new = u - w H; thread tile rows 4cg.., column vec4 v4
        var acc: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            acc[r] = vec4<f32>(0.0);
        }
        for (var k0 = 0u; k0 < p.dk; k0 += KT) {
            for (var e = lid; e < C * (KT / 4u); e += NTH) {
                let c = e / (KT / 4u);
                let q4 = e % (KT / 4u);
                var wv = vec4<f32>(0.0);
                if (c < len && k0 / 4u + q4 < dk4) {
                    wv = fs_w[(rbase + c * p.h) * dk4 + k0 / 4u + q4];
                }
                for (var e2 = 0u; e2 < 4u; e2++) {
                    tl[(q4 * 4u + e2) * 16u + c / 4u][c % 4u] = wv[e2];
                }
            }
            workgroupBarrier();
            for (var kk = 0u; kk < KT; kk++) {
                let a = tl[kk * 16u + cg];
                let hv = hs[(k0 + kk) * BV4 + vg];
                acc[0] += a.x * hv;
                acc[1] += a.y * hv;
                acc[2] += a.z * hv;
                acc[3] += a.w * hv;
            }
            workgroupBarrier();
        }
        let gl = gsm[len - 1u];
        for (var r = 0u; r < 4u; r++) {
            let c = 4u * cg + r;
            var vn = vec4<f32>(0.0);
            if (c < len && vok) {
                let idx = (rbase + c * p.h) * dv4 + v4;
                vn = fs_u[idx] - acc[r];
                fs_vn[idx] = vn;
            }
            fsm[c * BV4 + vg] = vn * exp(gl - gsm[c]);
        }
        workgroupBarrier();

        // (b) H <- exp(gamma_L) H + Khat^T (decayed v_new)
        let eg = exp(gl);
        for (var r = 0u; r < RB; r++) {
            hr[r] *= eg;
        }
        for (var c0 = 0u; c0 < len; c0 += CT) {
            for (var e = lid; e < CT * (DK / 4u); e += NTH) {
                let c = c0 + e / (DK / 4u);
                let k4 = e % (DK / 4u);
                var kv = vec4<f32>(0.0);
                if (c < len && k4 < dk4) {
                    kv = fs_k[(rbase + c * p.h) * dk4 + k4] * ksm[c];
                }
                tl[e] = kv;
            }
            workgroupBarrier();
            for (var cc = 0u; cc < CT; cc++) {
                let y = fsm[(c0 + cc) * BV4 + vg];
                for (var r4 = 0u; r4 < RB4; r4++) {
                    let kv = tl[cc * (DK / 4u) + cg * RB4 + r4];
                    hr[r4 * 4u] += kv.x * y;
                    hr[r4 * 4u + 1u] += kv.y * y;
                    hr[r4 * 4u + 2u] += kv.z * y;
                    hr[r4 * 4u + 3u] += kv.w * y;
                }
            }
            workgroupBarrier();
        }
    }

    if ((p.flags & F_HT) != 0u && vok) {
        for (var r = 0u; r < RB; r++) {
            let k = cg * RB + r;
            if (k < p.dk) {
                let base = (bh * p.dv + v4 * 4u) * p.dk + k;
                fs_ht[base] = hr[r].x;
                fs_ht[base + p.dk] = hr[r].y;
                fs_ht[base + 2u * p.dk] = hr[r].z;
                fs_ht[base + 3u * p.dk] = hr[r].w;
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
    let l2 = (p.flags & F_L2) != 0u;

    var hr: array<vec4<f32>, RB>;
    for (var r = 0u; r < RB; r++) {
        hr[r] = vec4<f32>(0.0);
        let k = cg * RB + r;
        if ((p.flags & F_HT) != 0u && vok && k < p.dk) {
            let base = (bh * p.dv + v4 * 4u) * p.dk + k;
            hr[r] = vec4<f32>(bs_dht[base], bs_dht[base + p.dk], bs_dht[base + 2u * p.dk], bs_dht[base + 3u * p.dk]);
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
            hs[k * BV4 + vg] = hr[r];
            if (vok && k < p.dk) {
                bs_dh[(hbase + k) * dv4 + v4] = hr[r];
            }
        }
        workgroupBarrier();

        // (a) dv_new = dv_new_local + diag(exp(gamma_L - gamma)) Khat dH
        var acc: array<vec4<f32>, 4>;
        for (var r = 0u; r < 4u; r++) {
            acc[r] = vec4<f32>(0.0);
        }
        for (var k0 = 0u; k0 < p.dk; k0 += KT) {
            for (var e = lid; e < C * (KT / 4u); e += NTH) {
                let c = e / (KT / 4u);
                let q4 = e % (KT / 4u);
                var kv = vec4<f32>(0.0);
                if (c < len && k0 / 4u + q4 < dk4) {
                    kv = bs_k[(rbase + c * p.h) * dk4 + k0 / 4u + q4] * ksm[c];
                }
                for (var e2 = 0u; e2 < 4u; e2++) {
                    tl[(q4 * 4u + e2) * 16u + c / 4u][c % 4u] = kv[e2];
                }
            }
            workgroupBarrier();
            for (var kk = 0u; kk < KT; kk++) {
                let a = tl[kk * 16u + cg];
                let hv = hs[(k0 + kk) * BV4 + vg];
                acc[0] += a.x * hv;
                acc[1] += a.y * hv;
                acc[2] += a.z * hv;
                acc[3] += a.w * hv;
            }
            workgroupBarrier();
        }
        let gl = gsm[len - 1u];
        for (var r = 0u; r < 4u; r++) {
            let c = 4u * cg + r;
            var dvn = vec4<f32>(0.0);
            var dov = vec4<f32>(0.0);
            if (c < len && vok) {
                let idx = (rbase + c * p.h) * dv4 + v4;
                dvn = bs_dvn[idx] + acc[r] * exp(gl - gsm[c]);
                bs_dvn[idx] = dvn;
                dov = bs_do[idx] * (p.scale * exp(gsm[c]));
            }
            ysm[c * BV4 + vg] = dov;
            ysm[(C + c) * BV4 + vg] = -dvn;
        }
        workgroupBarrier();

        // (b) dH <- exp(gamma_L) dH + Qhat^T (s exp(gamma) dO) + w^T (-dv_new)
        let eg = exp(gl);
        for (var r = 0u; r < RB; r++) {
            hr[r] *= eg;
        }
        for (var ps = 0u; ps < 2u; ps++) {
            for (var c0 = 0u; c0 < len; c0 += CT) {
                for (var e = lid; e < CT * (DK / 4u); e += NTH) {
                    let c = c0 + e / (DK / 4u);
                    let k4 = e % (DK / 4u);
                    var xv = vec4<f32>(0.0);
                    if (c < len && k4 < dk4) {
                        let idx = (rbase + c * p.h) * dk4 + k4;
                        if (ps == 0u) {
                            xv = bs_q[idx] * qsm[c];
                        } else {
                            xv = bs_w[idx];
                        }
                    }
                    tl[e] = xv;
                }
                workgroupBarrier();
                for (var cc = 0u; cc < CT; cc++) {
                    let y = ysm[(ps * C + c0 + cc) * BV4 + vg];
                    for (var r4 = 0u; r4 < RB4; r4++) {
                        let kv = tl[cc * (DK / 4u) + cg * RB4 + r4];
                        hr[r4 * 4u] += kv.x * y;
                        hr[r4 * 4u + 1u] += kv.y * y;
                        hr[r4 * 4u + 2u] += kv.z * y;
                        hr[r4 * 4u + 3u] += kv.w * y;
                    }
                }
                workgroupBarrier();
            }
        }
    }

    if ((p.flags & F_H0) != 0u && vok) {
        for (var r = 0u; r < RB; r++) {
            let k = cg * RB + r;
            if (k < p.dk) {
                let base = (bh * p.dv + v4 * 4u) * p.dk + k;
                bs_dh0[base] = hr[r].x;
                bs_dh0[base + p.dk] = hr[r].y;
                bs_dh0[base + 2u * p.dk] = hr[r].z;
                bs_dh0[base + 3u * p.dk] = hr[r].w;
            }
        }
    }
}
