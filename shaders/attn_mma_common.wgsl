// Causal GQA softmax attention on f16 tiles (the matrix units' path of ops::attention),
// shared by the cooperative-matrix kernel (attn_mma_coop.wgsl) and its fallback
// (attn_mma_tile.wgsl), which differ only in how a subgroup multiplies its staged tiles.
//
// Same layout and causality as attention.wgsl: q [T, q_stride] (head h at column h dim),
// k, v [S, kv_stride] (kv head g at g dim); query row i sits at position pos0 + i and sees
// keys 0 ..= pos0 + i; workgroup row y = sequence * heads + head (sequence n: query rows
// n T .., key rows n (pos0 + T) ..). No statistics: this path serves the callers that do
// not read them (training, evaluation, generation).
//
// A workgroup owns BR = 64 query rows of one head: 4 subgroups of SG invocations, subgroup
// s the rows 16 s .. 16 s + 15. Q, K and V are rounded to f16 when staged in workgroup
// memory (rows of DP = D + 8 halves, the pad spreads rows over memory banks), in tiles of
// BC keys; the scores s = q.k are f32 sums of exact f16 products. Two passes over the key
// tiles, so the output never needs rescaling (the matrix units' accumulators cannot be
// scaled per row): the first finds each row's log-sum-exp L (running max and sum), the
// second forms p = exp(scale s - L) (rounded to f16) and accumulates o = sum p v in f32.
// Each pass takes a tile's keys SBW at a time: the subgroup's 16 x SBW block of scores goes
// through workgroup memory (`sc`), where each row is read by PARTS = SG / 16 invocations
// (CPL columns each), and the probabilities go back as f16 (`ps`) for the product with V.
// Timed on the H200 (T 4096, H 16/4): blocks of 32 keys for head dim 64 (2.58 ms; 16 keys:
// 3.43), of 16 for 128 (3.39 ms; 32 keys: 5.99), tiles of 32 keys (64: 4.88 ms at d 64).

const D: u32 = 64u; // the largest head dim of the build (64 or 128; the host sets it)
const BC: u32 = 32u; // keys per staged tile (>= 32: the Q tile is staged in its place)
const SBW: u32 = 32u; // keys per block of scores (16 or 32, at most BC; the host sets it)
const SG: u32 = 32u; // invocations per subgroup (16, 32 or 64; the host sets it)
const WG: u32 = 4u * SG;
const BR: u32 = 64u;
const DP: u32 = D + 8u;
const PARTS: u32 = SG / 16u;
const CPL: u32 = SBW / PARTS;
const NEG: f32 = -3.0e38;

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
// vec4s: every tensor's buffer and binding is a whole number of 16 bytes (gpu::tensor)
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> o: array<f32>;

// K tile (rows 0 .. BC) and V tile (rows BC .. 2 BC); first the Q tile (BR <= 2 BC rows)
var<workgroup> kvs: array<f16, 2u * BC * DP>;
// each subgroup's 16 x SBW block of scores (f32) and of probabilities (f16), row-major
var<workgroup> sc: array<f32, 64u * SBW>;
var<workgroup> ps: array<f16, 64u * SBW>;
// each row's partial (max, sum) per part, then combined
var<workgroup> red: array<vec2<f32>, BR * PARTS>;

// Where a workgroup's rows and keys are.
struct Place {
    h: u32,
    kvh: u32,
    r0: u32, // the sequence's first query row
    k0: u32, // and first key row
    i0: u32, // the workgroup's first query row within the sequence
    last: u32, // the last key any of its rows sees
}

fn place(wid: vec3<u32>) -> Place {
    var w: Place;
    w.h = wid.y % p.heads;
    w.kvh = w.h / (p.heads / p.kv_heads);
    w.r0 = (wid.y / p.heads) * p.t;
    w.k0 = (wid.y / p.heads) * (p.pos0 + p.t);
    w.i0 = wid.x * BR;
    w.last = p.pos0 + min(w.i0 + BR, p.t) - 1u;
    return w;
}

// Element e of binding `which` (0 q, 1 k, 2 v), and the 4 from e (e a multiple of 4).
fn el(which: u32, e: u32) -> f32 {
    switch which {
        case 0u: { return q[e / 4u][e % 4u]; }
        case 1u: { return k[e / 4u][e % 4u]; }
        default: { return v[e / 4u][e % 4u]; }
    }
}

fn el4(which: u32, e: u32) -> vec4<f32> {
    switch which {
        case 0u: { return q[e / 4u]; }
        case 1u: { return k[e / 4u]; }
        default: { return v[e / 4u]; }
    }
}

// The run of 4 head dims at element e (e / (D / 4): the row) of rows row0 .. of binding
// `which` (row stride `stride`, head columns from col0), zero past the first `valid` rows and
// past the head dim.
fn run_of(which: u32, row0: u32, valid: u32, stride: u32, col0: u32, e: u32) -> vec4<f32> {
    let r = e / (D / 4u);
    let c = (e % (D / 4u)) * 4u;
    var x = vec4<f32>(0.0);
    if (r < valid && c < p.dim) {
        let base = (row0 + r) * stride + col0 + c;
        if ((stride % 4u) == 0u && (col0 % 4u) == 0u && c + 3u < p.dim) {
            x = el4(which, base);
        } else {
            for (var u = 0u; u < 4u; u++) {
                if (c + u < p.dim) { x[u] = el(which, base + u); }
            }
        }
    }
    return x;
}

// Rows row0 .. row0 + n of binding `which` (as run_of) into kvs from row `dst`, as f16.
fn stage(which: u32, row0: u32, valid: u32, n: u32, stride: u32, col0: u32, dst: u32, li: u32) {
    for (var e = li; e < n * (D / 4u); e += WG) {
        put4(dst + e / (D / 4u), (e % (D / 4u)) * 4u, run_of(which, row0, valid, stride, col0, e));
    }
}

// x as f16 into kvs row r, head dims c .. c + 3.
fn put4(r: u32, c: u32, x: vec4<f32>) {
    let off = r * DP + c;
    let hx = vec4<f16>(x);
    kvs[off] = hx.x;
    kvs[off + 1u] = hx.y;
    kvs[off + 2u] = hx.z;
    kvs[off + 3u] = hx.w;
}

// The Q tile into kvs rows 0 .. BR.
fn stage_q(w: Place, li: u32) {
    let valid = select(0u, p.t - w.i0, w.i0 < p.t);
    stage(0u, w.r0 + w.i0, min(valid, BR), BR, p.q_stride, w.h * p.dim, 0u, li);
}

// Keys j0 .. j0 + BC of the K tile (and of V, with `with_v`).
fn stage_kv(w: Place, j0: u32, with_v: bool, li: u32) {
    let valid = min(BC, w.last + 1u - j0);
    stage(1u, w.k0 + j0, valid, BC, p.kv_stride, w.kvh * p.dim, 0u, li);
    if (with_v) { stage(2u, w.k0 + j0, valid, BC, p.kv_stride, w.kvh * p.dim, BC, li); }
}

// A K (and V) tile loaded ahead, one tile before it is staged, so that its loads are in
// flight while the tile before is multiplied (the kernels wait on no load of their own
// otherwise: timed on the H200, a GEMM that waits on its loads runs at half speed): each
// invocation's RUNS runs of 4 per tile, in named fields and straight-line code (arrays
// indexed in loops went to local memory on the H200). Where RUNS exceeds 8 (subgroups of
// 16 at head dim 128) the tiles are staged straight from memory instead.
const RUNS: u32 = BC * D / (4u * WG);
const AHEAD: bool = RUNS <= 8u;

struct KvAhead {
    k0: vec4<f32>,
    k1: vec4<f32>,
    k2: vec4<f32>,
    k3: vec4<f32>,
    k4: vec4<f32>,
    k5: vec4<f32>,
    k6: vec4<f32>,
    k7: vec4<f32>,
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
}

fn kv_run(w: Place, j0: u32, which: u32, q: u32, li: u32) -> vec4<f32> {
    let valid = select(0u, min(BC, w.last + 1u - j0), j0 <= w.last);
    return run_of(which, w.k0 + j0, valid, p.kv_stride, w.kvh * p.dim, q * WG + li);
}

// The tile of keys j0 .. into registers (nothing past the last key).
fn kv_ahead(w: Place, j0: u32, with_v: bool, li: u32) -> KvAhead {
    var a: KvAhead;
    if (!AHEAD || j0 > w.last) { return a; }
    a.k0 = kv_run(w, j0, 1u, 0u, li);
    if (RUNS > 1u) { a.k1 = kv_run(w, j0, 1u, 1u, li); }
    if (RUNS > 2u) { a.k2 = kv_run(w, j0, 1u, 2u, li); }
    if (RUNS > 3u) { a.k3 = kv_run(w, j0, 1u, 3u, li); }
    if (RUNS > 4u) { a.k4 = kv_run(w, j0, 1u, 4u, li); }
    if (RUNS > 5u) { a.k5 = kv_run(w, j0, 1u, 5u, li); }
    if (RUNS > 6u) { a.k6 = kv_run(w, j0, 1u, 6u, li); }
    if (RUNS > 7u) { a.k7 = kv_run(w, j0, 1u, 7u, li); }
    if (!with_v) { return a; }
    a.v0 = kv_run(w, j0, 2u, 0u, li);
    if (RUNS > 1u) { a.v1 = kv_run(w, j0, 2u, 1u, li); }
    if (RUNS > 2u) { a.v2 = kv_run(w, j0, 2u, 2u, li); }
    if (RUNS > 3u) { a.v3 = kv_run(w, j0, 2u, 3u, li); }
    if (RUNS > 4u) { a.v4 = kv_run(w, j0, 2u, 4u, li); }
    if (RUNS > 5u) { a.v5 = kv_run(w, j0, 2u, 5u, li); }
    if (RUNS > 6u) { a.v6 = kv_run(w, j0, 2u, 6u, li); }
    if (RUNS > 7u) { a.v7 = kv_run(w, j0, 2u, 7u, li); }
    return a;
}

// Run q of a tile (K rows from 0, V rows from BC) into kvs.
fn kv_put1(x: vec4<f32>, v: bool, q: u32, li: u32) {
    let e = q * WG + li;
    put4(select(0u, BC, v) + e / (D / 4u), (e % (D / 4u)) * 4u, x);
}

// The key loop's step at tile j0: the tile into kvs between barriers (the last tile's
// readers done before, this one's writers after), then the next tile's loads started.
fn kv_next(a: ptr<function, KvAhead>, w: Place, j0: u32, with_v: bool, li: u32) {
    workgroupBarrier();
    kv_put(*a, w, j0, with_v, li);
    workgroupBarrier();
    *a = kv_ahead(w, j0 + BC, with_v, li);
}

// The tile of keys j0 .. into kvs: from `a` (loaded by kv_ahead), or from memory.
fn kv_put(a: KvAhead, w: Place, j0: u32, with_v: bool, li: u32) {
    if (!AHEAD) {
        stage_kv(w, j0, with_v, li);
        return;
    }
    kv_put1(a.k0, false, 0u, li);
    if (RUNS > 1u) { kv_put1(a.k1, false, 1u, li); }
    if (RUNS > 2u) { kv_put1(a.k2, false, 2u, li); }
    if (RUNS > 3u) { kv_put1(a.k3, false, 3u, li); }
    if (RUNS > 4u) { kv_put1(a.k4, false, 4u, li); }
    if (RUNS > 5u) { kv_put1(a.k5, false, 5u, li); }
    if (RUNS > 6u) { kv_put1(a.k6, false, 6u, li); }
    if (RUNS > 7u) { kv_put1(a.k7, false, 7u, li); }
    if (!with_v) { return; }
    kv_put1(a.v0, true, 0u, li);
    if (RUNS > 1u) { kv_put1(a.v1, true, 1u, li); }
    if (RUNS > 2u) { kv_put1(a.v2, true, 2u, li); }
    if (RUNS > 3u) { kv_put1(a.v3, true, 3u, li); }
    if (RUNS > 4u) { kv_put1(a.v4, true, 4u, li); }
    if (RUNS > 5u) { kv_put1(a.v5, true, 5u, li); }
    if (RUNS > 6u) { kv_put1(a.v6, true, 6u, li); }
    if (RUNS > 7u) { kv_put1(a.v7, true, 7u, li); }
}

// This invocation's place in its subgroup's 16 x SBW blocks: row, first column, and the
// query's position.
struct Lane {
    own: u32, // the subgroup's block in sc / ps
    row: u32,
    part: u32, // which of the row's PARTS invocations
    col: u32,
    pos: u32,
    i: u32, // query row within the sequence
}

fn lane_of(w: Place, sg: u32, lane: u32) -> Lane {
    var l: Lane;
    l.own = sg * 16u * SBW;
    l.row = lane % 16u;
    l.part = lane / 16u;
    l.col = l.part * CPL;
    l.i = w.i0 + sg * 16u + l.row;
    l.pos = p.pos0 + l.i;
    return l;
}

// First pass: fold this lane's scores of keys jb .. jb + SBW - 1 (in sc) into its running
// max m and sum s of exp(scale score - m).
fn fold_stats(l: Lane, jb: u32, ms: vec2<f32>) -> vec2<f32> {
    var m = ms.x;
    var bm = NEG;
    for (var c = 0u; c < CPL; c++) {
        if (jb + l.col + c <= l.pos) { bm = max(bm, p.scale * sc[l.own + l.row * SBW + l.col + c]); }
    }
    let mn = max(m, bm);
    var s = ms.y * exp(m - mn);
    for (var c = 0u; c < CPL; c++) {
        if (jb + l.col + c <= l.pos) { s += exp(p.scale * sc[l.own + l.row * SBW + l.col + c] - mn); }
    }
    return vec2<f32>(mn, s);
}

// The row's log-sum-exp from the PARTS lanes' (max, sum) (all invocations call it).
fn combine_lse(l: Lane, sg: u32, ms: vec2<f32>) -> f32 {
    red[(sg * 16u + l.row) * PARTS + l.part] = ms;
    workgroupBarrier();
    var m = NEG;
    for (var u = 0u; u < PARTS; u++) { m = max(m, red[(sg * 16u + l.row) * PARTS + u].x); }
    var s = 0.0;
    for (var u = 0u; u < PARTS; u++) {
        let x = red[(sg * 16u + l.row) * PARTS + u];
        s += x.y * exp(x.x - m);
    }
    workgroupBarrier();
    return m + log(s);
}

// Second pass: probabilities of keys jb .. jb + SBW - 1 (scores in sc) into ps, as f16.
fn probs(l: Lane, jb: u32, lse: f32) {
    for (var c = 0u; c < CPL; c++) {
        let e = l.own + l.row * SBW + l.col + c;
        var pr = 0.0;
        if (jb + l.col + c <= l.pos) { pr = exp(p.scale * sc[e] - lse); }
        ps[e] = f16(pr);
    }
}

// The output o[i, h dim + d] for d < dim, rows of the sequence only.
fn store_o(w: Place, i: u32, d: u32, x: f32) {
    if (i < p.t && d < p.dim) { o[(w.r0 + i) * p.q_stride + w.h * p.dim + d] = x; }
}
