//! taylorcal: turn a pretrained Transformer into a hybrid Gated DeltaNet model with
//! Taylor-Calibrate, on hand-written WGSL compute shaders through wgpu.
//!
//! Layers, lowest first (each imports only those before it): [`gpu`] (runtime),
//! [`ops`] (kernels + f64 references), [`io`] (file formats), [`report`] (charts),
//! [`data`] (text, windows, token streams), [`nn`] (decoder, GDN block, training pass,
//! optimizer), [`eval`] (perplexity, generation), [`calibrate`] (statistics, phase 1/2,
//! convert), [`select`] (retained-layer policies), [`train`] (distillation),
//! [`experiments`] (ablation, recovery, benchmarks).

pub mod calibrate;
pub mod data;
pub mod eval;
pub mod experiments;
pub mod gpu;
pub mod io;
pub mod nn;
pub mod ops;
pub mod report;
pub mod select;
pub mod train;
