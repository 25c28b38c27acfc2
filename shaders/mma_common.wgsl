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
// BK, staging A(i0.., r0..) and B(j0.., r0..) as f16 in workgroup memory, r-contiguous rows
// of BKP (= BK + 8: the pad spreads rows over memory banks); the products of f16 values are
// exact in f32, so the only rounding besides the operands' is the f32 accumulation. Each
// invocation loads its part of the next slice into registers before the multiply of the
// current one (the loads are in flight while the matrix units work) and stores it to
// workgroup memory after. Each invocation moves runs of 4 elements along the operand's
// contiguous dimension.

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
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> amx: array<u32>;

var<workgroup> as_: array<f16, BM * BKP>; // as_[i BKP + r] = A(i0 + i, r0 + r)
// the scale of A (a power of two, from max |A|) and its inverse, applied to C
var<private> sa: f32 = 1.0;
var<private> inv_sa: f32 = 1.0;
var<workgroup> bs: array<f16, BN * BKP>; // bs[j BKP + r] = B(j0 + j, r0 + r)

fn a_at(i: u32, r: u32) -> f32 {
    if (i >= p.ni || r >= p.nr) { return 0.0; }
    if (TA == 0u) { return a[i * p.lda + p.acol + r]; }
    return a[r * p.lda + p.acol + i];
}

fn b_at(j: u32, r: u32) -> f32 {
    if (j >= p.nj || r >= p.nr) { return 0.0; }
    if (TB == 0u) { return f32(b[j * p.ldb + r]); }
    return f32(b[r * p.ldb + j]);
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

// Run q of an operand's slice for invocation li: (row, r) of its first element; the run goes
// along r (untransposed) or along the row (transposed), consecutive invocations take
// consecutive runs, so a subgroup reads whole lines of memory.
fn run_at(li: u32, q: u32, rows: u32, t: u32) -> vec2<u32> {
    let e = 4u * (q * WG + li);
    if (t == 0u) { return vec2<u32>(e / BK, e % BK); }
    return vec2<u32>(e % rows, e / rows);
}

struct Slice {
    a: array<vec4<f32>, QA>,
    b: array<vec4<f32>, QB>,
}

fn load_slice(i0: u32, j0: u32, r0: u32, li: u32) -> Slice {
    var s: Slice;
    for (var q = 0u; q < QA; q++) {
        let at = run_at(li, q, BM, TA);
        let i = i0 + at.x;
        let r = r0 + at.y;
        if (TA == 0u) { s.a[q] = vec4<f32>(a_at(i, r), a_at(i, r + 1u), a_at(i, r + 2u), a_at(i, r + 3u)); }
        else { s.a[q] = vec4<f32>(a_at(i, r), a_at(i + 1u, r), a_at(i + 2u, r), a_at(i + 3u, r)); }
    }
    for (var q = 0u; q < QB; q++) {
        let at = run_at(li, q, BN, TB);
        let j = j0 + at.x;
        let r = r0 + at.y;
        if (TB == 0u) { s.b[q] = vec4<f32>(b_at(j, r), b_at(j, r + 1u), b_at(j, r + 2u), b_at(j, r + 3u)); }
        else { s.b[q] = vec4<f32>(b_at(j, r), b_at(j + 1u, r), b_at(j + 2u, r), b_at(j + 3u, r)); }
    }
    return s;
}

fn store_slice(s: Slice, li: u32) {
    for (var q = 0u; q < QA; q++) {
        let at = run_at(li, q, BM, TA);
        let v = vec4<f16>(s.a[q] * sa);
        // element k of the run: (row, r + k) or (row + k, r)
        let step = select(BKP, 1u, TA == 0u);
        let o = at.x * BKP + at.y;
        as_[o] = v.x;
        as_[o + step] = v.y;
        as_[o + 2u * step] = v.z;
        as_[o + 3u * step] = v.w;
    }
    for (var q = 0u; q < QB; q++) {
        let at = run_at(li, q, BN, TB);
        let v = vec4<f16>(s.b[q]);
        let step = select(BKP, 1u, TB == 0u);
        let o = at.x * BKP + at.y;
        bs[o] = v.x;
        bs[o + step] = v.y;
        bs[o + 2u * step] = v.z;
        bs[o + 3u * step] = v.w;
    }
}

// C[gi, gj] from the accumulated v, with bias and accumulation.
fn store_c(gi: u32, gj: u32, v: f32) {
    if (gi >= p.ni || gj >= p.nj) { return; }
    var o = v * inv_sa;
    if ((p.flags & 1u) != 0u) { o += bias[gj]; }
    let ci = gi * p.ldc + p.ccol + gj;
    if ((p.flags & 2u) != 0u) { o += c[ci]; }
    c[ci] = o;
}
