//! The `taylorcal` command line: thin, every subcommand calls the library.
use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use serde_json::json;
use std::path::PathBuf;
use taylorcal::gpu::Gpu;
use taylorcal::model::{self, teacher::Teacher};

#[derive(Parser)]
#[command(name = "taylorcal", version, about = "Turn a pretrained Transformer into a hybrid Gated DeltaNet model with Taylor-Calibrate, on any GPU wgpu drives")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// `smollm2` (the default teacher, fetched on first use), a .gguf file, a Hugging Face directory, or a taylorcal checkpoint directory
    #[arg(long, default_value = model::fetch::DEFAULT_TEACHER)]
    model: String,
}

#[derive(clap::Args)]
struct TextArgs {
    /// Plain-text file to tokenise (no BOS is added)
    #[arg(long)]
    text: PathBuf,
    /// Use at most this many tokens of the text, as one sequence
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter, backend, driver, features and key limits
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Mean next-token NLL and perplexity of a model on a text
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        text: TextArgs,
        #[arg(long)]
        json: bool,
    },
    /// Per-layer, per-head mean attention distance and entropy (fused kernel)
    Stats {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        text: TextArgs,
        #[arg(long)]
        json: bool,
    },
    /// Benchmark the kernels (GPU timestamps): GFLOP/s or GB/s per kernel
    Bench {
        /// Only benchmarks whose label contains one of these words (e.g. `matmul`, `attention`)
        what: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Greedy decoding with a KV cache
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn gpu() -> Result<&'static Gpu> {
    Gpu::shared()
}

struct Loaded {
    teacher: Teacher,
    tokenizer: tokenizers::Tokenizer,
    eos: Option<u32>,
}

fn load(spec: &str) -> Result<Loaded> {
    let path = model::fetch::resolve_model(spec)?;
    let spinner = indicatif::ProgressBar::new_spinner().with_message(format!("loading {}", path.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let loaded = if model::hybrid::is_checkpoint(&path) {
        let ck = model::hybrid::load_checkpoint(&path)?;
        let tokenizer = ck.tokenizer.clone().with_context(|| format!("checkpoint {} has no tokenizer.json", path.display()))?;
        Loaded { teacher: Teacher::from_checkpoint(gpu()?, &ck)?, tokenizer, eos: ck.config.base.eos_token_id }
    } else {
        let files = model::load_model(&path)?;
        let tokenizer = files.tokenizer.clone().with_context(|| format!("{} has no tokenizer", files.source))?;
        Loaded { teacher: Teacher::new(gpu()?, &files)?, tokenizer, eos: files.config.eos_token_id }
    };
    spinner.finish_and_clear();
    Ok(loaded)
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { json } => {
            let info = &gpu()?.info;
            if json {
                println!("{}", serde_json::to_string_pretty(info)?);
            } else {
                println!("adapter   {} ({})", info.name, info.device_type);
                println!("backend   {}", info.backend);
                println!("driver    {} {}", info.driver, info.driver_info);
                println!("features  shader_f16={} subgroup={} timestamp_query={} (inside passes: {})", info.shader_f16, info.subgroup, info.timestamp_query, info.timestamp_inside_passes);
                println!("limits    max_storage_buffer_binding_size={} max_buffer_size={}", info.max_storage_buffer_binding_size, info.max_buffer_size);
                println!("          max_compute_workgroup_storage_size={} max_invocations_per_workgroup={}", info.max_compute_workgroup_storage_size, info.max_compute_invocations_per_workgroup);
                println!("          max_workgroups_per_dimension={} storage_buffers_per_stage={} subgroup_size={}..{}", info.max_compute_workgroups_per_dimension, info.max_storage_buffers_per_shader_stage, info.min_subgroup_size, info.max_subgroup_size);
            }
        }
        Cmd::Bench { what, json } => {
            let g = gpu()?;
            let benches: Vec<_> = taylorcal::bench::default_suite(g).into_iter().filter(|b| what.is_empty() || what.iter().any(|w| b.label().contains(w.as_str()))).collect();
            anyhow::ensure!(!benches.is_empty(), "no benchmark matches {what:?}");
            eprintln!("adapter: {} ({}, {}); {} benchmarks", g.info.name, g.info.backend, g.info.device_type, benches.len());
            let report = taylorcal::bench::run_suite(g, &benches, |r| if !json { eprintln!("{}", r.row()) });
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.text());
            }
        }
        Cmd::Eval { model, text, json } => {
            let m = load(&model.model)?;
            let ids = taylorcal::data::tokenize_file(&m.tokenizer, &text.text, text.max_tokens)?;
            let r = taylorcal::eval::perplexity(gpu()?, &m.teacher, &ids)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("tokens {}  nll {:.4}  ppl {:.2}", r.tokens, r.nll, r.ppl);
            }
        }
        Cmd::Stats { model, text, json } => {
            let m = load(&model.model)?;
            let ids = taylorcal::data::tokenize_file(&m.tokenizer, &text.text, text.max_tokens)?;
            let layers = taylorcal::eval::attention_stats(gpu()?, &m.teacher, &[&ids])?;
            if json {
                println!("{}", json!({ "tokens": ids.len(), "layers": layers }));
            } else {
                println!("{} tokens; per head: mean attention distance / entropy (nats)", ids.len());
                for (i, l) in layers.iter().enumerate() {
                    let cells: Vec<String> = l.distance.iter().zip(&l.entropy).map(|(d, e)| format!("{d:6.1}/{e:4.2}")).collect();
                    println!("layer {i:2}  {}", cells.join(" "));
                }
            }
        }
        Cmd::Generate { model, prompt, max_new_tokens, json } => {
            let m = load(&model.model)?;
            let enc = m.tokenizer.encode(prompt.as_str(), false).map_err(|e| anyhow::anyhow!("tokenising the prompt: {e}"))?;
            let ids = enc.get_ids().to_vec();
            if !json {
                print!("{prompt}");
            }
            let mut shown = String::new();
            let mut new_ids: Vec<u32> = vec![];
            let out = taylorcal::eval::generate(gpu()?, &m.teacher, &ids, max_new_tokens, m.eos, |id| {
                if json {
                    return;
                }
                new_ids.push(id);
                let text = m.tokenizer.decode(&new_ids, true).unwrap_or_default();
                if let Some(tail) = text.strip_prefix(shown.as_str()) {
                    print!("{tail}");
                    use std::io::Write;
                    let _ = std::io::stdout().flush();
                }
                shown = text;
            })?;
            let text = m.tokenizer.decode(&out, true).map_err(|e| anyhow::anyhow!("decoding: {e}"))?;
            if json {
                println!("{}", json!({ "prompt": prompt, "prompt_tokens": ids.len(), "new_tokens": out.len(), "ids": out, "text": text }));
            } else {
                println!();
            }
        }
    }
    Ok(())
}
