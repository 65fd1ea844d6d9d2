//! `berth-vm`: boots a Berth disk image in QEMU with the serial console on this terminal,
//! with the same machine, firmware and overlay handling as the tests. The image itself is
//! never written: the VM runs on a qcow2 overlay that is dropped on exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use qemu_tests::{Arch, Vm};

#[derive(Debug, Parser)]
#[command(
    name = "berth-vm",
    about = "Boot a Berth disk image in QEMU, console attached (Ctrl-A X quits)"
)]
struct Args {
    /// Guest architecture.
    #[arg(long, default_value = "x86_64", value_parser = parse_arch)]
    arch: Arch,
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// Give the guest a larger disk than the image (GiB); early-init grows `data` into it.
    #[arg(long)]
    disk_gib: Option<u64>,
    /// Pass a file as user data (fw_cfg opt/org.berth/user-data).
    #[arg(long)]
    user_data: Option<PathBuf>,
    /// Run the boot probe (fw_cfg opt/org.berth/probe).
    #[arg(long)]
    probe: bool,
    /// Firmware variable store with Secure Boot keys (default: `uefi-vars.fd` beside the
    /// image, which a signed build writes); the firmware then enforces Secure Boot.
    #[arg(long)]
    uefi_vars: Option<PathBuf>,
    /// Boot without Secure Boot even when the image folder has `uefi-vars.fd`.
    #[arg(long, conflicts_with = "uefi_vars")]
    no_secure_boot: bool,
    /// Disk image (qcow2 or raw), e.g. build/qemu/x86_64/disk.qcow2.
    image: PathBuf,
}

fn parse_arch(value: &str) -> Result<Arch, String> {
    match value {
        "x86_64" => Ok(Arch::X86_64),
        "aarch64" => Ok(Arch::Aarch64),
        other => Err(format!(
            "unknown architecture `{other}` (x86_64 or aarch64)"
        )),
    }
}

/// `--uefi-vars`, or the `uefi-vars.fd` a signed build left beside the image.
fn secure_boot_vars(args: &Args) -> Option<PathBuf> {
    if args.no_secure_boot {
        return None;
    }
    args.uefi_vars.clone().or_else(|| {
        let beside = args.image.parent()?.join("uefi-vars.fd");
        beside.is_file().then_some(beside)
    })
}

fn run(args: Args) -> Result<ExitCode> {
    let mut builder = Vm::builder(args.arch).memory_mib(args.memory);
    builder = match args.disk_gib {
        Some(gib) => builder.disk_with_size(&args.image, gib << 30),
        None => builder.disk(&args.image),
    };
    if let Some(path) = &args.user_data {
        builder = builder.fw_cfg_file("opt/org.berth/user-data", path);
    }
    if args.probe {
        builder = builder.fw_cfg_string("opt/org.berth/probe", "1");
    }
    match secure_boot_vars(&args) {
        Some(vars) => {
            eprintln!(
                "berth-vm: Secure Boot on, firmware variables from {}",
                vars.display()
            );
            builder = builder.secure_boot(vars);
        }
        None => {
            eprintln!("berth-vm: Secure Boot off");
            builder = builder.without_secure_boot();
        }
    }
    let status = builder
        .run_attached()
        .with_context(|| format!("cannot boot {}", args.image.display()))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("berth-vm: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_arch_and_image() {
        let args = Args::try_parse_from(["berth-vm", "--arch", "aarch64", "disk.qcow2"]).unwrap();
        assert_eq!(args.arch, Arch::Aarch64);
        assert_eq!(args.image, PathBuf::from("disk.qcow2"));
        assert!(Args::try_parse_from(["berth-vm", "--arch", "mips", "d"]).is_err());
        assert!(Args::try_parse_from(["berth-vm"]).is_err());
    }

    #[test]
    fn secure_boot_follows_the_image_folder() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        let args = Args::try_parse_from(["berth-vm", image.to_str().unwrap()]).unwrap();
        assert_eq!(secure_boot_vars(&args), None);
        std::fs::write(dir.path().join("uefi-vars.fd"), b"vars").unwrap();
        assert_eq!(
            secure_boot_vars(&args),
            Some(dir.path().join("uefi-vars.fd"))
        );
        let args = Args::try_parse_from(["berth-vm", "--no-secure-boot", image.to_str().unwrap()])
            .unwrap();
        assert_eq!(secure_boot_vars(&args), None);
    }
}
