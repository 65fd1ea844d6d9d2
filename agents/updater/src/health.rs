//! The boot side of an update: the health gate that runs on every boot
//! (`berth-updater health-gate`, `berth-health-gate.service`).
//!
//! systemd-boot counts tries in the UKI's file name (Boot Loader Specification): the updater
//! installs `berth-<version>+3.efi`; before each boot of it the boot loader renames it
//! (`+2-1`, `+1-2`, `+0-3`) and tells the OS which file it booted in the EFI variable
//! `LoaderBootCountPath`. An entry at `+0` is bad and sorts after every other, so the other
//! slot's UKI boots. The gate closes that loop:
//!
//! - It waits for the gate units (by default `configured.target` and `apiserver.service`;
//!   variants add theirs) to be active.
//! - It needs the ESP mounted (vfat, on the disk that holds the running root): without it a
//!   trial boot cannot be marked good, and a gate that passed anyway would leave the UKI
//!   counting down to a silent fallback.
//! - It refuses a version below the host's rollback floor.
//! - Passed: a counted UKI is renamed to its good name (`berth-<version>.efi`), and an update
//!   that was waiting for this boot is done (state `idle`); an update that raises the rollback
//!   floor raises it now, and the UKIs below it leave the ESP.
//! - Failed on a trial boot (including one whose entry could not be marked good): the host
//!   reboots, so the boot loader tries again or falls back.
//! - An update that was activated but is not what booted (the boot loader fell back, or the
//!   slot's verity check restarted the machine until its tries ran out) is reported as
//!   `failed_update` and its UKI removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::host::systemd::{Systemd, SystemdError};
use boot_contract::{efi, Slot, UkiName};
use semver::Version;

use crate::host::{self, HostError};
use crate::slot::{self, SlotError};
use crate::state::{
    self, BootOutcome, BootReport, FailedUpdate, Floor, StateError, Status, UpdateState,
};

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("cannot mark {from} good as {to}")]
    Bless {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("the health gate of slot {slot} ({version}) failed: {reason}")]
    GateFailed {
        slot: Slot,
        version: Version,
        reason: String,
    },
}

/// Inputs of one gate run.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `/` on a host; a temp dir in tests (reads `proc/cmdline`, `usr/lib/os-release`,
    /// `sys/firmware/efi/efivars`).
    pub host_root: PathBuf,
    pub state_dir: PathBuf,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// Units that must be active.
    pub units: Vec<String>,
    /// How long the units may take to become active.
    pub timeout: Duration,
    pub poll: Duration,
}

/// What the boot loader said about this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub slot: Slot,
    pub version: Version,
    /// The counted UKI this boot came from, relative to the ESP (`EFI/Linux/berth-…+2-1.efi`);
    /// `None` when the entry has no counter (already good) or the boot loader did not say.
    pub counted: Option<PathBuf>,
}

impl Booted {
    pub fn read(host_root: &Path) -> Result<Booted, HealthError> {
        let counted = efi::LOADER_BOOT_COUNT_PATH.read_string(host_root).map(|p| {
            PathBuf::from(
                p.trim_start_matches('\\')
                    .replace('\\', "/")
                    .trim_start_matches('/'),
            )
        });
        Ok(Booted {
            slot: host::running_slot(host_root)?,
            version: host::version(host_root)?,
            counted,
        })
    }
}

/// The counter of a counted UKI name: `berth-1.0.0+2-1.efi` -> (tries left, tries done).
pub fn boot_counter(file_name: &str) -> Option<(u32, u32)> {
    let counter = UkiName::parse(file_name)?.counter?;
    Some((counter.left, counter.done.unwrap_or(0)))
}

/// The good name of a counted UKI: its counter removed (`berth-1.0.0+2-1.efi` ->
/// `berth-1.0.0.efi`).
pub fn blessed_name(file_name: &str) -> Option<String> {
    let name = UkiName::parse(file_name)?;
    name.counter?;
    Some(name.blessed().to_string())
}

/// Waits until every unit is active; the reason of the first that fails or is late. Polls
/// the units' state: the gate waits for the boot to bring them up, not for a job of its own.
pub fn wait_for_units(units: &dyn Systemd, gate: &Gate) -> Result<(), String> {
    let deadline = Instant::now() + gate.timeout;
    for unit in &gate.units {
        loop {
            let state = units.state(unit).map_err(|e| e.to_string())?.active;
            match state.as_str() {
                "active" => break,
                "failed" => return Err(format!("{unit} failed")),
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "{unit} is {state}, not active, {}s after the gate started",
                        gate.timeout.as_secs()
                    ))
                }
                _ => std::thread::sleep(gate.poll),
            }
        }
    }
    Ok(())
}

/// Whether the ESP is mounted where the gate expects it: a vfat mount on `gate.esp`, from a
/// partition of the disk that holds the running root. The reason when not.
pub fn esp_ready(gate: &Gate) -> Result<(), String> {
    let mounts = host::Mounts::read(&gate.host_root).map_err(|e| e.to_string())?;
    let esp = mounts.at(&gate.esp).ok_or_else(|| {
        format!(
            "the ESP is not mounted on {} (boot.mount): this boot cannot be marked good without it",
            gate.esp.display()
        )
    })?;
    if esp.fstype != "vfat" {
        return Err(format!(
            "{} holds a {} file system, not the ESP (vfat)",
            gate.esp.display(),
            esp.fstype
        ));
    }
    let root = mounts
        .at(Path::new("/"))
        .ok_or("the root file system is not in /proc/self/mountinfo")?;
    let sys = gate.host_root.join("sys");
    let root_disk = host::disk_of(&sys, &root.devno).map_err(|e| e.to_string())?;
    let esp_disk = host::disk_of(&sys, &esp.devno).map_err(|e| e.to_string())?;
    if esp_disk != root_disk {
        return Err(format!(
            "the ESP on {} ({}) is on disk {esp_disk}, not on {root_disk} that holds the running root",
            gate.esp.display(),
            esp.source
        ));
    }
    Ok(())
}

/// Refuses a boot below the host's rollback floor.
fn floor_allows(floor: Option<&Floor>, booted: &Booted) -> Result<(), String> {
    match floor {
        Some(f) if booted.version < f.version => Err(format!(
            "version {} is below this host's rollback floor {} (raised when {} booted healthy); it is not marked good",
            booted.version, f.version, f.set_by
        )),
        _ => Ok(()),
    }
}

/// Runs the gate: reports a fallen-back update, checks the units, the ESP and the rollback
/// floor, marks a trial boot good or reboots it. Returns the state as stored;
/// `Err(GateFailed)` when the gate failed.
pub fn run(gate: &Gate, units: &dyn Systemd) -> Result<Status, HealthError> {
    let booted = Booted::read(&gate.host_root)?;
    let entry = booted
        .counted
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    tracing::info!(slot = %booted.slot, version = %booted.version, entry = ?entry, "health gate");
    let units_result = wait_for_units(units, gate);

    // API commands may hold the lock for a moment; the gate waits for it rather than fail.
    let _lock = take_lock(&gate.state_dir, gate.timeout)?;
    let mut status = Status::load(&gate.state_dir)?;
    status.running = Some(booted.version.clone());
    let esp = esp_ready(gate);
    fallen_back(gate, &booted, &mut status, esp.is_ok())?;

    // This boot is the trial of the activated update.
    let update_trial = status.state == UpdateState::Ready
        && status.target_slot == Some(booted.slot)
        && status.chosen.as_ref().map(|c| &c.version) == Some(&booted.version);
    let trial = update_trial || entry.as_deref().and_then(boot_counter).is_some();
    let verdict = units_result
        .and(esp)
        .and_then(|()| floor_allows(status.rollback_floor.as_ref(), &booted))
        .and_then(|()| match &booted.counted {
            Some(counted) => bless(&gate.esp, counted).map_err(|e| crate::error_chain(&e)),
            // The boot loader did not say which entry it booted: the update's UKI cannot be
            // found to be marked good, and would count down to a fallback.
            None if update_trial => Err(format!(
                "the boot loader did not report the booted entry (EFI variable LoaderBootCountPath), so the UKI of {} cannot be marked good",
                booted.version
            )),
            None => Ok(false),
        });

    let now = jiff::Timestamp::now();
    match verdict {
        Ok(blessed) => {
            if update_trial {
                tracing::info!(version = %booted.version, "the update booted healthy");
                let raises = status
                    .chosen
                    .as_ref()
                    .and_then(|c| c.rollback_floor.clone());
                if let Some(floor) = raises {
                    let floor = Floor::raise(&gate.state_dir, &floor, &booted.version)?;
                    let removed = slot::remove_ukis(&gate.esp, |v| v < &floor.version)?;
                    tracing::info!(floor = %floor.version, ?removed, "rollback floor raised; UKIs below it removed");
                    status.rollback_floor = Some(floor);
                }
                status.state = UpdateState::Idle;
                status.chosen = None;
                status.target_slot = None;
                status.uki = None;
                status.failed_update = None;
            }
            // marker: qemu-tests/src/markers.rs
            tracing::info!(slot = %booted.slot, version = %booted.version, blessed, "health gate passed");
            status.last_boot = Some(BootReport {
                outcome: BootOutcome::Healthy,
                slot: booted.slot,
                version: booted.version.clone(),
                entry,
                blessed,
                detail: None,
                at: now,
            });
            status.store(&gate.state_dir)?;
            Ok(status)
        }
        Err(reason) => {
            let detail = if trial {
                format!("{reason}; rebooting so the boot loader tries again or falls back")
            } else {
                reason.clone()
            };
            status.last_boot = Some(BootReport {
                outcome: BootOutcome::GateFailed,
                slot: booted.slot,
                version: booted.version.clone(),
                entry,
                blessed: false,
                detail: Some(detail),
                at: now,
            });
            status.store(&gate.state_dir)?;
            if trial {
                // marker: qemu-tests/src/markers.rs
                tracing::error!(%reason, "health gate failed on a trial boot; rebooting");
                units.reboot()?;
            }
            Err(HealthError::GateFailed {
                slot: booted.slot,
                version: booted.version,
                reason,
            })
        }
    }
}

/// An activated update whose slot is not the one running: the boot loader fell back.
fn fallen_back(
    gate: &Gate,
    booted: &Booted,
    status: &mut Status,
    esp_ready: bool,
) -> Result<(), HealthError> {
    if status.state != UpdateState::Ready || status.target_slot == Some(booted.slot) {
        return Ok(());
    }
    let Some(chosen) = status.chosen.clone() else {
        return Ok(());
    };
    let slot = status.target_slot.unwrap_or(booted.slot.other());
    let reason = format!(
        "slot {slot} ({}) did not come up healthy within its boot tries; slot {} ({}) booted instead",
        chosen.version, booted.slot, booted.version
    );
    tracing::error!(%reason, "update rolled back");
    // Its UKI is bad (or still counted): remove it so it is never tried again. Without the
    // ESP it stays; its counter is at +0, which the boot loader does not pick.
    if chosen.version != booted.version && esp_ready {
        slot::remove_ukis(&gate.esp, |v| v == &chosen.version)?;
    }
    status.failed_update = Some(FailedUpdate {
        version: chosen.version,
        slot,
        reason,
        at: jiff::Timestamp::now(),
    });
    status.state = UpdateState::Idle;
    status.chosen = None;
    status.target_slot = None;
    status.uki = None;
    Ok(())
}

/// Renames a counted UKI to its good name. False when a run of the gate earlier in this boot
/// renamed it already (the good name is there); an error when neither name is on the ESP.
fn bless(esp: &Path, counted: &Path) -> Result<bool, HealthError> {
    let from = esp.join(counted);
    let Some(good) = from
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(blessed_name)
    else {
        return Ok(false);
    };
    let to = from.with_file_name(good);
    match std::fs::rename(&from, &to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.is_file() => return Ok(false),
        Err(e) => {
            return Err(HealthError::Bless {
                from,
                to,
                source: e,
            })
        }
    }
    // The rename must reach the disk before anything else happens (FAT has no journal).
    if let Some(dir) = to.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| HealthError::Bless {
                from: from.clone(),
                to: to.clone(),
                source: e,
            })?;
    }
    tracing::info!(uki = %to.display(), "marked good");
    Ok(true)
}

fn take_lock(dir: &Path, timeout: Duration) -> Result<state::Lock, HealthError> {
    let deadline = Instant::now() + timeout;
    loop {
        match state::Lock::take(dir) {
            Err(StateError::Busy { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500))
            }
            other => return Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Chosen;
    use ::host::systemd::{Call, RecordingSystemd, UnitState};
    use boot_contract::uki;

    fn healthy() -> RecordingSystemd {
        RecordingSystemd::with_active(&["configured.target", "apiserver.service"])
    }

    fn reboots(units: &RecordingSystemd) -> usize {
        units.calls().iter().filter(|c| **c == Call::Reboot).count()
    }

    struct Host {
        dir: tempfile::TempDir,
    }

    impl Host {
        /// A host running `version` from `slot`, booted from the ESP file `entry`, its ESP
        /// mounted.
        fn new(slot: &str, version: &str, entry: Option<&str>) -> Host {
            Host::with_esp_on(slot, version, entry, Some("vda"))
        }

        /// The same with the ESP of `esp_on` mounted (vda holds the running root; vdb is a
        /// clone), or none.
        fn with_esp_on(
            slot: &str,
            version: &str,
            entry: Option<&str>,
            esp_on: Option<&str>,
        ) -> Host {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            crate::host::tests::fake_disks(&root, esp_on, &dir.path().join("esp"));
            for d in ["usr/lib", "proc", efi::EFIVARS_DIR] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::write(
                root.join("usr/lib/os-release"),
                format!("VERSION_ID={version}\nVARIANT_ID=qemu\n"),
            )
            .unwrap();
            std::fs::write(root.join("proc/cmdline"), format!("berth.slot={slot}\n")).unwrap();
            std::fs::create_dir_all(dir.path().join("esp").join(uki::DIR)).unwrap();
            let host = Host { dir };
            if let Some(entry) = entry {
                std::fs::write(
                    efi::LOADER_BOOT_COUNT_PATH.path(&root),
                    efi::encode_string(&format!("\\EFI\\Linux\\{entry}")),
                )
                .unwrap();
            }
            host
        }

        fn uki(&self, name: &str) -> &Host {
            std::fs::write(self.esp().join(uki::DIR).join(name), name).unwrap();
            self
        }

        fn esp(&self) -> PathBuf {
            self.dir.path().join("esp")
        }

        fn ukis(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.esp().join(uki::DIR))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        }

        fn gate(&self) -> Gate {
            Gate {
                host_root: self.dir.path().join("root"),
                state_dir: self.dir.path().join("state"),
                esp: self.esp(),
                units: vec!["configured.target".into(), "apiserver.service".into()],
                timeout: Duration::from_millis(50),
                poll: Duration::from_millis(5),
            }
        }

        fn ready_for(&self, version: &str, slot: Slot) {
            Status {
                state: UpdateState::Ready,
                chosen: Some(Chosen {
                    variant: "qemu".into(),
                    arch: "x86_64".into(),
                    version: version.parse().unwrap(),
                    rollback_floor: None,
                }),
                target_slot: Some(slot),
                uki: Some(format!("berth-{version}+3.efi")),
                ..Status::default()
            }
            .store(&self.gate().state_dir)
            .unwrap();
        }
    }

    #[test]
    fn counters_and_good_names() {
        assert_eq!(boot_counter("berth-1.0.0+3.efi"), Some((3, 0)));
        assert_eq!(boot_counter("berth-1.0.0+2-1.efi"), Some((2, 1)));
        assert_eq!(boot_counter("berth-1.0.0.efi"), None);
        assert_eq!(
            blessed_name("berth-2.0.0+0-3.efi").as_deref(),
            Some("berth-2.0.0.efi")
        );
        assert_eq!(blessed_name("berth-2.0.0.efi"), None);
    }

    #[test]
    fn healthy_trial_boot_of_an_update_is_blessed_and_done() {
        let host = Host::new("b", "2.0.0", Some("berth-2.0.0+2-1.efi"));
        host.uki("berth-1.0.0.efi").uki("berth-2.0.0+2-1.efi");
        host.ready_for("2.0.0", Slot::B);
        let units = healthy();
        let status = run(&host.gate(), &units).unwrap();
        assert_eq!(host.ukis(), ["berth-1.0.0.efi", "berth-2.0.0.efi"]);
        assert_eq!(status.state, UpdateState::Idle);
        assert_eq!(status.running, Some(Version::new(2, 0, 0)));
        let boot = status.last_boot.unwrap();
        assert_eq!(boot.outcome, BootOutcome::Healthy);
        assert!(boot.blessed);
        assert_eq!(reboots(&units), 0);
        assert_eq!(
            Status::load(&host.gate().state_dir).unwrap().state,
            UpdateState::Idle
        );
    }

    #[test]
    fn failed_gate_on_a_trial_boot_reboots_and_keeps_the_counter() {
        let host = Host::new("b", "2.0.0", Some("berth-2.0.0+1-2.efi"));
        host.uki("berth-1.0.0.efi").uki("berth-2.0.0+1-2.efi");
        host.ready_for("2.0.0", Slot::B);
        let units = healthy();
        units.set(
            "apiserver.service",
            UnitState {
                load: "loaded".into(),
                active: "failed".into(),
                ..UnitState::default()
            },
        );
        let err = run(&host.gate(), &units).unwrap_err().to_string();
        assert!(err.contains("apiserver.service failed"), "{err}");
        assert_eq!(reboots(&units), 1);
        assert_eq!(host.ukis(), ["berth-1.0.0.efi", "berth-2.0.0+1-2.efi"]);
        let status = Status::load(&host.gate().state_dir).unwrap();
        assert_eq!(status.state, UpdateState::Ready);
        assert_eq!(status.last_boot.unwrap().outcome, BootOutcome::GateFailed);
    }

    #[test]
    fn a_unit_that_never_comes_up_fails_the_gate_after_the_timeout() {
        let host = Host::new("a", "1.0.0", None);
        let units = healthy();
        units.states.lock().unwrap().remove("configured.target");
        let err = run(&host.gate(), &units).unwrap_err().to_string();
        assert!(err.contains("configured.target is inactive"), "{err}");
        // Not a trial boot: nothing to fall back to, so no reboot.
        assert_eq!(reboots(&units), 0);
    }

    #[test]
    fn fallen_back_update_is_reported_and_its_uki_removed() {
        // 3.0.0 went to slot a; its tries ran out and slot b (2.0.0) booted.
        let host = Host::new("b", "2.0.0", None);
        host.uki("berth-2.0.0.efi").uki("berth-3.0.0+0-3.efi");
        host.ready_for("3.0.0", Slot::A);
        let status = run(&host.gate(), &healthy()).unwrap();
        assert_eq!(host.ukis(), ["berth-2.0.0.efi"]);
        assert_eq!(status.state, UpdateState::Idle);
        let failed = status.failed_update.unwrap();
        assert_eq!(failed.version, Version::new(3, 0, 0));
        assert_eq!(failed.slot, Slot::A);
        assert!(
            failed.reason.contains("did not come up healthy"),
            "{}",
            failed.reason
        );
        assert!(!status.last_boot.unwrap().blessed);
    }

    #[test]
    fn first_boot_of_an_image_blesses_its_uki() {
        let host = Host::new("a", "1.0.0", Some("berth-1.0.0+2-1.efi"));
        host.uki("berth-1.0.0+2-1.efi");
        let status = run(&host.gate(), &healthy()).unwrap();
        assert_eq!(host.ukis(), ["berth-1.0.0.efi"]);
        assert_eq!(status.state, UpdateState::Idle);
        // A second run in the same boot (unit restarted) finds the file renamed already.
        let status = run(&host.gate(), &healthy()).unwrap();
        assert!(!status.last_boot.unwrap().blessed);
    }

    #[test]
    fn a_trial_boot_without_the_esp_fails_and_reboots() {
        // boot.mount did not mount the ESP: the counted UKI cannot be renamed, so the gate
        // must not pass (that left the update idle, unblessed, counting down to a fallback).
        let host = Host::with_esp_on("b", "2.0.0", Some("berth-2.0.0+2-1.efi"), None);
        host.uki("berth-1.0.0.efi").uki("berth-2.0.0+2-1.efi");
        host.ready_for("2.0.0", Slot::B);
        let units = healthy();
        let err = run(&host.gate(), &units).unwrap_err().to_string();
        assert!(err.contains("the ESP is not mounted"), "{err}");
        assert_eq!(reboots(&units), 1, "a trial boot reboots");
        let status = Status::load(&host.gate().state_dir).unwrap();
        assert_eq!(status.state, UpdateState::Ready, "the update is not closed");
        let boot = status.last_boot.unwrap();
        assert_eq!(boot.outcome, BootOutcome::GateFailed);
        assert!(!boot.blessed);
        assert_eq!(host.ukis(), ["berth-1.0.0.efi", "berth-2.0.0+2-1.efi"]);
    }

    #[test]
    fn an_esp_of_another_disk_is_refused() {
        // A clone of the image is attached and boot.mount mounted its ESP (vdb1).
        let host = Host::with_esp_on("b", "2.0.0", Some("berth-2.0.0+2-1.efi"), Some("vdb"));
        host.uki("berth-2.0.0+2-1.efi");
        host.ready_for("2.0.0", Slot::B);
        let err = run(&host.gate(), &healthy()).unwrap_err().to_string();
        assert!(err.contains("is on disk vdb, not on vda"), "{err}");
        assert_eq!(host.ukis(), ["berth-2.0.0+2-1.efi"]);
    }

    #[test]
    fn the_update_trial_without_a_reported_entry_fails() {
        // The boot loader did not set LoaderBootCountPath: the UKI cannot be found to bless.
        let host = Host::new("b", "2.0.0", None);
        host.uki("berth-2.0.0+2-1.efi");
        host.ready_for("2.0.0", Slot::B);
        let units = healthy();
        let err = run(&host.gate(), &units).unwrap_err().to_string();
        assert!(err.contains("LoaderBootCountPath"), "{err}");
        assert_eq!(reboots(&units), 1);
        assert_eq!(
            Status::load(&host.gate().state_dir).unwrap().state,
            UpdateState::Ready
        );
    }

    #[test]
    fn a_counted_entry_missing_from_the_esp_fails_the_trial() {
        let host = Host::new("b", "2.0.0", Some("berth-2.0.0+2-1.efi"));
        host.uki("berth-1.0.0.efi");
        host.ready_for("2.0.0", Slot::B);
        let units = healthy();
        let err = run(&host.gate(), &units).unwrap_err().to_string();
        assert!(err.contains("cannot mark"), "{err}");
        assert_eq!(reboots(&units), 1);
    }

    #[test]
    fn an_update_that_raises_the_floor_raises_it_and_removes_older_ukis() {
        let host = Host::new("b", "2.0.0", Some("berth-2.0.0+2-1.efi"));
        host.uki("berth-1.0.0.efi").uki("berth-2.0.0+2-1.efi");
        let gate = host.gate();
        host.ready_for("2.0.0", Slot::B);
        let mut status = Status::load(&gate.state_dir).unwrap();
        status.chosen.as_mut().unwrap().rollback_floor = Some(Version::new(2, 0, 0));
        status.store(&gate.state_dir).unwrap();
        let status = run(&gate, &healthy()).unwrap();
        let floor = status.rollback_floor.unwrap();
        assert_eq!(floor.version, Version::new(2, 0, 0));
        assert_eq!(floor.set_by, Version::new(2, 0, 0));
        assert_eq!(host.ukis(), ["berth-2.0.0.efi"], "1.0.0 is below the floor");
        assert_eq!(Floor::load(&gate.state_dir).unwrap().unwrap(), floor);
    }

    #[test]
    fn a_boot_below_the_floor_is_not_blessed() {
        // An old UKI put back on the ESP (or picked in the menu) boots 1.0.0.
        let host = Host::new("a", "1.0.0", Some("berth-1.0.0+2-1.efi"));
        host.uki("berth-1.0.0+2-1.efi").uki("berth-2.0.0.efi");
        let gate = host.gate();
        Floor::raise(
            &gate.state_dir,
            &Version::new(2, 0, 0),
            &Version::new(2, 0, 0),
        )
        .unwrap();
        let units = healthy();
        let err = run(&gate, &units).unwrap_err().to_string();
        assert!(
            err.contains("below this host's rollback floor 2.0.0"),
            "{err}"
        );
        assert_eq!(reboots(&units), 1, "a trial boot goes back");
        assert_eq!(host.ukis(), ["berth-1.0.0+2-1.efi", "berth-2.0.0.efi"]);
    }
}
