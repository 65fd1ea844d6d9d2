//! `berth-updater`: see `berth-updater --help` and docs/updates.md.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use updater::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("berth-updater: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let status = runtime.block_on(async {
        match cli.command {
            Command::Check(args) => updater::check(&args.config()).await,
            Command::Prepare(args) => updater::prepare(&args.config()).await,
            Command::Activate(args) => updater::activate(&args.config()).await,
            Command::Deactivate(args) => updater::deactivate(&args.config()).await,
            Command::Apply(args) => updater::apply(&args.config()).await,
            Command::Status { state_dir } => updater::status(&state_dir),
        }
    })?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}
