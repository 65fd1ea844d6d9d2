//! Berth's A/B updater: check a signed TUF repository, choose an update (version lock, no
//! downgrade unless asked, waves), download and verify its images, write them to the inactive
//! slot, verify what was written, and install the slot's UKI with boot counting. The update
//! manifest types ([`manifest`]) are shared with `os-build repo`. See docs/updates.md.

pub mod choose;
pub mod cli;
pub mod health;
pub mod host;
pub mod manifest;
pub mod repo;
pub mod slot;
pub mod state;

use std::path::{Path, PathBuf};

use boot_contract::Slot;
use semver::Version;

use crate::choose::{Policy, VersionLock};
use crate::manifest::{Image, Update};
use crate::repo::RepoSource;
use crate::state::{Chosen, CommandName, CommandResult, Status, UpdateState};

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
    pub root_partition: PathBuf,
    pub verity_partition: PathBuf,
    /// Mount point of the ESP.
    pub esp: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdaterError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Repo(#[from] repo::RepoError),
    #[error(transparent)]
    Choose(#[from] choose::ChooseError),
    #[error(transparent)]
    Slot(#[from] slot::SlotError),
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
    fn policy(&self) -> Policy {
        Policy {
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
        let policy = cfg.policy();
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
        let repo = repo::load(&cfg.source).await?;
        let manifest = repo::manifest(&repo).await?;
        let update = find(&manifest, &chosen).ok_or_else(|| UpdaterError::Withdrawn(chosen.version.clone()))?;
        if let Some(names) = manifest.migrations_between(&cfg.running, &update.version) {
            tracing::info!(?names, "datastore migrations for this update");
        }
        let images = update.slots.get(cfg.slot).clone();
        slot::check_space("root", &images.root, &cfg.root_partition)?;
        slot::check_space("verity", &images.verity, &cfg.verity_partition)?;

        std::fs::create_dir_all(&cfg.staging_dir).map_err(|e| UpdaterError::Staging {
            path: cfg.staging_dir.clone(),
            source: e,
        })?;
        for image in [&images.root, &images.verity, &images.uki] {
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
                    ("root", &images.root, &cfg.root_partition),
                    ("verity", &images.verity, &cfg.verity_partition),
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
                slot::verify_verity(&verity, &cfg.root_partition)?;
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

/// `activate`: installs the staged slot's UKI as `berth-<version>+3.efi`, so the next boot
/// tries it (three times) before falling back to the running slot.
pub async fn activate(cfg: &Config) -> Result<Status, UpdaterError> {
    record(cfg, CommandName::Activate, |mut status| async move {
        let chosen = status.chosen.clone().ok_or(UpdaterError::NothingChosen)?;
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
    let result = status
        .allows(CommandName::Rollback)
        .map_err(UpdaterError::from)
        .and_then(|()| Ok(slot::prefer_other_uki(esp, running)?))
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

/// The state as stored.
pub fn status(state_dir: &Path) -> Result<Status, UpdaterError> {
    Ok(Status::load(state_dir)?)
}
