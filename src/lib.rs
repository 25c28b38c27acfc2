//! taylorcal: turn a pretrained Transformer into a hybrid Gated DeltaNet model with
//! Taylor-Calibrate, on hand-written WGSL compute shaders through wgpu.

pub mod bench;
pub mod calibrate;
pub mod data;
pub mod eval;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod report;
pub mod select;
pub mod train;
