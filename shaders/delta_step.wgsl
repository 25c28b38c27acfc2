// Gated delta rule, token-by-token recurrence for decoding, in place on the state:
// per (b, h) and value row v of S [dv, dk], for each of the T tokens of the call
//   S_v <- exp(g) S_v;  delta = beta (v_v - S_v . khat);  S_v <- S_v + delta khat;
//   o_v = s S_v . qhat
// (khat, qhat optionally L2-normalised as x / sqrt(sum x^2 + 1e-6)).
// One workgroup per (block of 64 value rows, b*H + h); one invocation per row.
// q, k [B, T, H, dk], v, o [B, T, H, dv], g, beta [B, T, H], state [B, H, dv, dk].

// #include delta_common (Params, C, L2_EPS, F_L2, the uniform p, T4 tiles, tri)

@group(0) @binding(1) var<storage, read> st_q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> st_k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> st_v: array<f32>;
@group(0) @binding(4) var<storage, read> st_g: array<f32>;
@group(0) @binding(5) var<storage, read> st_beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> st_s: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> st_o: array<f32>;

var<workgroup> qsh: array<vec4<f32>, 64>;
var<workgroup> ksh: array<vec4<f32>, 64>;

@compute @workgroup_size(64)
fn delta_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.h;
    let hh = bh % p.h;
    let dk4 = p.dk / 4u;
    let v = wid.x * 64u + lid;
    let sbase = (bh * p.dv + v) * dk4;
    for (var t = 0u; t < p.t; t++) {
        let r = (b * p.t + t) * p.h + hh;
        if (lid < dk4) {
            qsh[lid] = st_q[r * dk4 + lid];
            ksh[lid] = st_k[r * dk4 + lid];
        }
        workgroupBarrier();
        var rq = 1.0;
        var rk = 1.0;
        if ((p.flags & F_L2) != 0u) {
            var sq = 0.0;
            var sk = 0.0;
            for (var i = 0u; i < dk4; i++) {
                sq += dot(qsh[i], qsh[i]);
                sk += dot(ksh[i], ksh[i]);
            }
            rq = 1.0 / sqrt(sq + L2_EPS);
            rk = 1.0 / sqrt(sk + L2_EPS);
        }
        if (v < p.dv) {
            let a = exp(st_g[r]);
            var pk = vec4<f32>(0.0);
            for (var i = 0u; i < dk4; i++) {
                pk += st_s[sbase + i] * ksh[i];
            }
            let delta = st_beta[r] * (st_v[r * p.dv + v] - a * rk * (pk.x + pk.y + pk.z + pk.w));
            var ov = vec4<f32>(0.0);
            for (var i = 0u; i < dk4; i++) {
                let s = a * st_s[sbase + i] + (delta * rk) * ksh[i];
                st_s[sbase + i] = s;
                ov += s * qsh[i];
            }
            st_o[r * p.dv + v] = p.scale * rq * (ov.x + ov.y + ov.z + ov.w);
        }
        workgroupBarrier();
    }
}

// ---------------------------------------------------------------- delta_tile_map
// Test hook for delta_common's `low_tile`: tm_out[lid] = ti * 16 + tj of invocation lid's
// 4 x 4 tile (plus p.flags, 0 in the call, which keeps the uniform bound).
@group(0) @binding(1) var<storage, read_write> tm_out: array<u32>;

@compute @workgroup_size(256)
fn delta_tile_map(@builtin(local_invocation_index) lid: u32) {
    let t = low_tile(lid);
    tm_out[lid] = t.x * 16u + t.y + p.flags;
}
