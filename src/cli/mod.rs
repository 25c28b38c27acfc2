//! Command-line glue: the argument structs ([`args`]), the per-command drivers that call one
//! library function and print ([`convert`], [`train`], [`inspect`], [`export`]), the model and teacher
//! loading they share ([`setup`]), the progress bars ([`progress`]) and the environment
//! variables, read here and nowhere else ([`env`]).
pub mod args;
pub mod convert;
pub mod env;
pub mod export;
pub mod inspect;
pub mod progress;
pub mod setup;
pub mod train;

use anyhow::Result;
use args::{Cli, Cmd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use taylorcal::gpu::{Gpu, Precision};
use taylorcal::io::out_dir;

/// `--precision`, set once by [`run`] (`None`: the adapter's default).
static PRECISION: OnceLock<Option<Precision>> = OnceLock::new();

/// The GPU every command runs on, with the options the environment and `--precision` set.
pub fn gpu() -> Result<&'static Gpu> {
    let mut opts = env::gpu_options_from_env()?;
    opts.precision = PRECISION.get().copied().flatten();
    Gpu::shared_with(opts)
}

/// A model argument (`smollm2`, a file or a directory) as a local path, fetching the
/// default teacher on first use.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    taylorcal::io::fetch::resolve_model(spec, &env::cache_dir_from_env())
}

/// Claim `out` for output of `kind` (see `taylorcal::io::out_dir`) before any work: the
/// teacher (its path from [`resolve_model`]) and `inputs` are never a valid one. The lock is
/// held until the returned value is dropped.
pub fn claim_out(out: &Path, kind: out_dir::Kind, teacher: &Path, inputs: &[&Path], force: bool) -> Result<out_dir::OutDir> {
    out_dir::claim(out, kind, &[&[teacher], inputs].concat(), force)
}

/// Run one command.
pub fn run(cli: Cli) -> Result<()> {
    PRECISION.set(cli.precision).expect("run is called once");
    match cli.cmd {
        Cmd::Info { json } => inspect::info(json),
        Cmd::Eval(a) => inspect::eval(&a),
        Cmd::Stats(a) => inspect::stats(&a),
        Cmd::Bench { what, json } => inspect::bench(&what, json),
        Cmd::Convert { conv, strategy, out, resume, force, json } => convert::convert(&conv, &strategy, &out, force, resume, json),
        Cmd::Ablate { conv, out, force, json } => convert::ablate(&conv, &out, force, json),
        Cmd::Select { teacher, out, json } => convert::select(&teacher, out.as_deref(), json),
        Cmd::Distill(a) => train::distill(&a),
        Cmd::Recovery(a) => train::recovery(&a),
        Cmd::Export(a) => export::export(&a),
        Cmd::Tokenize(a) => train::tokenize(&a),
        Cmd::Generate(a) => inspect::generate(&a),
    }
}
