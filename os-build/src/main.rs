//! `os-build`: builds Berth disk images from a variant. See `os-build --help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = os_build::cli::Cli::parse();
    os_build::logging::init();
    match os_build::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("os-build: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
