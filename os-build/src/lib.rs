//! os-build: turns a variant (data under `variants/`) into a bootable, verity-protected
//! A/B disk image. The stages, in order, each in its own module:
//! variant -> external artifacts -> programs (cargo) -> rootfs (mmdebstrap, lock, prune,
//! SELinux policy) -> erofs -> verity ->
//! initramfs -> uki -> esp -> disk -> manifest. `pipeline` runs them.

pub mod arch;
pub mod artifacts;
pub mod bench;
pub mod binaries;
pub mod cli;
pub mod cpio;
pub mod disk;
pub mod elfdeps;
pub mod erofs;
pub mod esp;
pub mod hosttools;
pub mod initramfs;
pub mod lockfile;
pub mod logging;
pub mod manifest;
pub mod ova;
pub mod pause;
pub mod pipeline;
pub mod programs;
pub mod progress;
pub mod repo;
pub mod rootcache;
pub mod rootfs;
pub mod secureboot;
pub mod selinux;
pub mod uki;
pub mod variant;
pub mod verity;

use anyhow::Result;

pub fn run(cli: cli::Cli) -> Result<()> {
    match cli.command {
        cli::Command::Build(args) => pipeline::build(&args).map(|_| ()),
        cli::Command::Programs(args) => {
            let workspace = pipeline::find_workspace(args.workspace.as_deref())?;
            if arch::Arch::host() != Some(args.arch) {
                hosttools::check(hosttools::CROSS_TOOLS)?;
            }
            let dir = binaries::build(&workspace, args.arch, &programs::all())?;
            println!("{}", dir.display());
            Ok(())
        }
        cli::Command::ListVariants => {
            let workspace = pipeline::find_workspace(None)?;
            for name in variant::list(&workspace.join("variants")) {
                println!("{name}");
            }
            Ok(())
        }
        cli::Command::BenchVerity(args) => bench::verity(&args),
        cli::Command::Repo(cmd) => repo::run(&cmd),
        cli::Command::SecureBoot(cli::SecureBootCommand::Keygen(args)) => {
            secureboot::keygen(&args.out, &args.common_name, args.days)?;
            println!("{}", args.out.display());
            Ok(())
        }
    }
}
