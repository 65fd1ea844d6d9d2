//! Command-line arguments of `apiserver` and `apiclient`.

use crate::paths;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Berth settings API server.
#[derive(Debug, Parser)]
#[command(name = "apiserver", version)]
pub struct ServerArgs {
    /// Unix socket to listen on (created with mode 0660).
    #[arg(long, default_value = paths::API_SOCKET)]
    pub socket_path: PathBuf,
    /// Root directory of the settings datastore.
    #[arg(long, default_value = paths::DATASTORE)]
    pub datastore_path: PathBuf,
    /// Directory of the variant's default settings (`*.toml`, merged in lexical order).
    #[arg(long)]
    pub defaults_dir: Option<PathBuf>,
    /// Service metadata file (setting prefixes, services, configuration files).
    #[arg(long)]
    pub metadata_file: Option<PathBuf>,
    /// Group that owns the socket: a gid or a name from /etc/group (`api` on a host).
    #[arg(long)]
    pub socket_gid: Option<String>,
    /// Configuration renderer run after each apply as `PROGRAM render --services a,b`
    /// (`/usr/bin/boot-config` on a host); without it, applies are only logged.
    #[arg(long)]
    pub apply_command: Option<PathBuf>,
    /// What `POST /actions/reboot` does: `systemd` starts reboot.target over D-Bus, `log` only
    /// logs (tests); without it the action answers 501.
    #[arg(long, value_enum)]
    pub reboot: Option<crate::reboot::RebootMethod>,
    /// boot-config's first-boot user data status (JSON), served at /boot/user-data.
    #[arg(long)]
    pub user_data_status: Option<PathBuf>,
    /// os-release file served at /os.
    #[arg(long, default_value = paths::OS_RELEASE)]
    pub os_release: PathBuf,
    /// os-build's list of external artifacts the image lacks, served in /os when present.
    #[arg(long, default_value = paths::MISSING_ARTIFACTS)]
    pub missing_artifacts: PathBuf,
    /// Root of the host tree the CIS checks of /report/cis read (tests point it at a fixture).
    #[arg(long, default_value = "/")]
    pub cis_root: PathBuf,
    /// The updater (`/usr/bin/berth-updater` on a host), run as `PROGRAM check|prepare|
    /// activate|deactivate` for the update actions and `PROGRAM status` for /updates/status,
    /// with its inputs from `settings.updates.*`; without it those routes answer 501.
    #[arg(long)]
    pub updater_command: Option<PathBuf>,
    /// The updater's state folder (state.json and its lock), passed to it as
    /// BERTH_UPDATES_STATE_DIR.
    #[arg(long, default_value = paths::UPDATES_STATE_DIR)]
    pub updates_state_dir: PathBuf,
}

/// Berth settings API client.
#[derive(Debug, Parser)]
#[command(name = "apiclient", version)]
pub struct ClientArgs {
    /// API server socket.
    #[arg(short = 's', long, global = true, default_value = paths::API_SOCKET)]
    pub socket_path: PathBuf,
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Print settings whose names start with the given prefixes (all settings when none).
    Get {
        /// Prefixes such as `settings.kubernetes` or `motd`.
        prefixes: Vec<String>,
    },
    /// Change settings, commit and apply them in a fresh transaction.
    Set {
        /// Settings as a JSON object, e.g. '{"kernel": {"sysctl": {"vm.max_map_count": "262144"}}}'.
        #[arg(short = 'j', long, conflicts_with = "settings")]
        json: Option<String>,
        /// `key=value` pairs; the `settings.` prefix is optional; quote keys with dots:
        /// 'kubernetes.node-labels."example.com/role"=worker'.
        #[arg(required_unless_present = "json")]
        settings: Vec<String>,
    },
    /// Apply TOML or JSON settings (a top-level `settings` table) from files, URLs or stdin,
    /// in one transaction.
    Apply {
        /// Files, `http://` URLs, or `-` for stdin (the default).
        #[arg(short = 'f', long = "from-file")]
        from_file: Vec<String>,
    },
    /// Send a raw request.
    Raw(RawArgs),
    /// Check for, apply or cancel an update.
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Reboot the host.
    Reboot,
    /// Print a compliance report.
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Debug, Args)]
pub struct RawArgs {
    /// Request path and query, e.g. /settings?keys=motd.
    #[arg(short = 'u', long)]
    pub uri: String,
    /// HTTP method.
    #[arg(short = 'm', long, default_value = "GET")]
    pub method: String,
    /// Request body.
    #[arg(short = 'd', long)]
    pub data: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Ask the update repository for updates (berth-updater check) and print the update
    /// status.
    Check,
    /// Write the chosen update to the inactive slot and make it the next boot (prepare, then
    /// activate), then print the update status. Each step waits for the updater; a prepare
    /// may take minutes.
    Apply {
        /// Ask the update repository for updates first.
        #[arg(long)]
        check: bool,
        /// Reboot into the update once it is activated (after printing the status).
        #[arg(long)]
        reboot: bool,
    },
    /// Make the running version the next boot again (deactivate an activated update), then
    /// print the update status.
    Cancel,
    /// Boot the other slot at the next reboot (rollback by hand; its UKI must still be on
    /// the ESP), then print the update status.
    Rollback {
        /// Reboot into the other slot at once.
        #[arg(long)]
        reboot: bool,
    },
    /// Forget the latest time a verified update check saw, then print the update status:
    /// for a host whose clock ran ahead once, so that every check now fails with "the system
    /// clock ... is behind" (docs/updates.md#clock). Fix the clock first.
    ResetClock,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Benchmark level, 1 or 2.
    #[arg(short = 'l', long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub level: Option<u8>,
    /// Output format.
    #[arg(short = 'f', long, value_parser = ["text", "json"])]
    pub format: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// CIS Bottlerocket benchmark.
    Cis(ReportArgs),
    /// CIS Kubernetes worker node benchmark.
    CisK8s(ReportArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bottlerocket_style_invocations() {
        let a = ClientArgs::try_parse_from([
            "apiclient",
            "set",
            "motd=hi",
            "kubernetes.node-labels.\"a.b/c\"=v",
        ])
        .unwrap();
        assert!(
            matches!(a.command, ClientCommand::Set { ref settings, .. } if settings.len() == 2)
        );
        assert_eq!(a.socket_path, PathBuf::from("/run/api.sock"));

        let a = ClientArgs::try_parse_from([
            "apiclient",
            "--socket-path",
            "/tmp/s",
            "set",
            "--json",
            "{}",
        ])
        .unwrap();
        assert_eq!(a.socket_path, PathBuf::from("/tmp/s"));
        assert!(ClientArgs::try_parse_from(["apiclient", "set"]).is_err());

        let a = ClientArgs::try_parse_from(["apiclient", "update", "apply", "--check", "--reboot"])
            .unwrap();
        assert!(matches!(
            a.command,
            ClientCommand::Update(UpdateCommand::Apply {
                check: true,
                reboot: true
            })
        ));

        let a =
            ClientArgs::try_parse_from(["apiclient", "report", "cis-k8s", "-l", "2", "-f", "json"])
                .unwrap();
        assert!(matches!(
            a.command,
            ClientCommand::Report(ReportCommand::CisK8s(ReportArgs { level: Some(2), .. }))
        ));
        assert!(ClientArgs::try_parse_from(["apiclient", "report", "cis", "-l", "3"]).is_err());

        let a =
            ClientArgs::try_parse_from(["apiclient", "raw", "-u", "/tx", "-m", "DELETE"]).unwrap();
        assert!(
            matches!(a.command, ClientCommand::Raw(RawArgs { ref method, .. }) if method == "DELETE")
        );
    }

    #[test]
    fn server_defaults() {
        let a = ServerArgs::try_parse_from(["apiserver"]).unwrap();
        assert_eq!(a.socket_path, PathBuf::from("/run/api.sock"));
        assert_eq!(a.datastore_path, PathBuf::from("/private/datastore"));
        assert!(a.socket_gid.is_none());
        assert_eq!(a.cis_root, PathBuf::from("/"));
        let a = ServerArgs::try_parse_from(["apiserver", "--cis-root", "/tmp/host"]).unwrap();
        assert_eq!(a.cis_root, PathBuf::from("/tmp/host"));
        let a = ServerArgs::try_parse_from(["apiserver", "--socket-gid", "api"]).unwrap();
        assert_eq!(a.socket_gid.as_deref(), Some("api"));
    }

    #[test]
    fn updater_flags() {
        // No updater by default: the update routes answer 501.
        let a = ServerArgs::try_parse_from(["apiserver"]).unwrap();
        assert!(a.updater_command.is_none());
        assert_eq!(a.updates_state_dir, PathBuf::from("/private/updates"));
        let a = ServerArgs::try_parse_from([
            "apiserver",
            "--updater-command",
            "/usr/bin/berth-updater",
            "--updates-state-dir",
            "/tmp/updates",
        ])
        .unwrap();
        assert_eq!(
            a.updater_command,
            Some(PathBuf::from("/usr/bin/berth-updater"))
        );
        assert_eq!(a.updates_state_dir, PathBuf::from("/tmp/updates"));
        assert!(ServerArgs::try_parse_from(["apiserver", "--updater-command"]).is_err());
    }
}
