//! Taylor-Calibrate: phase 1 closed form, phase 2 alignment, the strategy set.

pub mod convert;
pub mod phase1;
