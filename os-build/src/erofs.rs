//! The EROFS root image, made by `mkfs.erofs` (erofs-utils) with fixed timestamps and
//! UUID, lz4hc-compressed.

use std::path::{Path, PathBuf};
use std::process::Command;

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("cannot run mkfs.erofs")]
    Spawn(#[source] std::io::Error),
    #[error("mkfs.erofs failed for {root}: {stderr}")]
    Failed { root: PathBuf, stderr: String },
    #[error("cannot pad {path} to a whole block")]
    Pad {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Builds the image of `root` at `out`. With `file_contexts` (an SELinux file contexts
/// file), every file gets its `security.selinux` label from it.
pub fn build(
    root: &Path,
    out: &Path,
    uuid: Uuid,
    epoch: u64,
    file_contexts: Option<&Path>,
) -> Result<u64, ErofsError> {
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("mkfs.erofs");
    if let Some(contexts) = file_contexts {
        cmd.arg(format!("--file-contexts={}", contexts.display()));
    }
    let output = cmd
        .arg("-zlz4hc")
        .arg(format!("-T{epoch}"))
        .arg(format!("-U{uuid}"))
        .arg("--all-root")
        .arg(out)
        .arg(root)
        .output()
        .map_err(ErofsError::Spawn)?;
    if !output.status.success() {
        return Err(ErofsError::Failed {
            root: root.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    // dm-verity covers whole 4096-byte blocks.
    let pad = |source| ErofsError::Pad {
        path: out.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .map_err(pad)?;
    let len = file.metadata().map_err(pad)?.len();
    let padded = len.next_multiple_of(crate::verity::BLOCK_SIZE);
    file.set_len(padded).map_err(pad)?;
    file.sync_all().map_err(pad)?;
    Ok(padded)
}
