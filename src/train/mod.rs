//! Distillation after initialisation: stage 1 (per-layer alignment over a token stream)
//! and stage 2 (end-to-end KL), with checkpoints and exact resume, on the decoder's
//! training pass ([`crate::nn::training`]) and optimizer ([`crate::nn::optim`]).
pub mod distill;
