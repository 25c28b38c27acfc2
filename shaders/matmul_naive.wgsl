// Naive matmul, one thread per output: Y[m, n] = sum_k X[m, k] * W[n, k].
// The baseline `taylorcal bench` compares the tiled kernel against.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(16, 16)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let n = gid.x;
    let m = gid.y;
    if (m >= p.m || n >= p.n) { return; }
    var acc = 0.0;
    for (var k = 0u; k < p.k; k++) {
        acc += x[m * p.k + k] * w[n * p.k + k];
    }
    y[m * p.n + n] = acc;
}
