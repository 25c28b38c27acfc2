//! Embedding gather, residual add, SwiGLU, and the backward of SwiGLU and of the
//! embedding gather (shaders/elementwise.wgsl). Tested in tests/kernels/elementwise.rs
//! (the backward split over small bindings with RMSNorm's, in tests/kernels/rmsnorm.rs).
use super::{groups_for, row_split, view};
use crate::gpu::{grid, Batch, Kernel, Tensor};

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    row0: u32,
    nrows: u32,
    u0: u32,
    nuniq: u32,
    _pad: [u32; 2],
}

const WG: usize = 256;

/// out[t, :] = table[ids[t], :]; the table is split into bindings no larger than the limit.
pub fn embed(b: &mut Batch, ids: &Tensor, table: &Tensor, out: &Tensor) {
    let (n, cols) = (ids.numel(), table.cols());
    assert_eq!(out.numel(), n * cols);
    let k = Kernel::new("elementwise", "embed");
    let groups = groups_for(b.gpu, n * cols, WG);
    for c in row_split(b.gpu, table.rows(), [table]) {
        let p = Params { n: n as u32, cols: cols as u32, row0: c.row0 as u32, nrows: c.rows as u32, ..Default::default() };
        let [part] = c.binds;
        b.dispatch(&k, &p, &[ids.into(), part, out.into()], groups);
    }
}

/// y += x
pub fn add(b: &mut Batch, x: &Tensor, y: &Tensor) {
    assert_eq!(x.numel(), y.numel());
    let n = x.numel();
    let p = Params { n: n as u32, ..Default::default() };
    b.dispatch(&Kernel::new("elementwise", "add"), &p, &[x.into(), y.into()], groups_for(b.gpu, n, WG));
}

/// out = silu(gate) * up
pub fn swiglu(b: &mut Batch, gate: &Tensor, up: &Tensor, out: &Tensor) {
    assert_eq!(gate.numel(), up.numel());
    assert_eq!(gate.numel(), out.numel());
    let n = gate.numel();
    let p = Params { n: n as u32, ..Default::default() };
    b.dispatch(&Kernel::new("elementwise", "swiglu"), &p, &[gate.into(), up.into(), out.into()], groups_for(b.gpu, n, WG));
}

/// Backward of [`swiglu`] (act = silu(gate) up) from dact: dgate = dact up silu'(gate),
/// dup = dact silu(gate), both overwritten (distinct buffers from the inputs).
pub fn swiglu_backward(b: &mut Batch, gate: &Tensor, up: &Tensor, dact: &Tensor, dgate: &Tensor, dup: &Tensor) {
    let n = gate.numel();
    for t in [up, dact, dgate, dup] {
        assert_eq!(t.numel(), n, "swiglu_backward: {:?} vs gate {:?}", t.shape, gate.shape);
    }
    let [gate, up, dact, dgate, dup] = [gate, up, dact, dgate, dup].map(|t| view(t, n, 1));
    let k = Kernel::new("elementwise", "swiglu_bwd");
    for c in row_split(b.gpu, n, [&gate, &up, &dact, &dgate, &dup]) {
        let p = Params { n: c.rows as u32, ..Default::default() };
        b.dispatch(&k, &p, &c.binds, groups_for(b.gpu, c.rows, WG));
    }
}

/// Positions grouped by token id: (unique ids ascending, offsets into positions with one
/// entry more, positions), so `positions[offsets[u]..offsets[u + 1]]` hold `unique[u]`.
pub fn group_ids(ids: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..ids.len() as u32).collect();
    order.sort_by_key(|&t| ids[t as usize]);
    let (mut uniq, mut offsets) = (Vec::new(), Vec::new());
    for (k, &t) in order.iter().enumerate() {
        let id = ids[t as usize];
        if uniq.last() != Some(&id) {
            uniq.push(id);
            offsets.push(k as u32);
        }
    }
    offsets.push(order.len() as u32);
    (uniq, offsets, order)
}

/// Backward of [`embed`]: dtable[ids[t], :] += dx[t, :] for every position t, without
/// float atomics: positions are grouped by id on the host (`ids` is the host copy of the
/// token ids) and one workgroup per distinct id adds up its rows, in a fixed order.
/// The table is split into bindings no larger than the limit; dx must fit one binding.
pub fn embed_backward(b: &mut Batch, ids: &[u32], dx: &Tensor, dtable: &Tensor) {
    let (vocab, cols) = (dtable.rows(), dtable.cols());
    let t = ids.len();
    assert_eq!(dx.numel(), t * cols, "embed_backward: dx {:?} for {t} ids of table {:?}", dx.shape, dtable.shape);
    assert!(
        dx.bytes() <= b.gpu.max_binding,
        "embed_backward: dx {:?} ({} bytes) exceeds the binding limit ({} bytes); split the positions into calls",
        dx.shape,
        dx.bytes(),
        b.gpu.max_binding
    );
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        panic!("embed_backward: id {bad} outside the table of {vocab} rows");
    }
    if t == 0 || cols == 0 {
        return;
    }
    let (uniq, offsets, order) = group_ids(ids);
    let nuniq = uniq.len();
    let csr: Vec<u32> = uniq.iter().chain(&offsets).chain(&order).copied().collect();
    let csr = b.gpu.upload_u32(&[csr.len()], &csr).expect("embed_backward: id groups");
    let k = Kernel::new("elementwise", "embed_bwd");
    for c in row_split(b.gpu, vocab, [dtable]) {
        let (row0, nrows) = (c.row0, c.rows);
        let u0 = uniq.partition_point(|&id| (id as usize) < row0);
        let u1 = uniq.partition_point(|&id| (id as usize) < row0 + nrows);
        if u1 == u0 {
            continue;
        }
        let p = Params {
            n: (u1 - u0) as u32,
            cols: cols as u32,
            row0: row0 as u32,
            nrows: nrows as u32,
            u0: u0 as u32,
            nuniq: nuniq as u32,
            _pad: [0; 2],
        };
        let [part] = c.binds;
        b.dispatch(&k, &p, &[(&csr).into(), dx.into(), part], grid(b.gpu, (u1 - u0) as u32));
    }
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
    /// d silu / dx
    pub fn silu_grad(x: f64) -> f64 {
        let s = 1.0 / (1.0 + (-x).exp());
        s * (1.0 + x * (1.0 - s))
    }
    /// (dgate, dup) of [`swiglu`] for the output gradient dact.
    pub fn swiglu_backward(gate: &[f64], up: &[f64], dact: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let dgate = gate.iter().zip(up).zip(dact).map(|((&g, &u), &d)| d * u * silu_grad(g)).collect();
        let dup = gate.iter().zip(dact).map(|(&g, &d)| d * silu(g)).collect();
        (dgate, dup)
    }
    /// dtable [vocab, cols] with dtable[ids[t]] += dx[t] (starting from zero).
    pub fn embed_backward(ids: &[u32], dx: &[f64], vocab: usize, cols: usize) -> Vec<f64> {
        let mut dt = vec![0.0; vocab * cols];
        for (t, &i) in ids.iter().enumerate() {
            for c in 0..cols {
                dt[i as usize * cols + c] += dx[t * cols + c];
            }
        }
        dt
    }
}
