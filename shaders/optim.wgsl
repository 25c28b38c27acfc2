// Training kernels: sums of squares (gradient norm), scaled sums (losses), the MSE loss with its gradient and
// cosine-similarity sums, and the AdamW update with global-norm gradient clipping.
// Reductions are two-stage: each 256-invocation workgroup writes a partial, then one
// workgroup adds the partials, so the whole step stays on the GPU without readbacks.

const WG: u32 = 256u;

struct Params {
    n: u32,        // elements
    offset: u32,   // first partial slot this dispatch writes (reductions) / output index
    f0: f32,       // scale (mse gradient: 2 / N) or lr (adamw)
    f1: f32,       // adamw: beta1
    f2: f32,       // adamw: beta2
    f3: f32,       // adamw: eps
    f4: f32,       // adamw: weight decay
    f5: f32,       // adamw: 1 - beta1^t
    f6: f32,       // adamw: 1 - beta2^t
    f7: f32,       // adamw: max gradient norm (0: no clipping)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn lin(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

var<workgroup> red: array<vec4<f32>, WG>;

fn reduce_wg(lid: u32, v: vec4<f32>) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    return red[0];
}

// partials[offset + workgroup] = sum of x^2 (f1 == 0) or f0 * sum of x (f1 != 0) over
// this workgroup's elements
@group(0) @binding(1) var<storage, read> sq_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sq_part: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn sq_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = lin(wid, nwg);
    let i = g * WG + lid.x;
    var v = 0.0;
    if (i < p.n) {
        let x = sq_x[i];
        v = select(x * x, p.f0 * x, p.f1 != 0.0);
    }
    let r = reduce_wg(lid.x, vec4<f32>(v, 0.0, 0.0, 0.0));
    if (lid.x == 0u) { sq_part[p.offset + g] = r; }
}

// dy = scale * (y - t); partials get (sum (y-t)^2, sum y t, sum y^2, sum t^2)
@group(0) @binding(1) var<storage, read> mse_y: array<f32>;
@group(0) @binding(2) var<storage, read> mse_t: array<f32>;
@group(0) @binding(3) var<storage, read_write> mse_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> mse_part: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn mse(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let g = lin(wid, nwg);
    let i = g * WG + lid.x;
    var v = vec4<f32>(0.0);
    if (i < p.n) {
        let y = mse_y[i];
        let t = mse_t[i];
        let d = y - t;
        mse_dy[i] = p.f0 * d;
        v = vec4<f32>(d * d, y * t, y * y, t * t);
    }
    let r = reduce_wg(lid.x, v);
    if (lid.x == 0u) { mse_part[p.offset + g] = r; }
}

// out[offset] = sum of partials[0 .. n) (one workgroup)
@group(0) @binding(1) var<storage, read> sum_part: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> sum_out: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn sum_partials(@builtin(local_invocation_id) lid: vec3<u32>) {
    var acc = vec4<f32>(0.0);
    for (var i = lid.x; i < p.n; i += WG) { acc += sum_part[i]; }
    let r = reduce_wg(lid.x, acc);
    if (lid.x == 0u) { sum_out[p.offset] = r; }
}

// AdamW (decoupled weight decay) with global-norm clipping: the gradient is scaled by
// min(1, max_norm / (sqrt(norm2) + 1e-6)) where norm2 = stats[0].x (sum of squares of all
// gradients of the step).
@group(0) @binding(1) var<storage, read_write> ad_param: array<f32>;
@group(0) @binding(2) var<storage, read> ad_grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> ad_m: array<f32>;
@group(0) @binding(4) var<storage, read_write> ad_v: array<f32>;
@group(0) @binding(5) var<storage, read> ad_norm: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = lin(wid, nwg) * WG + lid.x;
    if (i >= p.n) { return; }
    var scale = 1.0;
    if (p.f7 > 0.0) {
        scale = min(1.0, p.f7 / (sqrt(ad_norm[0].x) + 1e-6));
    }
    let g = ad_grad[i] * scale;
    let m = p.f1 * ad_m[i] + (1.0 - p.f1) * g;
    let v = p.f2 * ad_v[i] + (1.0 - p.f2) * g * g;
    ad_m[i] = m;
    ad_v[i] = v;
    let mhat = m / p.f5;
    let vhat = v / p.f6;
    let w = ad_param[i] * (1.0 - p.f0 * p.f4);
    ad_param[i] = w - p.f0 * mhat / (sqrt(vhat) + p.f3);
}
