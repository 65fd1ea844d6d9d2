//! Command line of `berth-updater`. Every input is a flag or its `BERTH_UPDATES_*`
//! environment variable; the settings API runs it with those variables taken from
//! `settings.updates.*` (docs/updates.md, "The API and apiclient").

use std::path::{Path, PathBuf};

use boot_contract::Slot;
use clap::{Args, Parser, Subcommand};
use semver::Version;
use url::Url;

use crate::choose::VersionLock;
use crate::host::{self, HostError};
use crate::repo::RepoSource;
use crate::Config;

#[derive(Debug, Parser)]
#[command(
    name = "berth-updater",
    version,
    about = "Checks the signed update repository and writes updates to the inactive A/B slot"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Refresh the offered versions and choose one (state idle or available).
    Check(UpdaterArgs),
    /// Download, verify and write the chosen update to the inactive slot (state staged).
    Prepare(UpdaterArgs),
    /// Install the staged slot's UKI with boot tries (state ready).
    Activate(UpdaterArgs),
    /// Remove the staged slot's UKI again (state staged).
    Deactivate(UpdaterArgs),
    /// Prepare (unless staged) and activate.
    Apply(UpdaterArgs),
    /// Run this boot's health gate: wait for the gate units, then mark the booted UKI good
    /// (or, on a trial boot that failed, reboot so the boot loader falls back); report an
    /// update the boot loader fell back from.
    HealthGate(HealthGateArgs),
    /// Boot the other slot next (rollback by hand): its UKI gets its good name and the
    /// running version's UKI is marked bad. Takes effect at the next reboot.
    Rollback {
        /// Folder holding state.json (on `private`).
        #[arg(
            long,
            env = "BERTH_UPDATES_STATE_DIR",
            default_value = "/private/updates"
        )]
        state_dir: PathBuf,
        /// Where the ESP is mounted.
        #[arg(long, env = "BERTH_UPDATES_ESP", default_value = "/boot")]
        esp: PathBuf,
    },
    /// Forget the latest time a verified check saw, when a clock that ran ahead recorded it
    /// and now blocks every check ("the system clock ... is behind"); docs/updates.md#clock.
    ResetClock {
        /// Folder holding state.json and the TUF datastore (on `private`).
        #[arg(
            long,
            env = "BERTH_UPDATES_STATE_DIR",
            default_value = "/private/updates"
        )]
        state_dir: PathBuf,
    },
    /// Print the stored state as JSON.
    Status {
        /// Folder holding state.json (on `private`).
        #[arg(
            long,
            env = "BERTH_UPDATES_STATE_DIR",
            default_value = "/private/updates"
        )]
        state_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct HealthGateArgs {
    /// Folder holding state.json (on `private`).
    #[arg(
        long,
        env = "BERTH_UPDATES_STATE_DIR",
        default_value = "/private/updates"
    )]
    pub state_dir: PathBuf,
    /// Where the ESP is mounted.
    #[arg(long, env = "BERTH_UPDATES_ESP", default_value = "/boot")]
    pub esp: PathBuf,
    /// Units that must be active for the boot to count as healthy (comma-separated or
    /// repeated). Variants add theirs with a drop-in that sets BERTH_HEALTH_GATE_UNITS.
    #[arg(
        long = "unit",
        env = "BERTH_HEALTH_GATE_UNITS",
        value_delimiter = ',',
        default_value = "configured.target,apiserver.service"
    )]
    pub units: Vec<String>,
    /// Seconds the units may take to become active.
    #[arg(long, env = "BERTH_HEALTH_GATE_TIMEOUT", default_value_t = 300)]
    pub timeout_secs: u64,
}

impl HealthGateArgs {
    pub fn gate(&self, host_root: &Path) -> crate::health::Gate {
        crate::health::Gate {
            host_root: host_root.to_path_buf(),
            state_dir: self.state_dir.clone(),
            esp: self.esp.clone(),
            units: self.units.clone(),
            timeout: std::time::Duration::from_secs(self.timeout_secs),
            poll: std::time::Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Args)]
pub struct UpdaterArgs {
    /// Base URL of the TUF metadata (http, https or file), e.g. http://host/repo/metadata/.
    #[arg(long, env = "BERTH_UPDATES_METADATA_URL")]
    pub metadata_url: Url,
    /// Base URL of the TUF targets, e.g. http://host/repo/targets/.
    #[arg(long, env = "BERTH_UPDATES_TARGETS_URL")]
    pub targets_url: Url,
    /// The trusted root.json shipped in the image.
    #[arg(
        long,
        env = "BERTH_UPDATES_TRUSTED_ROOT",
        default_value = "/usr/share/berth/updates/root.json"
    )]
    pub trusted_root: PathBuf,
    /// Folder holding state.json and the last trusted TUF metadata (on `private`).
    #[arg(
        long,
        env = "BERTH_UPDATES_STATE_DIR",
        default_value = "/private/updates"
    )]
    pub state_dir: PathBuf,
    /// Folder where verified downloads wait before they are written (on `data`).
    #[arg(
        long,
        env = "BERTH_UPDATES_STAGING_DIR",
        default_value = "/local/updates"
    )]
    pub staging_dir: PathBuf,
    /// This host's variant (default: VARIANT_ID of /usr/lib/os-release).
    #[arg(long, env = "BERTH_UPDATES_VARIANT")]
    pub variant: Option<String>,
    /// This host's architecture (x86_64 or aarch64).
    #[arg(long, env = "BERTH_UPDATES_ARCH", default_value = std::env::consts::ARCH)]
    pub arch: String,
    /// The running version (default: VERSION_ID of /usr/lib/os-release).
    #[arg(long, env = "BERTH_UPDATES_RUNNING_VERSION")]
    pub running_version: Option<Version>,
    /// `latest` or an exact version.
    #[arg(long, env = "BERTH_UPDATES_VERSION_LOCK", default_value = "latest")]
    pub version_lock: VersionLock,
    /// Allow a version-lock older than the running version.
    #[arg(long, env = "BERTH_UPDATES_ALLOW_DOWNGRADE")]
    pub allow_downgrade: bool,
    /// Take an update before this host's wave comes.
    #[arg(long, env = "BERTH_UPDATES_IGNORE_WAVES")]
    pub ignore_waves: bool,
    /// This host's wave seed (0..2048).
    #[arg(long, env = "BERTH_UPDATES_SEED")]
    pub seed: u32,
    /// The inactive slot, the one to write (default: the other one than `berth.slot=` on
    /// /proc/cmdline).
    #[arg(long, env = "BERTH_UPDATES_SLOT")]
    pub slot: Option<Slot>,
    /// The inactive slot's root partition (default: the partition named root-SLOT on the disk
    /// that holds the running root).
    #[arg(long)]
    pub root_partition: Option<PathBuf>,
    /// The inactive slot's verity partition (default: the partition named verity-SLOT on the
    /// disk that holds the running root).
    #[arg(long)]
    pub verity_partition: Option<PathBuf>,
    /// Where the ESP is mounted.
    #[arg(long, env = "BERTH_UPDATES_ESP", default_value = "/boot")]
    pub esp: PathBuf,
    /// efivarfs: the firmware's Secure Boot state and db, which a new UKI's signature must
    /// match when Secure Boot is on.
    #[arg(long, default_value = crate::secureboot::EFIVARS_DIR)]
    pub efivars: PathBuf,
    /// The db certificates the image ships (an EFI signature list), which a new UKI's
    /// signature must match when Secure Boot is off.
    #[arg(long, default_value = crate::secureboot::IMAGE_DB)]
    pub image_db: PathBuf,
}

impl UpdaterArgs {
    /// The configuration, with what was not given read from the host under `host_root`
    /// (`/` on a host).
    pub fn config(&self, host_root: &Path) -> Result<Config, HostError> {
        let slot = match self.slot {
            Some(slot) => slot,
            None => host::inactive_slot(host_root)?,
        };
        let variant = match &self.variant {
            Some(v) => v.clone(),
            None => host::variant(host_root)?,
        };
        let running = match &self.running_version {
            Some(v) => v.clone(),
            None => host::version(host_root)?,
        };
        Ok(Config {
            source: RepoSource {
                metadata_url: self.metadata_url.clone(),
                targets_url: self.targets_url.clone(),
                trusted_root: self.trusted_root.clone(),
                datastore: crate::repo::datastore_dir(&self.state_dir),
                patience: crate::download::Patience::default(),
            },
            state_dir: self.state_dir.clone(),
            staging_dir: self.staging_dir.clone(),
            variant,
            arch: self.arch.clone(),
            running,
            version_lock: self.version_lock.clone(),
            allow_downgrade: self.allow_downgrade,
            ignore_waves: self.ignore_waves,
            seed: self.seed,
            slot,
            partitions: crate::SlotPartitions {
                root: self.root_partition.clone(),
                verity: self.verity_partition.clone(),
                host_root: host_root.to_path_buf(),
            },
            esp: self.esp.clone(),
            trust: crate::uki::Trust {
                efivars: self.efivars.clone(),
                image_db: self.image_db.clone(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: [&str; 12] = [
        "berth-updater",
        "check",
        "--metadata-url",
        "http://127.0.0.1:8080/metadata/",
        "--targets-url",
        "http://127.0.0.1:8080/targets/",
        "--seed=42",
        "--variant",
        "qemu",
        "--running-version",
        "1.0.0",
        "--slot=b",
    ];

    #[test]
    fn default_partitions_are_on_the_disk_of_the_running_root() {
        let cli = Cli::try_parse_from(BASE).unwrap();
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        // Found when needed: a check works on a host whose disks cannot be read.
        let cfg = args.config(Path::new("/nonexistent")).unwrap();
        assert!(cfg.partitions.resolve(Slot::B).is_err());
        // vdb is a clone of the boot disk, with the same partition names.
        let host = tempfile::tempdir().unwrap();
        crate::host::tests::fake_disks(host.path(), None, Path::new("/boot"));
        let cfg = args.config(host.path()).unwrap();
        assert_eq!(
            cfg.partitions.resolve(Slot::B).unwrap(),
            (PathBuf::from("/dev/vda4"), PathBuf::from("/dev/vda5"))
        );
        assert_eq!(cfg.version_lock, VersionLock::Latest);
        assert_eq!(cfg.source.datastore, PathBuf::from("/private/updates/tuf"));
    }

    #[test]
    fn missing_facts_come_from_the_host() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("usr/lib/os-release"),
            "VERSION_ID=0.3.0\nVARIANT_ID=qemu\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("proc/cmdline"), "berth.slot=b quiet\n").unwrap();
        let cli = Cli::try_parse_from(&BASE[..7]).unwrap();
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        let cfg = args.config(dir.path()).unwrap();
        assert_eq!(cfg.slot, Slot::A);
        assert_eq!(cfg.variant, "qemu");
        assert_eq!(cfg.running, Version::new(0, 3, 0));
        // Without a host to read, the missing flag is named.
        let err = args
            .config(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("proc/cmdline"), "{err}");
    }

    #[test]
    fn health_gate_units_default_and_accept_a_list() {
        let cli = Cli::try_parse_from(["berth-updater", "health-gate"]).unwrap();
        let Command::HealthGate(args) = cli.command else {
            panic!("not health-gate")
        };
        assert_eq!(args.units, ["configured.target", "apiserver.service"]);
        assert_eq!(args.esp, PathBuf::from("/boot"));
        let cli = Cli::try_parse_from([
            "berth-updater",
            "health-gate",
            "--unit",
            "configured.target,kubelet.service",
            "--timeout-secs=5",
        ])
        .unwrap();
        let Command::HealthGate(args) = cli.command else {
            panic!("not health-gate")
        };
        assert_eq!(args.units, ["configured.target", "kubelet.service"]);
        assert_eq!(args.gate(Path::new("/")).timeout.as_secs(), 5);
    }

    #[test]
    fn bad_version_lock_and_slot_are_refused() {
        let mut args: Vec<&str> = BASE.to_vec();
        args.extend(["--version-lock", "one"]);
        let err = Cli::try_parse_from(&args).unwrap_err().to_string();
        assert!(err.contains("--version-lock"), "{err}");
        let mut args: Vec<&str> = BASE[..11].to_vec();
        args.push("--slot=c");
        let err = Cli::try_parse_from(&args).unwrap_err().to_string();
        assert!(err.contains("--slot"), "{err}");
    }
}
