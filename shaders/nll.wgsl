// Next-token negative log-likelihood from logits: for logits row r with target
// t = targets[row0 + r],
//   nll[row0 + r] = logsumexp(logits[r, :]) - logits[r, t]     (0 where t == 0xffffffff),
// so a long sequence is scored in chunks of logits rows.
// One workgroup per row, a max pass and a sum-of-exp pass over the vocabulary.

const WG: u32 = 256u;

struct Params {
    rows: u32,
    vocab: u32,
    row0: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> nll: array<f32>;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn nll_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * nwg.x + wid.x;
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    var m = -3.4e38;
    for (var c = lid.x; c < p.vocab; c += WG) { m = max(m, logits[base + c]); }
    red[lid.x] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { red[lid.x] = max(red[lid.x], red[lid.x + s]); }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var acc = 0.0;
    for (var c = lid.x; c < p.vocab; c += WG) { acc += exp(logits[base + c] - mx); }
    red[lid.x] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) {
        let t = targets[p.row0 + row];
        if (t == 0xffffffffu || t >= p.vocab) {
            nll[p.row0 + row] = 0.0;
        } else {
            nll[p.row0 + row] = mx + log(red[0]) - logits[base + t];
        }
    }
}
