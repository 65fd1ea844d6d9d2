//! `cis-report`: runs the CIS checks on a host root and prints the report.

use anyhow::Context;
use cis::cli::Args;
use clap::Parser;
use std::io::Write;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cis-report: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.root.is_dir(),
        "host root {} is not a directory; pass --root with the host tree to check",
        args.root.display()
    );
    let host = cis::HostRoot::new(&args.root);
    let report = cis::Report::run(
        args.benchmark,
        args.level,
        &host,
        std::time::SystemTime::now(),
    );
    let text = report.render(args.format).context("rendering the report")?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .context("writing the report to stdout")
}
