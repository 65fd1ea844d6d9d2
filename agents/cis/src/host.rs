//! Read-only access to a host tree under a root directory.
//!
//! Every check reads through [`HostRoot`], so the same checks run against `/` on a host and
//! against a fixture tree in tests. Paths are given as absolute host paths (`/proc/sys/...`) and
//! resolved under the root. Symbolic links are followed by the kernel as usual; an absolute link
//! inside a fixture would point outside it, so fixtures use relative links.

use std::fs::Metadata;
use std::path::{Path, PathBuf};

/// Errors from reading the host tree.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stat {path}")]
    Stat {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list {path}")]
    List {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl HostError {
    /// The error with its cause on one line, for a check's reason.
    pub fn reason(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }

    /// True when the file or directory does not exist.
    pub fn is_not_found(&self) -> bool {
        let e = match self {
            HostError::Read { source, .. }
            | HostError::Stat { source, .. }
            | HostError::List { source, .. } => source,
        };
        e.kind() == std::io::ErrorKind::NotFound
    }
}

/// A host root directory: `/` on a host, a fixture tree in tests.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    /// A handle on the tree under `root`.
    pub fn new(root: impl Into<PathBuf>) -> HostRoot {
        HostRoot { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the host path `path` (absolute or not) lies under the root.
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Reads a text file.
    pub fn read(&self, path: &str) -> Result<String, HostError> {
        std::fs::read_to_string(self.path(path)).map_err(|source| HostError::Read {
            path: path.to_string(),
            source,
        })
    }

    /// Reads a file that may be absent: `Ok(None)` when it does not exist.
    pub fn read_optional(&self, path: &str) -> Result<Option<String>, HostError> {
        match self.read(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Metadata of a file, following symbolic links.
    pub fn metadata(&self, path: &str) -> Result<Metadata, HostError> {
        std::fs::metadata(self.path(path)).map_err(|source| HostError::Stat {
            path: path.to_string(),
            source,
        })
    }

    /// Metadata of a file itself (a symbolic link is not followed).
    pub fn symlink_metadata(&self, path: &str) -> Result<Metadata, HostError> {
        std::fs::symlink_metadata(self.path(path)).map_err(|source| HostError::Stat {
            path: path.to_string(),
            source,
        })
    }

    /// True when `path` exists (following symbolic links).
    pub fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    /// Names of the entries of a directory, sorted; `Ok(empty)` when it does not exist.
    pub fn list(&self, path: &str) -> Result<Vec<String>, HostError> {
        let entries = match std::fs::read_dir(self.path(path)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(HostError::List {
                    path: path.to_string(),
                    source,
                })
            }
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| HostError::List {
                path: path.to_string(),
                source,
            })?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// The value of a sysctl, read from `/proc/sys` (`net.ipv4.tcp_syncookies` ->
    /// `/proc/sys/net/ipv4/tcp_syncookies`), trimmed.
    pub fn sysctl(&self, name: &str) -> Result<String, HostError> {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        Ok(self.read(&path)?.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(dir.path().join("proc/sys/kernel/randomize_va_space"), "2\n").unwrap();
        let host = HostRoot::new(dir.path());
        assert_eq!(host.sysctl("kernel.randomize_va_space").unwrap(), "2");
        let err = host.sysctl("kernel.missing").unwrap_err();
        assert!(err.is_not_found());
        assert!(err
            .reason()
            .starts_with("cannot read /proc/sys/kernel/missing: "));
        assert_eq!(host.read_optional("/etc/none").unwrap(), None);
        assert!(host.list("/nope").unwrap().is_empty());
        assert_eq!(host.list("/proc").unwrap(), vec!["sys".to_string()]);
    }
}
