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
    /// List the variants under variants/.
    ListVariants,
    /// Compare os-build's dm-verity hashing with `veritysetup format` on the same image.
    BenchVerity(BenchVerityArgs),
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
    /// Plain progress lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
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
    fn bad_arch_is_rejected() {
        let err = Cli::try_parse_from(["os-build", "build", "--arch", "riscv64"]).unwrap_err();
        assert!(err.to_string().contains("riscv64"));
    }
}
