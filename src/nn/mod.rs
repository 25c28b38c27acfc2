//! The networks: one decoder type for teacher and student (a mixer per layer: softmax
//! attention or Gated DeltaNet), its training pass (forward with saved activations and
//! the explicit backward, layer by layer), the GDN block, the f64 reference model and the
//! optimizer.
pub mod decoder;
pub mod gdn;
pub mod optim;
pub mod reference;
pub mod training;
