//! Finding the images `os-build` made: `<build dir>/<variant>/<arch>/{manifest.json,
//! disk.qcow2, disk.raw}`, the build dir being `$BERTH_BUILD_DIR` or `<repo>/build`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{paths, Arch};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {path} not found; build it with scripts/test.sh or \
         `cargo run -p os-build -- build --variant {variant} --arch {arch}`"
    )]
    Missing {
        path: PathBuf,
        variant: String,
        arch: Arch,
    },
    #[error("read the image manifest {path}")]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse the image manifest {path}")]
    ParseManifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("image manifest {path} says {field} is {found}, expected {expected}")]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        expected: String,
        found: String,
    },
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    pub variant: String,
    pub arch: Arch,
    /// `<build dir>/<variant>/<arch>`.
    pub dir: PathBuf,
    /// The qcow2 disk image.
    pub qcow2: PathBuf,
    /// `manifest.json` as written by os-build (version, variant, arch, root_hash,
    /// partitions, artifacts).
    pub manifest: Value,
}

/// The repository root (the workspace holding this crate).
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// `$BERTH_BUILD_DIR`, or `<repo>/build`.
pub fn build_dir() -> PathBuf {
    match std::env::var_os(paths::BUILD_DIR_VAR) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("build"),
    }
}

impl Image {
    /// Finds the image of `variant` for `arch` in [`build_dir`].
    pub fn locate(variant: &str, arch: Arch) -> Result<Self, ImageError> {
        Self::locate_in(&build_dir(), variant, arch)
    }

    /// Finds the image of `variant` for `arch` under `build_dir`.
    pub fn locate_in(build_dir: &Path, variant: &str, arch: Arch) -> Result<Self, ImageError> {
        let dir = build_dir.join(variant).join(arch.as_str());
        let missing = |path: PathBuf| ImageError::Missing {
            path,
            variant: variant.to_owned(),
            arch,
        };
        let manifest_path = dir.join("manifest.json");
        let qcow2 = dir.join("disk.qcow2");
        for path in [&manifest_path, &qcow2] {
            if !path.is_file() {
                return Err(missing(path.clone()));
            }
        }
        let text =
            fs::read_to_string(&manifest_path).map_err(|source| ImageError::ReadManifest {
                path: manifest_path.clone(),
                source,
            })?;
        let manifest: Value =
            serde_json::from_str(&text).map_err(|source| ImageError::ParseManifest {
                path: manifest_path.clone(),
                source,
            })?;
        for (field, expected) in [("arch", arch.as_str()), ("variant", variant)] {
            if let Some(found) = manifest.get(field).and_then(Value::as_str) {
                if found != expected {
                    return Err(ImageError::Mismatch {
                        path: manifest_path,
                        field,
                        expected: expected.to_owned(),
                        found: found.to_owned(),
                    });
                }
            }
        }
        Ok(Image {
            variant: variant.to_owned(),
            arch,
            dir,
            qcow2,
            manifest,
        })
    }

    /// The raw disk image (`disk.raw`), for tests that edit bytes of a copy.
    pub fn raw(&self) -> Result<PathBuf, ImageError> {
        let raw = self.dir.join("disk.raw");
        if raw.is_file() {
            Ok(raw)
        } else {
            Err(ImageError::Missing {
                path: raw,
                variant: self.variant.clone(),
                arch: self.arch,
            })
        }
    }

    /// The firmware variable store a signed build writes beside the disk (Berth's PK, KEK and
    /// db enrolled, Secure Boot on), if this build was signed.
    pub fn uefi_vars(&self) -> Option<PathBuf> {
        let vars = self.dir.join("uefi-vars.fd");
        vars.is_file().then_some(vars)
    }

    /// True when manifest.json says systemd-boot and the UKIs are signed.
    pub fn signed(&self) -> bool {
        self.manifest.get("secure_boot").and_then(Value::as_str) == Some("signed")
    }

    /// The image version from the manifest.
    pub fn version(&self) -> Option<&str> {
        self.manifest.get("version").and_then(Value::as_str)
    }

    /// The dm-verity root hash of slot A from the manifest.
    pub fn root_hash(&self) -> Option<&str> {
        self.manifest.get("root_hash").and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dir: &Path, manifest: &str) -> anyhow::Result<()> {
        let image = dir.join("qemu/x86_64");
        fs::create_dir_all(&image)?;
        fs::write(image.join("manifest.json"), manifest)?;
        fs::write(image.join("disk.qcow2"), b"")?;
        Ok(())
    }

    #[test]
    fn locates_an_image_and_reads_its_manifest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        build(
            dir.path(),
            r#"{"version":"0.1.0","variant":"qemu","arch":"x86_64","root_hash":"ab"}"#,
        )?;
        let image = Image::locate_in(dir.path(), "qemu", Arch::X86_64)?;
        assert_eq!(image.qcow2, dir.path().join("qemu/x86_64/disk.qcow2"));
        assert_eq!(image.version(), Some("0.1.0"));
        assert_eq!(image.root_hash(), Some("ab"));
        let err = image.raw().expect_err("no disk.raw");
        assert!(err.to_string().contains("disk.raw not found"), "{err}");
        Ok(())
    }

    #[test]
    fn missing_image_says_how_to_build_it() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let err = Image::locate_in(dir.path(), "qemu", Arch::Aarch64).expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("qemu/aarch64/manifest.json not found"),
            "{msg}"
        );
        assert!(msg.contains("scripts/test.sh"), "{msg}");
        assert!(
            msg.contains("cargo run -p os-build -- build --variant qemu --arch aarch64"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn manifest_for_another_arch_is_refused() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        build(dir.path(), r#"{"arch":"aarch64"}"#)?;
        let err = Image::locate_in(dir.path(), "qemu", Arch::X86_64).expect_err("mismatch");
        assert!(err
            .to_string()
            .ends_with("says arch is aarch64, expected x86_64"));
        Ok(())
    }
}
