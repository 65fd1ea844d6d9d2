//! `boot-config`: applies user data at first boot and renders service configuration from
//! settings (docs/boot-config.md).

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = boot_config::Args::parse();
    settings_api::init_tracing();
    match boot_config::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("boot-config: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
