//! What the updater keeps between runs so that TUF's guarantees hold across reboots and
//! repository key rotations, beside tough's own datastore (`<state-dir>/tuf/`, on `private`):
//!
//! - the newest root it verified (`newest-root.json`): every load starts from it, or from the
//!   image's root when that one is newer, never from an older one. Starting from the image's
//!   root every time lets an attacker who kept keys a root rotation revoked withhold the new
//!   root (`2.root.json`) and be trusted again; it also makes tough forget the timestamp and
//!   snapshot versions at every load after a timestamp or snapshot key rotation (TUF 5.3.11),
//!   so older metadata could be replayed;
//! - the versions of timestamp, snapshot and targets it verified, with the keys that signed
//!   them (`trusted-versions.json`): a version below those is refused even when tough's own
//!   copy of the metadata is missing or was cut by a power failure. A key rotation of a role
//!   resets that role's floor, as TUF asks (recovery from a fast-forward attack);
//! - the latest verified time (tough's `latest_known_time.json`): tough writes the clock at the
//!   start of every load and refuses any later load whose clock is behind it, so one check
//!   with a clock far in the future would block every update after it. Here the time stays
//!   recorded only when the load verified: metadata that had not expired at that time. The
//!   accepted clock skew is thereby bounded by the life of the timestamp metadata (7 days by
//!   default), and [`reset_clock`] is the operator's way out (docs/updates.md).
//!
//! Every file here is replaced atomically (write, fsync, rename, fsync the folder).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tough::schema::{RoleType, Root, Signed};
use tough::Repository;

/// The newest root this host verified.
pub const NEWEST_ROOT: &str = "newest-root.json";
/// Versions of the roles this host verified, with the keys that signed them.
pub const VERSIONS: &str = "trusted-versions.json";
/// tough's record of the latest time it saw.
pub const KNOWN_TIME: &str = "latest_known_time.json";
/// tough's copy of the root.
const TOUGH_ROOT: &str = "root.json";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read the trusted root {path}")]
    ReadRoot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the trusted root {path} is not a root signed by its own keys")]
    BadRoot {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata version rolled back: the repository serves {role} version {served}, but this host verified version {trusted} signed by the same keys; the repository (or something between it and this host) is replaying old metadata")]
    RolledBack {
        role: &'static str,
        served: u64,
        trusted: u64,
    },
    #[error("the system clock ({now}) is behind the latest time a verified update check saw ({known}): fix the clock (settings.ntp), or, if the clock is right and the recorded time came from a clock that ran ahead, clear it with `apiclient update reset-clock` (docs/updates.md#clock)")]
    ClockBehind {
        now: jiff::Timestamp,
        known: jiff::Timestamp,
    },
}

/// The root a load starts from.
#[derive(Debug, Clone)]
pub struct StartingRoot {
    pub bytes: Vec<u8>,
    pub version: u64,
    /// The file it came from.
    pub path: PathBuf,
}

/// A root file as read, and as parsed.
type RootFile = (Vec<u8>, Signed<Root>);

/// A root file, verified against its own keys, or why not.
fn read_root(path: &Path) -> Result<Option<RootFile>, TrustError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(TrustError::ReadRoot {
                path: path.to_owned(),
                source: e,
            })
        }
    };
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| TrustError::BadRoot {
        path: path.to_owned(),
        source,
    };
    let root: Signed<Root> = serde_json::from_slice(&bytes).map_err(|e| bad(Box::new(e)))?;
    root.signed
        .verify_role(&root)
        .map_err(|e| bad(Box::new(e)))?;
    Ok(Some((bytes, root)))
}

/// The newest of the image's root and the roots kept in `datastore`. The image's root must be
/// there and valid; a kept root that is not (a cut write) is skipped with a warning, since the
/// other kept copy or the image's root still holds.
pub fn starting_root(image_root: &Path, datastore: &Path) -> Result<StartingRoot, TrustError> {
    let (bytes, root) = read_root(image_root)?.ok_or_else(|| TrustError::ReadRoot {
        path: image_root.to_owned(),
        source: std::io::ErrorKind::NotFound.into(),
    })?;
    let mut best = StartingRoot {
        bytes,
        version: root.signed.version.get(),
        path: image_root.to_owned(),
    };
    for kept in [datastore.join(NEWEST_ROOT), datastore.join(TOUGH_ROOT)] {
        match read_root(&kept) {
            Ok(Some((bytes, root))) if root.signed.version.get() > best.version => {
                best = StartingRoot {
                    bytes,
                    version: root.signed.version.get(),
                    path: kept,
                };
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %crate::error_chain(&e), "kept root skipped"),
        }
    }
    Ok(best)
}

/// One role's verified version and the keys it was verified with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RoleVersion {
    version: u64,
    /// Sorted hex key ids of the role in the root that verified it.
    keys: Vec<String>,
}

fn role_keys(root: &Root, role: RoleType) -> Vec<String> {
    let mut keys: Vec<String> = root
        .roles
        .get(&role)
        .map(|r| r.keyids.iter().map(|k| hex::encode(k.as_ref())).collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

fn verified_versions(repo: &Repository) -> BTreeMap<&'static str, RoleVersion> {
    let root = &repo.root().signed;
    [
        (
            "timestamp",
            RoleType::Timestamp,
            repo.timestamp().signed.version.get(),
        ),
        (
            "snapshot",
            RoleType::Snapshot,
            repo.snapshot().signed.version.get(),
        ),
        (
            "targets",
            RoleType::Targets,
            repo.targets().signed.version.get(),
        ),
    ]
    .into_iter()
    .map(|(name, role, version)| {
        (
            name,
            RoleVersion {
                version,
                keys: role_keys(root, role),
            },
        )
    })
    .collect()
}

fn read_versions(datastore: &Path) -> BTreeMap<String, RoleVersion> {
    std::fs::read(datastore.join(VERSIONS))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Refuses metadata older than what this host verified before with the same keys.
pub fn check_versions(datastore: &Path, repo: &Repository) -> Result<(), TrustError> {
    let kept = read_versions(datastore);
    for (role, now) in verified_versions(repo) {
        if let Some(before) = kept.get(role) {
            if before.keys == now.keys && now.version < before.version {
                return Err(TrustError::RolledBack {
                    role,
                    served: now.version,
                    trusted: before.version,
                });
            }
        }
    }
    Ok(())
}

/// Keeps the newest root and the role versions of a verified load.
pub fn remember(datastore: &Path, repo: &Repository) -> Result<(), TrustError> {
    let root = serde_json::to_vec(repo.root()).expect("a verified root serializes");
    write_atomic(&datastore.join(NEWEST_ROOT), &root)?;
    let mut versions = read_versions(datastore);
    for (role, now) in verified_versions(repo) {
        // A role's version only goes up while its keys stay; new keys start a new floor.
        let keep = versions
            .get(role)
            .is_some_and(|b| b.keys == now.keys && b.version > now.version);
        if !keep {
            versions.insert(role.to_owned(), now);
        }
    }
    let json = serde_json::to_vec_pretty(&versions).expect("versions serialize");
    write_atomic(&datastore.join(VERSIONS), &json)
}

/// The latest verified time, if any (tough's file; unreadable counts as none).
pub fn known_time(datastore: &Path) -> Option<jiff::Timestamp> {
    std::fs::read(datastore.join(KNOWN_TIME))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Refuses to start a load whose clock is behind the latest verified time; returns that time,
/// to be put back by [`restore_clock`] if the load fails.
pub fn check_clock(
    datastore: &Path,
    now: jiff::Timestamp,
) -> Result<Option<jiff::Timestamp>, TrustError> {
    let known = known_time(datastore);
    match known {
        Some(known) if now < known => Err(TrustError::ClockBehind { now, known }),
        _ => Ok(known),
    }
}

/// Puts back the time recorded before a load that did not verify (tough wrote the clock at
/// its start, verified or not).
pub fn restore_clock(datastore: &Path, known: Option<jiff::Timestamp>) -> Result<(), TrustError> {
    let path = datastore.join(KNOWN_TIME);
    match known {
        Some(t) => write_atomic(&path, &serde_json::to_vec(&t).expect("a time serializes")),
        None => match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TrustError::Write { path, source: e }),
        },
    }
}

/// Forgets the latest verified time (the operator's reset); returns what it was.
pub fn reset_clock(datastore: &Path) -> Result<Option<jiff::Timestamp>, TrustError> {
    let known = known_time(datastore);
    restore_clock(datastore, None)?;
    Ok(known)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    let err = |e| TrustError::Write {
        path: path.to_owned(),
        source: e,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_behind_is_refused_and_restored() {
        let dir = tempfile::tempdir().unwrap();
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert_eq!(
            check_clock(dir.path(), t("2026-01-01T00:00:00Z")).unwrap(),
            None
        );
        restore_clock(dir.path(), Some(t("2026-06-01T00:00:00Z"))).unwrap();
        let err = check_clock(dir.path(), t("2026-01-01T00:00:00Z")).unwrap_err();
        assert!(err.to_string().contains("reset-clock"), "{err}");
        assert_eq!(
            check_clock(dir.path(), t("2026-07-01T00:00:00Z")).unwrap(),
            Some(t("2026-06-01T00:00:00Z"))
        );
        assert_eq!(
            reset_clock(dir.path()).unwrap(),
            Some(t("2026-06-01T00:00:00Z"))
        );
        assert_eq!(
            check_clock(dir.path(), t("2026-01-01T00:00:00Z")).unwrap(),
            None
        );
        assert_eq!(reset_clock(dir.path()).unwrap(), None);
    }
}
