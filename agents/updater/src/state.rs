//! The updater's state, kept on `private` as one JSON file and replaced atomically (write a
//! new file, fsync, rename, fsync the folder), so a power cut leaves the old or the new state.
//! The API's `/updates/status` serves this document.
//!
//! ```text
//!   idle ──check──> available ──prepare──> staged ──activate──> ready
//!    ^                 │  ^                  │  ^                 │
//!    └──check (none)───┘  └──check───────────┘  └───deactivate────┘
//! ```
//! `apply` is prepare + activate. A failed command leaves the state where it was and records
//! its error in `most_recent_command`.

use std::io::Write;
use std::path::{Path, PathBuf};

use boot_contract::Slot;
use semver::Version;
use serde::{Deserialize, Serialize};

/// File name of the state document in the state folder.
pub const STATE_FILE: &str = "state.json";
/// Lock file held while a command runs.
pub const LOCK_FILE: &str = "lock";
/// The host's anti-rollback floor, apart from `state.json` so that clearing the update state
/// never clears the floor.
pub const FLOOR_FILE: &str = "rollback-floor.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateState {
    /// Nothing to do (or not checked yet).
    Idle,
    /// `chosen` is offered and may be prepared.
    Available,
    /// `chosen` is written to the inactive slot and verified.
    Staged,
    /// The inactive slot's UKI is installed with boot tries: the next boot tries `chosen`.
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandName {
    Check,
    Prepare,
    Activate,
    Deactivate,
    /// Boot the other slot next (by hand).
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command: CommandName,
    pub ok: bool,
    /// The error chain of a failed command, one cause per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chosen {
    pub variant: String,
    pub arch: String,
    pub version: Version,
    /// The rollback floor this update raises the host to once it boots healthy (from the
    /// signed manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_floor: Option<Version>,
}

/// The host's anti-rollback floor: no version below it is installed, blessed or rolled back
/// to. Raised by the health gate when an update whose manifest entry carries a floor boots
/// healthy; never lowered (docs/updates.md#rollback-floor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Floor {
    pub version: Version,
    /// The version whose healthy boot raised it.
    pub set_by: Version,
    pub at: jiff::Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub state: UpdateState,
    /// The version the host runs (as last seen by the updater).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Version>,
    /// Versions the repository offers to this variant and arch, newest first.
    #[serde(default)]
    pub available_versions: Vec<Version>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Chosen>,
    /// The slot `chosen` was (or is being) written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_slot: Option<Slot>,
    /// The UKI installed for `chosen` (in state `ready`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub most_recent_command: Option<CommandResult>,
    /// What the health gate of the running boot found (`berth-updater health-gate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_boot: Option<BootReport>,
    /// An activated update whose slot did not come up healthy, so the host fell back to the
    /// slot it runs now. Kept until another update boots healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_update: Option<FailedUpdate>,
    /// The host's anti-rollback floor, kept in its own file ([`FLOOR_FILE`]); shown here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_floor: Option<Floor>,
}

/// The outcome of a boot's health gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootOutcome {
    /// The gate passed; a trial boot's UKI was marked good (its boot counter removed).
    Healthy,
    /// The gate failed; a trial boot reboots so that the boot loader tries again or falls
    /// back to the other slot.
    GateFailed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootReport {
    pub outcome: BootOutcome,
    pub slot: Slot,
    pub version: Version,
    /// The UKI booted, as the boot loader reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
    /// A trial boot (the UKI still had a boot counter) whose UKI was renamed to its good name.
    pub blessed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub at: jiff::Timestamp,
}

/// An update that was activated but did not become the running slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedUpdate {
    pub version: Version,
    pub slot: Slot,
    pub reason: String,
    pub at: jiff::Timestamp,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: UpdateState::Idle,
            running: None,
            available_versions: Vec::new(),
            chosen: None,
            target_slot: None,
            uki: None,
            most_recent_command: None,
            last_boot: None,
            failed_update: None,
            rollback_floor: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read update state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("update state {path} is not valid; remove it to start from idle")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write update state {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another updater command is running (lock {path} is held)")]
    Busy { path: PathBuf },
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the rollback floor {path} is not valid; it is never lowered by the updater, so updates stop until it is readable again (docs/updates.md#rollback-floor)")]
    Floor {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot {command:?} in state {state:?} (needs {needs})")]
    Transition {
        command: CommandName,
        state: UpdateState,
        needs: &'static str,
    },
}

/// An exclusive `flock` on `<state-dir>/lock`, released when dropped (or when the process
/// dies, so a killed command never leaves it held).
#[derive(Debug)]
pub struct Lock {
    _file: std::fs::File,
}

impl Lock {
    pub fn take(dir: &Path) -> Result<Lock, StateError> {
        let path = dir.join(LOCK_FILE);
        let lerr = |e| StateError::Lock {
            path: path.clone(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(lerr)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(lerr)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Lock { _file: file }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(StateError::Busy { path }),
            Err(e) => Err(lerr(e.into())),
        }
    }
}

/// Writes `dir/name` atomically: a new file, fsync, rename, fsync the folder.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let werr = |e| StateError::Write {
        path: path.clone(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(werr)?;
    let tmp = dir.join(format!(".{name}.new"));
    let mut f = std::fs::File::create(&tmp).map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.write_all(b"\n").map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, &path).map_err(werr)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(werr)?;
    Ok(())
}

impl Floor {
    /// The floor kept in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Floor>, StateError> {
        let path = dir.join(FLOOR_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Floor { path, source: e }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Read { path, source: e }),
        }
    }

    /// Raises the floor in `dir` to `version` (never lowers it); returns the floor in force.
    pub fn raise(dir: &Path, version: &Version, set_by: &Version) -> Result<Floor, StateError> {
        if let Some(floor) = Floor::load(dir)?.filter(|f| &f.version >= version) {
            return Ok(floor);
        }
        let floor = Floor {
            version: version.clone(),
            set_by: set_by.clone(),
            at: jiff::Timestamp::now(),
        };
        let bytes = serde_json::to_vec_pretty(&floor).map_err(|e| StateError::Write {
            path: dir.join(FLOOR_FILE),
            source: e.into(),
        })?;
        write_atomic(dir, FLOOR_FILE, &bytes)?;
        Ok(floor)
    }
}

impl Status {
    /// Reads the state from `dir`; a missing file is `idle`. The floor comes from its own file.
    pub fn load(dir: &Path) -> Result<Status, StateError> {
        let path = dir.join(STATE_FILE);
        let mut status: Status = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| StateError::Parse { path, source: e })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Status::default(),
            Err(e) => return Err(StateError::Read { path, source: e }),
        };
        status.rollback_floor = Floor::load(dir)?;
        Ok(status)
    }

    /// Replaces the state in `dir` atomically (the floor is not written: see [`Floor::raise`]).
    pub fn store(&self, dir: &Path) -> Result<(), StateError> {
        let mut doc = self.clone();
        doc.rollback_floor = None;
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| StateError::Write {
            path: dir.join(STATE_FILE),
            source: e.into(),
        })?;
        write_atomic(dir, STATE_FILE, &bytes)
    }

    /// Checks that `command` may run in the current state.
    pub fn allows(&self, command: CommandName) -> Result<(), StateError> {
        use UpdateState::*;
        let (ok, needs) = match command {
            CommandName::Check => (
                matches!(self.state, Idle | Available | Staged),
                "idle, available or staged",
            ),
            CommandName::Prepare => (
                matches!(self.state, Available | Staged),
                "available or staged",
            ),
            CommandName::Activate => (self.state == Staged, "staged"),
            CommandName::Deactivate => (self.state == Ready, "ready"),
            // With an update activated the other slot is the update; cancel it instead.
            CommandName::Rollback => (
                matches!(self.state, Idle | Available | Staged),
                "idle, available or staged",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(StateError::Transition {
                command,
                state: self.state,
                needs,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_is_idle_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Status::load(dir.path()).unwrap(), Status::default());
        let status = Status {
            state: UpdateState::Staged,
            running: Some(Version::new(1, 0, 0)),
            available_versions: vec![Version::new(2, 0, 0)],
            chosen: Some(Chosen {
                variant: "qemu".into(),
                arch: "x86_64".into(),
                version: Version::new(2, 0, 0),
                rollback_floor: None,
            }),
            target_slot: Some(Slot::B),
            uki: None,
            most_recent_command: Some(CommandResult {
                command: CommandName::Prepare,
                ok: true,
                error: None,
                at: "2026-01-01T00:00:00Z".parse().unwrap(),
            }),
            last_boot: Some(BootReport {
                outcome: BootOutcome::Healthy,
                slot: Slot::A,
                version: Version::new(1, 0, 0),
                entry: Some("berth-1.0.0+2-1.efi".into()),
                blessed: true,
                detail: None,
                at: "2026-01-01T00:00:00Z".parse().unwrap(),
            }),
            failed_update: None,
            rollback_floor: None,
        };
        status.store(dir.path()).unwrap();
        assert_eq!(Status::load(dir.path()).unwrap(), status);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [STATE_FILE], "no temporary file left");
    }

    #[test]
    fn the_floor_only_goes_up_and_survives_a_cleared_state() {
        let dir = tempfile::tempdir().unwrap();
        let v = |s: &str| Version::parse(s).unwrap();
        assert_eq!(Floor::load(dir.path()).unwrap(), None);
        Floor::raise(dir.path(), &v("2.0.0"), &v("2.1.0")).unwrap();
        let kept = Floor::raise(dir.path(), &v("1.5.0"), &v("1.5.0")).unwrap();
        assert_eq!(kept.version, v("2.0.0"), "never lowered");
        Status::default().store(dir.path()).unwrap();
        let status = Status::load(dir.path()).unwrap();
        assert_eq!(status.rollback_floor.unwrap().set_by, v("2.1.0"));
        // Clearing the update state leaves the floor.
        std::fs::remove_file(dir.path().join(STATE_FILE)).unwrap();
        assert!(Status::load(dir.path()).unwrap().rollback_floor.is_some());
        std::fs::write(dir.path().join(FLOOR_FILE), b"{").unwrap();
        let err = Status::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rollback-floor.json"), "{err}");
    }

    #[test]
    fn second_lock_is_refused_until_the_first_goes() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lock::take(dir.path()).unwrap();
        let err = Lock::take(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another updater command"), "{err}");
        drop(first);
        Lock::take(dir.path()).unwrap();
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{").unwrap();
        let err = Status::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
    }

    #[test]
    fn transitions() {
        let mut s = Status::default();
        assert!(s.allows(CommandName::Check).is_ok());
        assert!(s.allows(CommandName::Prepare).is_err());
        s.state = UpdateState::Staged;
        assert!(s.allows(CommandName::Activate).is_ok());
        assert!(s.allows(CommandName::Deactivate).is_err());
        s.state = UpdateState::Ready;
        assert!(s.allows(CommandName::Deactivate).is_ok());
        assert!(s.allows(CommandName::Check).is_err());
        assert!(s.allows(CommandName::Prepare).is_err());
    }
}
