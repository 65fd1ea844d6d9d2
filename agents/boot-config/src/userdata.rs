//! First-boot user data: read from every source in order, merged key by key (a later source
//! wins), applied once in one transaction through the settings API; the outcome is recorded
//! on `private` so later boots do nothing.
//!
//! Sources, in order:
//! 1. a local file on `private` (`/private/user-data.toml`);
//! 2. the platform's source ([`crate::platform`]): EC2 IMDSv2 `/latest/user-data` (aws),
//!    the OVF environment on a CD-ROM, else guestinfo `guestinfo.userdata` (vmware), fw_cfg `opt/org.berth/user-data` or else a
//!    config drive (qemu), a config drive (metal);
//! 3. local overrides on `private` (`/private/user-data-overrides.toml`).
//!
//! Invalid user data (from any source) is logged with the source, the key and the reason
//! (console and journal), recorded in the status file, and nothing of any source is stored:
//! the host comes up on its defaults. A source that cannot be read (metadata service down,
//! I/O error) writes no marker, so the next boot tries again.

use crate::imds::{Imds, Retry};
use crate::platform::{Detected, Platform};
use crate::{configdrive, ovfenv, paths, vmware};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use settings_api::client::ClientError;
use std::path::{Path, PathBuf};

/// Outcome of the first-boot user data step, stored as JSON in the status file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Status {
    /// `applied`, `none` (no user data) or `invalid`.
    pub state: String,
    /// The platform and what decided it.
    pub platform: String,
    /// The sources that had user data, in merge order (later wins).
    #[serde(default)]
    pub sources: Vec<String>,
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

/// Where user data is looked for.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Host root for detection, config drives and guestinfo checks (`/` on a host).
    pub root: PathBuf,
    pub platform: Detected,
    pub local: PathBuf,
    pub overrides: PathBuf,
    pub fw_cfg: PathBuf,
    pub imds_endpoint: String,
    pub imds_retry: Retry,
    pub config_drive_mount: PathBuf,
    /// Where the OVF environment CD-ROM is mounted while it is read (vmware).
    pub ovf_env_mount: PathBuf,
    /// How long to wait for a CD-ROM drive to appear (vmware).
    pub ovf_env_wait: std::time::Duration,
}

/// User data read from one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Which source, as the status and the log name it (`imds http://.../latest/user-data`).
    pub source: String,
    pub bytes: Vec<u8>,
}

impl Sources {
    /// Reads every source in merge order; sources without user data are left out. Fails when
    /// a source exists but cannot be read.
    pub fn read_all(&self) -> Result<Vec<Found>> {
        let mut out = Vec::new();
        out.extend(read_file("local-file", &self.local)?);
        out.extend(self.read_platform()?);
        out.extend(read_file("overrides", &self.overrides)?);
        // Empty user data (EC2 lets you set an empty string) counts as none.
        out.retain(|f| !f.bytes.iter().all(u8::is_ascii_whitespace));
        Ok(out)
    }

    fn read_platform(&self) -> Result<Option<Found>> {
        match self.platform.platform {
            Platform::Aws => {
                let mut imds = Imds::new(&self.imds_endpoint, self.imds_retry)?;
                let source = format!("imds http://{}/latest/user-data", self.imds_endpoint);
                let bytes = imds
                    .user_data()
                    .with_context(|| format!("cannot read user data from {source}"))?;
                Ok(bytes.map(|bytes| Found { source, bytes }))
            }
            Platform::Vmware => {
                // The OVF environment (vApp ISO transport) first: it needs no backdoor.
                let env = ovfenv::find_and_read(
                    &self.root,
                    &configdrive::SysMounter,
                    &self.ovf_env_mount,
                    self.ovf_env_wait,
                )
                .context("cannot read user data from the OVF environment CD-ROM")?;
                if let Some(env) = env {
                    let source = format!(
                        "ovf-env {} {} property {}",
                        env.device.display(),
                        env.file,
                        ovfenv::USER_DATA_PROPERTY
                    );
                    if env.user_data.is_some() {
                        return Ok(env.user_data.map(|bytes| Found { source, bytes }));
                    }
                    tracing::info!("{source}: not set; trying guestinfo");
                }
                match vmware::read_user_data(&self.root) {
                    Err(vmware::VmwareError::NotVmware) => {
                        tracing::info!(
                            "no OVF environment CD-ROM, and not on VMware's hypervisor (guestinfo is not read): no user data"
                        );
                        Ok(None)
                    }
                    other => {
                        let bytes = other.context("cannot read user data from VMware guestinfo")?;
                        Ok(bytes.map(|bytes| Found {
                            source: format!("guestinfo {}", vmware::USER_DATA_KEY),
                            bytes,
                        }))
                    }
                }
            }
            Platform::Qemu => match read_file("fw_cfg", &self.fw_cfg)? {
                Some(found) => Ok(Some(found)),
                None => self.read_config_drive(),
            },
            Platform::Metal => self.read_config_drive(),
        }
    }

    fn read_config_drive(&self) -> Result<Option<Found>> {
        let Some(found) = configdrive::find(&self.root) else {
            tracing::info!("no config drive (labels CIDATA, cidata, config-2)");
            return Ok(None);
        };
        let bytes =
            configdrive::read_user_data(&found, &configdrive::SysMounter, &self.config_drive_mount)
                .context("cannot read user data from the config drive")?;
        Ok(bytes.map(|bytes| Found {
            source: format!(
                "config-drive {} ({}) {}",
                found.device.display(),
                found.label,
                found.file
            ),
            bytes,
        }))
    }
}

fn read_file(kind: &str, path: &Path) -> Result<Option<Found>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(Found {
            source: format!("{kind} {}", path.display()),
            bytes,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read user data {}", path.display())),
    }
}

/// Parses each source's TOML and merges the `settings` tables key by key, later wins.
pub fn merge(found: &[Found]) -> Result<serde_json::Value, ClientError> {
    let mut merged = serde_json::Value::Object(Default::default());
    for f in found {
        let text = String::from_utf8(f.bytes.clone()).map_err(|_| ClientError::Parse {
            input: f.source.clone(),
            reason: "not UTF-8".into(),
        })?;
        let settings = settings_api::client::parse_apply_input(&f.source, &text)?;
        settings_api::datastore::merge(&mut merged, &settings);
    }
    Ok(merged)
}

/// The sources whose settings contain `key` (`settings.a.b`, maybe with an index after it),
/// for the error message.
fn sources_with_key(found: &[Found], key: &str) -> Vec<String> {
    let key = key.split('[').next().unwrap_or(key);
    let Ok(key) = settings_api::key::Key::parse_setting(key) else {
        return vec![];
    };
    found
        .iter()
        .filter(|f| {
            let text = String::from_utf8_lossy(&f.bytes);
            let Ok(mut v) = settings_api::client::parse_apply_input(&f.source, &text) else {
                return false;
            };
            for seg in key.segments() {
                match v.get(seg.as_str()) {
                    Some(next) => v = next.clone(),
                    // A list or a value above the key: this source set it.
                    None => return !v.is_object(),
                }
            }
            true
        })
        .map(|f| f.source.clone())
        .collect()
}

/// Applies user data from `sources` once; `status_file` is the first-boot marker.
pub fn run(socket: &Path, sources: &Sources, status_file: &Path) -> Result<()> {
    if status_file.exists() {
        // marker: qemu-tests/src/markers.rs
        tracing::info!(
            status = %status_file.display(),
            "user data was handled at first boot; nothing to do"
        );
        return Ok(());
    }
    let platform = format!(
        "{} ({})",
        sources.platform.platform, sources.platform.reason
    );
    // marker: qemu-tests/src/markers.rs
    tracing::info!(%platform, "reading user data");
    let found = sources.read_all()?;
    let names: Vec<String> = found.iter().map(|f| f.source.clone()).collect();
    let status = |state: &str| Status {
        state: state.into(),
        platform: platform.clone(),
        sources: names.clone(),
        changed: vec![],
        key: None,
        error: None,
    };
    if found.is_empty() {
        tracing::info!("no user data");
        return write_status(status_file, &status("none"));
    }
    for name in &names {
        tracing::info!(source = %name, "user data found");
    }
    let outcome = merge(&found).and_then(|settings| apply(socket, &settings));
    let status = match outcome {
        Ok(changed) => {
            tracing::info!(sources = %names.join(", "), changed = changed.len(), "user data applied");
            Status {
                changed,
                ..status("applied")
            }
        }
        Err(ClientError::Status {
            status: code,
            message,
            key,
            ..
        }) if code.is_client_error() => {
            let key_text = key.as_deref().unwrap_or("(no key)");
            let from = key
                .as_deref()
                .map(|k| sources_with_key(&found, k))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| names.clone());
            // marker: qemu-tests/src/markers.rs
            tracing::error!(
                key = key_text,
                "invalid user data in {}: {message}; nothing applied, the host runs on its defaults",
                from.join(", ")
            );
            Status {
                key,
                error: Some(message),
                ..status("invalid")
            }
        }
        Err(e @ ClientError::Parse { .. }) | Err(e @ ClientError::NoSettings { .. }) => {
            // marker: qemu-tests/src/markers.rs
            tracing::error!(
                "invalid user data: {e}; nothing applied, the host runs on its defaults"
            );
            Status {
                error: Some(e.to_string()),
                ..status("invalid")
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

fn write_status(path: &Path, status: &Status) -> Result<()> {
    crate::write_json_durably(path, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Platform;

    fn sources(dir: &Path, platform: Platform) -> Sources {
        Sources {
            root: dir.to_owned(),
            platform: Detected {
                platform,
                reason: "test".into(),
            },
            local: dir.join("local.toml"),
            overrides: dir.join("overrides.toml"),
            fw_cfg: dir.join("fw_cfg"),
            imds_endpoint: "127.0.0.1:1".into(),
            imds_retry: Retry::default(),
            config_drive_mount: dir.join("mnt"),
            ovf_env_mount: dir.join("ovf-env"),
            ovf_env_wait: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn missing_user_data_is_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("s/user-data.json");
        let src = sources(dir.path(), Platform::Qemu);
        // No socket is needed: nothing is sent without user data.
        run(Path::new("/nonexistent.sock"), &src, &status).unwrap();
        let s: Status = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
        assert_eq!(s.state, "none");
        assert!(s.sources.is_empty());
        assert!(s.platform.starts_with("qemu"), "{s:?}");
        // A second boot does nothing, even with user data present now.
        std::fs::write(&src.fw_cfg, "[settings]\nmotd = \"x\"\n").unwrap();
        run(Path::new("/nonexistent.sock"), &src, &status).unwrap();
    }

    #[test]
    fn unparsable_user_data_is_rejected_without_calling_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("user-data.json");
        let src = sources(dir.path(), Platform::Qemu);
        std::fs::write(&src.local, "[settings]\nmotd = \"fine\"\n").unwrap();
        std::fs::write(&src.fw_cfg, "[kubernetes]\ncluster-name = \"a\"\n").unwrap();
        let e = run(Path::new("/nonexistent.sock"), &src, &status).unwrap_err();
        assert!(e.to_string().contains("user data rejected"), "{e}");
        let s: Status = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
        assert_eq!(s.state, "invalid");
        let error = s.error.unwrap();
        assert!(
            error.contains("settings") && error.contains("fw_cfg"),
            "{error}"
        );
        assert_eq!(s.sources.len(), 2);
    }

    #[test]
    fn sources_merge_key_by_key_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let src = sources(dir.path(), Platform::Qemu);
        std::fs::write(
            &src.local,
            "[settings]\nmotd = \"local\"\n[settings.ntp]\ntime-servers = [\"a\", \"b\"]\n[settings.kernel.sysctl]\n\"vm.x\" = \"1\"\n",
        )
        .unwrap();
        std::fs::write(
            &src.fw_cfg,
            "[settings]\nmotd = \"platform\"\n[settings.kernel.sysctl]\n\"vm.y\" = \"2\"\n",
        )
        .unwrap();
        std::fs::write(&src.overrides, "[settings.ntp]\ntime-servers = [\"c\"]\n").unwrap();
        // Whitespace only: no user data.
        let found = src.read_all().unwrap();
        let names: Vec<&str> = found
            .iter()
            .map(|f| f.source.split(' ').next().unwrap())
            .collect();
        assert_eq!(names, ["local-file", "fw_cfg", "overrides"]);
        let merged = merge(&found).unwrap();
        assert_eq!(
            merged,
            serde_json::json!({
                "motd": "platform",
                "ntp": {"time-servers": ["c"]},
                "kernel": {"sysctl": {"vm.x": "1", "vm.y": "2"}},
            })
        );
        assert_eq!(
            sources_with_key(&found, "settings.ntp.time-servers[0]"),
            [found[0].source.clone(), found[2].source.clone()]
        );
        assert_eq!(
            sources_with_key(&found, "settings.kernel.sysctl.vm.y"),
            Vec::<String>::new(),
            "dotted sysctl names are quoted in keys"
        );
        std::fs::write(&src.overrides, " \n").unwrap();
        assert_eq!(src.read_all().unwrap().len(), 2);
    }

    #[test]
    fn vmware_without_an_ovf_cdrom_or_the_hypervisor_reads_only_local_files() {
        let dir = tempfile::tempdir().unwrap();
        let src = sources(dir.path(), Platform::Vmware);
        std::fs::write(&src.local, "[settings]\nmotd = \"local\"\n").unwrap();
        // No CD-ROM, DMI vendor not VMware: the backdoor is not touched, no error.
        let found = src.read_all().unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].source.starts_with("local-file "), "{found:?}");
    }

    #[test]
    fn a_platform_source_that_cannot_be_read_writes_no_marker() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("user-data.json");
        let mut src = sources(dir.path(), Platform::Aws);
        src.imds_retry = Retry {
            request_timeout: std::time::Duration::from_millis(100),
            first_backoff: std::time::Duration::from_millis(1),
            max_backoff: std::time::Duration::from_millis(2),
            total: std::time::Duration::from_millis(20),
        };
        let e = run(Path::new("/nonexistent.sock"), &src, &status).unwrap_err();
        assert!(format!("{e:#}").contains("127.0.0.1:1"), "{e:#}");
        assert!(!status.exists(), "the next boot must try again");
    }
}
