//! `berth-cluster-agent`: see the library.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    settings_api::init_tracing();
    let cli = cluster_agent::cli::Cli::parse();
    match cluster_agent::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-cluster-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
