//! boot-config: the first-boot user data step and the configuration renderer.
//!
//! `boot-config userdata` reads TOML user data (Bottlerocket's format) from QEMU fw_cfg and
//! applies it once, in one transaction, through the settings API; `boot-config render` renders
//! the configuration files of services from the live settings into `/etc` and restarts the
//! affected units through systemd's D-Bus API.

pub mod paths;
pub mod render;
pub mod systemd;
pub mod userdata;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Applies user data and renders service configuration from settings.
#[derive(Debug, Parser)]
#[command(name = "boot-config", version)]
pub struct Args {
    /// API server socket.
    #[arg(short = 's', long, global = true, default_value = settings_api::paths::API_SOCKET)]
    pub socket_path: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply user data once (first boot) in one transaction; later boots do nothing.
    Userdata {
        /// User data file (default: QEMU fw_cfg `opt/org.berth/user-data`).
        #[arg(long, default_value = paths::FW_CFG_USER_DATA)]
        source: PathBuf,
        /// First-boot marker and outcome (JSON).
        #[arg(long, default_value = paths::USER_DATA_STATUS)]
        status_file: PathBuf,
    },
    /// Render configuration files from the live settings and restart the affected units.
    Render {
        /// Services to render (comma-separated); all services when absent.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// Boot mode: restart only units already running (e.g. systemd-resolved); the units
        /// ordered after configured.target start afterwards and read the new files.
        #[arg(long)]
        boot: bool,
        /// Service metadata file.
        #[arg(long, default_value = paths::METADATA)]
        metadata_file: PathBuf,
        /// Root that configuration paths, templates and /proc/sys are resolved under (tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Userdata {
            source,
            status_file,
        } => userdata::run(&args.socket_path, &source, &status_file),
        Command::Render {
            services,
            boot,
            metadata_file,
            root,
        } => {
            let metadata = settings_api::metadata::Metadata::load(&metadata_file)?;
            let settings = get_settings(&args.socket_path)?;
            let renderer = render::Renderer {
                metadata: &metadata,
                root: &root,
            };
            let plan = renderer.render(&settings, &services)?;
            let mode = if boot {
                render::Mode::Boot
            } else {
                render::Mode::Live
            };
            let units = systemd::DbusUnits::connect()?;
            renderer.finish(&settings, &plan, &units, mode)?;
            Ok(())
        }
    }
}

/// Runs one API call on a small single-threaded runtime.
pub(crate) fn api(
    socket: &std::path::Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<Vec<u8>, settings_api::client::ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds without OS resources beyond a timer");
    rt.block_on(settings_api::client::call(socket, method, uri, body))
        .map(|b| b.to_vec())
}

fn get_settings(socket: &std::path::Path) -> Result<serde_json::Value> {
    let body = api(socket, "GET", "/settings", None).context("cannot read the live settings")?;
    serde_json::from_slice(&body).context("GET /settings did not return JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subcommands() {
        let a =
            Args::try_parse_from(["boot-config", "render", "--services", "chronyd,motd"]).unwrap();
        match a.command {
            Command::Render { services, boot, .. } => {
                assert_eq!(services, ["chronyd", "motd"]);
                assert!(!boot);
            }
            other => panic!("unexpected {other:?}"),
        }
        let a = Args::try_parse_from(["boot-config", "userdata"]).unwrap();
        assert!(matches!(a.command, Command::Userdata { ref source, .. }
            if source.as_os_str() == paths::FW_CFG_USER_DATA));
        assert!(Args::try_parse_from(["boot-config"]).is_err());
    }
}
