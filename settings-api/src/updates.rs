//! The update actions and `/updates/status`: each runs `berth-updater` as a child process
//! (tokio's, so the server keeps answering while a prepare downloads and writes for minutes)
//! with its inputs taken from the live `settings.updates.*`, and maps its exit code to an
//! HTTP status. See docs/updates.md for the contract.
//!
//! The status is read by running `berth-updater status` rather than by linking the updater
//! crate: that crate brings `tough`, aws-lc-rs and zstd, which the API server does not
//! otherwise need, and the state document stays defined in one place.

use crate::model::Updates;
use hyper::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};
use tracing::{info, warn};

/// Prefix of every environment variable the updater reads its inputs from.
pub const ENV_PREFIX: &str = "BERTH_UPDATES_";

/// `berth-updater` exit code: another updater command holds the update lock.
pub const EXIT_BUSY: i32 = 2;
/// `berth-updater` exit code: the command is not allowed in the current update state.
pub const EXIT_NOT_ALLOWED: i32 = 3;

/// The line prefixes `berth-updater` prints its error chain with.
const ERROR_PREFIX: &str = "berth-updater: error: ";
const CAUSE_PREFIX: &str = "  caused by: ";
/// Most of a failed updater's stderr put into an error message when it printed no error
/// chain (it crashed, or refused its command line).
const STDERR_TAIL: usize = 2048;

/// An update action of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `/actions/refresh-updates`.
    Check,
    /// `/actions/prepare-update`.
    Prepare,
    /// `/actions/activate-update`.
    Activate,
    /// `/actions/deactivate-update`.
    Deactivate,
    /// `/actions/rollback-to-inactive`: needs no repository, so no settings.
    Rollback,
    /// `/actions/reset-update-clock`: needs no repository either.
    ResetClock,
}

impl Action {
    /// The `berth-updater` subcommand.
    pub fn command(self) -> &'static str {
        match self {
            Action::Check => "check",
            Action::Prepare => "prepare",
            Action::Activate => "activate",
            Action::Deactivate => "deactivate",
            Action::Rollback => "rollback",
            Action::ResetClock => "reset-clock",
        }
    }
}

/// Errors of the update actions, each mapped to an HTTP status by [`UpdatesError::status`].
#[derive(Debug, thiserror::Error)]
pub enum UpdatesError {
    #[error("settings.updates.{name} is not set; set it with `apiclient set updates.{name}=...`")]
    MissingSetting { name: &'static str },
    #[error("cannot run the updater {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lost track of the updater {program}")]
    Wait {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The updater ran and failed; `message` is its error chain.
    #[error("{message}")]
    Failed {
        command: &'static str,
        code: Option<i32>,
        message: String,
    },
    #[error("`berth-updater status` did not print a JSON status")]
    StatusOutput(#[source] serde_json::Error),
}

impl UpdatesError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            UpdatesError::MissingSetting { .. } => StatusCode::BAD_REQUEST,
            UpdatesError::Failed { code, .. } => exit_status_code(*code),
            UpdatesError::Spawn { .. }
            | UpdatesError::Wait { .. }
            | UpdatesError::StatusOutput(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The setting a 400 is about.
    pub fn key(&self) -> Option<String> {
        match self {
            UpdatesError::MissingSetting { name } => Some(format!("settings.updates.{name}")),
            _ => None,
        }
    }
}

/// The HTTP status for a failed `berth-updater` exit code (`None`: killed by a signal).
pub fn exit_status_code(code: Option<i32>) -> StatusCode {
    match code {
        Some(EXIT_BUSY) => StatusCode::LOCKED,
        Some(EXIT_NOT_ALLOWED) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The updater's environment from `settings.updates`: every input it takes from the settings,
/// plus the state folder. Version lock and ignore-waves are always set (to the updater's own
/// defaults when unset), so the settings decide them even when apiserver's own environment
/// holds one of these variables.
pub fn environment(
    updates: Option<&Updates>,
    state_dir: &Path,
) -> Result<Vec<(&'static str, String)>, UpdatesError> {
    let default = Updates::default();
    let u = updates.unwrap_or(&default);
    let required = |value: Option<String>, name| value.ok_or(UpdatesError::MissingSetting { name });
    let metadata = required(
        u.metadata_base_url.as_ref().map(|v| v.as_ref().to_string()),
        "metadata-base-url",
    )?;
    let targets = required(
        u.targets_base_url.as_ref().map(|v| v.as_ref().to_string()),
        "targets-base-url",
    )?;
    let seed = required(u.seed.map(|s| i64::from(s).to_string()), "seed")?;
    let version_lock = u
        .version_lock
        .as_ref()
        .map_or("latest", |v| v.as_ref())
        .to_string();
    let ignore_waves = u.ignore_waves.unwrap_or(false).to_string();
    Ok(vec![
        ("BERTH_UPDATES_METADATA_URL", metadata),
        ("BERTH_UPDATES_TARGETS_URL", targets),
        ("BERTH_UPDATES_SEED", seed),
        ("BERTH_UPDATES_VERSION_LOCK", version_lock),
        ("BERTH_UPDATES_IGNORE_WAVES", ignore_waves),
        (
            "BERTH_UPDATES_STATE_DIR",
            state_dir.to_string_lossy().into_owned(),
        ),
    ])
}

/// The error chain a failed `berth-updater` printed, one cause after the other on one line
/// (as the updater records it in `most_recent_command.error`).
pub fn error_chain(stderr: &str) -> Option<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    let start = lines.iter().rposition(|l| l.starts_with(ERROR_PREFIX))?;
    let mut text = lines[start].strip_prefix(ERROR_PREFIX)?.to_string();
    for cause in lines[start + 1..]
        .iter()
        .filter_map(|l| l.strip_prefix(CAUSE_PREFIX))
    {
        text.push_str(": ");
        text.push_str(cause);
    }
    Some(text)
}

/// The message of a failed updater: its error chain, or else the end of its stderr.
fn failure_message(command: &str, status: ExitStatus, stderr: &str) -> String {
    if let Some(chain) = error_chain(stderr) {
        return chain;
    }
    let trimmed = stderr.trim();
    let mut cut = trimmed.len().saturating_sub(STDERR_TAIL);
    while !trimmed.is_char_boundary(cut) {
        cut += 1;
    }
    let tail = &trimmed[cut..];
    if tail.is_empty() {
        format!("berth-updater {command} failed ({status}) and printed nothing")
    } else {
        format!("berth-updater {command} failed ({status}): {tail}")
    }
}

/// Runs `berth-updater`.
#[derive(Debug, Clone)]
pub struct Updater {
    program: PathBuf,
    state_dir: PathBuf,
}

impl Updater {
    pub fn new(program: PathBuf, state_dir: PathBuf) -> Updater {
        Updater { program, state_dir }
    }

    /// Runs `action` with its inputs from `updates` (the live `settings.updates`) and waits
    /// for it. A missing required setting fails before anything runs.
    pub async fn run(&self, action: Action, updates: Option<&Updates>) -> Result<(), UpdatesError> {
        let env = match action {
            Action::Rollback | Action::ResetClock => vec![(
                "BERTH_UPDATES_STATE_DIR",
                self.state_dir.to_string_lossy().into_owned(),
            )],
            _ => environment(updates, &self.state_dir)?,
        };
        let mut cmd = self.command();
        cmd.arg(action.command()).envs(env);
        info!(command = action.command(), "running the updater");
        self.output(cmd, action.command()).await?;
        info!(command = action.command(), "updater finished");
        Ok(())
    }

    /// The updater's state document (`berth-updater status`): idle when it has none yet.
    pub async fn status(&self) -> Result<serde_json::Value, UpdatesError> {
        let mut cmd = self.command();
        cmd.arg("status").arg("--state-dir").arg(&self.state_dir);
        let stdout = self.output(cmd, "status").await?;
        serde_json::from_slice(&stdout).map_err(UpdatesError::StatusOutput)
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        // The environment is inherited: the variables the settings own are always set by
        // `run` (so an inherited one never wins), and the updater's other inputs
        // (BERTH_UPDATES_ESP, _TRUSTED_ROOT, _STAGING_DIR, ...) can come from apiserver's unit.
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A client that hangs up must not kill a prepare half-way: the updater finishes
            // and records its result in the state, which /updates/status shows.
            .kill_on_drop(false);
        cmd
    }

    /// Runs `cmd` to its end; its log lines go to the server's log as they come. Returns its
    /// stdout on success.
    async fn output(
        &self,
        mut cmd: tokio::process::Command,
        command: &'static str,
    ) -> Result<Vec<u8>, UpdatesError> {
        let mut child = cmd.spawn().map_err(|source| UpdatesError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let read_stdout = async move {
            let mut buf = Vec::new();
            if let Some(mut out) = stdout {
                if let Err(e) = out.read_to_end(&mut buf).await {
                    warn!(command, "cannot read the updater's output: {e}");
                }
            }
            buf
        };
        let read_stderr = async move {
            let mut text = String::new();
            if let Some(err) = stderr {
                let mut lines = tokio::io::BufReader::new(err).lines();
                loop {
                    match lines.next_line().await {
                        Ok(Some(line)) => {
                            info!(target: "berth-updater", command, "{line}");
                            text.push_str(&line);
                            text.push('\n');
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(command, "cannot read the updater's log: {e}");
                            break;
                        }
                    }
                }
            }
            text
        };
        let (status, stdout, stderr) = tokio::join!(child.wait(), read_stdout, read_stderr);
        let status = status.map_err(|source| UpdatesError::Wait {
            program: self.program.clone(),
            source,
        })?;
        if status.success() {
            Ok(stdout)
        } else {
            Err(UpdatesError::Failed {
                command,
                code: status.code(),
                message: failure_message(command, status, &stderr),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn updates(value: serde_json::Value) -> Updates {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn environment_comes_from_the_settings() {
        let u = updates(json!({
            "metadata-base-url": "https://updates.example.com/metadata/",
            "targets-base-url": "https://updates.example.com/targets/",
            "seed": 1234,
            "version-lock": "v1.2.3",
            "ignore-waves": true,
        }));
        let env = environment(Some(&u), Path::new("/private/updates")).unwrap();
        assert_eq!(
            env,
            [
                (
                    "BERTH_UPDATES_METADATA_URL",
                    "https://updates.example.com/metadata/".to_string()
                ),
                (
                    "BERTH_UPDATES_TARGETS_URL",
                    "https://updates.example.com/targets/".to_string()
                ),
                ("BERTH_UPDATES_SEED", "1234".to_string()),
                ("BERTH_UPDATES_VERSION_LOCK", "v1.2.3".to_string()),
                ("BERTH_UPDATES_IGNORE_WAVES", "true".to_string()),
                ("BERTH_UPDATES_STATE_DIR", "/private/updates".to_string()),
            ]
        );
        assert!(env.iter().all(|(k, _)| k.starts_with(ENV_PREFIX)));
    }

    #[test]
    fn optional_settings_get_the_updaters_defaults() {
        let u = updates(json!({
            "metadata-base-url": "http://10.0.2.2:8080/metadata/",
            "targets-base-url": "http://10.0.2.2:8080/targets/",
            "seed": 0,
        }));
        let env = environment(Some(&u), Path::new("/s")).unwrap();
        let get = |k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("BERTH_UPDATES_SEED"), Some("0"));
        assert_eq!(get("BERTH_UPDATES_VERSION_LOCK"), Some("latest"));
        assert_eq!(get("BERTH_UPDATES_IGNORE_WAVES"), Some("false"));
    }

    #[test]
    fn a_missing_required_setting_is_named() {
        let err = environment(None, Path::new("/s")).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            err.key().as_deref(),
            Some("settings.updates.metadata-base-url")
        );
        assert!(err
            .to_string()
            .starts_with("settings.updates.metadata-base-url is not set"));
        let u = updates(json!({
            "metadata-base-url": "http://h/metadata/",
            "targets-base-url": "http://h/targets/",
        }));
        let err = environment(Some(&u), Path::new("/s")).unwrap_err();
        assert_eq!(err.key().as_deref(), Some("settings.updates.seed"));
        let u = updates(json!({"metadata-base-url": "http://h/metadata/", "seed": 5}));
        let err = environment(Some(&u), Path::new("/s")).unwrap_err();
        assert_eq!(
            err.key().as_deref(),
            Some("settings.updates.targets-base-url")
        );
    }

    #[test]
    fn exit_codes_map_to_http_statuses() {
        assert_eq!(exit_status_code(Some(2)), StatusCode::LOCKED);
        assert_eq!(exit_status_code(Some(3)), StatusCode::CONFLICT);
        assert_eq!(exit_status_code(Some(1)), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(exit_status_code(None), StatusCode::INTERNAL_SERVER_ERROR);
        let failed = UpdatesError::Failed {
            command: "prepare",
            code: Some(3),
            message: "cannot Prepare in state Idle (needs available or staged)".into(),
        };
        assert_eq!(failed.status(), StatusCode::CONFLICT);
        assert_eq!(
            failed.to_string(),
            "cannot Prepare in state Idle (needs available or staged)"
        );
    }

    #[test]
    fn the_error_chain_is_taken_from_stderr() {
        let stderr = "2026-11-30T08:00:00Z  INFO checking\n\
                      berth-updater: error: repository unreachable\n  \
                      caused by: connection refused\n  caused by: os error 111\n";
        assert_eq!(
            error_chain(stderr).as_deref(),
            Some("repository unreachable: connection refused: os error 111")
        );
        assert_eq!(error_chain("just a log line\n"), None);
        // Without a chain, the end of stderr stands in.
        use std::os::unix::process::ExitStatusExt;
        let status = ExitStatus::from_raw(1 << 8);
        let msg = failure_message("check", status, "error: unexpected argument '--x'\n");
        assert!(msg.contains("unexpected argument"), "{msg}");
        assert!(msg.starts_with("berth-updater check failed"), "{msg}");
        let long = "é".repeat(STDERR_TAIL);
        assert!(failure_message("check", status, &long).len() <= STDERR_TAIL + 100);
        assert!(failure_message("check", status, "").contains("printed nothing"));
    }
}
