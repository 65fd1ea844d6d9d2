//! Renders the configuration files of services from the live settings and applies them:
//! built-in actions (sysctl) and unit restarts through systemd.
//!
//! `restart-commands` in the metadata are actions, not shell commands (production images have
//! no shell): `restart UNIT`, `try-restart UNIT`, `reload-or-restart UNIT` (a leading
//! `systemctl` is accepted and ignored), `daemon-reload`, `apply-sysctl`, which writes every
//! `settings.kernel.sysctl` value to `/proc/sys`, `apply-hostname`, which sets the kernel
//! host name from `settings.network.hostname`, `apply-lockdown`, which writes
//! `settings.kernel.lockdown` to `/sys/kernel/security/lockdown`, or `apply-cluster`,
//! which on a live change runs `/usr/bin/berth-cluster-agent apply` (kubelet's files and the
//! ECS agent's config from the live settings, kubelet or the ECS agent restarted when theirs
//! changed; nothing where the agent is not installed, and nothing at boot, where the agent's
//! own boot step renders them).
//!
//! When a rendered file is a unit file or drop-in (under `/etc/systemd/system` or
//! `/run/systemd/system`), systemd reloads its units before any restart.

use host::systemd::{self, Job, Restarted, Systemd, SystemdError};
use serde_json::Value;
use settings_api::metadata::Metadata;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Errors from rendering and applying.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("no service named '{service}' in the metadata")]
    UnknownService { service: String },
    #[error("failed to read template {path}")]
    ReadTemplate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to render template {path} for {file}")]
    Template {
        path: PathBuf,
        file: String,
        source: minijinja::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {file}: mode '{mode}' is not octal")]
    Mode { file: String, mode: String },
    #[error("service '{service}': restart command '{command}' is not `[systemctl] restart|try-restart|reload-or-restart UNIT`, `daemon-reload`, `apply-sysctl`, `apply-hostname`, `apply-lockdown` or `apply-cluster`")]
    Command { service: String, command: String },
    #[error("failed to set sysctl {keys}")]
    Sysctl { keys: String },
    #[error(
        "failed to set the kernel host name to '{name}' (settings.network.hostname) through {path}"
    )]
    Hostname {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to reload systemd's units after writing {paths}")]
    DaemonReload {
        paths: String,
        // Boxed: keeps every Result of the renderer small.
        source: Box<SystemdError>,
    },
    #[error("failed to set settings.kernel.lockdown '{mode}' in {path}")]
    Lockdown {
        mode: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("settings.kernel.lockdown '{mode}' is below the kernel's current mode '{current}'; lockdown can only be raised, a reboot lowers it")]
    LockdownLower { mode: String, current: String },
    #[error("{program} apply failed ({status}); its log says why")]
    ClusterAgent { program: PathBuf, status: String },
    #[error("cannot run {program} apply")]
    ClusterAgentSpawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to restart {unit} for service '{service}'")]
    Restart {
        unit: String,
        service: String,
        source: Box<SystemdError>,
    },
}

/// The cluster agent `apply-cluster` runs, under the root.
pub const CLUSTER_AGENT: &str = "/usr/bin/berth-cluster-agent";

/// One action from a service's `restart-commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Unit(Job, String),
    DaemonReload,
    ApplySysctl,
    ApplyHostname,
    ApplyLockdown,
    ApplyCluster,
}

/// When the renderer runs: at boot, units that read rendered files start afterwards, so only
/// units already running are restarted; on a live change, the actions run as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Boot,
    Live,
}

/// How long a restarted unit may take to be active again.
const ACTIVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

/// Restarts `unit` for the files just rendered and logs what happened: the moment the new
/// configuration is in effect, or why nothing was restarted.
fn restart(units: &dyn Systemd, job: Job, unit: &str) -> Result<(), SystemdError> {
    match systemd::restart(units, job, unit, ACTIVE_DEADLINE)? {
        // marker: qemu-tests/src/markers.rs
        Restarted::NotLoaded => tracing::info!(unit, "not loaded; not restarted"),
        Restarted::NotRunning { state } => {
            tracing::info!(unit, state = %state, "not running; not restarted")
        }
        // marker: qemu-tests/src/markers.rs
        Restarted::Active { seconds } => tracing::info!(
            unit,
            seconds = format!("{seconds:.2}"),
            "restarted and active"
        ),
    }
    Ok(())
}

/// Parses one restart command.
pub fn parse_action(service: &str, command: &str) -> Result<Action, RenderError> {
    let mut words: Vec<&str> = command.split_whitespace().collect();
    if words
        .first()
        .is_some_and(|w| *w == "systemctl" || w.ends_with("/systemctl"))
    {
        words.remove(0);
    }
    match words.as_slice() {
        ["apply-sysctl"] => Ok(Action::ApplySysctl),
        ["apply-hostname"] => Ok(Action::ApplyHostname),
        ["daemon-reload"] => Ok(Action::DaemonReload),
        ["apply-lockdown"] => Ok(Action::ApplyLockdown),
        ["apply-cluster"] => Ok(Action::ApplyCluster),
        // `start` is not a restart: units that read rendered files are started by systemd.
        [verb, unit] => match Job::parse(verb).filter(|job| *job != Job::Start) {
            Some(job) => Ok(Action::Unit(job, (*unit).to_string())),
            None => Err(RenderError::Command {
                service: service.to_string(),
                command: command.to_string(),
            }),
        },
        _ => Err(RenderError::Command {
            service: service.to_string(),
            command: command.to_string(),
        }),
    }
}

/// What was rendered: the services, and their actions, in order.
#[derive(Debug, Default)]
pub struct Plan {
    pub services: Vec<(String, Vec<Action>)>,
    pub written: Vec<PathBuf>,
    /// Files of `remove-when-empty` templates that rendered empty, removed (or already absent).
    pub removed: Vec<PathBuf>,
}

#[derive(Debug)]
pub struct Renderer<'a> {
    pub metadata: &'a Metadata,
    /// Configuration paths, template paths and /proc/sys are resolved under this root.
    pub root: &'a Path,
}

impl Renderer<'_> {
    fn under(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Renders the files of `services` (all services when empty) from `settings`.
    pub fn render(&self, settings: &Value, services: &[String]) -> Result<Plan, RenderError> {
        let names: Vec<String> = if services.is_empty() {
            self.metadata.services.keys().cloned().collect()
        } else {
            services.to_vec()
        };
        let env = self.environment();
        let ctx = minijinja::context! { settings => minijinja::Value::from(minijinja::value::Serde(settings)) };
        let mut plan = Plan::default();
        for name in names {
            let service =
                self.metadata
                    .services
                    .get(&name)
                    .ok_or_else(|| RenderError::UnknownService {
                        service: name.clone(),
                    })?;
            for file_name in &service.configuration_files {
                let Some(file) = self.metadata.configuration_files.get(file_name) else {
                    continue; // Metadata::load checked every reference
                };
                let template_path = self.under(&file.template_path);
                let template = std::fs::read_to_string(&template_path).map_err(|source| {
                    RenderError::ReadTemplate {
                        path: template_path.clone(),
                        source,
                    }
                })?;
                let mut text =
                    env.render_str(&template, &ctx)
                        .map_err(|source| RenderError::Template {
                            path: template_path.clone(),
                            file: file_name.clone(),
                            source,
                        })?;
                let dest = self.under(&file.path);
                if file.remove_when_empty && text.trim().is_empty() {
                    remove_file(&dest)?;
                    tracing::info!(file = %file.path, service = %name, "removed (rendered empty)");
                    plan.removed.push(dest);
                    continue;
                }
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                let mode = match &file.mode {
                    Some(m) => u32::from_str_radix(m, 8).map_err(|_| RenderError::Mode {
                        file: file_name.clone(),
                        mode: m.clone(),
                    })?,
                    None => 0o644,
                };
                write_atomic(&dest, text.as_bytes(), mode)?;
                // marker: qemu-tests/src/markers.rs
                tracing::info!(file = %file.path, service = %name, "rendered");
                plan.written.push(dest);
            }
            let actions = service
                .restart_commands
                .iter()
                .map(|c| parse_action(&name, c))
                .collect::<Result<Vec<_>, _>>()?;
            plan.services.push((name, actions));
        }
        Ok(plan)
    }

    /// The template environment: minijinja's builtins, undefined values chain (a missing
    /// `settings.network` renders as empty), plus Berth's filters and functions:
    ///
    /// - `base64_decode`: base64 text to UTF-8 text (`settings.pki.<name>.data`);
    /// - `toml_string`: a quoted TOML basic string;
    /// - `kernel_hostname`: the host name the kernel takes (at most 64 bytes: the first label
    ///   of a longer name); `short_hostname`: the first label;
    /// - `certificate_bodies`: the base64 bodies of the PEM certificates in a text;
    ///   `distrusted_certificates`: those of the `settings.pki` bundles with `trusted = false`;
    /// - `list_files(dir)`, `read_file(path)`: files of the image, resolved under the root
    ///   (the CA bundle starts from Debian's Mozilla certificates).
    pub fn environment(&self) -> minijinja::Environment<'static> {
        use minijinja::{Error, ErrorKind};
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
        env.add_filter("base64_decode", |data: String| -> Result<String, Error> {
            let bytes = settings_api::pem::decode_base64(&data)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            String::from_utf8(bytes).map_err(|_| {
                Error::new(ErrorKind::InvalidOperation, "base64 data is not UTF-8 text")
            })
        });
        env.add_filter("toml_string", |s: String| toml_string(&s));
        env.add_filter("kernel_hostname", |s: String| kernel_hostname(&s));
        env.add_filter("short_hostname", |s: String| {
            s.split('.').next().unwrap_or_default().to_string()
        });
        env.add_filter("certificate_bodies", |text: String| {
            certificate_bodies(&text)
        });
        env.add_filter("distrusted_certificates", |pki: minijinja::Value| {
            distrusted_certificates(&serde_json::to_value(&pki).unwrap_or_default())
        });
        let root = self.root.to_path_buf();
        env.add_function("read_file", move |path: String| -> Result<String, Error> {
            let full = root.join(path.trim_start_matches('/'));
            std::fs::read_to_string(&full).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot read {}: {e}", full.display()),
                )
            })
        });
        let root = self.root.to_path_buf();
        env.add_function(
            "list_files",
            move |dir: String| -> Result<Vec<String>, Error> {
                let full = root.join(dir.trim_start_matches('/'));
                let entries = std::fs::read_dir(&full).map_err(|e| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        format!("cannot list {}: {e}", full.display()),
                    )
                })?;
                let mut names: Vec<String> = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| {
                        format!(
                            "{}/{}",
                            dir.trim_end_matches('/'),
                            e.file_name().to_string_lossy()
                        )
                    })
                    .collect();
                names.sort();
                Ok(names)
            },
        );
        env
    }

    /// Runs the built-in actions of the plan (sysctl, host name).
    pub fn apply_builtins(&self, settings: &Value, plan: &Plan) -> Result<(), RenderError> {
        let wants = |action: &Action| {
            plan.services
                .iter()
                .any(|(_, actions)| actions.contains(action))
        };
        if wants(&Action::ApplySysctl) {
            self.apply_sysctl(settings)?;
        }
        if wants(&Action::ApplyHostname) {
            self.apply_hostname(settings)?;
        }
        if wants(&Action::ApplyLockdown) {
            self.apply_lockdown(settings)?;
        }
        Ok(())
    }

    /// Built-in actions, a daemon-reload when unit files were written (or asked for), then
    /// unit restarts in service order. At boot a unit is restarted only when it is already
    /// running (try-restart); the others start after configured.target and read the new files.
    pub fn finish(
        &self,
        settings: &Value,
        plan: &Plan,
        units: &dyn Systemd,
        mode: Mode,
    ) -> Result<(), RenderError> {
        self.apply_builtins(settings, plan)?;
        let unit_files: Vec<String> = plan
            .written
            .iter()
            .chain(&plan.removed)
            .filter(|p| self.is_unit_file(p))
            .map(|p| p.display().to_string())
            .collect();
        let asked = plan
            .services
            .iter()
            .any(|(_, actions)| actions.contains(&Action::DaemonReload));
        if !unit_files.is_empty() || asked {
            units
                .daemon_reload()
                .map_err(|source| RenderError::DaemonReload {
                    paths: if unit_files.is_empty() {
                        "nothing (asked by restart-commands)".to_string()
                    } else {
                        unit_files.join(", ")
                    },
                    source: Box::new(source),
                })?;
            tracing::info!(files = ?unit_files, "systemd units reloaded");
        }
        for (service, actions) in &plan.services {
            for action in actions {
                if let Action::Unit(job, unit) = action {
                    let job = match mode {
                        Mode::Boot => Job::TryRestart,
                        Mode::Live => *job,
                    };
                    restart(units, job, unit).map_err(|source| RenderError::Restart {
                        unit: unit.clone(),
                        service: service.clone(),
                        source: Box::new(source),
                    })?;
                }
            }
        }
        // After the unit restarts (containerd's registry configuration comes first).
        let kubernetes = plan
            .services
            .iter()
            .any(|(_, actions)| actions.contains(&Action::ApplyCluster));
        if kubernetes && mode == Mode::Live {
            self.apply_cluster()?;
        }
        Ok(())
    }

    /// Runs `berth-cluster-agent apply` (live changes only) when the image has the agent.
    fn apply_cluster(&self) -> Result<(), RenderError> {
        let program = self.under(CLUSTER_AGENT);
        if !program.exists() {
            tracing::info!(
                program = CLUSTER_AGENT,
                "not installed (not a Kubernetes variant); nothing to apply"
            );
            return Ok(());
        }
        let t = std::time::Instant::now();
        let status = std::process::Command::new(&program)
            .arg("apply")
            .status()
            .map_err(|source| RenderError::ClusterAgentSpawn {
                program: program.clone(),
                source,
            })?;
        if !status.success() {
            return Err(RenderError::ClusterAgent {
                program,
                status: status.to_string(),
            });
        }
        tracing::info!(
            seconds = format!("{:.2}", t.elapsed().as_secs_f64()),
            "cluster configuration applied"
        );
        Ok(())
    }

    /// A unit file or drop-in that systemd reads from /etc or /run.
    fn is_unit_file(&self, path: &Path) -> bool {
        let rel = path.strip_prefix(self.root).unwrap_or(path);
        ["etc/systemd/system", "run/systemd/system"]
            .iter()
            .any(|dir| rel.starts_with(dir))
    }

    /// Sets the kernel host name (the UTS name of this namespace, what sethostname(2) sets)
    /// through /proc/sys/kernel/hostname, to the same value `/etc/hostname` gets.
    fn apply_hostname(&self, settings: &Value) -> Result<(), RenderError> {
        let name = kernel_hostname(
            settings
                .pointer("/network/hostname")
                .and_then(Value::as_str)
                .unwrap_or("localhost"),
        );
        let path = self.under("proc/sys/kernel/hostname");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(name.as_bytes()))
            .map_err(|source| RenderError::Hostname {
                name: name.clone(),
                path: path.clone(),
                source,
            })?;
        // marker: qemu-tests/src/markers.rs
        tracing::info!(hostname = %name, "host name set");
        Ok(())
    }

    /// Writes every `settings.kernel.sysctl` value to /proc/sys; a failing key does not stop
    /// the others, and the error names every failed key.
    fn apply_sysctl(&self, settings: &Value) -> Result<(), RenderError> {
        let Some(sysctl) = settings
            .pointer("/kernel/sysctl")
            .and_then(Value::as_object)
        else {
            return Ok(());
        };
        let mut failed = Vec::new();
        for (key, value) in sysctl {
            let rel = if key.contains('/') {
                key.clone()
            } else {
                key.replace('.', "/")
            };
            let path = self.under("proc/sys").join(rel);
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            match std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(value.as_bytes()))
            {
                Ok(()) => tracing::info!(key = %key, value = %value, "sysctl set"),
                Err(e) => {
                    tracing::warn!(key = %key, "cannot set sysctl {}: {e}", path.display());
                    failed.push(format!("settings.kernel.sysctl.\"{key}\""));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RenderError::Sysctl {
                keys: failed.join(", "),
            })
        }
    }
}

/// The kernel takes host names of at most 64 bytes; a longer (fully qualified) name gives its
/// first label, which RFC 1123 limits to 63.
pub fn kernel_hostname(name: &str) -> String {
    const HOST_NAME_MAX: usize = 64;
    if name.len() <= HOST_NAME_MAX {
        name.to_string()
    } else {
        name.split('.').next().unwrap_or_default().to_string()
    }
}

/// A TOML basic string (quoted, with `\`, `"` and control characters escaped).
pub fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The base64 bodies (whitespace removed) of the PEM certificates in `text`.
pub fn certificate_bodies(text: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            bodies.extend(current.take());
        } else if let Some(body) = current.as_mut() {
            body.push_str(line);
        }
    }
    bodies
}

/// Certificate bodies of the `settings.pki` bundles with `trusted = false`.
fn distrusted_certificates(pki: &Value) -> Vec<String> {
    let Some(bundles) = pki.as_object() else {
        return Vec::new();
    };
    bundles
        .values()
        .filter(|b| b.get("trusted") == Some(&Value::Bool(false)))
        .filter_map(|b| b.get("data")?.as_str())
        .filter_map(|data| settings_api::pem::decode_base64(data).ok())
        .filter_map(|bytes| String::from_utf8(bytes).ok())
        .flat_map(|text| certificate_bodies(&text))
        .collect()
}

/// Lockdown modes in the kernel's order; the kernel refuses to lower the mode.
const LOCKDOWN_MODES: [&str; 3] = ["none", "integrity", "confidentiality"];

impl Renderer<'_> {
    /// Writes `settings.kernel.lockdown` to /sys/kernel/security/lockdown when it raises the
    /// current mode. Asking for the current mode does nothing; asking for a lower one is an
    /// error (the kernel allows only raising it).
    fn apply_lockdown(&self, settings: &Value) -> Result<(), RenderError> {
        let Some(mode) = settings.pointer("/kernel/lockdown").and_then(Value::as_str) else {
            return Ok(());
        };
        let path = self.under("sys/kernel/security/lockdown");
        let err = |source| RenderError::Lockdown {
            mode: mode.to_string(),
            path: path.clone(),
            source,
        };
        // The file reads like "none [integrity] confidentiality".
        let text = std::fs::read_to_string(&path).map_err(err)?;
        let current = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .unwrap_or("none")
            .to_string();
        let rank = |m: &str| LOCKDOWN_MODES.iter().position(|x| *x == m);
        match (rank(mode), rank(&current)) {
            (Some(want), Some(have)) if want == have => {
                tracing::info!(mode, "lockdown already set");
                Ok(())
            }
            (Some(want), Some(have)) if want < have => Err(RenderError::LockdownLower {
                mode: mode.to_string(),
                current,
            }),
            _ => {
                std::fs::write(&path, mode).map_err(err)?;
                tracing::info!(mode, "lockdown set");
                Ok(())
            }
        }
    }
}

/// Removes a rendered file; one that is already absent is fine.
fn remove_file(path: &Path) -> Result<(), RenderError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RenderError::Remove {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so readers see the old or the
/// new file, never a partial one. /etc is a tmpfs: no fsync.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), RenderError> {
    let err = |source| RenderError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("berth-tmp");
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use host::systemd::{Call, RecordingSystemd};
    use serde_json::json;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// A root with the shipped templates and a fake /proc/sys.
    fn fixture_root() -> (tempfile::TempDir, Metadata) {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("usr/share/berth/templates");
        std::fs::create_dir_all(&templates).unwrap();
        for entry in std::fs::read_dir(workspace().join("agents/boot-config/templates")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), templates.join(entry.file_name())).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("proc/sys/vm")).unwrap();
        std::fs::write(dir.path().join("proc/sys/vm/max_map_count"), "65530\n").unwrap();
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(dir.path().join("proc/sys/kernel/hostname"), "vm\n").unwrap();
        // The shipped defaults raise lockdown (CIS); the kernel's file as it reads at boot.
        std::fs::create_dir_all(dir.path().join("sys/kernel/security")).unwrap();
        std::fs::write(
            dir.path().join("sys/kernel/security/lockdown"),
            "[none] integrity confidentiality\n",
        )
        .unwrap();
        // Two stand-ins for Debian's Mozilla certificates.
        let mozilla = dir.path().join("usr/share/ca-certificates/mozilla");
        std::fs::create_dir_all(&mozilla).unwrap();
        for entry in std::fs::read_dir(fixtures().join("mozilla")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), mozilla.join(entry.file_name())).unwrap();
        }
        let md = Metadata::load(&workspace().join("variants/shared/metadata.toml")).unwrap();
        (dir, md)
    }

    fn fixtures() -> PathBuf {
        workspace().join("agents/boot-config/tests/fixtures")
    }

    fn b64(data: &[u8]) -> String {
        settings_api::pem::encode_base64(data)
    }

    fn corp_ca() -> String {
        std::fs::read_to_string(fixtures().join("corp-ca.pem")).unwrap()
    }

    fn settings() -> Value {
        json!({
            "motd": "Welcome to Berth",
            "ntp": {
                "time-servers": ["time.example.com", "ntp://pool.example.org"],
                "options": ["nts", "maxsources 2"],
            },
            "kernel": {
                "sysctl": {"vm.max_map_count": "262144"},
                "modules": {
                    "udf": {"allowed": false},
                    "sctp": {"allowed": false, "autoload": false},
                    "loop": {"allowed": true},
                },
                "lockdown": "integrity",
            },
        })
    }

    /// Every setting the host services read, for the golden files.
    fn full_settings() -> Value {
        let beta =
            std::fs::read_to_string(fixtures().join("mozilla/Berth_Test_Beta_Root.crt")).unwrap();
        let mut s = settings();
        s["network"] = json!({
            "hostname": "node-1.example.com",
            "https-proxy": "http://proxy.example.com:3128",
            "no-proxy": [".example.com", "10.0.0.0/8"],
        });
        s["dns"] = json!({"name-servers": ["10.0.2.3", "fd00::3"], "search-list": ["example.com", "corp.example"]});
        s["pki"] = json!({
            "corp": {"data": b64(corp_ca().as_bytes()), "trusted": true},
            "no-beta": {"data": b64(beta.as_bytes()), "trusted": false},
        });
        s["container-registry"] = json!({
            "mirrors": [
                {"registry": "docker.io", "endpoint": ["https://mirror.example.com", "https://mirror2.example.com"]},
                {"registry": "*", "endpoint": ["https://all.example.com"]},
            ],
            "credentials": [
                {"registry": "docker.io", "username": "me", "password": "pa\"ss\\word"},
                {"registry": "registry.example.com:5000", "auth": "bWU6cGFzcw=="},
            ],
        });
        s
    }

    fn golden(name: &str, got: &str) {
        let path = fixtures().join(name);
        if std::env::var_os("BERTH_BLESS").is_some() {
            std::fs::write(&path, got).unwrap();
        }
        assert_eq!(
            got,
            std::fs::read_to_string(&path).unwrap(),
            "run with BERTH_BLESS=1 to update {}",
            path.display()
        );
    }

    #[test]
    fn renders_shipped_templates_matching_golden_files() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let plan = r.render(&settings(), &[]).unwrap();
        assert!(!plan.written.is_empty());
        golden(
            "chrony.conf",
            &std::fs::read_to_string(root.path().join("etc/chrony/chrony.conf")).unwrap(),
        );
        golden(
            "motd",
            &std::fs::read_to_string(root.path().join("etc/motd")).unwrap(),
        );
        golden(
            "berth-modules.conf",
            &std::fs::read_to_string(root.path().join("etc/modprobe.d/berth-modules.conf"))
                .unwrap(),
        );
    }

    #[test]
    fn shipped_defaults_disable_the_cis_modules_without_a_shell() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let text = std::fs::read_to_string(workspace().join("variants/shared/defaults/base.toml"))
            .unwrap();
        let defaults: toml::Value = toml::from_str(&text).unwrap();
        let settings = serde_json::to_value(&defaults["settings"]).unwrap();
        r.render(&settings, &["kernel-modules".to_string()])
            .unwrap();
        let conf =
            std::fs::read_to_string(root.path().join("etc/modprobe.d/berth-modules.conf")).unwrap();
        for m in [
            "udf", "cramfs", "freevxfs", "hfs", "hfsplus", "jffs2", "sctp", "dccp", "rds", "tipc",
        ] {
            assert!(conf.contains(&format!("\nblacklist {m}\n")), "{m}: {conf}");
            assert!(
                conf.contains(&format!("\ninstall {m} /usr/bin/false\n")),
                "{m}: {conf}"
            );
        }
    }

    #[test]
    fn lockdown_is_raised_never_lowered() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let file = root.path().join("sys/kernel/security/lockdown");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "[none] integrity confidentiality\n").unwrap();
        let units = RecordingSystemd::default();
        let plan = r.render(&settings(), &["lockdown".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units, Mode::Live).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "integrity");
        assert!(units.calls().is_empty(), "lockdown restarts no unit");

        // The kernel shows the new mode; asking for it again writes nothing.
        std::fs::write(&file, "none [integrity] confidentiality\n").unwrap();
        r.finish(&settings(), &plan, &units, Mode::Live).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "none [integrity] confidentiality\n"
        );

        let lower = json!({"kernel": {"lockdown": "none"}});
        let e = r.finish(&lower, &plan, &units, Mode::Live).unwrap_err();
        assert!(e.to_string().contains("can only be raised"), "{e}");
        assert!(matches!(e, RenderError::LockdownLower { .. }));

        std::fs::remove_file(&file).unwrap();
        let e = r
            .finish(&settings(), &plan, &units, Mode::Live)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("settings.kernel.lockdown 'integrity'"),
            "{e}"
        );
    }

    fn read(root: &tempfile::TempDir, path: &str) -> String {
        std::fs::read_to_string(root.path().join(path)).unwrap()
    }

    #[test]
    fn renders_host_services_matching_golden_files() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let plan = r.render(&full_settings(), &[]).unwrap();
        for (fixture, path) in [
            ("hostname", "etc/hostname"),
            ("hosts", "etc/hosts"),
            ("proxy.env", "etc/network/proxy.env"),
            ("resolved.conf", "etc/systemd/resolved.conf.d/berth.conf"),
            ("ca-certificates.crt", "etc/ssl/certs/ca-certificates.crt"),
            ("containerd-config.toml", "etc/containerd/config.toml"),
        ] {
            golden(fixture, &read(&root, path));
        }
        // What the goldens mean: the trusted bundle is added, the distrusted one removed.
        let bundle = read(&root, "etc/ssl/certs/ca-certificates.crt");
        let bodies = certificate_bodies(&bundle);
        assert_eq!(bodies.len(), 2, "{bundle}");
        assert_eq!(bodies[1], certificate_bodies(&corp_ca())[0]);
        assert!(bundle.contains("# settings.pki.corp"));
        let containerd = read(&root, "etc/containerd/config.toml");
        let parsed: toml::Table = toml::from_str(&containerd).expect("containerd config is TOML");
        let registry = &parsed["plugins"]["io.containerd.grpc.v1.cri"]["registry"];
        assert_eq!(
            registry["mirrors"]["docker.io"]["endpoint"][1].as_str(),
            Some("https://mirror2.example.com")
        );
        assert_eq!(
            registry["configs"]["registry-1.docker.io"]["auth"]["password"].as_str(),
            Some("pa\"ss\\word")
        );
        let mode = std::fs::metadata(root.path().join("etc/containerd/config.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "registry credentials are root-only");

        // apply-hostname sets the kernel host name; the running units are try-restarted.
        let units =
            RecordingSystemd::with_active(&["containerd.service", "systemd-resolved.service"]);
        r.finish(&full_settings(), &plan, &units, Mode::Boot)
            .unwrap();
        assert_eq!(
            read(&root, "proc/sys/kernel/hostname"),
            "node-1.example.com"
        );
        let recorded = units.calls();
        assert!(
            recorded
                .iter()
                .all(|call| matches!(call, Call::Run(Job::TryRestart, _))),
            "boot mode only try-restarts: {recorded:?}"
        );
        assert!(
            !recorded.is_empty(),
            "running units are restarted at boot too"
        );
    }

    /// Kubernetes nodes get the pause image the variant ships as sandbox image (or the one
    /// the user names), nodeadm's CDI and discard_unpacked_layers, and the cluster agent's
    /// base runtime spec; other hosts' containerd config has none of it.
    #[test]
    fn kubernetes_nodes_get_the_sandbox_image_and_nodeadms_containerd_defaults() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let containerd = ["containerd".to_string()];
        let cri = |s: &Value| -> toml::Table {
            r.render(s, &containerd).unwrap();
            let t: toml::Table =
                toml::from_str(&read(&root, "etc/containerd/config.toml")).unwrap();
            t["plugins"]["io.containerd.grpc.v1.cri"]
                .as_table()
                .unwrap()
                .clone()
        };
        let mut s = settings();
        s["kubernetes"] = json!({"cluster-name": "c"});
        let node = cri(&s);
        golden(
            "containerd-config-kubernetes.toml",
            &read(&root, "etc/containerd/config.toml"),
        );
        assert_eq!(
            node["sandbox_image"].as_str(),
            Some("localhost/berth/pause:1")
        );
        assert_eq!(node["enable_cdi"].as_bool(), Some(true));
        assert_eq!(
            node["containerd"]["discard_unpacked_layers"].as_bool(),
            Some(true)
        );
        assert_eq!(
            node["containerd"]["runtimes"]["runc"]["base_runtime_spec"].as_str(),
            Some("/etc/containerd/base-runtime-spec.json")
        );
        s["kubernetes"]["pod-infra-container-image"] =
            json!("123456789012.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.10");
        assert_eq!(
            cri(&s)["sandbox_image"].as_str(),
            Some("123456789012.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.10")
        );
        let other = cri(&settings());
        for key in ["sandbox_image", "enable_cdi"] {
            assert!(other.get(key).is_none(), "{key}");
        }
        assert!(other["containerd"]["runtimes"]["runc"]
            .get("base_runtime_spec")
            .is_none());
        // A live change of the image re-renders containerd's config (and runs the agent).
        let services = md.affected_services(
            &settings_api::key::Key::parse_setting("kubernetes.pod-infra-container-image").unwrap(),
        );
        assert_eq!(
            services,
            ["containerd".to_string(), "kubernetes".to_string()].into()
        );
        let services = md.affected_services(
            &settings_api::key::Key::parse_setting("oci-defaults.capabilities.net-raw").unwrap(),
        );
        assert_eq!(services, ["kubernetes".to_string()].into());
    }

    #[test]
    fn firewall_ruleset_exists_only_while_enabled() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let firewall = ["firewall".to_string()];
        let services = md.affected_services(
            &settings_api::key::Key::parse_setting("network.firewall.inbound-tcp-ports").unwrap(),
        );
        assert_eq!(services, ["firewall".to_string()].into());
        let mut s = settings();
        s["network"] = json!({"firewall": {
            "enabled": true,
            "inbound-tcp-ports": [10250, 22, 10250],
            "inbound-udp-ports": [4789],
            "forward-interfaces": ["veth*", "eni*", "docker0"],
        }});
        let plan = r.render(&s, &firewall).unwrap();
        golden("nftables.conf", &read(&root, "etc/nftables.conf"));
        golden(
            "firewall-enabled.nft",
            &read(&root, "etc/berth/firewall.nft"),
        );
        let mode = std::fs::metadata(root.path().join("etc/nftables.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let units = RecordingSystemd::default();
        r.finish(&s, &plan, &units, Mode::Live).unwrap();
        assert_eq!(
            units.calls(),
            [Call::Run(Job::Restart, "berth-firewall.service".into())]
        );

        // No port listed: no port rule at all (not an empty set, which nft refuses).
        s["network"]["firewall"]["inbound-tcp-ports"] = json!([]);
        s["network"]["firewall"]
            .as_object_mut()
            .unwrap()
            .remove("inbound-udp-ports");
        r.render(&s, &firewall).unwrap();
        let rules = read(&root, "etc/nftables.conf");
        assert!(!rules.contains("tcp dport"), "{rules}");
        assert!(!rules.contains("udp dport {"), "{rules}");

        // Disabled (or never set): the ruleset is removed, the loader deletes the table.
        for off in [json!({"firewall": {"enabled": false}}), json!({})] {
            s["network"] = off;
            let plan = r.render(&s, &firewall).unwrap();
            assert!(!root.path().join("etc/nftables.conf").exists());
            assert_eq!(plan.removed, vec![root.path().join("etc/nftables.conf")]);
            golden(
                "firewall-disabled.nft",
                &read(&root, "etc/berth/firewall.nft"),
            );
        }
    }

    #[test]
    fn renders_defaults_when_host_settings_are_unset() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let plan = r.render(&settings(), &[]).unwrap();
        assert_eq!(read(&root, "etc/hostname"), "localhost\n");
        assert!(!read(&root, "etc/hosts").contains("127.0.1.1"));
        assert!(!read(&root, "etc/network/proxy.env").contains("PROXY="));
        let resolved = read(&root, "etc/systemd/resolved.conf.d/berth.conf");
        assert!(
            resolved.contains("[Resolve]") && !resolved.contains("DNS="),
            "{resolved}"
        );
        let bundle = read(&root, "etc/ssl/certs/ca-certificates.crt");
        assert_eq!(
            certificate_bodies(&bundle).len(),
            2,
            "the Mozilla part only"
        );
        let containerd: toml::Table =
            toml::from_str(&read(&root, "etc/containerd/config.toml")).unwrap();
        assert!(containerd["plugins"]["io.containerd.grpc.v1.cri"]
            .get("registry")
            .is_none());
        r.finish(&settings(), &plan, &RecordingSystemd::default(), Mode::Live)
            .unwrap();
        assert_eq!(read(&root, "proc/sys/kernel/hostname"), "localhost");
    }

    #[test]
    fn long_host_names_give_the_kernel_their_first_label() {
        let long = format!("{}.{}.example.com", "a".repeat(40), "b".repeat(40));
        assert_eq!(kernel_hostname(&long), "a".repeat(40));
        assert_eq!(kernel_hostname("node-1.example.com"), "node-1.example.com");
        assert_eq!(toml_string("a\"b\\c\n"), r#""a\"b\\c\n""#);
    }

    #[test]
    fn unit_files_written_reload_systemd_before_restarts() {
        let (root, _) = fixture_root();
        // A service whose file is a drop-in under /etc/systemd/system.
        let text = r#"
            [affected-services]
            "motd" = ["dropin"]
            [services.dropin]
            configuration-files = ["dropin-conf"]
            restart-commands = ["restart example.service"]
            [configuration-files.dropin-conf]
            path = "/etc/systemd/system/example.service.d/berth.conf"
            template-path = "/usr/share/berth/templates/motd"
        "#;
        let md = Metadata::parse(text, Path::new("test.toml")).unwrap();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let units = RecordingSystemd::default();
        let plan = r.render(&settings(), &["dropin".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units, Mode::Live).unwrap();
        assert_eq!(
            units.calls(),
            [
                Call::DaemonReload,
                Call::Run(Job::Restart, "example.service".into())
            ]
        );
        // A plain file does not reload.
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let units = RecordingSystemd::default();
        let plan = r.render(&settings(), &["chronyd".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units, Mode::Live).unwrap();
        assert!(!units.calls().contains(&Call::DaemonReload));
    }

    #[test]
    fn kubernetes_changes_run_the_cluster_agent_live_only_and_only_where_installed() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let services = md.affected_services(
            &settings_api::key::Key::parse_setting("kubernetes.max-pods").unwrap(),
        );
        assert_eq!(services, ["kubernetes".to_string()].into());
        let ecs =
            md.affected_services(&settings_api::key::Key::parse_setting("ecs.cluster").unwrap());
        assert_eq!(ecs, ["ecs".to_string()].into());
        assert_eq!(md.services["ecs"].restart_commands, ["apply-cluster"]);
        let plan = r.render(&settings(), &["kubernetes".to_string()]).unwrap();
        assert!(plan.written.is_empty(), "the agent writes kubelet's files");
        // Not installed (a variant without Kubernetes): nothing to run, no error.
        r.finish(&settings(), &plan, &RecordingSystemd::default(), Mode::Live)
            .unwrap();
        // A stand-in agent that records its arguments, or fails when asked to.
        let agent = root.path().join(CLUSTER_AGENT.trim_start_matches('/'));
        std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
        let record = root.path().join("agent-args");
        let script = |exit: u8| {
            format!(
                "#!/bin/sh\necho \"$@\" >> {}\nexit {exit}\n",
                record.display()
            )
        };
        std::fs::write(&agent, script(0)).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        r.finish(&settings(), &plan, &RecordingSystemd::default(), Mode::Boot)
            .unwrap();
        assert!(!record.exists(), "at boot the agent's boot step renders");
        r.finish(&settings(), &plan, &RecordingSystemd::default(), Mode::Live)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&record).unwrap(), "apply\n");
        std::fs::write(&agent, script(3)).unwrap();
        let e = r
            .finish(&settings(), &plan, &RecordingSystemd::default(), Mode::Live)
            .unwrap_err();
        assert!(
            e.to_string().contains("berth-cluster-agent apply failed"),
            "{e}"
        );
    }

    #[test]
    fn restarts_exactly_the_units_of_the_asked_services_and_sets_sysctls() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let units = RecordingSystemd::with_active(&["chrony.service"]);
        let plan = r.render(&settings(), &["chronyd".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units, Mode::Live).unwrap();
        assert_eq!(
            units.calls(),
            [Call::Run(Job::TryRestart, "chrony.service".into())]
        );
        assert!(
            !root.path().join("etc/motd").exists(),
            "motd was not asked for"
        );

        let plan = r.render(&settings(), &["sysctl".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units, Mode::Live).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("proc/sys/vm/max_map_count")).unwrap(),
            "262144"
        );
        assert_eq!(units.calls().len(), 1, "sysctl restarts no unit");
    }

    #[test]
    fn errors_name_the_service_or_key() {
        let (root, md) = fixture_root();
        let r = Renderer {
            metadata: &md,
            root: root.path(),
        };
        let e = r.render(&settings(), &["nope".to_string()]).unwrap_err();
        assert!(e.to_string().contains("'nope'"), "{e}");
        let bad = json!({"kernel": {"sysctl": {"net.no.such": "1"}}});
        let plan = r.render(&bad, &["sysctl".to_string()]).unwrap();
        let e = r
            .finish(&bad, &plan, &RecordingSystemd::default(), Mode::Live)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("settings.kernel.sysctl.\"net.no.such\""),
            "{e}"
        );
        assert!(matches!(
            parse_action("x", "systemctl stop a.service"),
            Err(RenderError::Command { .. })
        ));
        assert_eq!(
            parse_action("x", "/usr/bin/systemctl try-restart a.service").unwrap(),
            Action::Unit(Job::TryRestart, "a.service".to_string())
        );
    }
}
