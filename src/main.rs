//! The `taylorcal` command line: thin, every subcommand calls the library (see `cli`).
use clap::Parser;

mod cli;

fn main() {
    let args = cli::args::Cli::parse();
    // before the GPU (and any thread) starts
    let runtime_dir = cli::env::private_runtime_dir();
    let result = cli::run(args);
    drop(runtime_dir);
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
