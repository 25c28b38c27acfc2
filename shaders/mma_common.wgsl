// The tiled GEMM shared by the cooperative-matrix kernel (mma_coop.wgsl) and its fallback
// (mma_tile.wgsl), which differ only in how a workgroup multiplies its staged tiles:
//
//   C[i, ccol + j] (=|+=) sum_r A(i, r) B(j, r) (+ bias[j])
//
// A(i, r) = a[i lda + acol + r] (TA = 0) or a[r lda + acol + i] (TA = 1), f32 (acol: the
// first column of a part of A, when the host splits a product over bindings);
// B(j, r) = b[j ldb + r] (TB = 0) or b[r ldb + j] (TB = 1), stored as WT (f32 or f16).
// The three products of a linear layer y = x W^T are its cases: y (TA 0, TB 0: A = x,
// B = W), dx = dy W (TA 0, TB 1: A = dy, B = W) and dW = dy^T x (TA 1, TB 1: A = dy, B = x).
//
// A workgroup of WG invocations owns a BM x BN tile of C. It steps through r in slices of
// BK, staging A(i0.., r0..) and B(j0.., r0..) as f16 in workgroup memory (the products of f16 values are exact in f32, so the only rounding besides the operands'
// is the f32 accumulation). Each operand is staged along its contiguous dimension in
// memory: untransposed, rows of BKP (= BK + 8) halves along r (as_[i BKP + r]);
// transposed, rows of BM + 8 (BN + 8) halves along i (j) (as_[r (BM + 8) + i]); the pads
// spread rows over memory banks. Each invocation moves runs of 4 elements along that
// dimension: one vec4 load from the buffer (4 scalar ones at the edges, or where the
// operand is not 16-byte aligned), four consecutive halves in workgroup memory. It loads its runs
// of the next slice into registers before the multiply of the current one (the loads are
// in flight while the matrix units work) and stores them after.

alias WT = f32; // f16-switch

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 32u;
const BKP: u32 = 40u; // BK + 8 (the host sets both)
const WG: u32 = 256u;
const TA: u32 = 0u;
const TB: u32 = 0u;
const QA: u32 = BM * BK / (4u * WG); // runs of 4 per invocation and slice
const QB: u32 = BN * BK / (4u * WG);
// row lengths of the staged tiles, in halves: along r (untransposed) or along i / j
const SA: u32 = select(BKP, BM + 8u, TA == 1u);
const SB: u32 = select(BKP, BN + 8u, TB == 1u);

struct Params {
    ni: u32,
    nj: u32,
    nr: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    acol: u32,
    ccol: u32,
    // bit 0: add bias; bit 1: accumulate into C; bit 2: scale A by amx (a_scale)
    flags: u32,
    // a reduction split over workgroups (the host's narrow weight gradients): workgroup z
    // sums r in [z rchunk, (z + 1) rchunk) into C + z cstride (partial sums the host adds)
    rchunk: u32,
    cstride: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// vec4s: every tensor's buffer and binding is a whole number of 16 bytes (gpu::tensor)
@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<WT>>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> amx: array<u32>;

// A(i0 + i, r0 + r) is as_[i BKP + r] (TA 0) or as_[r SA + i] (TA 1) (BM BKP >= BK (BM + 8)
// as BM >= BK); bs alike
var<workgroup> as_: array<f16, BM * BKP>;
// the scale of A (a power of two, from max |A|) and its inverse, applied to C
var<private> sa: f32 = 1.0;
var<private> inv_sa: f32 = 1.0;
// the end of this workgroup's part of the reduction, and its partial sums' offset in C
var<private> r_end: u32;
var<private> c_off: u32;
var<workgroup> bs: array<f16, BN * BKP>;

// Element e of a (b): one component of a vec4.
fn a_el(e: u32) -> f32 {
    return a[e / 4u][e % 4u];
}

fn b_el(e: u32) -> f32 {
    return f32(b[e / 4u][e % 4u]);
}

fn a_at(i: u32, r: u32) -> f32 {
    if (i >= p.ni || r >= r_end) { return 0.0; }
    if (TA == 0u) { return a_el(i * p.lda + p.acol + r); }
    return a_el(r * p.lda + p.acol + i);
}

fn b_at(j: u32, r: u32) -> f32 {
    if (j >= p.nj || r >= r_end) { return 0.0; }
    if (TB == 0u) { return b_el(j * p.ldb + r); }
    return b_el(r * p.ldb + j);
}

// With flag bit 2 (gradients: dy of a KL loss over thousands of tokens lies mostly below
// f16's normal range, 6.1e-5, and much of it below its smallest subnormal, 6e-8), scale A
// by the power of two that brings its largest magnitude (amx[0], the bits of max |A| that
// mma_absmax.wgsl wrote) to [2^13, 2^14) before rounding to f16, and C back by its
// inverse: exact, so the rounding is f16's relative 2^-11 at any magnitude (values below
// 2^-28 of the largest still flush).
fn a_scale() {
    if ((p.flags & 4u) == 0u) { return; }
    let mx = bitcast<f32>(amx[0]);
    if (mx > 0.0 && mx < 3.0e38) {
        let e = clamp(13.0 - floor(log2(mx)), -100.0, 100.0);
        sa = exp2(e);
        inv_sa = exp2(-e);
    }
}

// This workgroup's part [rb, re) of the reduction (all of it unless the host splits it over
// wid.z); returns rb, with re in r_end.
fn reduction_part(z: u32) -> u32 {
    let rb = z * p.rchunk;
    r_end = min(p.nr, rb + p.rchunk);
    c_off = z * p.cstride;
    return rb;
}

// Run q of an operand's slice for invocation li: (row, r) of its first element; the run goes
// along r (untransposed) or along the row (transposed), consecutive invocations take
// consecutive runs, so a subgroup reads whole lines of memory.
fn run_at(li: u32, q: u32, rows: u32, t: u32) -> vec2<u32> {
    let e = 4u * (q * WG + li);
    if (t == 0u) { return vec2<u32>(e / BK, e % BK); }
    return vec2<u32>(e % rows, e / rows);
}

// A slice's runs for one invocation, QA and QB of them (1 to 8, the host sees to it). Named
// fields and straight-line code, not arrays indexed in loops: the H200's Vulkan driver kept
// such arrays (and arrays of cooperative matrices) in local memory, 3.3x slower at 4096^3.
struct Slice {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
    b0: vec4<WT>,
    b1: vec4<WT>,
    b2: vec4<WT>,
    b3: vec4<WT>,
    b4: vec4<WT>,
    b5: vec4<WT>,
    b6: vec4<WT>,
    b7: vec4<WT>,
}

// A(i.., r..): the run of 4 along the contiguous dimension from (i, r).
fn a_run(i: u32, r: u32) -> vec4<f32> {
    let whole = (p.lda | p.acol) % 4u == 0u;
    if (TA == 0u) {
        if (whole && i < p.ni && r + 3u < r_end) { return a[(i * p.lda + p.acol + r) / 4u]; }
        return vec4<f32>(a_at(i, r), a_at(i, r + 1u), a_at(i, r + 2u), a_at(i, r + 3u));
    }
    if (whole && i + 3u < p.ni && r < r_end) { return a[(r * p.lda + p.acol + i) / 4u]; }
    return vec4<f32>(a_at(i, r), a_at(i + 1u, r), a_at(i + 2u, r), a_at(i + 3u, r));
}

fn b_run(j: u32, r: u32) -> vec4<WT> {
    let whole = p.ldb % 4u == 0u;
    if (TB == 0u) {
        if (whole && j < p.nj && r + 3u < r_end) { return b[(j * p.ldb + r) / 4u]; }
        return vec4<WT>(vec4<f32>(b_at(j, r), b_at(j, r + 1u), b_at(j, r + 2u), b_at(j, r + 3u)));
    }
    if (whole && j + 3u < p.nj && r < r_end) { return b[(r * p.ldb + j) / 4u]; }
    return vec4<WT>(vec4<f32>(b_at(j, r), b_at(j + 1u, r), b_at(j + 2u, r), b_at(j + 3u, r)));
}

// Run q of A's (B's) part of the slice at r0 for invocation li.
fn a_load(i0: u32, r0: u32, li: u32, q: u32) -> vec4<f32> {
    let at = run_at(li, q, BM, TA);
    return a_run(i0 + at.x, r0 + at.y);
}

fn b_load(j0: u32, r0: u32, li: u32, q: u32) -> vec4<WT> {
    let at = run_at(li, q, BN, TB);
    return b_run(j0 + at.x, r0 + at.y);
}

fn load_slice(i0: u32, j0: u32, r0: u32, li: u32) -> Slice {
    var s: Slice;
    s.a0 = a_load(i0, r0, li, 0u);
    if (QA > 1u) { s.a1 = a_load(i0, r0, li, 1u); }
    if (QA > 2u) { s.a2 = a_load(i0, r0, li, 2u); }
    if (QA > 3u) { s.a3 = a_load(i0, r0, li, 3u); }
    if (QA > 4u) { s.a4 = a_load(i0, r0, li, 4u); }
    if (QA > 5u) { s.a5 = a_load(i0, r0, li, 5u); }
    if (QA > 6u) { s.a6 = a_load(i0, r0, li, 6u); }
    if (QA > 7u) { s.a7 = a_load(i0, r0, li, 7u); }
    s.b0 = b_load(j0, r0, li, 0u);
    if (QB > 1u) { s.b1 = b_load(j0, r0, li, 1u); }
    if (QB > 2u) { s.b2 = b_load(j0, r0, li, 2u); }
    if (QB > 3u) { s.b3 = b_load(j0, r0, li, 3u); }
    if (QB > 4u) { s.b4 = b_load(j0, r0, li, 4u); }
    if (QB > 5u) { s.b5 = b_load(j0, r0, li, 5u); }
    if (QB > 6u) { s.b6 = b_load(j0, r0, li, 6u); }
    if (QB > 7u) { s.b7 = b_load(j0, r0, li, 7u); }
    return s;
}

// The index in a staged tile of (row, r) (row: i or j).
fn staged(row: u32, r: u32, t: u32, rowlen: u32) -> u32 {
    if (t == 0u) { return row * BKP + r; }
    return r * rowlen + row;
}

// Run q of A's (B's) part of a slice into workgroup memory (A scaled by sa, both rounded
// to f16).
fn a_store(v4: vec4<f32>, li: u32, q: u32) {
    let at = run_at(li, q, BM, TA);
    let v = vec4<f16>(v4 * sa);
    let o = staged(at.x, at.y, TA, SA);
    as_[o] = v.x;
    as_[o + 1u] = v.y;
    as_[o + 2u] = v.z;
    as_[o + 3u] = v.w;
}

fn b_store(v4: vec4<WT>, li: u32, q: u32) {
    let at = run_at(li, q, BN, TB);
    let v = vec4<f16>(v4);
    let o = staged(at.x, at.y, TB, SB);
    bs[o] = v.x;
    bs[o + 1u] = v.y;
    bs[o + 2u] = v.z;
    bs[o + 3u] = v.w;
}

fn store_slice(s: Slice, li: u32) {
    a_store(s.a0, li, 0u);
    if (QA > 1u) { a_store(s.a1, li, 1u); }
    if (QA > 2u) { a_store(s.a2, li, 2u); }
    if (QA > 3u) { a_store(s.a3, li, 3u); }
    if (QA > 4u) { a_store(s.a4, li, 4u); }
    if (QA > 5u) { a_store(s.a5, li, 5u); }
    if (QA > 6u) { a_store(s.a6, li, 6u); }
    if (QA > 7u) { a_store(s.a7, li, 7u); }
    b_store(s.b0, li, 0u);
    if (QB > 1u) { b_store(s.b1, li, 1u); }
    if (QB > 2u) { b_store(s.b2, li, 2u); }
    if (QB > 3u) { b_store(s.b3, li, 3u); }
    if (QB > 4u) { b_store(s.b4, li, 4u); }
    if (QB > 5u) { b_store(s.b5, li, 5u); }
    if (QB > 6u) { b_store(s.b6, li, 6u); }
    if (QB > 7u) { b_store(s.b7, li, 7u); }
}

// C[gi, gj] from the accumulated v, with bias and accumulation.
fn store_c(gi: u32, gj: u32, v: f32) {
    if (gi >= p.ni || gj >= p.nj) { return; }
    var o = v * inv_sa;
    if ((p.flags & 1u) != 0u) { o += bias[gj]; }
    let ci = c_off + gi * p.ldc + p.ccol + gj;
    if ((p.flags & 2u) != 0u) { o += c[ci]; }
    c[ci] = o;
}
