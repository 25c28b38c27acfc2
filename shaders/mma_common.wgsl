// The tiled GEMM shared by the cooperative-matrix kernel (mma_coop.wgsl) and its fallback
// (mma_tile.wgsl), which differ only in how a workgroup multiplies its staged tiles:
//
//   C[i, ccol + j] (=|+=) sum_r A(i, r) B(j, r) (+ bias[j])
//
// A(i, r) = a[i lda + r] (TA = 0) or a[r lda + i] (TA = 1), f32;
// B(j, r) = b[j ldb + r] (TB = 0) or b[r ldb + j] (TB = 1), stored as WT (f32 or f16).
// The three products of a linear layer y = x W^T are its cases: y (TA 0, TB 0: A = x,
// B = W), dx = dy W (TA 0, TB 1: A = dy, B = W) and dW = dy^T x (TA 1, TB 1: A = dy, B = x).
//
// A workgroup owns a BM x BN tile of C. It steps through r in slices of BK, staging
// A(i0.., r0..) and B(j0.., r0..) as f16 in workgroup memory, r-contiguous rows of BKP
// (= BK + 8: the pad spreads rows over memory banks); the products of f16 values are exact
// in f32, so the only rounding besides the operands' is the f32 accumulation. The
// accumulated tile goes through workgroup memory (cs) to the output, where bias, the
// column offset and accumulation are applied.

alias WT = f32; // f16-switch

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 32u;
const BKP: u32 = 40u; // BK + 8
const WG: u32 = 128u;
const TA: u32 = 0u;
const TB: u32 = 0u;

struct Params {
    ni: u32,
    nj: u32,
    nr: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    ccol: u32,
    // bit 0: add bias; bit 1: accumulate into C
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<WT>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

var<workgroup> as_: array<f16, BM * BKP>; // as_[i BKP + r] = A(i0 + i, r0 + r)
var<workgroup> bs: array<f16, BN * BKP>; // bs[j BKP + r] = B(j0 + j, r0 + r)
var<workgroup> cs: array<f32, BM * BN>; // the accumulated tile, row-major

fn a_at(i: u32, r: u32) -> f32 {
    if (i >= p.ni || r >= p.nr) { return 0.0; }
    if (TA == 0u) { return a[i * p.lda + r]; }
    return a[r * p.lda + i];
}

fn b_at(j: u32, r: u32) -> f32 {
    if (j >= p.nj || r >= p.nr) { return 0.0; }
    if (TB == 0u) { return f32(b[j * p.ldb + r]); }
    return f32(b[r * p.ldb + j]);
}

// Stage the r-slice starting at r0; consecutive invocations read consecutive addresses
// (along r for an untransposed operand, along i / j for a transposed one).
fn stage(i0: u32, j0: u32, r0: u32, li: u32) {
    for (var e = li; e < BM * BK; e += WG) {
        var i = e / BK;
        var r = e % BK;
        if (TA == 1u) { i = e % BM; r = e / BM; }
        as_[i * BKP + r] = f16(a_at(i0 + i, r0 + r));
    }
    for (var e = li; e < BN * BK; e += WG) {
        var j = e / BK;
        var r = e % BK;
        if (TB == 1u) { j = e % BN; r = e / BN; }
        bs[j * BKP + r] = f16(b_at(j0 + j, r0 + r));
    }
}

// Write the tile in cs to C (after a barrier).
fn epilogue(i0: u32, j0: u32, li: u32) {
    for (var e = li; e < BM * BN; e += WG) {
        let gi = i0 + e / BN;
        let gj = j0 + e % BN;
        if (gi < p.ni && gj < p.nj) {
            var o = cs[e];
            if ((p.flags & 1u) != 0u) { o += bias[gj]; }
            let ci = gi * p.ldc + p.ccol + gj;
            if ((p.flags & 2u) != 0u) { o += c[ci]; }
            c[ci] = o;
        }
    }
}
