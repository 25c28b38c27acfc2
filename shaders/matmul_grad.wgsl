// Gradients of a linear layer Y[M, N] = X[M, K] W[N, K]^T, as one tiled product
//     C[i, j] (=|+=) sum_r A(i, r) B[r, j]
// with f32 accumulation:
//   dX[M, K] = dY[M, N] W[N, K]:    i = m, j = k, r = n, A(i, r) = dY[m, n]      (TA = 0)
//   dW[N, K] = dY[M, N]^T X[M, K]:  i = n, j = k, r = m, A(i, r) = dY[m, n]      (TA = 1)
// A is read as a[i * lda + acol + r] (TA = 0) or a[r * lda + acol + i] (TA = 1), so the
// host can split dY over columns (acol) as well as rows (a binding per row range);
// B as b[r * ldb + j]; C as c[i * ldc + j].
//
// A 256-invocation (16 x 16) workgroup computes a 64 x 64 tile of C, stepping through the
// reduction in slices of BR staged in workgroup memory as vec4s along i (A) and j (B).
// Invocation (ti, tj) owns rows 4 ti .. 4 ti + 3 and columns 4 tj .. 4 tj + 3 of the tile:
// per r it reads two vec4s from workgroup memory and does 16 FMAs on named accumulators.
// Staging reads are coalesced in both layouts: along r for A when TA = 0, along i for
// A when TA = 1, along j for B.
// Split reduction: workgroup z sums r in [z rchunk, (z + 1) rchunk) into C + z cstride
// (partial products the host then adds up), so a small C over a long reduction (dW of a
// narrow layer over many tokens) still fills the GPU.

const TA: u32 = 0u; // 1: A stored as [R, I] (the dW case)
const BR: u32 = 16u;
const WG: u32 = 256u;
const TILE: u32 = 64u;

struct Params {
    ni: u32,   // rows of C
    nj: u32,   // columns of C
    nr: u32,   // reduction length
    lda: u32,
    acol: u32,
    ldb: u32,
    ldc: u32,
    accumulate: u32,
    rchunk: u32,  // reduction length per workgroup z
    cstride: u32, // elements between the C blocks of consecutive z
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

var<workgroup> as_: array<vec4<f32>, BR * TILE / 4u>; // as_[rr * 16 + q] = A(i0 + 4q .. 4q + 3, r0 + rr)
var<workgroup> bs: array<vec4<f32>, BR * TILE / 4u>;  // bs[rr * 16 + q] = B[r0 + rr, j0 + 4q .. 4q + 3]

fn aat(i: u32, r: u32, re: u32) -> f32 {
    if (i >= p.ni || r >= re) { return 0.0; }
    if (TA == 0u) { return a[i * p.lda + p.acol + r]; }
    return a[r * p.lda + p.acol + i];
}

fn bat(r: u32, j: u32, re: u32) -> f32 {
    if (r < re && j < p.nj) { return b[r * p.ldb + j]; }
    return 0.0;
}

fn store4(cbase: u32, i: u32, j0: u32, v: vec4<f32>) {
    if (i >= p.ni) { return; }
    for (var t = 0u; t < 4u; t++) {
        let j = j0 + t;
        if (j >= p.nj) { return; }
        let ci = cbase + i * p.ldc + j;
        var o = v[t];
        if (p.accumulate != 0u) { o += c[ci]; }
        c[ci] = o;
    }
}

@compute @workgroup_size(WG)
fn matmul_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i0 = wid.y * TILE;
    let j0 = wid.x * TILE;
    let ti = li / 16u;
    let tj = li % 16u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);

    let rs = wid.z * p.rchunk;
    let re = min(rs + p.rchunk, p.nr);
    for (var r0 = rs; r0 < re; r0 += BR) {
        // one vec4 of A and one of B per invocation (BR * TILE / 4 = WG)
        if (TA == 0u) {
            let rr = li % BR;
            let q = li / BR;
            let i = i0 + 4u * q;
            let r = r0 + rr;
            as_[rr * 16u + q] = vec4<f32>(aat(i, r, re), aat(i + 1u, r, re), aat(i + 2u, r, re), aat(i + 3u, r, re));
        } else {
            let q = li % 16u;
            let rr = li / 16u;
            let i = i0 + 4u * q;
            let r = r0 + rr;
            as_[rr * 16u + q] = vec4<f32>(aat(i, r, re), aat(i + 1u, r, re), aat(i + 2u, r, re), aat(i + 3u, r, re));
        }
        {
            let q = li % 16u;
            let rr = li / 16u;
            let j = j0 + 4u * q;
            let r = r0 + rr;
            bs[rr * 16u + q] = vec4<f32>(bat(r, j, re), bat(r, j + 1u, re), bat(r, j + 2u, re), bat(r, j + 3u, re));
        }
        workgroupBarrier();
        for (var rr = 0u; rr < BR; rr++) {
            let av = as_[rr * 16u + ti];
            let bv = bs[rr * 16u + tj];
            c0 = fma(vec4<f32>(av.x), bv, c0);
            c1 = fma(vec4<f32>(av.y), bv, c1);
            c2 = fma(vec4<f32>(av.z), bv, c2);
            c3 = fma(vec4<f32>(av.w), bv, c3);
        }
        workgroupBarrier();
    }

    let i = i0 + 4u * ti;
    let j = j0 + 4u * tj;
    let cbase = wid.z * p.cstride;
    store4(cbase, i, j, c0);
    store4(cbase, i + 1u, j, c1);
    store4(cbase, i + 2u, j, c2);
    store4(cbase, i + 3u, j, c3);
}
