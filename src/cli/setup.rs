//! What the commands load: a model to run (eval, stats, generate), or a teacher with the
//! student's layout, calibration and evaluation tokens (convert, ablate, select, recovery).
use super::args::{ConvArgs, EvalArgs, Preset, TeacherArgs};
use super::progress;
use super::{gpu, resolve_model};
use anyhow::{bail, ensure, Context as _, Result};
use std::collections::HashMap;
use taylorcal::calibrate::convert::{ConvertOpts, Inputs};
use taylorcal::data;
use taylorcal::gpu::Gpu;
use taylorcal::io::{self, checkpoint::HybridConfig, HostTensor};
use taylorcal::nn::decoder::Decoder;
use taylorcal::select::{self, Policy, Selection};

/// A model to run, with its tokenizer and end-of-sequence token.
pub struct Loaded {
    pub model: Decoder,
    pub tokenizer: tokenizers::Tokenizer,
    pub eos: Option<u32>,
}

/// Load a model (a teacher, a taylorcal checkpoint or an exported student) onto the GPU,
/// with a spinner.
pub fn load(spec: &str) -> Result<Loaded> {
    let path = resolve_model(spec)?;
    let spinner = progress::spinner(format!("loading {}", path.display()));
    let loaded = if io::is_student(&path) {
        let ck = io::load_student(&path)?;
        let tokenizer = ck.tokenizer.clone().with_context(|| format!("student {} has no tokenizer.json", path.display()))?;
        Loaded { model: Decoder::from_checkpoint(gpu()?, &ck)?, tokenizer, eos: ck.config.base.eos_token_id }
    } else {
        let files = io::load_model(&path)?;
        let tokenizer = files.tokenizer.clone().with_context(|| format!("{} has no tokenizer", files.source))?;
        Loaded { model: Decoder::new(gpu()?, &files)?, tokenizer, eos: files.config.eos_token_id }
    };
    spinner.finish_and_clear();
    Ok(loaded)
}

/// The teacher (files and decoder), its tokenizer, the student's layout, calibration and
/// evaluation tokens, and the conversion settings.
pub struct ConvSetup {
    pub files: io::ModelFiles,
    pub teacher: Decoder,
    pub tokenizer: tokenizers::Tokenizer,
    pub hc: HybridConfig,
    pub calib: Vec<u32>,
    pub eval: Vec<u32>,
    /// The policy's ranking when --policy chose the kept layers.
    pub selection: Option<Selection>,
    /// The arguments' conversion settings with the kept layers (strategy: taylor-calibrate).
    pub opts: ConvertOpts,
    /// --eval, --eval-windows
    eval_args: EvalArgs,
}

impl ConvSetup {
    /// The evaluation text cut into --eval-windows windows.
    pub fn eval_windows(&self) -> Result<Vec<&[u32]>> {
        self.eval_args.windows(&self.eval)
    }

    /// What the library's conversion, ablation and recovery read, scored on `eval`.
    pub fn inputs<'a>(&'a self, gpu: &'a Gpu, eval: &'a [&'a [u32]]) -> Result<Inputs<'a>> {
        Ok(Inputs {
            gpu,
            teacher: &self.teacher,
            teacher_tensors: &self.files.tensors,
            teacher_source: &self.files.source,
            config: &self.hc,
            selection: self.selection.as_ref().map(serde_json::to_value).transpose()?,
            calib: &self.calib,
            eval,
        })
    }
}

/// Load the teacher of `a`, tokenise the calibration and evaluation texts, and choose the
/// kept layers (running --policy when given); a layout that keeps every layer is refused.
pub fn conv_setup(a: &ConvArgs) -> Result<ConvSetup> {
    setup(a, a.opts()?, Some(a))
}

/// [`conv_setup`] for `select`: the kept layers are the policy's (all of them allowed).
pub fn select_setup(a: &TeacherArgs) -> Result<ConvSetup> {
    setup(a, a.opts(Preset::Reference)?, None)
}

/// The teacher, texts and policy of `a` with `opts`; `conv` (a conversion's arguments) adds
/// the layout options and the check that something is converted.
fn setup(a: &TeacherArgs, mut opts: ConvertOpts, conv: Option<&ConvArgs>) -> Result<ConvSetup> {
    let path = resolve_model(&a.teacher)?;
    let files = io::load_model(&path)?;
    let tokenizer = files.tokenizer.clone().with_context(|| format!("{} has no tokenizer", files.source))?;
    let (layers, vocab) = (files.config.num_hidden_layers, files.config.vocab_size);
    if let (Some(_), Some(n)) = (conv, a.num_keep) {
        ensure!(n != layers, "--num-keep {n} keeps all {layers} layers of the teacher as softmax attention: nothing to convert");
    }
    let calib_tokens = opts.calib_windows().saturating_mul(opts.seq_len);
    let calib = data::tokenize_or(&tokenizer, a.calib.as_deref(), &data::brown::CALIBRATION, vocab, calib_tokens)?;
    let eval = a.eval.tokens(&tokenizer, vocab)?;
    let teacher = Decoder::new(gpu()?, &files)?;
    let selection = run_policy(a, &opts, &teacher, &files.tensors, &calib, &eval)?;
    let (keep, keep_every) = conv.map_or((None, None), |c| (c.keep.as_deref(), c.keep_every));
    let keep = select::kept_layers(layers, selection.as_ref(), keep, keep_every)?;
    let hc = HybridConfig::new(files.config.clone(), keep)?;
    if let (Some(c), true) = (conv, hc.gdn_layers().is_empty()) {
        let layout = match &c.keep {
            Some(k) => format!("--keep {}", k.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(",")),
            None => format!("--keep-every {}", c.keep_every.unwrap_or(select::DEFAULT_KEEP_EVERY)),
        };
        bail!("{layout} keeps all {layers} layers of the teacher as softmax attention: nothing to convert");
    }
    opts.keep = hc.attn_layers.clone();
    Ok(ConvSetup { files, teacher, tokenizer, hc, calib, eval, selection, opts, eval_args: a.eval.clone() })
}

/// Run --policy (when given) on the evaluation (and, for GA-S2, calibration) windows.
fn run_policy(
    a: &TeacherArgs,
    o: &ConvertOpts,
    teacher: &Decoder,
    tensors: &HashMap<String, HostTensor>,
    calib: &[u32],
    eval: &[u32],
) -> Result<Option<Selection>> {
    let (Some(policy), Some(n)) = (&a.policy, a.num_keep) else {
        return Ok(None);
    };
    let policy = Policy::parse(policy)?;
    let eval = match policy {
        Policy::Uniform => vec![],
        _ => a.eval.windows(eval)?,
    };
    let calib = match policy {
        Policy::GaS2 => o.calib_windows_of(calib)?,
        _ => vec![],
    };
    let inputs = select::Inputs {
        teacher,
        tensors,
        eval: &eval,
        calib: &calib,
        capture_windows: o.capture_windows,
        value_scale: o.value_scale,
        phase1_knobs: o.phase1_knobs.clone(),
        seed: o.seed,
    };
    let pb = progress::bar(teacher.cfg.num_hidden_layers as u64, &format!("{} layer scores", policy.name()));
    let s = select::select(gpu()?, policy, n, &inputs, |done, _| pb.set_position(done as u64))?;
    pb.finish_and_clear();
    Ok(Some(s))
}
