//! boot-config: the first-boot user data step, the setting generators and the configuration
//! renderer (docs/boot-config.md).
//!
//! `boot-config userdata` reads TOML user data (Bottlerocket's format) from a local file, the
//! platform's source and local overrides, merges them and applies them once, in one
//! transaction, through the settings API; `boot-config generate` fills in settings derived at
//! boot that the user did not set; `boot-config render` renders the configuration files of
//! services from the live settings into `/etc` and restarts the affected units through
//! systemd's D-Bus API.

pub mod configdrive;
pub mod generate;
pub mod ovfenv;
pub mod paths;
pub mod render;
pub mod userdata;
pub mod vmware;

pub use host::{imds, platform};

use anyhow::{Context, Result};
use clap::{Args as ClapArgs, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Applies user data, generates settings and renders service configuration from settings.
#[derive(Debug, Parser)]
#[command(
    name = "boot-config",
    version,
    after_help = "Boot order: apiserver -> userdata (first boot) -> generate -> preconfigured.target -> render -> configured.target. See docs/boot-config.md."
)]
pub struct Args {
    /// API server socket.
    #[arg(short = 's', long, global = true, default_value = settings_api::paths::API_SOCKET)]
    pub socket_path: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Platform detection and the metadata service, shared by `userdata` and `generate`.
#[derive(Debug, Clone, ClapArgs)]
pub struct PlatformArgs {
    /// Platform (default: detected from berth.platform= on the kernel command line, fw_cfg
    /// opt/org.berth/platform, the DMI system vendor, fw_cfg presence; else metal).
    #[arg(long, value_enum)]
    pub platform: Option<platform::Platform>,
    /// EC2 instance metadata service (host:port).
    #[arg(long, default_value = imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,
    /// Give up on the metadata service after this many seconds (retries back off from
    /// 0.1 s to 5 s between attempts).
    #[arg(long, default_value_t = 120)]
    pub imds_timeout: u64,
    /// Host root for detection, config drives, the host name and machine id (tests).
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
}

impl PlatformArgs {
    fn detected(&self) -> platform::Detected {
        platform::choose(self.platform, &self.root)
    }

    fn retry(&self) -> imds::Retry {
        imds::Retry {
            total: Duration::from_secs(self.imds_timeout),
            ..imds::Retry::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply user data once (first boot) in one transaction; later boots do nothing.
    ///
    /// Sources, merged key by key in this order (later wins): the local file, the platform's
    /// source (aws: IMDSv2 /latest/user-data; vmware: the user-data property of ovf-env.xml
    /// on a CD-ROM (vApp ISO transport), else guestinfo.userdata; qemu: fw_cfg
    /// opt/org.berth/user-data, else a config drive; metal: a config drive labelled
    /// CIDATA/cidata or config-2), the overrides file. The outcome, with the sources that
    /// contributed, is written to the status file and served at /boot/user-data.
    Userdata {
        /// Local user data file, read first.
        #[arg(long, default_value = paths::LOCAL_USER_DATA)]
        local: PathBuf,
        /// Local overrides, read last.
        #[arg(long, default_value = paths::USER_DATA_OVERRIDES)]
        overrides: PathBuf,
        /// QEMU fw_cfg user data file (platform qemu).
        #[arg(long, alias = "source", default_value = paths::FW_CFG_USER_DATA)]
        fw_cfg: PathBuf,
        /// First-boot marker and outcome (JSON).
        #[arg(long, default_value = paths::USER_DATA_STATUS)]
        status_file: PathBuf,
        #[command(flatten)]
        platform: PlatformArgs,
    },
    /// Fill in settings derived at boot (host name, region, node IP, ...) that the user has
    /// not set; runs every boot after userdata.
    ///
    /// A key is generated only while it is unset or still holds a value this step wrote
    /// (recorded in the status file); once set by user data or apiclient it is the user's.
    Generate {
        /// Record of the generated values (JSON).
        #[arg(long, default_value = paths::GENERATED_STATUS)]
        status_file: PathBuf,
        #[command(flatten)]
        platform: PlatformArgs,
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
            local,
            overrides,
            fw_cfg,
            status_file,
            platform,
        } => {
            let sources = userdata::Sources {
                root: platform.root.clone(),
                platform: platform.detected(),
                local,
                overrides,
                fw_cfg,
                imds_endpoint: platform.imds_endpoint.clone(),
                imds_retry: platform.retry(),
                config_drive_mount: PathBuf::from(configdrive::MOUNT_POINT),
                ovf_env_mount: PathBuf::from(ovfenv::MOUNT_POINT),
                ovf_env_wait: ovfenv::DEFAULT_WAIT,
            };
            userdata::run(&args.socket_path, &sources, &status_file)
        }
        Command::Generate {
            status_file,
            platform,
        } => {
            let mut facts = generate::Facts::new(
                platform.root.clone(),
                platform.detected(),
                platform.imds_endpoint.clone(),
                platform.retry(),
            );
            generate::run(&args.socket_path, &mut facts, &status_file)
        }
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
            let units = host::systemd::DbusSystemd::connect()?;
            renderer.finish(&settings, &plan, &units, mode)?;
            Ok(())
        }
    }
}

/// Writes `value` as JSON durably (temporary file, fsync, rename, fsync of the folder).
pub(crate) fn write_json_durably(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("status file has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(value)?)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
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

pub(crate) fn get_settings(socket: &std::path::Path) -> Result<serde_json::Value> {
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
        assert!(
            matches!(a.command, Command::Userdata { ref fw_cfg, ref platform, .. }
            if fw_cfg.as_os_str() == paths::FW_CFG_USER_DATA && platform.platform.is_none())
        );
        let a = Args::try_parse_from([
            "boot-config",
            "generate",
            "--platform",
            "aws",
            "--imds-endpoint",
            "127.0.0.1:8080",
            "--imds-timeout",
            "5",
        ])
        .unwrap();
        match a.command {
            Command::Generate { platform, .. } => {
                assert_eq!(platform.platform, Some(platform::Platform::Aws));
                assert_eq!(platform.imds_endpoint, "127.0.0.1:8080");
                assert_eq!(platform.retry().total, Duration::from_secs(5));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Args::try_parse_from(["boot-config", "generate", "--platform", "mars"]).is_err());
        assert!(Args::try_parse_from(["boot-config"]).is_err());
    }
}
