//! The package lock: every Debian package in a root, with version and the sha256 of the
//! .deb it came from. `os-build build` writes it; `--locked` refuses a root that differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write lock file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid lock file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no lock file {path}: build once without --locked to create it")]
    Absent { path: PathBuf },
    #[error("the root differs from {path}:\n{differences}\nbuild without --locked to update the lock, or pin the mirror (--mirror) to a snapshot")]
    Mismatch { path: PathBuf, differences: String },
    #[error("package {name} {version} is installed but its .deb is not in {cache}")]
    NoDeb {
        name: String,
        version: String,
        cache: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub suite: String,
    pub arch: String,
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
}

/// Installed packages (name -> (version, arch)) from a dpkg status file.
pub fn installed(status_file: &Path) -> Result<BTreeMap<String, (String, String)>, LockError> {
    let text = std::fs::read_to_string(status_file).map_err(|source| LockError::Read {
        path: status_file.to_owned(),
        source,
    })?;
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |key: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        };
        let (Some(name), Some(version), Some(status)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if status.ends_with(" installed") {
            out.insert(name, (version, field("Architecture").unwrap_or_default()));
        }
    }
    Ok(out)
}

/// apt's file name for a package version: the epoch colon is escaped.
fn deb_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// Builds the lock of a root from its dpkg status and the .debs in `cache`.
pub fn from_root(root: &Path, cache: &Path, suite: &str, arch: &str) -> Result<Lock, LockError> {
    let mut packages = Vec::new();
    for (name, (version, pkg_arch)) in installed(&root.join("var/lib/dpkg/status"))? {
        let deb = cache.join(deb_name(&name, &version, &pkg_arch));
        let bytes = std::fs::read(&deb).map_err(|_| LockError::NoDeb {
            name: name.clone(),
            version: version.clone(),
            cache: cache.to_owned(),
        })?;
        packages.push(LockedPackage {
            name,
            version,
            arch: pkg_arch,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
    }
    Ok(Lock {
        suite: suite.to_owned(),
        arch: arch.to_owned(),
        packages,
    })
}

pub fn read(path: &Path) -> Result<Lock, LockError> {
    if !path.exists() {
        return Err(LockError::Absent {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LockError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| LockError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

pub fn write(path: &Path, lock: &Lock) -> Result<(), LockError> {
    let text = format!(
        "# Written by os-build: the Debian packages of this variant's root, with the sha256 of\n\
         # each .deb. `os-build build --locked` refuses a root that differs.\n{}",
        toml::to_string(lock).expect("lock serializes")
    );
    let tmp = path.with_extension("lock.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| LockError::Write {
            path: path.to_owned(),
            source,
        })
}

/// Differences between the lock on disk and a freshly built one, one per line.
pub fn check(path: &Path, expected: &Lock, actual: &Lock) -> Result<(), LockError> {
    let index = |lock: &Lock| -> BTreeMap<String, LockedPackage> {
        lock.packages
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect()
    };
    let (want, got) = (index(expected), index(actual));
    let mut lines = Vec::new();
    for (name, w) in &want {
        match got.get(name) {
            None => lines.push(format!("  missing {name} {}", w.version)),
            Some(g) if g.version != w.version => lines.push(format!(
                "  {name}: locked {} but got {}",
                w.version, g.version
            )),
            Some(g) if g.sha256 != w.sha256 => lines.push(format!(
                "  {name} {}: sha256 differs (locked {}, got {})",
                g.version, w.sha256, g.sha256
            )),
            Some(_) => {}
        }
    }
    for (name, g) in &got {
        if !want.contains_key(name) {
            lines.push(format!("  unexpected {name} {}", g.version));
        }
    }
    if lines.is_empty() {
        Ok(())
    } else {
        Err(LockError::Mismatch {
            path: path.to_owned(),
            differences: lines.join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(dir: &Path, pkgs: &[(&str, &str)]) -> PathBuf {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let mut status = String::new();
        for (name, version) in pkgs {
            status.push_str(&format!(
                "Package: {name}\nStatus: install ok installed\nArchitecture: amd64\nVersion: {version}\n\n"
            ));
            std::fs::write(
                cache.join(deb_name(name, version, "amd64")),
                format!("{name}{version}"),
            )
            .unwrap();
        }
        status.push_str("Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n");
        std::fs::write(root.join("var/lib/dpkg/status"), status).unwrap();
        root
    }

    #[test]
    fn lock_roundtrip_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let root = root_with(dir.path(), &[("systemd", "257.9-1"), ("libc6", "2.41-12")]);
        let lock = from_root(&root, &dir.path().join("cache"), "trixie", "amd64").unwrap();
        assert_eq!(lock.packages.len(), 2);
        let path = dir.path().join("x.lock");
        write(&path, &lock).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, lock);
        check(&path, &back, &lock).unwrap();

        let mut changed = lock.clone();
        changed.packages[0].version = "2.42-1".into();
        changed.packages.push(LockedPackage {
            name: "bash".into(),
            version: "5".into(),
            arch: "amd64".into(),
            sha256: "00".into(),
        });
        let err = check(&path, &lock, &changed).unwrap_err().to_string();
        assert!(
            err.contains("libc6: locked 2.41-12 but got 2.42-1"),
            "{err}"
        );
        assert!(err.contains("unexpected bash 5"), "{err}");
    }

    #[test]
    fn epoch_is_escaped_and_missing_deb_is_named() {
        assert_eq!(
            deb_name("e2fsprogs", "1:1.47-1", "amd64"),
            "e2fsprogs_1%3a1.47-1_amd64.deb"
        );
        let dir = tempfile::tempdir().unwrap();
        let root = root_with(dir.path(), &[("a", "1")]);
        let err = from_root(&root, &dir.path().join("elsewhere"), "trixie", "amd64").unwrap_err();
        assert!(err.to_string().contains("package a 1"), "{err}");
        assert!(matches!(
            read(&dir.path().join("none.lock")),
            Err(LockError::Absent { .. })
        ));
    }
}
