//! The `info`, `eval`, `stats`, `generate` and `bench` subcommands: look at the GPU, a
//! model or the kernels and print what is seen.
use super::args::ModelTextArgs;
use super::gpu;
use super::setup::load;
use anyhow::Result;
use serde_json::json;
use taylorcal::data;
use taylorcal::experiments::{bench, bench_gdn};

/// `taylorcal info`: the adapter, its features and key limits.
pub fn info(json: bool) -> Result<()> {
    let info = &gpu()?.info;
    if json {
        println!("{}", serde_json::to_string(info)?);
    } else {
        println!("adapter   {} ({})", info.name, info.device_type);
        println!("backend   {}", info.backend);
        println!("driver    {} {}", info.driver, info.driver_info);
        println!(
            "features  shader_f16={} subgroup={} timestamp_query={} (inside passes: {})",
            info.shader_f16, info.subgroup, info.timestamp_query, info.timestamp_inside_passes
        );
        let shapes = if info.coop_shapes.is_empty() { "none".to_string() } else { info.coop_shapes.join(", ") };
        println!("coop      {shapes} (tensor-core kernels: {})", if info.coop16 { "on" } else { "off" });
        println!("precision {} (matrix products' operands; --precision f16|f32)", info.precision.name());
        println!(
            "limits    max_storage_buffer_binding_size={} max_buffer_size={}",
            info.max_storage_buffer_binding_size, info.max_buffer_size
        );
        println!(
            "          max_compute_workgroup_storage_size={} max_invocations_per_workgroup={}",
            info.max_compute_workgroup_storage_size, info.max_compute_invocations_per_workgroup
        );
        println!(
            "          max_workgroups_per_dimension={} storage_buffers_per_stage={} subgroup_size={}..{}",
            info.max_compute_workgroups_per_dimension,
            info.max_storage_buffers_per_shader_stage,
            info.min_subgroup_size,
            info.max_subgroup_size
        );
    }
    Ok(())
}

/// `taylorcal eval`: mean next-token NLL and perplexity on a text.
pub fn eval(a: &ModelTextArgs) -> Result<()> {
    let m = load(&a.model.model)?;
    let ids = data::tokenize_file(&m.tokenizer, &a.text.text, m.model.vocab(), a.text.max_tokens)?;
    let r = taylorcal::eval::perplexity(gpu()?, &m.model, &ids)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("tokens {}  nll {:.4}  ppl {:.2}", r.tokens, r.nll, r.ppl);
    }
    Ok(())
}

/// `taylorcal stats`: per-layer, per-head attention distance and entropy on a text.
pub fn stats(a: &ModelTextArgs) -> Result<()> {
    let m = load(&a.model.model)?;
    let ids = data::tokenize_file(&m.tokenizer, &a.text.text, m.model.vocab(), a.text.max_tokens)?;
    let layers = taylorcal::calibrate::capture::attention_stats(gpu()?, &m.model, &[&ids])?;
    if a.json {
        println!("{}", json!({ "tokens": ids.len(), "layers": layers }));
    } else {
        println!("{} tokens; per head: mean attention distance / entropy (nats)", ids.len());
        for (i, l) in layers.iter().enumerate() {
            let cells: Vec<String> = l.distance.iter().zip(&l.entropy).map(|(d, e)| format!("{d:6.1}/{e:4.2}")).collect();
            println!("layer {i:2}  {}", cells.join(" "));
        }
    }
    Ok(())
}

/// `taylorcal generate`: greedy decoding, streamed to stdout (or one JSON object).
pub fn generate(model: &str, prompt: &str, max_new_tokens: usize, json: bool) -> Result<()> {
    let m = load(model)?;
    let enc = m.tokenizer.encode(prompt, false).map_err(|e| anyhow::anyhow!("tokenising the prompt: {e}"))?;
    let ids = enc.get_ids().to_vec();
    data::check_ids(&ids, m.model.vocab(), "the prompt")?;
    if !json {
        print!("{prompt}");
    }
    let mut shown = String::new();
    let mut new_ids: Vec<u32> = vec![];
    let out = taylorcal::eval::generate(gpu()?, &m.model, &ids, max_new_tokens, m.eos, |id| {
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
    Ok(())
}

/// `taylorcal bench [WORDS]`: the kernel suite (or `gdn`: the chunked delta-rule scan).
pub fn bench(what: &[String], json: bool) -> Result<()> {
    let g = gpu()?;
    if what.first().is_some_and(|w| w == "gdn") {
        let rows = bench_gdn::bench_gdn(g, |row| {
            if !json {
                println!("{}", row.text());
            }
        })?;
        if json {
            println!("{}", json!({ "adapter": g.info.name, "gdn": rows }));
        }
        return Ok(());
    }
    let benches = bench::suite_matching(g, what)?;
    // the table on stdout once, a row as each benchmark ends
    if !json {
        println!("{}; {} benchmarks", bench::adapter_line(&g.info), benches.len());
        println!("{}", bench::table_header());
    }
    let report = bench::run_suite(g, &benches, |r| {
        if !json {
            println!("{}", r.row())
        }
    });
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.footer());
    }
    Ok(())
}
