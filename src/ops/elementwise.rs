//! Embedding gather, residual add, SwiGLU (shaders/elementwise.wgsl).
use super::groups_for;
use crate::gpu::{Batch, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    row0: u32,
    nrows: u32,
}

const WG: usize = 256;

/// out[t, :] = table[ids[t], :]; the table is split into bindings no larger than the limit.
pub fn embed(b: &mut Batch, ids: &Tensor, table: &Tensor, out: &Tensor) {
    let (n, cols) = (ids.numel(), table.cols());
    assert_eq!(out.numel(), n * cols);
    let step = b.gpu.rows_per_binding(&[(cols * 4) as u64]);
    let k = Kernel::new("elementwise", "embed");
    let groups = groups_for(b.gpu, n * cols, WG);
    for row0 in (0..table.rows()).step_by(step) {
        let nrows = step.min(table.rows() - row0);
        let p = Params { n: n as u32, cols: cols as u32, row0: row0 as u32, nrows: nrows as u32 };
        b.dispatch(&k, &p, &[ids.into(), table.rows_binding(row0, nrows), out.into()], groups);
    }
}

/// y += x
pub fn add(b: &mut Batch, x: &Tensor, y: &Tensor) {
    assert_eq!(x.numel(), y.numel());
    let n = x.numel();
    let p = Params { n: n as u32, cols: 0, row0: 0, nrows: 0 };
    b.dispatch(&Kernel::new("elementwise", "add"), &p, &[x.into(), y.into()], groups_for(b.gpu, n, WG));
}

/// out = silu(gate) * up
pub fn swiglu(b: &mut Batch, gate: &Tensor, up: &Tensor, out: &Tensor) {
    assert_eq!(gate.numel(), up.numel());
    assert_eq!(gate.numel(), out.numel());
    let n = gate.numel();
    let p = Params { n: n as u32, cols: 0, row0: 0, nrows: 0 };
    b.dispatch(&Kernel::new("elementwise", "swiglu"), &p, &[gate.into(), up.into(), out.into()], groups_for(b.gpu, n, WG));
}

pub mod cpu {
    pub fn silu(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }
    pub fn swiglu(gate: &[f64], up: &[f64]) -> Vec<f64> {
        gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
    }
    pub fn embed(ids: &[u32], table: &[f64], cols: usize) -> Vec<f64> {
        ids.iter().flat_map(|&i| table[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect()
    }
}
