//! The `taylorcal` command line: thin, every subcommand calls the library (see `cli`).
use clap::Parser;

mod cli;

fn main() {
    let args = cli::args::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
