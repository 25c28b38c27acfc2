//! Time every kernel of one teacher forward (GPU timestamps), grouped by kernel.
//! `cargo run --release --example profile_teacher -- [MODEL] [TOKENS]`
use taylorcal::gpu::{Gpu, GpuTimer};
use taylorcal::io;
use taylorcal::nn::decoder::{Decoder, ForwardOpts};

/// The CLI's environment reader (GPU options, cache directory); this program uses part of it.
#[allow(dead_code)]
#[path = "../src/cli/env.rs"]
mod env;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("smollm2");
    let t: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let gpu = Gpu::shared_with(env::gpu_options_from_env()?)?;
    let files = io::load_model(&io::fetch::resolve_model(spec, &env::cache_dir_from_env())?)?;
    let teacher = Decoder::new(gpu, &files)?;
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919 + 13) % files.config.vocab_size as u32).collect();
    let cache = teacher.kv_cache(gpu, t)?;
    let tid = gpu.upload_u32(&[t], &ids)?;
    let mut timer = GpuTimer::new(gpu, 4096).expect("adapter has no timestamp queries");
    for round in 0..2 {
        timer.reset();
        let start = std::time::Instant::now();
        let mut b = gpu.batch();
        b.time_with(&mut timer);
        let hidden = teacher.forward(&mut b, &cache, &tid, 0, ForwardOpts::default())?;
        let _logits = teacher.logits(&mut b, &hidden, 0, t.min(teacher.logit_rows_per_chunk(gpu)))?;
        b.submit();
        gpu.sync()?;
        let wall = start.elapsed().as_secs_f64();
        let rows = timer.by_label(gpu)?;
        let total: f64 = rows.iter().map(|r| r.1).sum();
        println!("round {round}: wall {wall:.3}s, GPU total {total:.3}s ({} on {})", t, gpu.info.name);
        for (label, secs, n) in rows {
            println!("  {label:14} {:9.2} ms  {n:4} dispatches  {:5.1}%", secs * 1e3, 100.0 * secs / total);
        }
    }
    Ok(())
}
