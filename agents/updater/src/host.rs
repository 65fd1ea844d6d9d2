//! What the updater learns from the running host when not told: the variant and version from
//! os-release, and the running slot from the kernel command line (`berth.slot=`, see
//! docs/boot.md). Reads go through a root folder so tests run on a temp dir.

use std::path::{Path, PathBuf};

use boot_contract::cmdline::{self, CmdlineError};
use boot_contract::Slot;
use semver::Version;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {key}; pass it with a flag")]
    Missing { path: PathBuf, key: &'static str },
    #[error("{path}: {key}={value:?} is not valid")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
    },
    #[error("{path}: {key} is given twice")]
    Duplicate { path: PathBuf, key: &'static str },
}

fn read(root: &Path, rel: &str) -> Result<(PathBuf, String), HostError> {
    let path = root.join(rel);
    let text = std::fs::read_to_string(&path).map_err(|e| HostError::Read {
        path: path.clone(),
        source: e,
    })?;
    Ok((path, text))
}

/// A key of an os-release file, quotes removed.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// `VARIANT_ID` of `<root>/usr/lib/os-release`.
pub fn variant(root: &Path) -> Result<String, HostError> {
    let (path, text) = read(root, "usr/lib/os-release")?;
    os_release_value(&text, "VARIANT_ID").ok_or(HostError::Missing {
        path,
        key: "VARIANT_ID",
    })
}

/// `VERSION_ID` of `<root>/usr/lib/os-release`.
pub fn version(root: &Path) -> Result<Version, HostError> {
    let (path, text) = read(root, "usr/lib/os-release")?;
    let value = os_release_value(&text, "VERSION_ID").ok_or(HostError::Missing {
        path: path.clone(),
        key: "VERSION_ID",
    })?;
    Version::parse(&value).map_err(|_| HostError::Invalid {
        path,
        key: "VERSION_ID",
        value,
    })
}

/// The slot the host runs from (`berth.slot=` of `<root>/proc/cmdline`).
pub fn running_slot(root: &Path) -> Result<Slot, HostError> {
    inactive_slot(root).map(Slot::other)
}

/// The slot the host is not running from (`berth.slot=` of `<root>/proc/cmdline`).
pub fn inactive_slot(root: &Path) -> Result<Slot, HostError> {
    let (path, text) = read(root, "proc/cmdline")?;
    match cmdline::slot(&text) {
        Ok(slot) => Ok(slot.other()),
        Err(CmdlineError::Missing(key)) => Err(HostError::Missing { path, key }),
        Err(CmdlineError::Invalid { key, value, .. }) => {
            Err(HostError::Invalid { path, key, value })
        }
        Err(CmdlineError::Duplicate(key)) => Err(HostError::Duplicate { path, key }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_from_a_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("usr/lib/os-release"),
            "NAME=Berth\nVERSION_ID=1.2.3\nVARIANT_ID=\"qemu-test\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("proc/cmdline"),
            "berth.slot=a berth.verity.root=00 console=ttyS0\n",
        )
        .unwrap();
        assert_eq!(variant(root).unwrap(), "qemu-test");
        assert_eq!(version(root).unwrap(), Version::new(1, 2, 3));
        assert_eq!(inactive_slot(root).unwrap(), Slot::B);
        std::fs::write(root.join("proc/cmdline"), "berth.slot=b\n").unwrap();
        assert_eq!(inactive_slot(root).unwrap(), Slot::A);
        std::fs::write(root.join("proc/cmdline"), "root=/dev/sda\n").unwrap();
        let err = inactive_slot(root).unwrap_err().to_string();
        assert!(err.contains("berth.slot"), "{err}");
        std::fs::write(root.join("proc/cmdline"), "berth.slot=c\n").unwrap();
        assert!(inactive_slot(root).is_err());
        std::fs::write(root.join("usr/lib/os-release"), "VERSION_ID=1.2\n").unwrap();
        let err = version(root).unwrap_err().to_string();
        assert!(err.contains("VERSION_ID=\"1.2\""), "{err}");
    }
}
