//! Reading the signed update repository with `tough`: it checks the signatures against the
//! newest trusted root (the image's, or a newer one this host verified before: [`crate::trust`]),
//! the expiry of every role, and that no role's version went back (against the metadata it
//! trusted last time, kept in a datastore on `private`); it checks every target's length and
//! sha256 while it streams. Files come through [`crate::download`] (idle timeout, resume).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures_util::StreamExt;
use tough::{ExpirationEnforcement, Repository, RepositoryLoader, TargetName};
use url::Url;

use crate::download::{Patience, ResumingTransport};
use crate::manifest::{Manifest, ManifestError, MANIFEST_TARGET};
use crate::trust::{self, TrustError};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot set up the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot create the TUF datastore {path}")]
    Datastore {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("update repository {url} refused: {kind}")]
    Load {
        url: Url,
        kind: &'static str,
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error("update repository has no target {0}")]
    MissingTarget(String),
    #[error("target name {0} is not valid")]
    TargetName(String, #[source] Box<tough::error::Error>),
    #[error("download of target {target} failed: {kind}")]
    Download {
        target: String,
        kind: &'static str,
        #[source]
        source: Box<tough::error::Error>,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("target {MANIFEST_TARGET} is not a valid manifest")]
    Manifest(#[source] ManifestError),
}

/// The TUF datastore in the updater's state folder.
pub fn datastore_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tuf")
}

/// Where the repository is and what the host trusts.
#[derive(Debug, Clone)]
pub struct RepoSource {
    /// Base URL of the metadata (`…/metadata/`): http, https or file.
    pub metadata_url: Url,
    /// Base URL of the targets (`…/targets/`).
    pub targets_url: Url,
    /// The trusted root.json shipped in the image.
    pub trusted_root: PathBuf,
    /// Where the last trusted metadata is kept (rollback protection), on `private`.
    pub datastore: PathBuf,
    /// Timeouts and retries of the downloads.
    pub patience: Patience,
}

/// A short name for what went wrong, for the status and the log line. tough wraps a target's
/// hash or length failure in a transport error, so the whole chain is searched and the most
/// specific cause wins.
fn kind(err: &tough::error::Error) -> &'static str {
    use tough::error::Error as E;
    let mut fallback = "invalid repository";
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(te) = e.downcast_ref::<E>() {
            match te {
                E::ExpiredMetadata { .. } => return "metadata expired",
                E::OlderMetadata { .. } => return "metadata version rolled back",
                E::VerifyMetadata { .. }
                | E::VerifyTrustedMetadata { .. }
                | E::VerifyRoleMetadata { .. } => return "bad signature",
                E::HashMismatch { .. } => return "hash mismatch",
                E::MaxSizeExceeded { .. } | E::MaxUpdatesExceeded { .. } => {
                    return "length mismatch"
                }
                E::Transport { .. } => fallback = "repository unreachable",
                _ => {}
            }
        }
        if let Some(te) = e.downcast_ref::<tough::TransportError>() {
            fallback = "repository unreachable";
            let text = te.to_string();
            // The stream's own checks arrive as transport errors of kind 'other'.
            if text.contains("Hash mismatch") {
                return "hash mismatch";
            }
            if text.contains("Maximum size") {
                return "length mismatch";
            }
        }
        cur = e.source();
    }
    fallback
}

/// Loads and verifies the repository's metadata, starting from the newest root this host
/// trusts, and keeps what it verified for the next run ([`crate::trust`]).
pub async fn load(source: &RepoSource) -> Result<Repository, RepoError> {
    tokio::fs::create_dir_all(&source.datastore)
        .await
        .map_err(|e| RepoError::Datastore {
            path: source.datastore.clone(),
            source: e,
        })?;
    let start = trust::starting_root(&source.trusted_root, &source.datastore)?;
    tracing::debug!(root = %start.path.display(), version = start.version, "starting from the newest trusted root");
    let known = trust::check_clock(&source.datastore, jiff::Timestamp::now())?;
    let transport = ResumingTransport::new(source.patience.clone()).map_err(RepoError::Client)?;
    let loaded = RepositoryLoader::new(
        &start.bytes,
        source.metadata_url.clone(),
        source.targets_url.clone(),
    )
    .transport(transport)
    .datastore(&source.datastore)
    .expiration_enforcement(ExpirationEnforcement::Safe)
    .load()
    .await
    .map_err(|e| RepoError::Load {
        url: source.metadata_url.clone(),
        kind: kind(&e),
        source: Box::new(e),
    })
    .and_then(|repo| {
        trust::check_versions(&source.datastore, &repo)?;
        Ok(repo)
    });
    match loaded {
        Ok(repo) => {
            trust::remember(&source.datastore, &repo)?;
            Ok(repo)
        }
        Err(err) => {
            // The clock tough recorded at the start of a load that did not verify is not a
            // time to hold later checks to.
            trust::restore_clock(&source.datastore, known)?;
            Err(err)
        }
    }
}

fn target_name(name: &str) -> Result<TargetName, RepoError> {
    TargetName::new(name).map_err(|e| RepoError::TargetName(name.to_owned(), Box::new(e)))
}

/// Reads the manifest target into memory (it is small; tough bounds it by its listed length).
pub async fn manifest(repo: &Repository) -> Result<Manifest, RepoError> {
    let name = target_name(MANIFEST_TARGET)?;
    let dl = |e: tough::error::Error| RepoError::Download {
        target: MANIFEST_TARGET.to_owned(),
        kind: kind(&e),
        source: Box::new(e),
    };
    let stream = repo
        .read_target(&name)
        .await
        .map_err(dl)?
        .ok_or_else(|| RepoError::MissingTarget(MANIFEST_TARGET.to_owned()))?;
    let mut stream = Box::pin(stream);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.map_err(dl)?);
    }
    Manifest::from_slice(&bytes).map_err(RepoError::Manifest)
}

/// The length tough will accept for a target (from the signed targets metadata).
pub fn target_length(repo: &Repository, name: &str) -> Result<u64, RepoError> {
    let tn = target_name(name)?;
    repo.targets()
        .signed
        .find_target(&tn, false)
        .map(|t| t.length)
        .map_err(|_| RepoError::MissingTarget(name.to_owned()))
}

/// Downloads a target to `dest`, verified: the bytes go to `dest.partial` and are renamed to
/// `dest` only once tough has checked the whole length and the sha256. Logs progress.
pub async fn stage_target(repo: &Repository, name: &str, dest: &Path) -> Result<u64, RepoError> {
    let tn = target_name(name)?;
    let dl = |e: tough::error::Error| RepoError::Download {
        target: name.to_owned(),
        kind: kind(&e),
        source: Box::new(e),
    };
    let total = target_length(repo, name)?;
    let stream = repo
        .read_target(&tn)
        .await
        .map_err(dl)?
        .ok_or_else(|| RepoError::MissingTarget(name.to_owned()))?;
    let partial = dest.with_extension("partial");
    let write_err = |e| RepoError::Write {
        path: partial.clone(),
        source: e,
    };
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&partial).map_err(write_err)?,
    );
    let started = Instant::now();
    let mut stream = Box::pin(stream);
    let mut done: u64 = 0;
    let mut next_log: u64 = 0;
    let result: Result<(), RepoError> = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(dl)?;
            out.write_all(&chunk).map_err(write_err)?;
            done += chunk.len() as u64;
            if done >= next_log {
                tracing::info!(target_name = name, done, total, "downloading");
                next_log = done + (16 << 20);
            }
        }
        let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all().map_err(write_err)?;
        Ok(())
    }
    .await;
    if let Err(err) = result {
        // Unverified bytes never stay around under a name someone could use.
        let _ = std::fs::remove_file(&partial);
        return Err(err);
    }
    std::fs::rename(&partial, dest).map_err(|e| RepoError::Write {
        path: dest.to_owned(),
        source: e,
    })?;
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        target_name = name,
        bytes = done,
        mib_per_s = format!("{:.1}", done as f64 / (1 << 20) as f64 / secs.max(1e-9)),
        "downloaded and verified"
    );
    Ok(done)
}
