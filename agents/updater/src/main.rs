//! `berth-updater`: see `berth-updater --help` and docs/updates.md.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use updater::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Under systemd, journald adds the time.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
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
    let host = Path::new("/");
    let runtime = tokio::runtime::Runtime::new()?;
    let status = match cli.command {
        Command::Check(args) => runtime.block_on(updater::check(&args.config(host)?))?,
        Command::Prepare(args) => runtime.block_on(updater::prepare(&args.config(host)?))?,
        Command::Activate(args) => runtime.block_on(updater::activate(&args.config(host)?))?,
        Command::Deactivate(args) => runtime.block_on(updater::deactivate(&args.config(host)?))?,
        Command::Apply(args) => runtime.block_on(updater::apply(&args.config(host)?))?,
        Command::HealthGate(args) => {
            let units = updater::health::DbusUnits::connect()?;
            updater::health::run(&args.gate(host), &units)?
        }
        Command::Status { state_dir } => updater::status(&state_dir)?,
    };
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}
