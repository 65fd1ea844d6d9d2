//! Builds Berth's own programs for the image's architecture. x86_64 uses the host
//! toolchain; aarch64 cross-builds with Debian's rustc (rustc-web + libstd-rust-web-dev:arm64),
//! since no rustup target can be fetched here.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::arch::Arch;
use crate::programs::{self, Program};

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("cannot run {cargo}")]
    Spawn {
        cargo: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cargo build for {arch} failed ({status}); see the output above")]
    Build { arch: Arch, status: String },
    #[error("cargo built no {0}")]
    Missing(PathBuf),
}

/// Builds every program an image can hold ([`programs::all`]) in release mode for `arch`,
/// and checks that those of `wanted` are there; returns the directory holding the
/// binaries. Always the whole set, whatever the variant asks for: cargo resolves the
/// dependencies' features per invocation, so one set means one build per architecture that
/// every later variant finds done (`os-build programs` makes it ahead of the builds).
pub fn build(workspace: &Path, arch: Arch, wanted: &[&Program]) -> Result<PathBuf, BinariesError> {
    let host = Arch::host();
    let (cargo, target_dir) = if host == Some(arch) {
        (
            std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()),
            workspace.join("target"),
        )
    } else {
        // Debian's toolchain gets its own target dir: its artifacts are not compatible.
        (
            "/usr/bin/cargo".to_owned(),
            workspace.join("target/debian-rustc"),
        )
    };
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            arch.rust_target(),
        ]);
    let mut packages: Vec<&str> = programs::all().iter().map(|p| p.package).collect();
    packages.sort_unstable();
    packages.dedup();
    for package in packages {
        cmd.args(["-p", package]);
    }
    if host != Some(arch) {
        cmd.env("RUSTC", "/usr/bin/rustc")
            .env("RUSTDOC", "/usr/bin/rustdoc")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env(
                format!(
                    "CARGO_TARGET_{}_LINKER",
                    arch.rust_target().to_uppercase().replace('-', "_")
                ),
                format!("{}-gcc", arch.triplet()),
            );
    }
    let status = cmd.status().map_err(|source| BinariesError::Spawn {
        cargo: cargo.clone(),
        source,
    })?;
    if !status.success() {
        return Err(BinariesError::Build {
            arch,
            status: status.to_string(),
        });
    }
    let out = target_dir.join(arch.rust_target()).join("release");
    for program in wanted {
        let bin = out.join(program.name);
        if !bin.is_file() {
            return Err(BinariesError::Missing(bin));
        }
    }
    Ok(out)
}
