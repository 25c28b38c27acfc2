//! Time every kernel of one stage-2 distillation micro-step (teacher forward, student
//! forward, fused LM-head KL, student backward) with GPU timestamps, grouped by kernel,
//! beside the wall time (the gap is host-side recording and submission).
//! `cargo run --release --example profile_distill -- STUDENT_DIR [TEACHER] [SEQ_LEN] [f16|f32] [SEQUENCES]`
//! (SEQUENCES: the micro-batch, that many sequences of SEQ_LEN in one pass; default 1)
use taylorcal::gpu::{Gpu, GpuOptions, GpuTimer, Precision};
use taylorcal::io::{self, checkpoint};
use taylorcal::nn::decoder::{Decoder, ForwardOpts};
use taylorcal::nn::training::{self, TrainActs};
use taylorcal::ops::kl::{self, KlOut, KlWorkspace, KL_DEFAULT_BUDGET};

/// The CLI's environment reader (GPU options, cache directory); this program uses part of it.
#[allow(dead_code)]
#[path = "../src/cli/env.rs"]
mod env;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).ok_or_else(|| anyhow::anyhow!("usage: profile_distill STUDENT_DIR [TEACHER] [SEQ_LEN] [f16|f32] [SEQUENCES]"))?;
    let spec = args.get(2).map(String::as_str).unwrap_or("smollm2");
    let t_seq: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(512);
    let seqs: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(1);
    let t = seqs * t_seq; // rows
    let precision = match args.get(4) {
        Some(p) => Some(Precision::parse(p).ok_or_else(|| anyhow::anyhow!("precision {p:?} is not f16 or f32"))?),
        None => None,
    };
    let gpu = Gpu::shared_with(GpuOptions { precision, ..env::gpu_options_from_env()? })?;
    eprintln!("precision {}", gpu.info.precision.name());
    let files = io::load_model(&io::fetch::resolve_model(spec, &env::cache_dir_from_env())?)?;
    let teacher = Decoder::new(gpu, &files)?;
    let ck = checkpoint::load_checkpoint(std::path::Path::new(dir))?;
    let student = Decoder::from_checkpoint(gpu, &ck)?;
    let grads = student.zeros_like(gpu)?;
    let acts = TrainActs::new(gpu, &student, seqs, t_seq, false)?;
    let c = &student.cfg;
    let kl = KlWorkspace::new(gpu, c.vocab_size, c.hidden_size, t, KL_DEFAULT_BUDGET)?;
    let (rows, dh) = (gpu.zeros(&[t])?, gpu.zeros(&[t, c.hidden_size])?);
    let ids: Vec<u32> = (0..t as u32).map(|i| (i * 7919 + 13) % c.vocab_size as u32).collect();
    let tid = gpu.upload_u32(&[t], &ids)?;
    let cache = teacher.kv_cache(gpu, t)?;
    let mut timer = GpuTimer::new(gpu, 16384).expect("adapter has no timestamp queries");
    for round in 0..3 {
        timer.reset();
        let start = std::time::Instant::now();
        let mut b = gpu.batch();
        b.time_with(&mut timer);
        let ht = teacher.forward(&mut b, &cache, &tid, 0, ForwardOpts { seqs, ..Default::default() })?;
        training::forward(&mut b, &student, &tid, &acts)?;
        let out = KlOut { loss_rows: &rows, dhs: Some(&dh), dws: Some(&grads.lm_head) };
        kl::kl_lm_head(&mut b, &acts.hidden, &student.lm_head, &ht, &teacher.lm_head, &kl, out, 1.0 / t as f32);
        training::backward(&mut b, &student, &acts, &ids, &dh, &grads)?;
        let recorded = start.elapsed().as_secs_f64();
        b.submit();
        gpu.sync()?;
        let wall = start.elapsed().as_secs_f64();
        let rows = timer.by_label(gpu)?;
        let total: f64 = rows.iter().map(|r| r.1).sum();
        let n: usize = rows.iter().map(|r| r.2).sum();
        let untimed = match timer.untimed {
            0 => String::new(),
            u => format!(" (and {u} untimed past the timer's capacity)"),
        };
        println!(
            "round {round}: {seqs} x T={t_seq} wall {wall:.3}s (recording {recorded:.3}s), GPU total {total:.3}s, {n} dispatches{untimed}, {}",
            gpu.info.name
        );
        let mut rows = rows;
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (label, secs, n) in rows.iter().take(25) {
            println!("  {label:20} {:9.2} ms  {n:5} dispatches  {:5.1}%", secs * 1e3, 100.0 * secs / total);
        }
    }
    Ok(())
}
