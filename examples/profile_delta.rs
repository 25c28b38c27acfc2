//! Per-kernel GPU timings of the chunked delta-rule scan (forward and forward+backward),
//! for tuning on a real GPU:
//!
//!     cargo run --release --example profile_delta
//!
//! DELTA_SHAPES="b,t,h,d;..." picks the problems, DELTA_TILES="fwd,bwd;..." the state-pass
//! tiles to try, DELTA_RECOMPUTE=1 makes the backward recompute the forward's intermediates.
//! The CLI's variables apply too (README, "Environment"): `TAYLORCAL_SHADER_DIR` loads
//! kernel variants, `TAYLORCAL_DELTA_SMEM` sets the default tiles' budget.
use taylorcal::gpu::Gpu;
use taylorcal::ops::delta::{self, DeltaShape};

/// The CLI's environment reader (GPU options, cache directory); this program uses part of it.
#[allow(dead_code)]
#[path = "../src/cli/env.rs"]
mod env;

fn shape(b: usize, t: usize, h: usize, d: usize, l2norm: bool) -> DeltaShape {
    DeltaShape::new(b, t, h, d, l2norm)
}

fn main() -> anyhow::Result<()> {
    let g = Gpu::shared_with(env::gpu_options_from_env()?)?;
    eprintln!("adapter: {} ({})", g.info.name, g.info.backend);
    let shapes = std::env::var("DELTA_SHAPES").unwrap_or_else(|_| "1,2048,16,64;4,4096,16,128;1,8192,8,128".into());
    let tiles_env = std::env::var("DELTA_TILES").unwrap_or_default();
    for sh in shapes.split(';') {
        let v: Vec<usize> = sh.split(',').map(|x| x.trim().parse().unwrap()).collect();
        let s = shape(v[0], v[1], v[2], v[3], true);
        let mut tiles: Vec<Option<delta::DeltaTiles>> = vec![None];
        for t in tiles_env.split(';').filter(|t| !t.is_empty()) {
            let x: Vec<usize> = t.split(',').map(|a| a.trim().parse().unwrap()).collect();
            tiles.push(Some(delta::DeltaTiles { bv_fwd: x[0], bv_bwd: x[1] }));
        }
        for tl in tiles {
            let tl = tl.unwrap_or_else(|| delta::DeltaTiles::auto(g, &s));
            let recompute = std::env::var("DELTA_RECOMPUTE").is_ok();
            for backward in [false, true] {
                match taylorcal::experiments::bench_gdn::profile_delta(g, &s, backward, Some(tl), recompute) {
                    Ok(p) => {
                        let total: f64 = p.iter().map(|x| x.1).sum();
                        let parts: Vec<String> =
                            p.iter().map(|(l, t)| format!("{}={:.3}", l.trim_start_matches("delta_"), t * 1e3)).collect();
                        eprintln!("{sh} {tl:?} {}: {:.3} ms [{}]", if backward { "fwd+bwd" } else { "fwd" }, total * 1e3, parts.join(" "));
                    }
                    Err(e) => eprintln!("{sh} {tl:?}: {e:#}"),
                }
            }
        }
    }
    Ok(())
}
