//! Renders the configuration files of services from the live settings and applies them:
//! built-in actions (sysctl) and unit restarts through systemd.
//!
//! `restart-commands` in the metadata are actions, not shell commands (production images have
//! no shell): `restart UNIT`, `try-restart UNIT`, `reload-or-restart UNIT` (a leading
//! `systemctl` is accepted and ignored), `apply-sysctl`, which writes every
//! `settings.kernel.sysctl` value to `/proc/sys`, or `apply-lockdown`, which writes
//! `settings.kernel.lockdown` to `/sys/kernel/security/lockdown`.

use crate::systemd::{Units, Verb};
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
    #[error("configuration file {file}: mode '{mode}' is not octal")]
    Mode { file: String, mode: String },
    #[error("service '{service}': restart command '{command}' is not `[systemctl] restart|try-restart|reload-or-restart UNIT`, `apply-sysctl` or `apply-lockdown`")]
    Command { service: String, command: String },
    #[error("failed to set sysctl {keys}")]
    Sysctl { keys: String },
    #[error("failed to set settings.kernel.lockdown '{mode}' in {path}")]
    Lockdown {
        mode: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("settings.kernel.lockdown '{mode}' is below the kernel's current mode '{current}'; lockdown can only be raised, a reboot lowers it")]
    LockdownLower { mode: String, current: String },
    #[error("failed to restart {unit} for service '{service}'")]
    Restart {
        unit: String,
        service: String,
        source: anyhow::Error,
    },
}

/// One action from a service's `restart-commands`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Unit(Verb, String),
    ApplySysctl,
    ApplyLockdown,
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
        ["apply-lockdown"] => Ok(Action::ApplyLockdown),
        [verb, unit] => match Verb::parse(verb) {
            Some(v) => Ok(Action::Unit(v, (*unit).to_string())),
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
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
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
                let dest = self.under(&file.path);
                write_atomic(&dest, text.as_bytes(), mode)?;
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

    /// Runs the built-in actions of the plan (sysctl, lockdown).
    pub fn apply_builtins(&self, settings: &Value, plan: &Plan) -> Result<(), RenderError> {
        let wants = |action: Action| {
            plan.services
                .iter()
                .any(|(_, actions)| actions.contains(&action))
        };
        if wants(Action::ApplySysctl) {
            self.apply_sysctl(settings)?;
        }
        if wants(Action::ApplyLockdown) {
            self.apply_lockdown(settings)?;
        }
        Ok(())
    }

    /// Built-in actions, then unit restarts, in service order.
    pub fn finish(
        &self,
        settings: &Value,
        plan: &Plan,
        units: &dyn Units,
    ) -> Result<(), RenderError> {
        self.apply_builtins(settings, plan)?;
        for (service, actions) in &plan.services {
            for action in actions {
                if let Action::Unit(verb, unit) = action {
                    units
                        .restart(*verb, unit)
                        .map_err(|source| RenderError::Restart {
                            unit: unit.clone(),
                            service: service.clone(),
                            source,
                        })?;
                }
            }
        }
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
    use crate::systemd::RecordingUnits;
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
        let md = Metadata::load(&workspace().join("variants/shared/metadata.toml")).unwrap();
        (dir, md)
    }

    fn settings() -> Value {
        json!({
            "motd": "Welcome to Berth",
            "ntp": {"time-servers": ["time.example.com", "ntp://pool.example.org"]},
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

    fn golden(name: &str, got: &str) {
        let path = workspace()
            .join("agents/boot-config/tests/fixtures")
            .join(name);
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
        let units = RecordingUnits::default();
        let plan = r.render(&settings(), &["lockdown".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "integrity");
        assert!(
            units.0.lock().unwrap().is_empty(),
            "lockdown restarts no unit"
        );

        // The kernel shows the new mode; asking for it again writes nothing.
        std::fs::write(&file, "none [integrity] confidentiality\n").unwrap();
        r.finish(&settings(), &plan, &units).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "none [integrity] confidentiality\n"
        );

        let lower = json!({"kernel": {"lockdown": "none"}});
        let e = r.finish(&lower, &plan, &units).unwrap_err();
        assert!(e.to_string().contains("can only be raised"), "{e}");
        assert!(matches!(e, RenderError::LockdownLower { .. }));

        std::fs::remove_file(&file).unwrap();
        let e = r.finish(&settings(), &plan, &units).unwrap_err();
        assert!(
            e.to_string()
                .contains("settings.kernel.lockdown 'integrity'"),
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
        let units = RecordingUnits::default();
        let plan = r.render(&settings(), &["chronyd".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units).unwrap();
        assert_eq!(
            *units.0.lock().unwrap(),
            vec![(Verb::TryRestart, "chrony.service".to_string())]
        );
        assert!(
            !root.path().join("etc/motd").exists(),
            "motd was not asked for"
        );

        let plan = r.render(&settings(), &["sysctl".to_string()]).unwrap();
        r.finish(&settings(), &plan, &units).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("proc/sys/vm/max_map_count")).unwrap(),
            "262144"
        );
        assert_eq!(units.0.lock().unwrap().len(), 1, "sysctl restarts no unit");
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
            .finish(&bad, &plan, &RecordingUnits::default())
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
            Action::Unit(Verb::TryRestart, "a.service".to_string())
        );
    }
}
