//! Command-line interface of `os-build`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::arch::Arch;

#[derive(Debug, Parser)]
#[command(
    name = "os-build",
    version,
    about = "Builds Berth disk images from a variant"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a variant: root file system, verity, UKIs, GPT disk (raw, qcow2), manifest.
    Build(BuildArgs),
    /// Build every Berth program an image can hold for one architecture (what `build` does
    /// first), so that several builds after it find them built.
    Programs(ProgramsArgs),
    /// List the variants under variants/.
    ListVariants,
    /// Compare os-build's dm-verity hashing with `veritysetup format` on the same image.
    BenchVerity(BenchVerityArgs),
    /// Build and maintain the signed update repository (TUF): keys, images, root rotation.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Secure Boot keys: PK, KEK and db (docs/secure-boot.md).
    #[command(subcommand)]
    SecureBoot(SecureBootCommand),
}

#[derive(Debug, Subcommand)]
pub enum SecureBootCommand {
    /// Make PK, KEK and db key pairs with X.509 certificates (RSA 2048, sha256), their EFI
    /// signature lists and signed enrolment updates (PK.auth, KEK.auth, db.auth) in a new
    /// folder. Private keys are written mode 0600; existing keys are never overwritten.
    Keygen(SecureBootKeygenArgs),
}

#[derive(Debug, Args)]
pub struct SecureBootKeygenArgs {
    /// Folder for the keys (created; must not hold keys yet).
    #[arg(long)]
    pub out: PathBuf,
    /// Common name prefix of the certificates (`<NAME> PK`, `<NAME> KEK`, `<NAME> db`).
    #[arg(long, default_value = "Berth")]
    pub common_name: String,
    /// Validity of the certificates, in days.
    #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Generate an ed25519 key: OUT.pk8 (private, pkcs8, mode 0600) and OUT.pub.json.
    Keygen(KeygenArgs),
    /// Create a repository: 1.root.json with the role keys and thresholds, then signed
    /// targets, snapshot and timestamp holding an empty manifest.
    Init(InitArgs),
    /// Add builds (their compressed slot images and manifest entries) and re-sign targets,
    /// snapshot and timestamp. With no --build, only re-signs (e.g. after rotate-root).
    Add(AddArgs),
    /// Write the next root version with new role keys, signed by the old and the new root keys.
    RotateRoot(RotateRootArgs),
    /// Re-sign snapshot and timestamp with new versions and expiries (targets unchanged).
    Refresh(RefreshArgs),
}

fn duration(s: &str) -> Result<jiff::SignedDuration, String> {
    crate::repo::parse_duration(s)
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Path of the key without extension, e.g. keys/root.
    #[arg(long)]
    pub out: PathBuf,
}

/// Expiry of the roles `add` and `init` sign (durations like 7d, 12h, 30m, 45s).
#[derive(Debug, Args, Clone)]
pub struct ExpiryArgs {
    /// How long targets.json stays valid.
    #[arg(long, value_parser = duration, default_value = "90d")]
    pub targets_expires: jiff::SignedDuration,
    /// How long snapshot.json stays valid.
    #[arg(long, value_parser = duration, default_value = "30d")]
    pub snapshot_expires: jiff::SignedDuration,
    /// How long timestamp.json stays valid.
    #[arg(long, value_parser = duration, default_value = "7d")]
    pub timestamp_expires: jiff::SignedDuration,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Repository folder (gets metadata/ and targets/).
    #[arg(long)]
    pub repo: PathBuf,
    /// Root key files (.pk8), one flag per key.
    #[arg(long, required = true)]
    pub root_key: Vec<PathBuf>,
    #[arg(long, required = true)]
    pub targets_key: Vec<PathBuf>,
    #[arg(long, required = true)]
    pub snapshot_key: Vec<PathBuf>,
    #[arg(long, required = true)]
    pub timestamp_key: Vec<PathBuf>,
    /// Signatures needed for root.json.
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u64,
    #[arg(long, default_value_t = 1)]
    pub targets_threshold: u64,
    #[arg(long, default_value_t = 1)]
    pub snapshot_threshold: u64,
    #[arg(long, default_value_t = 1)]
    pub timestamp_threshold: u64,
    /// How long 1.root.json stays valid.
    #[arg(long, value_parser = duration, default_value = "365d")]
    pub root_expires: jiff::SignedDuration,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Repository folder made by `repo init`.
    #[arg(long)]
    pub repo: PathBuf,
    /// Signing keys (.pk8) for targets, snapshot and timestamp, one flag per key.
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    /// An os-build output folder (build/VARIANT/ARCH, holding manifest.json); repeatable.
    #[arg(long)]
    pub build: Vec<PathBuf>,
    /// A wave bound for the added builds, SEED=DELAY: the host with seed SEED (0..2048) gets
    /// its turn DELAY after now; hosts between two bounds get theirs spread evenly between the
    /// two times, hosts below the first bound at once, hosts above the last bound at its time.
    /// Repeatable; none means every host at once.
    #[arg(long)]
    pub wave: Vec<crate::repo::WaveArg>,
    /// Highest version hosts may take, set on every version of the added builds' variant and
    /// arch (default: each added build's own version).
    #[arg(long)]
    pub max_version: Option<semver::Version>,
    /// Raise the anti-rollback floor with the added builds: once a host runs one of them
    /// healthy, it never installs, boots or rolls back to a version below VERSION (at most
    /// each build's own version; docs/updates.md#rollback-floor).
    #[arg(long, value_name = "VERSION")]
    pub rollback_floor: Option<semver::Version>,
    /// Datastore migrations between two versions: FROM:TO:NAME[,NAME...]; repeatable.
    #[arg(long, value_parser = crate::repo::parse_migration)]
    pub migration: Vec<updater::manifest::Migration>,
    /// Publish a build whose variant, arch and version the repository already offers, in place
    /// of the old one (otherwise refused).
    #[arg(long)]
    pub replace: bool,
    /// Certificate (PEM) of a db key the repository's hosts trust; the UKIs of every added
    /// build must carry a valid Secure Boot signature from one of these. Repeatable.
    #[arg(long, env = "BERTH_SECURE_BOOT_DB", value_delimiter = ',')]
    pub secure_boot_db: Vec<PathBuf>,
    /// Add builds whose UKIs are not signed (a development repository: hosts with Secure
    /// Boot on refuse them).
    #[arg(long)]
    pub allow_unsigned: bool,
    /// zstd level of the images (1-19).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: i32,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
}

#[derive(Debug, Args)]
pub struct RotateRootArgs {
    #[arg(long)]
    pub repo: PathBuf,
    /// Keys of the current root role (they sign the new root too).
    #[arg(long, required = true)]
    pub old_key: Vec<PathBuf>,
    /// New root keys (default: keep the current ones).
    #[arg(long)]
    pub root_key: Vec<PathBuf>,
    /// New targets keys (default: keep).
    #[arg(long)]
    pub targets_key: Vec<PathBuf>,
    /// New snapshot keys (default: keep).
    #[arg(long)]
    pub snapshot_key: Vec<PathBuf>,
    /// New timestamp keys (default: keep).
    #[arg(long)]
    pub timestamp_key: Vec<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub root_threshold: u64,
    #[arg(long, default_value_t = 1)]
    pub targets_threshold: u64,
    #[arg(long, default_value_t = 1)]
    pub snapshot_threshold: u64,
    #[arg(long, default_value_t = 1)]
    pub timestamp_threshold: u64,
    /// How long the new root.json stays valid.
    #[arg(long, value_parser = duration, default_value = "365d")]
    pub root_expires: jiff::SignedDuration,
}

#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[arg(long)]
    pub repo: PathBuf,
    /// Snapshot and timestamp keys (.pk8).
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
    #[arg(long, value_parser = duration, default_value = "30d")]
    pub snapshot_expires: jiff::SignedDuration,
    #[arg(long, value_parser = duration, default_value = "7d")]
    pub timestamp_expires: jiff::SignedDuration,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Variant to build (a folder of variants/ holding variant.toml).
    #[arg(long, default_value = "qemu")]
    pub variant: String,
    /// Target architecture.
    #[arg(long, value_enum, default_value = "x86_64")]
    pub arch: Arch,
    /// Image version (goes into os-release, the UKI names and the manifest).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
    /// Output folder; the image lands in `<out>/<variant>/<arch>/`.
    #[arg(long, default_value = "build")]
    pub out: PathBuf,
    /// Cache of downloaded Debian packages, kept between builds.
    #[arg(long, default_value = "/var/cache/berth/debs")]
    pub cache_dir: PathBuf,
    /// Debian mirror (a snapshot.debian.org URL makes builds repeatable over time).
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    pub mirror: String,
    /// Refuse to build unless the packages equal `variants/<variant>/<arch>.lock`.
    #[arg(long)]
    pub locked: bool,
    /// The update repository's trusted root.json (from `os-build repo init`), installed as
    /// /usr/share/berth/updates/root.json for the updater. Without it the image cannot update.
    #[arg(long)]
    pub update_root: Option<PathBuf>,
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
    /// Workspace root (holds variants/ and Cargo.toml); found from the current folder.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Cache of external artifacts (kubelet, ...): `<dir>/<arch>/<name>`, checked against
    /// the variant's sha256; what is not there is downloaded into it.
    #[arg(long, default_value = "/var/cache/berth/artifacts")]
    pub artifacts_dir: PathBuf,
    /// Build even when external artifacts are missing; the image lists them in
    /// /usr/share/berth/missing-artifacts.json (and `/os`), the manifest too.
    #[arg(long)]
    pub allow_missing_artifacts: bool,
    /// Sign systemd-boot and the UKIs with the db key of this folder (made by `os-build
    /// secure-boot keygen`), and write the firmware variables beside the disk
    /// (uefi-vars.fd for QEMU, uefi-vars.aws for EC2, PK/KEK/db.auth for enrolment).
    #[arg(long, env = "BERTH_SECURE_BOOT_KEYS")]
    pub secure_boot_keys: Option<PathBuf>,
    /// Build a production variant without --secure-boot-keys (the image cannot boot with
    /// Secure Boot on; manifest.json says "secure_boot": "unsigned").
    #[arg(long, conflicts_with = "secure_boot_keys")]
    pub allow_unsigned: bool,
    /// Keep each Debian root mmdebstrap makes in this folder, and start from a kept one when
    /// a build asks for the same packages (same arch, mirror and options) instead of running
    /// mmdebstrap again. For builds that belong together, e.g. one test run: a kept root
    /// keeps the package versions of the day it was made.
    #[arg(long)]
    pub root_cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProgramsArgs {
    /// Target architecture.
    #[arg(long, value_enum, default_value = "x86_64")]
    pub arch: Arch,
    /// Workspace root (holds variants/ and Cargo.toml); found from the current folder.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchVerityArgs {
    /// Data image to hash (for example build/qemu/x86_64/root.erofs).
    pub image: PathBuf,
    /// Runs of each implementation; the table shows the best and the median.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_defaults() {
        let cli = Cli::try_parse_from(["os-build", "build"]).unwrap();
        let Command::Build(args) = cli.command else {
            panic!("not build")
        };
        assert_eq!(args.variant, "qemu");
        assert_eq!(args.arch, Arch::X86_64);
        assert!(!args.locked);
        assert_eq!(
            args.artifacts_dir,
            PathBuf::from("/var/cache/berth/artifacts")
        );
        assert!(!args.allow_missing_artifacts);
        assert_eq!(args.root_cache, None);
    }

    #[test]
    fn build_artifact_flags() {
        let cli = Cli::try_parse_from([
            "os-build",
            "build",
            "--artifacts-dir",
            "/tmp/a",
            "--allow-missing-artifacts",
        ])
        .unwrap();
        let Command::Build(args) = cli.command else {
            panic!("not build")
        };
        assert_eq!(args.artifacts_dir, PathBuf::from("/tmp/a"));
        assert!(args.allow_missing_artifacts);
    }

    #[test]
    fn build_arch_and_flags() {
        let cli = Cli::try_parse_from([
            "os-build",
            "build",
            "--variant",
            "qemu-dev",
            "--arch",
            "aarch64",
            "--locked",
            "--version",
            "2.0.0",
        ])
        .unwrap();
        let Command::Build(args) = cli.command else {
            panic!("not build")
        };
        assert_eq!(args.arch, Arch::Aarch64);
        assert_eq!(args.version, "2.0.0");
        assert!(args.locked);
    }

    #[test]
    fn secure_boot_flags() {
        let cli = Cli::try_parse_from(["os-build", "build", "--secure-boot-keys", "k"]).unwrap();
        let Command::Build(args) = cli.command else {
            panic!("not build")
        };
        assert_eq!(args.secure_boot_keys, Some(PathBuf::from("k")));
        assert!(!args.allow_unsigned);
        let err = Cli::try_parse_from([
            "os-build",
            "build",
            "--secure-boot-keys",
            "k",
            "--allow-unsigned",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--allow-unsigned"), "{err}");
        let cli =
            Cli::try_parse_from(["os-build", "secure-boot", "keygen", "--out", "keys"]).unwrap();
        let Command::SecureBoot(SecureBootCommand::Keygen(args)) = cli.command else {
            panic!("not keygen")
        };
        assert_eq!((args.common_name.as_str(), args.days), ("Berth", 3650));
        assert!(Cli::try_parse_from([
            "os-build",
            "secure-boot",
            "keygen",
            "--out",
            "k",
            "--days",
            "0"
        ])
        .is_err());
    }

    #[test]
    fn programs_takes_an_arch() {
        let cli = Cli::try_parse_from(["os-build", "programs", "--arch", "aarch64"]).unwrap();
        let Command::Programs(args) = cli.command else {
            panic!("not programs")
        };
        assert_eq!(args.arch, Arch::Aarch64);
    }

    #[test]
    fn bad_arch_is_rejected() {
        let err = Cli::try_parse_from(["os-build", "build", "--arch", "riscv64"]).unwrap_err();
        assert!(err.to_string().contains("riscv64"));
    }
}
