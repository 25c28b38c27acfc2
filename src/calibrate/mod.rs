//! Taylor-Calibrate, in pipeline order: [`strategy`] (the six initialisations),
//! [`capture`] (teacher pass: attention statistics + captured activations), [`init`] (the
//! naive student), [`phase1`] (closed-form decay, write gate, value scale, output gate),
//! [`phase2`] (per-layer alignment), [`convert`] (all of it, plus the report and checkpoint),
//! [`resumable`] (converting into an output directory, each layer saved as it is done, for `--resume`).

pub mod capture;
pub mod convert;
pub mod init;
pub mod phase1;
pub mod phase2;
pub mod resumable;
pub mod strategy;
