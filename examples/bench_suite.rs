//! Runs the adapter's default kernel benchmark suite and prints a table, the tiled vs
//! naive matmul speedup and the whole report as JSON.
//!
//!     cargo run --release --example bench_suite [-- FILTER...]
//!
//! With FILTER words only the benchmarks whose label contains one of them run
//! (e.g. `-- matmul` or `-- attention nll`).
use anyhow::Result;
use taylorcal::bench::{default_suite, run_suite};
use taylorcal::gpu::Gpu;

fn main() -> Result<()> {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    let gpu = Gpu::new()?;
    let benches: Vec<_> = default_suite(&gpu)
        .into_iter()
        .filter(|b| filters.is_empty() || filters.iter().any(|f| b.label().contains(f.as_str())))
        .collect();
    eprintln!("adapter: {} ({}, {}); {} benchmarks", gpu.info.name, gpu.info.backend, gpu.info.device_type, benches.len());
    let report = run_suite(&gpu, &benches, |r| eprintln!("{}", r.row()));
    println!("{}", report.text());
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
