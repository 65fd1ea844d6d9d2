//! The settings datastore: plain JSON files under one root directory.
//!
//! ```text
//! <root>/version                   datastore format version ("1")
//! <root>/live/settings.json        committed settings
//! <root>/live/settings.v<N>.json   live settings as they were before a migration from
//!                                  format N (kept for a rollback to a build of format N)
//! <root>/pending/<tx>/settings.json  pending settings of transaction <tx>
//! <root>/quarantine/<unix-time>/settings.json  live settings that could not be used (not
//!                                  JSON, or refused by the model), kept as they were,
//!                                  with a `reason` file beside them
//! ```
//!
//! Every file is replaced atomically: write a temporary file in the same directory, rename it
//! over the old one. Live settings are also durable: the temporary file is fsynced before the
//! rename and the directory after it. A commit is one such replacement of
//! `live/settings.json`, so a crash or power cut at any instant leaves either the old or the
//! new live state. The pending file of a transaction is removed only after the live file is
//! durable; a transaction left pending that way is already contained in live, and `open`
//! removes it.
//!
//! Pending transactions are written atomically but not fsynced: they are scratch space until
//! committed (as in Bottlerocket), and skipping two syncs per PATCH halves the cost of
//! `apiclient set`. After a power cut a pending file may be lost or empty; such a transaction
//! reads as corrupt and is discarded with `DELETE /tx`.

use crate::key::Key;
use serde_json::{Map, Value};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Current on-disk format; [`MIGRATIONS`] bring older ones up to it at open.
pub const FORMAT_VERSION: u32 = 1;

/// One step of the datastore format, applied to the live settings. Pending transactions are
/// scratch data and are not migrated; committing one written in an old shape is refused
/// because the merged live settings must pass the model's validation.
#[derive(Debug)]
pub struct Migration {
    /// Version this step migrates from (to `from + 1`).
    pub from: u32,
    /// Must be idempotent (see [`Datastore::open_with`]).
    pub migrate: fn(&mut Value),
}

/// Migrations of this release, in order. Empty while the format is at version 1.
pub const MIGRATIONS: &[Migration] = &[];

/// Errors from the datastore.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("datastore {path} has format version {found}, which this build cannot migrate (it writes version {FORMAT_VERSION})")]
    Version { path: PathBuf, found: String },
    #[error("invalid transaction name '{0}': use 1 to 64 letters, digits, '-' or '_'")]
    TxName(String),
    #[error("committing transaction '{tx}' would make live settings invalid")]
    Invalid {
        tx: String,
        source: crate::model::ModelError,
    },
}

/// Live settings that could not be used, moved aside rather than deleted: apiserver starts
/// from defaults (and boot-config applies user data again) instead of exiting at every start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantine {
    /// The live settings file as it was.
    pub file: PathBuf,
    pub reason: String,
}

/// After a quarantine: moves boot-config's first-boot marker (the user data status file)
/// aside to `<marker>.before-quarantine`, so that its user data step applies user data again
/// over the defaults. Nothing to do when there is no marker.
pub fn rearm_user_data(marker: &Path) -> Result<(), DatastoreError> {
    let kept = marker.with_extension("json.before-quarantine");
    match fs::rename(marker, &kept) {
        Ok(()) => {
            tracing::warn!(marker = %marker.display(), "user data will be applied again");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatastoreError::Write {
            path: marker.to_path_buf(),
            source,
        }),
    }
}

/// Name of the folder of quarantined live settings.
const QUARANTINE_DIR: &str = "quarantine";

/// A datastore rooted at a directory.
#[derive(Debug, Clone)]
pub struct Datastore {
    root: PathBuf,
}

/// Checks a transaction name, which becomes a directory name.
pub fn check_tx_name(name: &str) -> Result<(), DatastoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DatastoreError::TxName(name.to_string()))
    }
}

/// Deep-merges `patch` into `base`: objects merge key by key; anything else replaces.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Fills in keys of `defaults` that `base` does not have; returns whether anything changed.
pub fn fill_missing(base: &mut Value, defaults: &Value) -> bool {
    match (base, defaults) {
        (Value::Object(b), Value::Object(d)) => {
            let mut changed = false;
            for (k, v) in d {
                match b.get_mut(k) {
                    Some(existing) => changed |= fill_missing(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                        changed = true;
                    }
                }
            }
            changed
        }
        _ => false,
    }
}

/// Leaf keys of `patch` whose value differs in `base` (a list counts as one leaf).
pub fn changed_keys(base: &Value, patch: &Value) -> Vec<Key> {
    fn walk(base: Option<&Value>, patch: &Value, prefix: Vec<String>, out: &mut Vec<Key>) {
        match patch {
            Value::Object(p) if !p.is_empty() => {
                for (k, v) in p {
                    let mut path = prefix.clone();
                    path.push(k.clone());
                    walk(base.and_then(|b| b.get(k)), v, path, out);
                }
            }
            _ => {
                if base != Some(patch) {
                    if let Some(key) = Key::from_segments(prefix) {
                        out.push(key);
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(Some(base), patch, Vec::new(), &mut out);
    out
}

fn empty() -> Value {
    Value::Object(Map::new())
}

impl Datastore {
    /// Opens (creating if needed) a datastore at `root`, migrating an older format.
    pub fn open(root: impl Into<PathBuf>) -> Result<Datastore, DatastoreError> {
        Datastore::open_with(root, FORMAT_VERSION, MIGRATIONS)
    }

    /// [`Datastore::open`] with an explicit target version and migration list (for tests).
    pub fn open_with(
        root: impl Into<PathBuf>,
        target: u32,
        migrations: &[Migration],
    ) -> Result<Datastore, DatastoreError> {
        let root = root.into();
        for dir in [root.join("live"), root.join("pending")] {
            fs::create_dir_all(&dir).map_err(|source| DatastoreError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        let version_path = root.join("version");
        let found = match fs::read_to_string(&version_path) {
            Ok(text) => text
                .trim()
                .parse::<u32>()
                .map_err(|_| DatastoreError::Version {
                    path: version_path.clone(),
                    found: text.trim().to_string(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(&version_path, format!("{target}\n").as_bytes(), true)?;
                target
            }
            Err(source) => {
                return Err(DatastoreError::Read {
                    path: version_path,
                    source,
                })
            }
        };
        let live_path = root.join("live").join("settings.json");
        if found > target {
            // A newer build migrated this datastore and the host went back to this one (an
            // update rolled back): its own format is in the copy saved before the migration.
            // Settings changed since the update are dropped, as on Bottlerocket.
            let saved = saved_path(&root, target);
            if !saved.is_file() {
                return Err(DatastoreError::Version {
                    path: version_path,
                    found: found.to_string(),
                });
            }
            let live = read_json(&saved)?;
            write_json(&live_path, &live, true)?;
            write_atomic(&version_path, format!("{target}\n").as_bytes(), true)?;
            tracing::warn!(
                found,
                restored = target,
                "datastore format is newer than this build (a rollback): restored the settings saved before the migration"
            );
        }
        for version in found..target {
            let migration = migrations
                .iter()
                .find(|m| m.from == version)
                .ok_or_else(|| DatastoreError::Version {
                    path: version_path.clone(),
                    found: version.to_string(),
                })?;
            // Live first, then the version: a crash in between re-runs this migration on
            // migrated data, so migrations must be idempotent.
            let mut live = read_json(&live_path)?;
            // Kept for a rollback to a build of this format (see above). Only the first
            // step's input is the old build's format; later steps' inputs are intermediate.
            if version == found {
                write_json(&saved_path(&root, version), &live, true)?;
            }
            (migration.migrate)(&mut live);
            write_json(&live_path, &live, true)?;
            write_atomic(&version_path, format!("{}\n", version + 1).as_bytes(), true)?;
            tracing::info!(from = version, to = version + 1, "migrated datastore");
        }
        let ds = Datastore { root };
        ds.remove_stray_temp_files();
        ds.remove_committed_leftovers()?;
        Ok(ds)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn live_path(&self) -> PathBuf {
        self.root.join("live").join("settings.json")
    }

    fn tx_dir(&self, tx: &str) -> Result<PathBuf, DatastoreError> {
        check_tx_name(tx)?;
        Ok(self.root.join("pending").join(tx))
    }

    /// Temp files left by a crash mid-write are garbage: the rename never happened.
    fn remove_stray_temp_files(&self) {
        let dirs = std::iter::once(self.root.join("live")).chain(
            fs::read_dir(self.root.join("pending"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
        for dir in dirs {
            for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// A crash between the durable live write and the removal of the pending directory leaves a
    /// transaction whose every value is already live; committing it later would undo newer
    /// changes, so it is removed here.
    fn remove_committed_leftovers(&self) -> Result<(), DatastoreError> {
        // Live settings that cannot be read are the server's to quarantine; nothing to
        // compare with then.
        let Ok(live) = self.live() else {
            return Ok(());
        };
        for tx in self.list_tx()? {
            let Ok(dir) = self.tx_dir(&tx) else { continue };
            match read_json(&dir.join("settings.json")) {
                Ok(pending) if changed_keys(&live, &pending).is_empty() => remove_dir(&dir)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Moves the live settings aside (`quarantine/<unix-time>/settings.json`, with `reason`
    /// beside it) so that live starts empty; durable before it returns.
    pub fn quarantine_live(&self, reason: &str) -> Result<Quarantine, DatastoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let base = self.root.join(QUARANTINE_DIR);
        // Two quarantines in the same second (a restart loop) keep both.
        let dir = (0..)
            .map(|n| match n {
                0 => base.join(now.to_string()),
                n => base.join(format!("{now}.{n}")),
            })
            .find(|d| !d.exists())
            .unwrap_or_else(|| base.join(now.to_string()));
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DatastoreError::Write { path, source }
        };
        fs::create_dir_all(&dir).map_err(werr(&dir))?;
        write_atomic(&dir.join("reason"), format!("{reason}\n").as_bytes(), true)?;
        let file = dir.join("settings.json");
        fs::rename(self.live_path(), &file).map_err(werr(&file))?;
        for d in [&dir, &self.root.join("live")] {
            fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(werr(d))?;
        }
        Ok(Quarantine {
            file,
            reason: reason.to_string(),
        })
    }

    /// The live settings kept in quarantine, oldest first.
    pub fn quarantines(&self) -> Vec<Quarantine> {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.root.join(QUARANTINE_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("settings.json").is_file())
            .collect();
        dirs.sort();
        dirs.into_iter()
            .map(|d| Quarantine {
                reason: fs::read_to_string(d.join("reason"))
                    .map(|r| r.trim().to_string())
                    .unwrap_or_default(),
                file: d.join("settings.json"),
            })
            .collect()
    }

    /// The committed settings.
    pub fn live(&self) -> Result<Value, DatastoreError> {
        read_json(&self.live_path())
    }

    /// Replaces the committed settings (used to store defaults).
    pub fn set_live(&self, value: &Value) -> Result<(), DatastoreError> {
        write_json(&self.live_path(), value, true)
    }

    /// Pending settings of transaction `tx` (empty when it has none).
    pub fn pending(&self, tx: &str) -> Result<Value, DatastoreError> {
        read_json(&self.tx_dir(tx)?.join("settings.json"))
    }

    /// Merges an already validated `patch` into transaction `tx`.
    pub fn patch_pending(&self, tx: &str, patch: &Value) -> Result<(), DatastoreError> {
        let dir = self.tx_dir(tx)?;
        let mut pending = read_json(&dir.join("settings.json"))?;
        merge(&mut pending, patch);
        fs::create_dir_all(&dir).map_err(|source| DatastoreError::Write {
            path: dir.clone(),
            source,
        })?;
        write_json(&dir.join("settings.json"), &pending, false)
    }

    /// Names of transactions with pending settings.
    pub fn list_tx(&self) -> Result<Vec<String>, DatastoreError> {
        let dir = self.root.join("pending");
        let entries = fs::read_dir(&dir).map_err(|source| DatastoreError::Read {
            path: dir.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().join("settings.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Discards transaction `tx`, returning the keys it held.
    pub fn delete_tx(&self, tx: &str) -> Result<Vec<Key>, DatastoreError> {
        let dir = self.tx_dir(tx)?;
        // A pending file made unreadable by a power cut can still be discarded.
        let keys = match read_json(&dir.join("settings.json")) {
            Ok(pending) => changed_keys(&Value::Null, &pending),
            Err(DatastoreError::Corrupt { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        remove_dir(&dir)?;
        Ok(keys)
    }

    /// Commits transaction `tx` into live, atomically, if `check` accepts the merged result.
    /// Returns the keys whose value changed and the new live settings.
    pub fn commit(
        &self,
        tx: &str,
        check: &dyn Fn(&Value) -> Result<(), crate::model::ModelError>,
    ) -> Result<(Vec<Key>, Value), DatastoreError> {
        let dir = self.tx_dir(tx)?;
        let pending = read_json(&dir.join("settings.json"))?;
        let mut live = self.live()?;
        let changed = changed_keys(&live, &pending);
        if !changed.is_empty() {
            merge(&mut live, &pending);
            check(&live).map_err(|source| DatastoreError::Invalid {
                tx: tx.to_string(),
                source,
            })?;
            write_json(&self.live_path(), &live, true)?;
        }
        remove_dir(&dir)?;
        Ok((changed, live))
    }
}

fn remove_dir(dir: &Path) -> Result<(), DatastoreError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DatastoreError::Write {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Live settings of format `version`, saved before migrating from it.
fn saved_path(root: &Path, version: u32) -> PathBuf {
    root.join("live").join(format!("settings.v{version}.json"))
}

fn read_json(path: &Path) -> Result<Value, DatastoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| DatastoreError::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(empty()),
        Err(source) => Err(DatastoreError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_json(path: &Path, value: &Value, durable: bool) -> Result<(), DatastoreError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| DatastoreError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes, durable)
}

/// Writes `bytes` to `path` atomically (temp file, rename) and, when `durable`, durably
/// (fsync the temp file before the rename and the directory after it).
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), DatastoreError> {
    let err = |source| DatastoreError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{name}-{}", std::process::id()));
    let mut file = fs::File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    if durable {
        file.sync_all().map_err(err)?;
    }
    drop(file);
    fs::rename(&tmp, path).map_err(err)?;
    if durable {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(_: &Value) -> Result<(), crate::model::ModelError> {
        Ok(())
    }

    #[test]
    fn commit_refuses_what_the_check_rejects_and_keeps_live() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        ds.patch_pending("t", &json!({"motd": "x"})).unwrap();
        let reject = |_: &Value| {
            Err(crate::model::ModelError {
                key: "settings.motd".into(),
                reason: "no".into(),
            })
        };
        assert!(matches!(
            ds.commit("t", &reject),
            Err(DatastoreError::Invalid { .. })
        ));
        assert_eq!(ds.live().unwrap(), json!({}));
        assert_eq!(ds.list_tx().unwrap(), vec!["t"]);
    }

    #[test]
    fn transactions_are_isolated_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        ds.patch_pending("a", &json!({"motd": "a", "kubernetes": {"max-pods": 1}}))
            .unwrap();
        ds.patch_pending("b", &json!({"motd": "b"})).unwrap();
        assert_eq!(ds.live().unwrap(), json!({}));
        assert_eq!(ds.list_tx().unwrap(), vec!["a", "b"]);
        let (changed, live) = ds.commit("a", &ok).unwrap();
        let changed: Vec<String> = changed.iter().map(|k| k.to_string()).collect();
        assert_eq!(changed, vec!["kubernetes.max-pods", "motd"]);
        assert_eq!(live, json!({"motd": "a", "kubernetes": {"max-pods": 1}}));
        assert_eq!(ds.pending("b").unwrap(), json!({"motd": "b"}));
        assert_eq!(ds.list_tx().unwrap(), vec!["b"]);
        let deleted = ds.delete_tx("b").unwrap();
        assert_eq!(deleted.len(), 1);
        assert_eq!(ds.live().unwrap()["motd"], "a");
        // Re-committing an unchanged value reports nothing changed.
        ds.patch_pending("c", &json!({"motd": "a"})).unwrap();
        assert!(ds.commit("c", &ok).unwrap().0.is_empty());
    }

    #[test]
    fn rejects_path_like_tx_names_and_foreign_versions() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        assert!(matches!(
            ds.patch_pending("../live", &json!({})),
            Err(DatastoreError::TxName(_))
        ));
        assert_eq!(
            fs::read_to_string(dir.path().join("version")).unwrap(),
            "1\n"
        );
        fs::write(dir.path().join("version"), "2\n").unwrap();
        assert!(matches!(
            Datastore::open(dir.path()),
            Err(DatastoreError::Version { .. })
        ));
    }

    #[test]
    fn open_removes_transactions_already_committed() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        ds.patch_pending("done", &json!({"motd": "x"})).unwrap();
        ds.patch_pending("open", &json!({"motd": "y"})).unwrap();
        // Simulate a crash after the live write and before the pending directory's removal.
        ds.set_live(&json!({"motd": "x"})).unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        assert_eq!(ds.list_tx().unwrap(), vec!["open"]);
    }

    #[test]
    fn older_formats_are_migrated_at_open() {
        fn rename_motd(v: &mut Value) {
            if let Some(m) = v.as_object_mut().and_then(|o| o.remove("old-motd")) {
                v["motd"] = m;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        ds.set_live(&json!({"old-motd": "hi"})).unwrap();
        let steps = [Migration {
            from: 1,
            migrate: rename_motd,
        }];
        let ds = Datastore::open_with(dir.path(), 2, &steps).unwrap();
        assert_eq!(ds.live().unwrap(), json!({"motd": "hi"}));
        assert_eq!(
            fs::read_to_string(dir.path().join("version")).unwrap(),
            "2\n"
        );
        // A version with no migration path is refused.
        assert!(Datastore::open_with(dir.path(), 3, &steps).is_err());
        // Back on a build of format 1 (a rollback): the settings saved before the migration.
        ds.set_live(&json!({"motd": "changed after the update"}))
            .unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        assert_eq!(ds.live().unwrap(), json!({"old-motd": "hi"}));
        assert_eq!(
            fs::read_to_string(dir.path().join("version")).unwrap(),
            "1\n"
        );
        // Forward again: migrated from the restored settings.
        let ds = Datastore::open_with(dir.path(), 2, &steps).unwrap();
        assert_eq!(ds.live().unwrap(), json!({"motd": "hi"}));
    }

    #[test]
    fn a_newer_format_without_a_saved_copy_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Datastore::open(dir.path()).unwrap();
        fs::write(dir.path().join("version"), "5\n").unwrap();
        let err = Datastore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format version 5"), "{err}");
    }

    #[test]
    fn corrupt_pending_can_be_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        fs::create_dir_all(dir.path().join("pending/bad")).unwrap();
        fs::write(dir.path().join("pending/bad/settings.json"), "").unwrap();
        assert!(matches!(
            ds.pending("bad"),
            Err(DatastoreError::Corrupt { .. })
        ));
        assert!(ds.delete_tx("bad").unwrap().is_empty());
        assert!(ds.list_tx().unwrap().is_empty());
    }

    #[test]
    fn quarantine_keeps_the_live_file_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ds = Datastore::open(dir.path()).unwrap();
        fs::write(dir.path().join("live/settings.json"), b"{\"motd\": \"cut").unwrap();
        assert!(matches!(ds.live(), Err(DatastoreError::Corrupt { .. })));
        let q = ds.quarantine_live("not JSON").unwrap();
        assert_eq!(fs::read(&q.file).unwrap(), b"{\"motd\": \"cut");
        assert_eq!(ds.live().unwrap(), json!({}));
        fs::write(dir.path().join("live/settings.json"), b"[").unwrap();
        let second = ds.quarantine_live("again").unwrap();
        assert_ne!(second.file, q.file, "a second quarantine keeps the first");
        assert_eq!(ds.quarantines(), vec![q, second]);
    }

    #[test]
    fn fill_missing_keeps_user_values() {
        let mut live = json!({"motd": "mine", "ntp": {}});
        let defaults = json!({"motd": "default", "ntp": {"time-servers": ["a"]}});
        assert!(fill_missing(&mut live, &defaults));
        assert_eq!(
            live,
            json!({"motd": "mine", "ntp": {"time-servers": ["a"]}})
        );
        assert!(!fill_missing(&mut live, &defaults));
    }
}
