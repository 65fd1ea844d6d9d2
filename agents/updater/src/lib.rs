//! Berth's A/B updater: check a signed TUF repository, choose an update (version lock, no
//! downgrade unless asked, waves), download and verify its images, write them to the inactive
//! slot, verify what was written, and install the slot's UKI with boot counting. The update
//! manifest types ([`manifest`]) are shared with `os-build repo`. See docs/updates.md.

pub mod choose;
pub mod cli;
pub mod download;
pub mod health;
pub mod host;
pub mod manifest;
pub mod repo;
pub mod secureboot;
pub mod slot;
pub mod state;
pub mod trust;
pub mod uki;

use std::path::{Path, PathBuf};

use boot_contract::{Partition, Slot};
use semver::Version;

use crate::choose::{Policy, VersionLock};
use crate::manifest::{Image, Update};
use crate::repo::RepoSource;
use crate::state::{Chosen, CommandName, CommandResult, Floor, Status, UpdateState};

/// Everything one updater command needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: RepoSource,
    /// Holds `state.json` (on `private`).
    pub state_dir: PathBuf,
    /// Verified downloads wait here before they are written (on `data`).
    pub staging_dir: PathBuf,
    pub variant: String,
    pub arch: String,
    pub running: Version,
    pub version_lock: VersionLock,
    pub allow_downgrade: bool,
    pub ignore_waves: bool,
    pub seed: u32,
    /// The inactive slot and its partitions.
    pub slot: Slot,
    pub partitions: SlotPartitions,
    /// Mount point of the ESP.
    pub esp: PathBuf,
    /// What a new UKI's signature is checked against (the firmware's db, or the image's).
    pub trust: uki::Trust,
}

/// The inactive slot's partitions: as given, or (for those not given) the partitions named
/// `root-<slot>` and `verity-<slot>` on the disk that holds the running root, found when a
/// command first needs them.
#[derive(Debug, Clone)]
pub struct SlotPartitions {
    pub root: Option<PathBuf>,
    pub verity: Option<PathBuf>,
    /// `/` on a host.
    pub host_root: PathBuf,
}

impl SlotPartitions {
    /// Partitions given as paths (tests, or both flags).
    pub fn at(root: PathBuf, verity: PathBuf) -> SlotPartitions {
        SlotPartitions {
            root: Some(root),
            verity: Some(verity),
            host_root: PathBuf::from("/"),
        }
    }

    /// `(root, verity)` of `slot`.
    pub fn resolve(&self, slot: Slot) -> Result<(PathBuf, PathBuf), host::HostError> {
        let find = |given: &Option<PathBuf>, role: Partition| -> Result<PathBuf, host::HostError> {
            match given {
                Some(path) => Ok(path.clone()),
                None => {
                    let disk = host::running_disk(&self.host_root)?;
                    host::partition_on(&self.host_root, &disk, role.label())
                }
            }
        };
        Ok((
            find(&self.root, Partition::Root(slot))?,
            find(&self.verity, Partition::Verity(slot))?,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    #[error("cannot find the partitions of the inactive slot")]
    Partitions(#[from] host::HostError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Repo(#[from] repo::RepoError),
    #[error(transparent)]
    Choose(#[from] choose::ChooseError),
    #[error(transparent)]
    Slot(#[from] slot::SlotError),
    #[error(transparent)]
    Uki(#[from] uki::UkiError),
    #[error("the chosen update {0} is no longer offered by the repository; run check again")]
    Withdrawn(Version),
    #[error("no update chosen; run check first")]
    NothingChosen,
    #[error("version {0} is the running version; the inactive slot must hold another")]
    SameVersion(Version),
    #[error("the staged UKI {path} is missing; run prepare again")]
    StagedUkiMissing { path: PathBuf },
    #[error("cannot prepare the staging folder {path}")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no other slot to boot: {dir} holds no UKI of a version other than the running {running} (the other slot is empty, failed, or was overwritten by a prepared update)")]
    NoOtherSlot { dir: PathBuf, running: Version },
    #[error("version {version} is below this host's rollback floor {} (raised when {} booted healthy): it is never installed, marked good or rolled back to; take {} or newer (docs/updates.md#rollback-floor)", floor.version, floor.set_by, floor.version)]
    BelowFloor { version: Version, floor: Box<Floor> },
    #[error(transparent)]
    Trust(#[from] trust::TrustError),
    #[error("a slot-writing task failed to finish")]
    Join(#[source] tokio::task::JoinError),
}

/// One line per cause, for the status document.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Config {
    fn policy(&self, floor: Option<&Floor>) -> Policy {
        Policy {
            floor: floor.map(|f| f.version.clone()),
            variant: self.variant.clone(),
            arch: self.arch.clone(),
            current: self.running.clone(),
            version_lock: self.version_lock.clone(),
            allow_downgrade: self.allow_downgrade,
            ignore_waves: self.ignore_waves,
            seed: self.seed,
            now: jiff::Timestamp::now(),
        }
    }

    fn staged(&self, image: &Image) -> PathBuf {
        self.staging_dir.join(&image.target)
    }
}

/// Runs `command`, records its result in the state (kept as it was on failure) and returns the
/// new status.
async fn record<F, Fut>(cfg: &Config, command: CommandName, body: F) -> Result<Status, UpdaterError>
where
    F: FnOnce(Status) -> Fut,
    Fut: std::future::Future<Output = Result<Status, UpdaterError>>,
{
    // One command at a time: the API and a timer may both start one.
    let _lock = state::Lock::take(&cfg.state_dir)?;
    let before = Status::load(&cfg.state_dir)?;
    let result = match before.allows(command) {
        Ok(()) => body(before.clone()).await,
        Err(e) => Err(e.into()),
    };
    // A command that failed half-way may have stored an intermediate state (prepare drops
    // `staged` to `available` before it writes); keep that one.
    let mut status = match &result {
        Ok(status) => status.clone(),
        Err(_) => Status::load(&cfg.state_dir).unwrap_or(before),
    };
    status.running = Some(cfg.running.clone());
    status.most_recent_command = Some(CommandResult {
        command,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| error_chain(e)),
        at: jiff::Timestamp::now(),
    });
    status.store(&cfg.state_dir)?;
    match result {
        Ok(_) => Ok(status),
        Err(e) => {
            tracing::error!(command = ?command, error = %error_chain(&e), "update command failed");
            Err(e)
        }
    }
}

/// `check`: refreshes the list of offered versions and chooses one.
pub async fn check(cfg: &Config) -> Result<Status, UpdaterError> {
    record(cfg, CommandName::Check, |mut status| async move {
        let repo = repo::load(&cfg.source).await?;
        let manifest = repo::manifest(&repo).await?;
        let policy = cfg.policy(status.rollback_floor.as_ref());
        status.available_versions = choose::offered(&manifest, &policy)
            .into_iter()
            .map(|u| u.version.clone())
            .collect();
        let chosen = choose::choose(&manifest, &policy)?;
        if matches!(status.state, UpdateState::Idle | UpdateState::Available) {
            match chosen {
                Some(u) => {
                    tracing::info!(version = %u.version, "update available");
                    status.state = UpdateState::Available;
                    status.chosen = Some(Chosen {
                        variant: u.variant.clone(),
                        arch: u.arch.clone(),
                        version: u.version.clone(),
                        rollback_floor: u.rollback_floor.clone(),
                    });
                }
                None => {
                    tracing::info!("no update available");
                    status.state = UpdateState::Idle;
                    status.chosen = None;
                }
            }
            status.target_slot = None;
            status.uki = None;
        }
        Ok(status)
    })
    .await
}

/// Refuses a version below the host's rollback floor (the floor may have risen since the
/// update was chosen).
fn above_floor(status: &Status, version: &Version) -> Result<(), UpdaterError> {
    match &status.rollback_floor {
        Some(floor) if version < &floor.version => Err(UpdaterError::BelowFloor {
            version: version.clone(),
            floor: Box::new(floor.clone()),
        }),
        _ => Ok(()),
    }
}

fn find<'m>(manifest: &'m manifest::Manifest, chosen: &Chosen) -> Option<&'m Update> {
    manifest.updates.iter().find(|u| {
        u.variant == chosen.variant
            && u.arch == chosen.arch
            && u.version == chosen.version
            && u.version <= u.max_version
    })
}

/// `prepare`: downloads the chosen update's images for the inactive slot, checks them, and
/// only then writes and verifies the slot. Every refusal (signature, expiry, rollback, hash,
/// length, space, network) happens before the first byte goes to the slot.
pub async fn prepare(cfg: &Config) -> Result<Status, UpdaterError> {
    record(cfg, CommandName::Prepare, |mut status| async move {
        let chosen = status.chosen.clone().ok_or(UpdaterError::NothingChosen)?;
        if chosen.version == cfg.running {
            return Err(UpdaterError::SameVersion(chosen.version));
        }
        above_floor(&status, &chosen.version)?;
        let repo = repo::load(&cfg.source).await?;
        let manifest = repo::manifest(&repo).await?;
        let update = find(&manifest, &chosen).ok_or_else(|| UpdaterError::Withdrawn(chosen.version.clone()))?;
        if let Some(names) = manifest.migrations_between(&cfg.running, &update.version) {
            tracing::info!(?names, "datastore migrations for this update");
        }
        let images = update.slots.get(cfg.slot).clone();
        let (root_partition, verity_partition) = cfg.partitions.resolve(cfg.slot)?;
        tracing::info!(slot = %cfg.slot, root = %root_partition.display(), verity = %verity_partition.display(), "inactive slot");
        slot::check_space("root", &images.root, &root_partition)?;
        slot::check_space("verity", &images.verity, &verity_partition)?;

        std::fs::create_dir_all(&cfg.staging_dir).map_err(|e| UpdaterError::Staging {
            path: cfg.staging_dir.clone(),
            source: e,
        })?;
        // The UKI first: it must name this slot and this root, and carry a signature the
        // firmware accepts, before the ESP or the slot changes (and before the large images
        // are downloaded for nothing).
        repo::stage_target(&repo, &images.uki.target, &cfg.staged(&images.uki)).await?;
        check_uki(cfg, &images.uki, &update.verity).await?;
        for image in [&images.root, &images.verity] {
            repo::stage_target(&repo, &image.target, &cfg.staged(image)).await?;
        }

        // From here on the slot changes: a staged state would be a lie until we are done.
        if status.state == UpdateState::Staged {
            status.state = UpdateState::Available;
            status.target_slot = None;
            status.store(&cfg.state_dir)?;
        }
        // The inactive slot's own UKI would boot what is about to be overwritten (and a cut
        // write fails its verity check): remove it first. Only the running version's UKI
        // stays bootable until activate installs the new one.
        let running = cfg.running.clone();
        let removed = slot::remove_ukis(&cfg.esp, |v| v != &running)?;
        if !removed.is_empty() {
            tracing::info!(?removed, slot = %cfg.slot, "UKIs of the slot being overwritten removed");
        }
        let job = {
            let cfg = cfg.clone();
            let images = images.clone();
            let verity = update.verity.clone();
            move || -> Result<(), UpdaterError> {
                for (what, image, dest) in [
                    ("root", &images.root, &root_partition),
                    ("verity", &images.verity, &verity_partition),
                ] {
                    let stats = slot::write_image(what, &cfg.staged(image), image, dest)?;
                    tracing::info!(
                        what,
                        partition = %dest.display(),
                        bytes = stats.bytes,
                        mib_per_s = format!("{:.1}", stats.bytes as f64 / (1 << 20) as f64 / stats.elapsed.as_secs_f64().max(1e-9)),
                        "slot image written"
                    );
                    slot::verify_image(what, image, dest)?;
                }
                slot::verify_verity(&verity, &root_partition)?;
                tracing::info!(slot = %cfg.slot, "slot verified (sha256 and verity root hash)");
                for image in [&images.root, &images.verity] {
                    let _ = std::fs::remove_file(cfg.staged(image));
                }
                Ok(())
            }
        };
        tokio::task::spawn_blocking(job)
            .await
            .map_err(UpdaterError::Join)??;
        status.state = UpdateState::Staged;
        status.target_slot = Some(cfg.slot);
        Ok(status)
    })
    .await
}

/// Reads the staged UKI and checks its command line and signature ([`uki::check_staged`]).
async fn check_uki(
    cfg: &Config,
    image: &Image,
    verity: &manifest::VerityInfo,
) -> Result<(), UpdaterError> {
    let path = cfg.staged(image);
    let (image, verity, cfg) = (image.clone(), verity.clone(), cfg.clone());
    tokio::task::spawn_blocking(move || -> Result<(), UpdaterError> {
        let bytes = uki::read_staged(&path, &image)?;
        uki::check_staged(&path, &bytes, &cfg.arch, cfg.slot, &verity, &cfg.trust)?;
        Ok(())
    })
    .await
    .map_err(UpdaterError::Join)?
}

/// `activate`: installs the staged slot's UKI as `berth-<version>+3.efi`, so the next boot
/// tries it (three times) before falling back to the running slot.
pub async fn activate(cfg: &Config) -> Result<Status, UpdaterError> {
    record(cfg, CommandName::Activate, |mut status| async move {
        let chosen = status.chosen.clone().ok_or(UpdaterError::NothingChosen)?;
        above_floor(&status, &chosen.version)?;
        // The UKI's target name and hash come from the manifest we verified in prepare; read
        // it again (signed, fresh) rather than trusting a file on disk.
        let repo = repo::load(&cfg.source).await?;
        let manifest = repo::manifest(&repo).await?;
        let update = find(&manifest, &chosen)
            .ok_or_else(|| UpdaterError::Withdrawn(chosen.version.clone()))?;
        let uki = update.slots.get(cfg.slot).uki.clone();
        let staged = cfg.staged(&uki);
        if !staged.exists() {
            return Err(UpdaterError::StagedUkiMissing { path: staged });
        }
        // Again right before the ESP changes: the staged file and the firmware's db may have
        // changed since prepare.
        check_uki(cfg, &uki, &update.verity).await?;
        let (esp, running, version) =
            (cfg.esp.clone(), cfg.running.clone(), chosen.version.clone());
        let name = tokio::task::spawn_blocking(move || {
            slot::install_uki(&esp, &staged, &uki, &version, &running)
        })
        .await
        .map_err(UpdaterError::Join)??;
        tracing::info!(uki = %name, "UKI installed; the next boot tries the new slot");
        status.state = UpdateState::Ready;
        status.uki = Some(name);
        Ok(status)
    })
    .await
}

/// `deactivate`: removes the new slot's UKI again; the running slot stays the one that boots.
pub async fn deactivate(cfg: &Config) -> Result<Status, UpdaterError> {
    record(cfg, CommandName::Deactivate, |mut status| async move {
        let chosen = status.chosen.clone().ok_or(UpdaterError::NothingChosen)?;
        let removed = slot::remove_ukis(&cfg.esp, |v| v == &chosen.version)?;
        tracing::info!(?removed, "UKI removed; the running slot boots next");
        status.state = UpdateState::Staged;
        status.uki = None;
        Ok(status)
    })
    .await
}

/// `apply`: prepare (unless already staged) and activate.
pub async fn apply(cfg: &Config) -> Result<Status, UpdaterError> {
    let status = Status::load(&cfg.state_dir)?;
    if status.state != UpdateState::Staged {
        prepare(cfg).await?;
    }
    activate(cfg).await
}

/// `rollback`: makes the other slot's UKI boot next, by hand. Its UKI must still be on the
/// ESP (a prepared update removes it before overwriting the slot). The other UKI gets its
/// good name; the running version's UKI is marked bad (`+0`), so systemd-boot prefers the
/// other one and keeps this one only as a last resort. Takes effect at the next reboot.
pub fn rollback(state_dir: &Path, esp: &Path, running: &Version) -> Result<Status, UpdaterError> {
    let _lock = state::Lock::take(state_dir)?;
    let mut status = Status::load(state_dir)?;
    let floor = status.rollback_floor.clone();
    let result = status
        .allows(CommandName::Rollback)
        .map_err(UpdaterError::from)
        .and_then(|()| {
            // The newest other UKI: below the floor it is not a slot to go back to.
            if let (Some(floor), Some(other)) = (&floor, slot::newest_other_uki(esp, running)?) {
                if other < floor.version {
                    return Err(UpdaterError::BelowFloor {
                        version: other,
                        floor: Box::new(floor.clone()),
                    });
                }
            }
            Ok(slot::prefer_other_uki(esp, running)?)
        })
        .and_then(|other| {
            other.ok_or_else(|| UpdaterError::NoOtherSlot {
                dir: esp.join(boot_contract::uki::DIR),
                running: running.clone(),
            })
        });
    if let Ok(name) = &result {
        tracing::info!(uki = %name, "the other slot boots next");
    }
    status.running = Some(running.clone());
    status.most_recent_command = Some(CommandResult {
        command: CommandName::Rollback,
        ok: result.is_ok(),
        error: result.as_ref().err().map(|e| error_chain(e)),
        at: jiff::Timestamp::now(),
    });
    status.store(state_dir)?;
    result.map(|_| status)
}

/// `reset-clock`: forgets the latest time a verified update check saw, so that a clock that
/// ran ahead once no longer blocks checks (docs/updates.md#clock). Returns the time forgotten.
pub fn reset_clock(state_dir: &Path) -> Result<Option<jiff::Timestamp>, UpdaterError> {
    let _lock = state::Lock::take(state_dir)?;
    let forgotten = trust::reset_clock(&repo::datastore_dir(state_dir))?;
    match forgotten {
        Some(t) => tracing::info!(forgotten = %t, "latest verified time cleared"),
        None => tracing::info!("no verified time was recorded"),
    }
    Ok(forgotten)
}

/// The state as stored.
pub fn status(state_dir: &Path) -> Result<Status, UpdaterError> {
    Ok(Status::load(state_dir)?)
}
