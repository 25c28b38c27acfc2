//! Converting into an output directory ([`convert_and_save`]), the conversion in progress
//! kept there so that a killed `convert` continues with `--resume` to the very checkpoint
//! an unbroken run writes.
//!
//! `DIR/.taylorcal-convert.json` records what the result depends on (the settings, the
//! teacher's and the calibration tokens' fingerprints) and the reports and timings of the
//! layers converted so far; each of those layers' GDN tensors is in
//! `DIR/.taylorcal-convert-layer-L.safetensors`. After a layer its tensors are written, then
//! the state naming it, each atomically: a kill at any instant leaves a state that names
//! only saved layers (a layer saved but not yet named is converted again). The finished
//! checkpoint is written before these files are removed. Resuming converts the remaining
//! layers from the naive student with the saved ones put back, after the (deterministic)
//! teacher pass again.
use super::convert::{self, ConvertEval, ConvertOpts, Earlier, Inputs, LayerReport, Progress, Timings};
use crate::io::checkpoint::{gdn_name, save_checkpoint, HybridConfig, GDN_PARAMS};
use crate::io::fingerprint::{self, Fingerprint};
use crate::io::{hf, HostTensor};
use anyhow::{bail, ensure, Context as _, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The state file inside a conversion's output directory (named as taylorcal's own entries,
/// `io::hf::INTERNAL_PREFIX`: never a foreign file to `io::out_dir`).
pub const STATE_FILE: &str = ".taylorcal-convert.json";
/// The prefix of the converted layers' tensor files beside it.
const LAYER_PREFIX: &str = ".taylorcal-convert-layer-";
/// The largest state file read back (thousands of layers' reports fit many times over).
const MAX_STATE_BYTES: u64 = 64 << 20;

/// What a conversion's result depends on and how far it got.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Every setting that shapes the result, by the option that sets it.
    settings: BTreeMap<String, String>,
    teacher: String,
    teacher_fingerprint: String,
    /// The fingerprint of the calibration windows' token ids.
    calib_fingerprint: String,
    /// The layers the conversion converts, in order.
    gdn_layers: Vec<usize>,
    /// The reports of the first `layers.len()` of them, converted and saved.
    layers: Vec<Value>,
    /// The time spent so far.
    timings: Timings,
}

/// The settings of `o` for a student of layout `hc`, by option name.
fn settings(o: &ConvertOpts, hc: &HybridConfig) -> BTreeMap<String, String> {
    // destructured so that a new setting must be placed here
    let ConvertOpts { keep: _, strategy, seq_len, calib_tokens, capture_windows, align, value_scale, phase1_knobs, seed } = o;
    [
        ("--strategy", strategy.name().to_string()),
        ("--keep (the layers kept as softmax attention)", format!("{:?}", hc.attn_layers)),
        ("window length", seq_len.to_string()),
        ("--calib-tokens", calib_tokens.to_string()),
        ("--capture-windows", capture_windows.to_string()),
        ("--steps", align.steps.to_string()),
        ("alignment lr_qkv", align.lr_qkv.to_string()),
        ("alignment lr_gates", align.lr_gates.to_string()),
        ("alignment weight_decay", align.weight_decay.to_string()),
        ("alignment max_norm", align.max_norm.to_string()),
        ("--value-scale", value_scale.name()),
        ("phase 1 research settings (TAYLORCAL_PHASE1_SKIP, TAYLORCAL_SIGMA_FIXED, TAYLORCAL_GATE_SCALE)", format!("{phase1_knobs:?}")),
        ("--seed", seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn layer_path(out: &Path, layer: usize) -> PathBuf {
    out.join(format!("{LAYER_PREFIX}{layer}.safetensors"))
}

impl State {
    /// The state of a conversion of `inp` with `o` that has converted nothing yet.
    pub fn new(inp: &Inputs, o: &ConvertOpts) -> Result<State> {
        let mut calib = Fingerprint::default();
        for w in o.calib_windows_of(inp.calib)? {
            calib.u32s(w.iter().copied());
        }
        Ok(State {
            settings: settings(o, inp.config),
            teacher: inp.teacher_source.to_string(),
            teacher_fingerprint: fingerprint::of_tensors(inp.teacher_tensors),
            calib_fingerprint: calib.hex(),
            gdn_layers: inp.config.gdn_layers(),
            layers: vec![],
            timings: Timings::default(),
        })
    }

    /// The state an interrupted conversion left in `out`; `None` where there is none.
    pub fn load(out: &Path) -> Result<Option<State>> {
        let path = out.join(STATE_FILE);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        ensure!(len <= MAX_STATE_BYTES, "{} is {len} bytes, more than a conversion's state can be", path.display());
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not the state of an interrupted conversion (corrupt?)", path.display()))?;
        ensure!(state.layers.len() <= state.gdn_layers.len(), "{}: more layers done than converted", path.display());
        Ok(Some(state))
    }

    /// Converted layers saved so far.
    pub fn layers_done(&self) -> usize {
        self.layers.len()
    }

    /// Check that a run of `now` (settings and inputs, nothing done) continues the conversion
    /// this state (in `out`) records: else an error naming what differs.
    pub fn check_continues(&self, now: &State, out: &Path) -> Result<()> {
        let restart = "run with the same settings to continue it, or start over with --force (without --resume)";
        for (name, value) in &now.settings {
            let was = self.settings.get(name).map_or("(not recorded)", String::as_str);
            ensure!(
                was == value,
                "--resume: the interrupted conversion in {} ran with {name} {was}, this run asks for {name} {value}; {restart}",
                out.display()
            );
        }
        ensure!(
            self.teacher_fingerprint == now.teacher_fingerprint,
            "--resume: the interrupted conversion in {} converted another teacher ({}, fingerprint {}) than this run's ({}, \
             fingerprint {}): other weights; {restart}",
            out.display(),
            self.teacher,
            self.teacher_fingerprint,
            now.teacher,
            now.teacher_fingerprint
        );
        ensure!(
            self.calib_fingerprint == now.calib_fingerprint,
            "--resume: the interrupted conversion in {} was calibrated on another --calib text (its windows' tokens have \
             fingerprint {}, this run's {}); {restart}",
            out.display(),
            self.calib_fingerprint,
            now.calib_fingerprint
        );
        ensure!(self.gdn_layers == now.gdn_layers, "--resume: {} converts other layers than this run", out.display());
        Ok(())
    }

    /// Write the state into `out` (created if missing), atomically.
    pub fn save(&self, out: &Path) -> Result<()> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        hf::write_atomic(&out.join(STATE_FILE), serde_json::to_string(self)?.as_bytes())
    }

    /// Save the next converted layer: its GDN tensors (from the student's `tensors`), then the
    /// state naming it with its report `r` and the `timings` so far.
    pub fn record_layer(&mut self, out: &Path, r: &LayerReport, tensors: &HashMap<String, HostTensor>, timings: &Timings) -> Result<()> {
        let l = *self.gdn_layers.get(self.layers.len()).context("every layer is converted already")?;
        ensure!(r.layer == l, "layer {} was converted where layer {l} was next", r.layer);
        let mine: HashMap<String, HostTensor> = GDN_PARAMS
            .iter()
            .map(|p| {
                let name = gdn_name(l, p.name);
                tensors.get(&name).cloned().map(|t| (name.clone(), t)).with_context(|| format!("the student has no tensor {name}"))
            })
            .collect::<Result<_>>()?;
        hf::write_safetensors(&layer_path(out, l), &mine)?;
        self.layers.push(serde_json::to_value(r)?);
        self.timings = timings.clone();
        self.save(out)
    }

    /// What the layers this state names left in `out`: their tensors (checked against the
    /// layout `hc`), reports and timings.
    pub fn earlier(&self, out: &Path, hc: &HybridConfig) -> Result<Earlier> {
        let c = &hc.base;
        let mut tensors = HashMap::new();
        for &l in &self.gdn_layers[..self.layers.len()] {
            let path = layer_path(out, l);
            let mut saved = hf::read_safetensors(&path)?;
            for p in GDN_PARAMS {
                let name = gdn_name(l, p.name);
                let t = saved.remove(&name).with_context(|| format!("{}: missing tensor {name}", path.display()))?;
                let shape = p.shape(c.hidden_size, c.num_attention_heads, c.head_dim);
                ensure!(t.shape == shape, "{}: tensor {name} has shape {:?}, expected {shape:?}", path.display(), t.shape);
                tensors.insert(name, t);
            }
        }
        Ok(Earlier { tensors, layers: self.layers.clone(), timings: self.timings.clone() })
    }
}

/// Remove the state of a conversion from `out` (its layers' files after the state, so a
/// kill half-way leaves no state naming a missing file). Other files are left alone.
pub fn remove(out: &Path) -> Result<()> {
    let state = out.join(STATE_FILE);
    if state.is_file() {
        std::fs::remove_file(&state).with_context(|| format!("removing {}", state.display()))?;
    }
    for e in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))?.flatten() {
        if e.file_name().to_string_lossy().starts_with(LAYER_PREFIX) && e.path().is_file() {
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// The checks of `out` before a `convert` claims it: with `resume`, it must hold an
/// interrupted conversion; without, it must not (its work would be lost) unless `force`
/// starts over.
pub fn check_out(out: &Path, resume: bool, force: bool) -> Result<()> {
    let state = if out.is_dir() { State::load(out)? } else { None };
    match (state, resume) {
        (Some(s), false) if !force => bail!(
            "--out {} holds an interrupted conversion ({} of {} layers converted); continue it with --resume, or start \
             over with --force",
            out.display(),
            s.layers_done(),
            s.gdn_layers.len()
        ),
        (None, true) if crate::io::checkpoint::is_checkpoint(out) => {
            bail!("--resume: {} holds a finished conversion, nothing to resume; run without --resume to convert again", out.display())
        }
        (None, true) => {
            bail!("--resume: {} holds no interrupted conversion (no {STATE_FILE}); run without --resume to start one", out.display())
        }
        _ => Ok(()),
    }
}

/// What [`convert_and_save`] reports and when it stops early.
#[derive(Default)]
pub struct Hooks<'a> {
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
    /// Return (as an error, like a crash) once this many converted layers are saved, the
    /// resumed ones included: tests of resume.
    pub kill_after: Option<usize>,
}

/// [`convert::convert`], evaluate the student beside the teacher
/// ([`convert::Conversion::evaluate`]) and save
/// it in `out` as a checkpoint with `tokenizer` and its `report.json`. Each converted layer
/// is saved in `out` as it is done (see the module docs); with `resume`, the conversion an
/// interrupted run left in `out` continues (refused where the settings or inputs differ),
/// to the checkpoint an unbroken run writes. Returns the timings and the evaluation.
pub fn convert_and_save(
    inp: &Inputs,
    o: &ConvertOpts,
    tokenizer: Option<tokenizers::Tokenizer>,
    out: &Path,
    resume: bool,
    hooks: &mut Hooks,
) -> Result<(Timings, ConvertEval)> {
    inp.check()?;
    o.check()?;
    let mut state = State::new(inp, o)?;
    let earlier = if resume {
        let was = State::load(out)?.with_context(|| format!("--resume: {} holds no interrupted conversion", out.display()))?;
        was.check_continues(&state, out)?;
        state = was;
        state.earlier(out, inp.config)?
    } else {
        state.save(out)?;
        Earlier::default()
    };
    let mut no_progress = |_: Progress| {};
    let progress = hooks.progress.as_deref_mut().unwrap_or(&mut no_progress);
    let kill_after = hooks.kill_after;
    // layers whose conversion is instant (no phase 1 or 2) are not worth a file each
    let per_layer = o.strategy.phase1() || o.strategy.phase2();
    let c = convert::convert_from(
        (inp.gpu, inp.config, inp.teacher, inp.teacher_tensors, inp.calib),
        o,
        earlier,
        progress,
        &mut |r, tensors, timings| {
            if per_layer {
                state.record_layer(out, r, tensors, &timings)?;
            }
            ensure!(kill_after != Some(state.layers_done()), "stopped after {} converted layers (kill_after)", state.layers_done());
            Ok(())
        },
    )?;
    let eval = c.evaluate(inp, o)?;
    let report = c.report_json(inp, o, &eval);
    let timings = c.timings.clone();
    save_checkpoint(out, &c.checkpoint(inp.config, tokenizer, report))?;
    // only once the checkpoint is in place: a kill before leaves the state to resume from
    remove(out)?;
    Ok((timings, eval))
}
