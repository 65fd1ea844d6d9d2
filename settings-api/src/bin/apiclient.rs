//! `apiclient`: command-line client of the settings API.

use anyhow::Context;
use clap::Parser;
use settings_api::cli::ClientArgs;

fn main() -> std::process::ExitCode {
    let args = ClientArgs::parse();
    settings_api::init_tracing();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apiclient: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut stdout = std::io::stdout().lock();
    runtime.block_on(settings_api::client::run(args, &mut stdout))?;
    Ok(())
}
