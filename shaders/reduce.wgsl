// Column sums: y[c] = scale * sum_r x[r, c]. One thread per column; used to average
// per-row attention statistics over query rows and, later, bias gradients.

const WG: u32 = 64u;

struct Params {
    rows: u32,
    cols: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn colsum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.cols) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += x[r * p.cols + c];
    }
    y[c] = acc * p.scale;
}
