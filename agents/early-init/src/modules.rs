//! Kernel modules of the initramfs, listed in `/etc/berth/initrd.json` in load order.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("cannot read module list {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad module list {path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("module list {path} is for kernel {listed}, but kernel {running} is running")]
    KernelMismatch {
        path: PathBuf,
        listed: String,
        running: String,
    },
}

/// Contents of `/etc/berth/initrd.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InitrdConfig {
    pub kernel_version: String,
    /// Absolute paths inside the initramfs, dependencies first.
    pub modules: Vec<PathBuf>,
}

impl InitrdConfig {
    pub fn parse(path: &Path, text: &str) -> Result<Self, ModulesError> {
        serde_json::from_str(text).map_err(|source| ModulesError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads the list at `path` and checks it was made for the running kernel.
    pub fn load(path: &Path, running_kernel: &str) -> Result<Self, ModulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModulesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::parse(path, &text)?;
        if cfg.kernel_version != running_kernel {
            return Err(ModulesError::KernelMismatch {
                path: path.to_path_buf(),
                listed: cfg.kernel_version,
                running: running_kernel.to_string(),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_module_list() {
        let text = r#"{"kernel_version": "6.12.107+deb13-amd64",
            "modules": ["/usr/lib/modules/6.12.107+deb13-amd64/kernel/drivers/md/dm-mod.ko.xz",
                        "/usr/lib/modules/6.12.107+deb13-amd64/kernel/drivers/md/dm-verity.ko.xz"]}"#;
        let cfg = InitrdConfig::parse(Path::new("initrd.json"), text).expect("valid");
        assert_eq!(cfg.kernel_version, "6.12.107+deb13-amd64");
        assert_eq!(cfg.modules.len(), 2);
        assert!(cfg.modules[1].ends_with("dm-verity.ko.xz"));
    }

    #[test]
    fn bad_json_names_the_file() {
        let err = InitrdConfig::parse(Path::new("/etc/berth/initrd.json"), "{\"modules\": 3}")
            .expect_err("invalid");
        assert!(err.to_string().contains("/etc/berth/initrd.json"), "{err}");
    }

    #[test]
    fn kernel_mismatch_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("initrd.json");
        std::fs::write(&path, r#"{"kernel_version": "6.1.0", "modules": []}"#).expect("write");
        let err = InitrdConfig::load(&path, "6.12.0").expect_err("mismatch");
        assert!(matches!(err, ModulesError::KernelMismatch { .. }), "{err}");
        assert!(InitrdConfig::load(&path, "6.1.0").is_ok());
    }
}
