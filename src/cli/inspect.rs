//! The `info`, `eval`, `stats`, `generate` and `bench` subcommands: look at the GPU, a
//! model or the kernels and print what is seen.
use super::args::{GenerateArgs, ModelTextArgs};
use super::setup::load;
use super::{gpu, resolve_model};
use anyhow::{anyhow, bail, ensure, Context as _, Result};
use serde_json::json;
use std::io::Write as _;
use taylorcal::experiments::{bench, bench_gdn};
use taylorcal::{data, eval};

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

/// `taylorcal generate`: greedy or sampled decoding, streamed to stdout (or one JSON object).
pub fn generate(a: &GenerateArgs) -> Result<()> {
    let opts = a.sample_opts();
    opts.check()?;
    ensure!(a.stop.iter().all(|s| !s.is_empty()), "--stop needs a non-empty string");
    let mut prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), None) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading the prompt file {}", f.display()))?,
        _ => bail!("give exactly one of --prompt and --prompt-file"),
    };
    let m = load(&a.model.model)?;
    if a.chat {
        let path = resolve_model(&a.model.model)?;
        let template = taylorcal::io::chat::find_template(&path)?.with_context(|| {
            format!(
                "{} carries no chat template (tokenizer.chat_template in a GGUF, chat_template in tokenizer_config.json)",
                path.display()
            )
        })?;
        let eos = m.eos.and_then(|id| m.tokenizer.id_to_token(id)).unwrap_or_default();
        prompt = taylorcal::io::chat::render_user_prompt(&template, &prompt, "", &eos)?;
    }
    let enc = m.tokenizer.encode(prompt.as_str(), false).map_err(|e| anyhow!("tokenising the prompt: {e}"))?;
    let ids = enc.get_ids().to_vec();
    data::check_ids(&ids, m.model.vocab(), "the prompt")?;
    let decode = |ids: &[u32]| m.tokenizer.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"));
    let mut out = std::io::stdout();
    if !a.json && !a.chat {
        print!("{prompt}");
    }
    // the text printed so far: the decoded text up to what may still change (a split
    // character, the start of a stop string)
    let mut shown = String::new();
    let mut new_ids: Vec<u32> = vec![];
    let mut sampler = taylorcal::eval::Sampler::new(opts);
    let g = taylorcal::eval::generate_with(gpu()?, &m.model, &ids, a.max_new_tokens, m.eos, &mut sampler, |id| {
        new_ids.push(id);
        let text = decode(&new_ids).unwrap_or_default();
        let stopped = eval::stop_at(&text, &a.stop).is_some();
        let ready = eval::printable_len(&text, &a.stop);
        if !a.json && !stopped && ready > shown.len() && text.starts_with(shown.as_str()) {
            print!("{}", &text[shown.len()..ready]);
            let _ = out.flush();
            shown = text[..ready].to_string();
        }
        stopped
    })?;
    let mut text = decode(&g.ids)?;
    if let Some(cut) = eval::stop_at(&text, &a.stop) {
        text.truncate(cut);
    }
    if a.json {
        let n = g.ids.len();
        let per_s = |tokens: usize, s: f64| if tokens > 0 && s > 0.0 { Some(tokens as f64 / s) } else { None };
        println!(
            "{}",
            json!({
                "prompt": prompt, "prompt_tokens": ids.len(), "new_tokens": n, "ids": g.ids, "text": text,
                "stop_reason": g.stop, "time_to_first_token_s": g.prefill_s,
                "prefill_tokens_per_s": per_s(ids.len(), g.prefill_s),
                "decode_tokens_per_s": per_s(n.saturating_sub(1), g.decode_s),
                "kv_cache_bytes": g.kv_cache_bytes, "state_bytes": g.state_bytes,
            })
        );
    } else {
        println!("{}", text.strip_prefix(shown.as_str()).unwrap_or_default());
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
