//! First-boot user data: read once from the platform source, applied in one transaction
//! through the settings API, outcome recorded on `private` so later boots do nothing.
//!
//! Invalid user data is logged with the key and the reason (console and journal), recorded in
//! the status file, and nothing of it is stored: the host comes up on its defaults.

use crate::paths;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use settings_api::client::ClientError;
use std::io::Write;
use std::path::Path;

/// Outcome of the first-boot user data step, stored as JSON in the status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    /// `applied`, `none` (no user data) or `invalid`.
    pub state: String,
    /// Where the user data came from.
    pub source: String,
    /// Settings changed by the user data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
    /// The setting the error is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why the user data was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Applies user data from `source` once; `status_file` is the first-boot marker.
pub fn run(socket: &Path, source: &Path, status_file: &Path) -> Result<()> {
    if status_file.exists() {
        tracing::info!(
            status = %status_file.display(),
            "user data was handled at first boot; nothing to do"
        );
        return Ok(());
    }
    let source_name = source.display().to_string();
    let text = match std::fs::read(source) {
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("user data in {source_name} is not UTF-8")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(source = %source_name, "no user data");
            return write_status(
                status_file,
                &Status {
                    state: "none".into(),
                    source: source_name,
                    changed: vec![],
                    key: None,
                    error: None,
                },
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read user data {source_name}")),
    };
    let outcome = text
        .map_err(|e| ClientError::Parse {
            input: source_name.clone(),
            reason: e.to_string(),
        })
        .and_then(|text| settings_api::client::parse_apply_input(&source_name, &text))
        .and_then(|settings| apply(socket, &settings));
    let status = match outcome {
        Ok(changed) => {
            tracing::info!(source = %source_name, changed = changed.len(), "user data applied");
            Status {
                state: "applied".into(),
                source: source_name,
                changed,
                key: None,
                error: None,
            }
        }
        Err(ClientError::Status {
            status,
            message,
            key,
            ..
        }) if status.is_client_error() => {
            let key_text = key.as_deref().unwrap_or("(no key)");
            tracing::error!(
                key = key_text,
                "invalid user data in {source_name}: {message}; nothing applied, the host runs on its defaults"
            );
            Status {
                state: "invalid".into(),
                source: source_name,
                changed: vec![],
                key,
                error: Some(message),
            }
        }
        Err(e @ ClientError::Parse { .. }) | Err(e @ ClientError::NoSettings { .. }) => {
            tracing::error!(
                "invalid user data: {e}; nothing applied, the host runs on its defaults"
            );
            Status {
                state: "invalid".into(),
                source: source_name,
                changed: vec![],
                key: None,
                error: Some(e.to_string()),
            }
        }
        // The API is down or broke: no marker, so the next boot tries again.
        Err(e) => return Err(e).context("cannot apply user data through the settings API"),
    };
    let invalid = status.state == "invalid";
    write_status(status_file, &status)?;
    if invalid {
        anyhow::bail!(
            "user data rejected (see {}); the host runs on its defaults",
            status_file.display()
        );
    }
    Ok(())
}

/// One transaction: drop a leftover of an interrupted boot, PATCH, commit. Rendering and
/// restarts happen afterwards (boot-config render at boot).
fn apply(socket: &Path, settings: &serde_json::Value) -> Result<Vec<String>, ClientError> {
    let tx = paths::USER_DATA_TX;
    crate::api(socket, "DELETE", &format!("/tx?tx={tx}"), None)?;
    let body = serde_json::to_vec(settings).expect("a JSON value serializes");
    if let Err(e) = crate::api(socket, "PATCH", &format!("/settings?tx={tx}"), Some(body)) {
        let _ = crate::api(socket, "DELETE", &format!("/tx?tx={tx}"), None);
        return Err(e);
    }
    let changed = crate::api(socket, "POST", &format!("/tx/commit?tx={tx}"), None)?;
    Ok(serde_json::from_slice(&changed).unwrap_or_default())
}

/// Writes the status file durably (temporary file, fsync, rename, fsync of the folder).
fn write_status(path: &Path, status: &Status) -> Result<()> {
    let dir = path.parent().context("status file has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(status)?)
        .and_then(|()| f.write_all(b"\n"))
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_user_data_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("s/user-data.json");
        // No socket is needed: nothing is sent without user data.
        run(
            Path::new("/nonexistent.sock"),
            &dir.path().join("none"),
            &status,
        )
        .unwrap();
        let s: Status = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
        assert_eq!(s.state, "none");
        // A second boot does nothing, even with user data present now.
        std::fs::write(dir.path().join("ud"), "[settings]\nmotd = \"x\"\n").unwrap();
        run(
            Path::new("/nonexistent.sock"),
            &dir.path().join("ud"),
            &status,
        )
        .unwrap();
    }

    #[test]
    fn unparsable_user_data_is_rejected_without_calling_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("user-data.json");
        std::fs::write(
            dir.path().join("ud"),
            "[kubernetes]\ncluster-name = \"a\"\n",
        )
        .unwrap();
        let e = run(
            Path::new("/nonexistent.sock"),
            &dir.path().join("ud"),
            &status,
        )
        .unwrap_err();
        assert!(e.to_string().contains("user data rejected"), "{e}");
        let s: Status = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
        assert_eq!(s.state, "invalid");
        assert!(s.error.unwrap().contains("settings"));
    }
}
