//! Taylor-Calibrate, in pipeline order: [`strategy`] (the six initialisations),
//! [`capture`] (teacher pass: attention statistics + captured activations), [`init`] (the
//! naive student), [`phase1`] (closed-form decay, write gate, value scale, output gate),
//! [`phase2`] (per-layer alignment), [`convert`] (all of it, plus the report and checkpoint),
//! [`resume`] (a conversion's per-layer state in its output directory, for `--resume`).

pub mod capture;
pub mod convert;
pub mod init;
pub mod phase1;
pub mod phase2;
pub mod resume;
pub mod strategy;
