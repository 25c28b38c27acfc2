//! Experiments built on the pipeline, each returning a report with markdown / JSON / SVG
//! writers: the strategy ablation, distillation recovery, and the kernel benchmark
//! harness (suite + the GDN scan).
pub mod ablate;
pub mod bench;
pub mod bench_gdn;
pub mod recovery;
