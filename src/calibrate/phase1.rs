//! Phase 1 of Taylor-Calibrate: closed-form settings of a converted layer's decay,
//! write gate, value scale and output gate from teacher attention statistics
//! (docs/method.md, "Phase 1"). Pure host arithmetic on small per-head data.
use super::capture::Capture;
use crate::gpu::Gpu;
use crate::io::checkpoint::gdn_name;
use crate::io::HostTensor;
use crate::nn::decoder::upload_gdn;
use crate::nn::gdn::{self, GdnActs};
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;

/// Memory timescale: with A_log = 0 and W_a x ~ 0 the per-step decay is
/// exp(-softplus(dt_bias)) = exp(-r) = 2^(-1/d): the memory half-life equals the head's
/// mean attention distance d (floored at 0.5), r clamped to [1e-3, 5].
pub fn decay_rate(distance: f64) -> f64 {
    (std::f64::consts::LN_2 / distance.max(0.5)).clamp(1e-3, 5.0)
}

/// Inverse softplus: the x with ln(1 + e^x) = r, written as r + ln(-expm1(-r)).
pub fn inv_softplus(r: f64) -> f64 {
    r + (-(-r).exp_m1()).ln()
}

pub fn softplus(x: f64) -> f64 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// dt_bias per head from mean attention distances (A_log is set to 0 alongside).
pub fn dt_bias(distances: &[f32]) -> Vec<f32> {
    distances.iter().map(|&d| inv_softplus(decay_rate(d as f64)) as f32).collect()
}

/// Target write strengths: concentration c = 1 - (H - min H) / max(max H - min H, 1e-3)
/// over the layer's heads, beta = 0.3 + 0.4 c (low entropy, focused heads write harder).
pub fn target_beta(entropies: &[f32]) -> Vec<f32> {
    let lo = entropies.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
    let hi = entropies.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let range = (hi - lo).max(1e-3);
    entropies.iter().map(|&h| (0.3 + 0.4 * (1.0 - (h as f64 - lo) / range)) as f32).collect()
}

pub fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Rescale each row h of W_b [H, D] to logit(beta_h) / sqrt(D) * W_b[h] / mean|W_b[h]|.
pub fn rescale_wb(wb: &mut [f32], d: usize, betas: &[f32]) {
    for (row, &beta) in wb.chunks_mut(d).zip(betas) {
        let mean_abs = row.iter().map(|v| v.abs() as f64).sum::<f64>() / d as f64;
        let s = logit(beta as f64) / (d as f64).sqrt() / mean_abs.max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 * s) as f32);
    }
}

/// Value scale per head: sigma_h = sum <c_T, c_S> / sum |c_S|^2 over tokens and the head's
/// dims, clamped to [0.1, 10]. `teacher`, `student`: contexts [N, H * d].
pub fn value_scale(teacher: &[f32], student: &[f32], heads: usize, dim: usize) -> Vec<f32> {
    let mut num = vec![0.0f64; heads];
    let mut den = vec![0.0f64; heads];
    for (tr, sr) in teacher.chunks(heads * dim).zip(student.chunks(heads * dim)) {
        for h in 0..heads {
            for j in h * dim..(h + 1) * dim {
                num[h] += tr[j] as f64 * sr[j] as f64;
                den[h] += sr[j] as f64 * sr[j] as f64;
            }
        }
    }
    num.iter().zip(&den).map(|(n, d)| if *d > 0.0 { (n / d).clamp(0.1, 10.0) as f32 } else { 1.0 }).collect()
}

/// Per-head RMS of rows laid out [tokens][heads * dim].
pub fn head_rms(z: &[f32], heads: usize, dim: usize) -> Vec<f64> {
    let mut ss = vec![0.0f64; heads];
    let mut n = 0usize;
    for row in z.chunks(heads * dim) {
        for (h, acc) in ss.iter_mut().enumerate() {
            *acc += row[h * dim..(h + 1) * dim].iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
        }
        n += dim;
    }
    ss.iter().map(|s| if n > 0 { (s / n as f64).sqrt() } else { 0.0 }).collect()
}

/// How phase 1 scales W_v's rows per head.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueScale {
    /// The method as written (docs/method.md): sigma_h = <c_T, c_S> / |c_S|^2 from the recurrence's output
    Fit,
    /// sigma_h = tau / RMS(W_v x)_h: SiLU's input brought to RMS tau, near SiLU's first-order
    /// (linear) regime (see [`linear_regime_scale`]); the default, with [`DEFAULT_LINEAR_TAU`]
    Linear { tau: f32 },
}

/// tau of `--value-scale linear` without one, and of the default value scale: the best of
/// 0.0625 / 0.125 / 0.25 / 0.5 / 1 by perplexity on the Brown training split (SmolLM2,
/// keep-every 4; docs/results.md, "Taylor-Calibrate on SmolLM2").
pub const DEFAULT_LINEAR_TAU: f32 = 0.25;

impl std::fmt::Display for ValueScale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl Default for ValueScale {
    fn default() -> Self {
        ValueScale::Linear { tau: DEFAULT_LINEAR_TAU }
    }
}

impl ValueScale {
    /// `fit`, `linear` or `linear:TAU` (TAU > 0).
    pub fn parse(s: &str) -> Result<ValueScale, String> {
        match s.split_once(':') {
            None if s == "fit" => Ok(ValueScale::Fit),
            None if s == "linear" => Ok(ValueScale::Linear { tau: DEFAULT_LINEAR_TAU }),
            Some(("linear", t)) => match t.parse::<f32>() {
                Ok(tau) if tau.is_finite() && tau > 0.0 => Ok(ValueScale::Linear { tau }),
                _ => Err(format!("value scale {s:?}: TAU must be a positive number")),
            },
            _ => Err(format!("value scale {s:?}: expected fit, linear or linear:TAU")),
        }
    }

    pub fn name(self) -> String {
        match self {
            ValueScale::Fit => "fit".into(),
            ValueScale::Linear { tau } => format!("linear:{tau}"),
        }
    }
}

/// The `linear` value scale: sigma_h = tau / RMS of head h's pre-activation W_v x, so that
/// SiLU(sigma W_v x) works near its first-order (linear) regime and keeps the sign of the
/// teacher's values (the gated RMSNorm after the scan takes out the scale itself); clamped
/// to [0.1, 10] like the fitted scale (1 where a head's RMS is 0).
pub fn linear_regime_scale(head_rms: &[f64], tau: f32) -> Vec<f32> {
    head_rms.iter().map(|r| if *r > 0.0 { (tau as f64 / r).clamp(0.1, 10.0) as f32 } else { 1.0 }).collect()
}

/// SiLU(scale[h] z) of pre-activations laid out [tokens][heads * dim] (head h = scale[h]).
pub fn scaled_silu(z: &[f32], scale: &[f32], dim: usize) -> Vec<f32> {
    let width = scale.len() * dim;
    z.iter()
        .enumerate()
        .map(|(i, &x)| {
            let v = (scale[(i % width) / dim] * x) as f64;
            (v / (1.0 + (-v).exp())) as f32
        })
        .collect()
}

pub fn rms(v: &[f32]) -> f64 {
    (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

/// Output-gate scale alpha = 0.01 * RMS(c_T) / RMS(SiLU(W_v x)); then W_g = alpha * W_v.
pub fn output_gate_alpha(teacher_ctx: &[f32], silu_v: &[f32]) -> f32 {
    let r = rms(silu_v);
    if r == 0.0 {
        0.0
    } else {
        (0.01 * rms(teacher_ctx) / r) as f32
    }
}

/// What phase 1 chose for one converted layer, per head (goes into report.json).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase1Report {
    pub distance: Vec<f32>,
    pub entropy: Vec<f32>,
    pub target_beta: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub sigma: Vec<f32>,
    /// the value scale multiplied into W_v (sigma, or what a research knob chose instead)
    pub sigma_applied: Vec<f32>,
    /// per-head RMS of the pre-activation W_v x on the calibration tokens (before scaling)
    pub value_preact_rms: Vec<f32>,
    pub alpha: f32,
}

// ---- phase 1 on a converted layer (GPU) ----

/// A part of phase 1 that a component ablation can leave out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase1Component {
    /// A_log = 0 and dt_bias from the mean attention distances
    Decay,
    /// W_b rescaled to the target write strengths
    Beta,
    /// the value scale multiplied into W_v (skipped: 1 on every head)
    Sigma,
    /// W_g = alpha W_v
    Gate,
}

impl Phase1Component {
    /// The names [`Phase1Component::parse_list`] takes, in order.
    pub const NAMES: [&str; 4] = ["decay", "beta", "sigma", "gate"];

    /// A comma list of `decay`, `beta`, `sigma`, `gate` (blank entries ignored).
    pub fn parse_list(list: &str) -> Result<Vec<Phase1Component>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "decay" => Ok(Phase1Component::Decay),
                "beta" => Ok(Phase1Component::Beta),
                "sigma" => Ok(Phase1Component::Sigma),
                "gate" => Ok(Phase1Component::Gate),
                _ => anyhow::bail!("unknown component {s:?} ({})", Self::NAMES.join(", ")),
            })
            .collect()
    }
}

/// Phase 1's research knobs (docs/results.md, "Taylor-Calibrate on SmolLM2 (ablation)"); the
/// default, none set, is the method. The CLI reads them from `TAYLORCAL_PHASE1_SKIP`,
/// `TAYLORCAL_SIGMA_FIXED` and `TAYLORCAL_GATE_SCALE`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Phase1Knobs {
    /// Components left out (component ablations).
    pub skip: Vec<Phase1Component>,
    /// Apply this value scale to every head instead of the chosen one (the report keeps the
    /// fitted sigma and says what was applied).
    pub sigma_fixed: Option<f32>,
    /// Multiplies the output gate's alpha (the method's 0.01 coefficient).
    pub gate_scale: Option<f32>,
}

/// Phase 1 on converted layer `li` of the capture: decay, write gate, value scale, output gate.
pub fn phase1_layer(
    gpu: &Gpu,
    tensors: &mut HashMap<String, HostTensor>,
    cap: &Capture,
    li: usize,
    value_scale: ValueScale,
    knobs: &Phase1Knobs,
) -> Result<Phase1Report> {
    let skips = |c: Phase1Component| knobs.skip.contains(&c);
    let l = cap.layers[li];
    let (dist, ent) = (&cap.stats[l].distance, &cap.stats[l].entropy);
    let heads = dist.len();
    let dm = cap.x[li].cols();
    let set = |t: &mut HashMap<String, HostTensor>, name: &str, v: Vec<f32>| t.get_mut(&gdn_name(l, name)).expect("gdn tensor").data = v;
    let dt_bias = dt_bias(dist);
    if !skips(Phase1Component::Decay) {
        set(tensors, "A_log", vec![0.0; heads]);
        set(tensors, "dt_bias", dt_bias.clone());
    }
    let betas = target_beta(ent);
    if !skips(Phase1Component::Beta) {
        rescale_wb(&mut tensors.get_mut(&gdn_name(l, "b_proj.weight")).expect("b_proj").data, dm, &betas);
    }
    // value scale: run the recurrence with the calibrated gates on the teacher-forced input
    let p = upload_gdn(gpu, tensors, l)?;
    let dims = p.dims();
    let acts = GdnActs::new(gpu, dims, cap.seqs, false)?;
    let mut b = gpu.batch();
    gdn::gdn_forward_inputs(&mut b, &p, &cap.x[li], &acts);
    gdn::gdn_scan_forward(&mut b, &p, cap.seqs, &acts)?;
    b.submit();
    let teacher_ctx = gpu.read(&cap.context[li])?;
    let sigma = self::value_scale(&teacher_ctx, &gpu.read(&acts.o)?, heads, dims.head_dim);
    // the pre-activation W_v x (before any scale), which the recurrence's inputs came from
    let zv = gpu.read(&acts.zv)?;
    let preact_rms = head_rms(&zv, heads, dims.head_dim);
    let applied = match (knobs.sigma_fixed, value_scale) {
        _ if skips(Phase1Component::Sigma) => vec![1.0; heads],
        (Some(f), _) => vec![f; heads],
        (None, ValueScale::Linear { tau }) => linear_regime_scale(&preact_rms, tau),
        (None, ValueScale::Fit) => sigma.clone(),
    };
    let wv = &mut tensors.get_mut(&gdn_name(l, "v_proj.weight")).expect("v_proj").data;
    for (h, s) in applied.iter().enumerate() {
        wv[h * dims.head_dim * dm..(h + 1) * dims.head_dim * dm].iter_mut().for_each(|w| *w *= s);
    }
    let wv = wv.clone();
    // output gate from the rescaled values SiLU(sigma_h W_v x): W_g = alpha W_v
    let silu_v = scaled_silu(&zv, &applied, dims.head_dim);
    let mut alpha = output_gate_alpha(&teacher_ctx, &silu_v);
    if let Some(k) = knobs.gate_scale {
        alpha *= k;
    }
    if !skips(Phase1Component::Gate) {
        set(tensors, "g_proj.weight", wv.iter().map(|w| w * alpha).collect());
    }
    Ok(Phase1Report {
        distance: dist.clone(),
        entropy: ent.clone(),
        target_beta: betas,
        dt_bias,
        sigma,
        sigma_applied: applied,
        value_preact_rms: preact_rms.iter().map(|r| *r as f32).collect(),
        alpha,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lists_parse_and_unknown_components_are_refused() {
        assert_eq!(Phase1Component::parse_list("").unwrap(), vec![]);
        assert_eq!(
            Phase1Component::parse_list(" gate, decay ,,sigma,beta").unwrap(),
            vec![Phase1Component::Gate, Phase1Component::Decay, Phase1Component::Sigma, Phase1Component::Beta]
        );
        let e = Phase1Component::parse_list("decay,alpha").unwrap_err().to_string();
        assert!(e.contains("\"alpha\"") && e.contains("decay, beta, sigma, gate"), "{e}");
    }

    #[test]
    fn linear_regime_scale_by_hand() {
        // 2 tokens, 2 heads of dim 2: head 0 values 3, 4 | 0, 0 -> RMS sqrt(25 / 4) = 2.5;
        // head 1 all 1 -> RMS 1
        let z = [3.0, 4.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0];
        let r = head_rms(&z, 2, 2);
        assert!((r[0] - 2.5).abs() < 1e-12 && (r[1] - 1.0).abs() < 1e-12, "{r:?}");
        assert_eq!(linear_regime_scale(&r, 0.5), vec![0.2, 0.5]);
        // clamped like the fitted scale; a silent head keeps 1
        assert_eq!(linear_regime_scale(&[100.0, 0.001, 0.0], 0.5), vec![0.1, 10.0, 1.0]);
    }

    #[test]
    fn scaled_silu_scales_each_head() {
        // 1 token, 2 heads of dim 1: SiLU(2 * 1) and SiLU(0.5 * -2)
        let y = scaled_silu(&[1.0, -2.0], &[2.0, 0.5], 1);
        let silu = |x: f64| x / (1.0 + (-x).exp());
        assert!((y[0] as f64 - silu(2.0)).abs() < 1e-6 && (y[1] as f64 - silu(-1.0)).abs() < 1e-6, "{y:?}");
    }

    #[test]
    fn value_scale_parses() {
        assert_eq!(ValueScale::parse("fit"), Ok(ValueScale::Fit));
        assert_eq!(ValueScale::parse("linear"), Ok(ValueScale::Linear { tau: DEFAULT_LINEAR_TAU }));
        assert_eq!(ValueScale::parse("linear:0.5"), Ok(ValueScale::Linear { tau: 0.5 }));
        for bad in ["", "lin", "linear:", "linear:0", "linear:-1", "linear:x", "fit:1", "linear:inf"] {
            assert!(ValueScale::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(ValueScale::parse(&ValueScale::Linear { tau: 0.25 }.name()), Ok(ValueScale::Linear { tau: 0.25 }));
    }

    #[test]
    fn half_life_equals_mean_distance() {
        // d = 4 tokens: r = ln2/4 = 0.1733; decay per step 2^(-1/4) = 0.8409
        let b = dt_bias(&[4.0])[0] as f64;
        let r = softplus(b);
        assert!((r - std::f64::consts::LN_2 / 4.0).abs() < 1e-6);
        assert!(((-r).exp() - 0.840896).abs() < 1e-5);
        // by hand: r = 0.173287, 1 - e^-r = 0.159104, ln of it = -1.838200, sum = -1.664913
        assert!((b - (-1.664913)).abs() < 1e-5, "{b}");
        // clamps: distance 0.1 -> floored at 0.5 -> r = 1.386; huge distance -> r = 1e-3
        assert!((softplus(dt_bias(&[0.1])[0] as f64) - 2.0 * std::f64::consts::LN_2).abs() < 1e-5);
        assert!((softplus(dt_bias(&[1e6])[0] as f64) - 1e-3).abs() < 1e-7);
    }

    #[test]
    fn beta_targets_follow_entropy_rank() {
        // entropies 1, 2, 3: c = 1, 0.5, 0 -> beta 0.7, 0.5, 0.3
        let b = target_beta(&[1.0, 2.0, 3.0]);
        for (g, w) in b.iter().zip([0.7, 0.5, 0.3]) {
            assert!((*g as f64 - w).abs() < 1e-6, "{b:?}");
        }
        // equal entropies: range floored at 1e-3, every head c = 1 -> 0.7
        assert!(target_beta(&[2.0, 2.0]).iter().all(|&x| (x - 0.7).abs() < 1e-6));
    }

    #[test]
    fn wb_rows_rescaled_to_logit_over_sqrt_d() {
        // D = 4, row [1, -2, 3, -2]: mean |.| = 2; beta 0.7: logit = 0.8473, / sqrt 4 = 0.42365
        let mut wb = vec![1.0, -2.0, 3.0, -2.0];
        rescale_wb(&mut wb, 4, &[0.7]);
        let s = (0.7f64 / 0.3).ln() / 2.0 / 2.0;
        for (g, w) in wb.iter().zip([1.0, -2.0, 3.0, -2.0]) {
            assert!((*g as f64 - w * s).abs() < 1e-6);
        }
    }

    #[test]
    fn sigma_is_least_squares_scale_clamped() {
        // 2 tokens, 2 heads of dim 1: head 0 teacher = 3 x student; head 1 would be 100x -> 10
        let t = [3.0, 100.0, 6.0, 200.0];
        let s = [1.0, 1.0, 2.0, 2.0];
        assert_eq!(value_scale(&t, &s, 2, 1), vec![3.0, 10.0]);
        // opposite sign -> clamped at 0.1
        assert_eq!(value_scale(&[-1.0], &[1.0], 1, 1), vec![0.1]);
    }

    #[test]
    fn alpha_is_one_percent_rms_ratio() {
        // RMS(c_T) = 2 (all 2s), RMS(silu v) = 4 -> alpha = 0.005
        assert!((output_gate_alpha(&[2.0, -2.0], &[4.0, 4.0]) - 0.005).abs() < 1e-9);
    }
}
