//! The kubelet minor version the files are rendered for: nodeadm changes a few fields by
//! version (feature gates, flags that moved into the config, API versions).

use std::fmt;
use std::str::FromStr;

/// Oldest and newest kubelet minors whose nodeadm rules this crate knows.
pub const OLDEST_MINOR: u32 = 23;
pub const NEWEST_MINOR: u32 = 35;

/// A kubelet `1.<minor>` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeletVersion {
    pub minor: u32,
}

/// A `--kubelet-version` value that is not a supported `1.<minor>` version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "kubelet version '{0}' must be 1.{OLDEST_MINOR} to 1.{NEWEST_MINOR} (e.g. 1.33 or v1.33.2)"
)]
pub struct VersionError(String);

impl KubeletVersion {
    /// `1.<minor>`.
    pub const fn new(minor: u32) -> KubeletVersion {
        KubeletVersion { minor }
    }

    /// Whether this version is `1.<minor>` or newer.
    pub fn at_least(self, minor: u32) -> bool {
        self.minor >= minor
    }
}

impl FromStr for KubeletVersion {
    type Err = VersionError;

    /// Accepts `1.33`, `v1.33`, `1.33.2` and `v1.33.2-eks-1234`: only the minor matters.
    fn from_str(s: &str) -> Result<KubeletVersion, VersionError> {
        let err = || VersionError(s.to_string());
        let rest = s.strip_prefix('v').unwrap_or(s);
        let mut parts = rest.splitn(3, '.');
        let major = parts.next().ok_or_else(err)?;
        let minor = parts.next().ok_or_else(err)?;
        if let Some(patch) = parts.next() {
            let digits = patch.split(['-', '+']).next().unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
        }
        if major != "1" || minor.is_empty() || !minor.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let minor: u32 = minor.parse().map_err(|_| err())?;
        if !(OLDEST_MINOR..=NEWEST_MINOR).contains(&minor) {
            return Err(err());
        }
        Ok(KubeletVersion { minor })
    }
}

impl fmt::Display for KubeletVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "1.{}", self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_eks_uses() {
        for s in ["1.33", "v1.33", "1.33.2", "v1.33.2-eks-1a2b3c"] {
            assert_eq!(s.parse(), Ok(KubeletVersion::new(33)), "{s}");
        }
    }

    #[test]
    fn rejects_other_majors_unknown_minors_and_junk() {
        for s in ["2.33", "1.22", "1.36", "1", "1.x", "", "1.33.x", "v"] {
            assert!(s.parse::<KubeletVersion>().is_err(), "{s}");
        }
    }
}
