// Shared by the delta-rule kernels (delta_chunk, delta_state, delta_out, delta_bwd,
// delta_step), which pull it in with a `// #include delta_common` line: their uniform
// parameters, the chunk length, the L2-norm flag and epsilon, and 4 x 4 register tiles.

struct Params {
    b: u32,
    t: u32,
    h: u32,
    dk: u32,
    dv: u32,
    nt: u32,
    flags: u32,
    scale: f32,
}

const C: u32 = 64u;
const L2_EPS: f32 = 1e-6;
const F_L2: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;

// A 4 x 4 register tile as named vec4 rows (private arrays indexed in loops end up in
// memory on some drivers).
struct T4 {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

fn t4z() -> T4 {
    return T4(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

// t + outer(a, b): row r gains a[r] * b
fn t4fma(t: T4, a: vec4<f32>, b: vec4<f32>) -> T4 {
    return T4(fma(vec4<f32>(a.x), b, t.r0), fma(vec4<f32>(a.y), b, t.r1), fma(vec4<f32>(a.z), b, t.r2), fma(vec4<f32>(a.w), b, t.r3));
}

// rows scaled by s[r]
fn t4rows(t: T4, s: vec4<f32>) -> T4 {
    return T4(t.r0 * s.x, t.r1 * s.y, t.r2 * s.z, t.r3 * s.w);
}

fn t4scale(t: T4, s: f32) -> T4 {
    return T4(t.r0 * s, t.r1 * s, t.r2 * s, t.r3 * s);
}

fn t4row(t: T4, r: u32) -> vec4<f32> {
    if (r == 0u) {
        return t.r0;
    }
    if (r == 1u) {
        return t.r1;
    }
    if (r == 2u) {
        return t.r2;
    }
    return t.r3;
}

// start of row i of a packed lower-triangular 64 x 64 matrix (with diagonal)
fn tri(i: u32) -> u32 {
    return i * (i + 1u) / 2u;
}

// The 4 x 4 thread tile (ti, tj) of invocation lid over a 64 x 64 block, permuted so that
// the 136 tiles on or below the diagonal (tj <= ti) belong to invocations 0..135 and the
// 120 above it to 136..255 (transposes of the strictly lower tiles, in order). A product
// needed on the lower blocks only then runs on 4.25 warps instead of all 8 (with the plain
// lid / 16, lid % 16 order every warp holds a lower tile and runs the whole loop).
fn low_tile(lid: u32) -> vec2<u32> {
    let up = lid >= 136u;
    let x = select(lid, lid - 136u, up);
    // row r of the triangle with diagonal that holds index x: tri(r) <= x < tri(r + 1)
    var r = u32((sqrt(8.0 * f32(x) + 1.0) - 1.0) * 0.5);
    if (tri(r + 1u) <= x) {
        r += 1u;
    }
    if (tri(r) > x) {
        r -= 1u;
    }
    let c = x - tri(r);
    if (up) {
        // strictly lower tile (r + 1, c), transposed
        return vec2<u32>(c, r + 1u);
    }
    return vec2<u32>(r, c);
}
