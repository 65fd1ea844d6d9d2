//! Renders the configuration files of services from the live settings and applies them:
//! built-in actions (sysctl) and unit restarts through systemd.
//!
//! `restart-commands` in the metadata are actions, not shell commands (production images have
//! no shell): `restart UNIT`, `try-restart UNIT`, `reload-or-restart UNIT` (a leading
//! `systemctl` is accepted and ignored), or `apply-sysctl`, which writes every
//! `settings.kernel.sysctl` value to `/proc/sys`.

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
    #[error("service '{service}': restart command '{command}' is not `[systemctl] restart|try-restart|reload-or-restart UNIT` or `apply-sysctl`")]
    Command { service: String, command: String },
    #[error("failed to set sysctl {keys}")]
    Sysctl { keys: String },
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

    /// Runs the built-in actions of the plan (sysctl).
    pub fn apply_builtins(&self, settings: &Value, plan: &Plan) -> Result<(), RenderError> {
        let wants_sysctl = plan
            .services
            .iter()
            .any(|(_, actions)| actions.contains(&Action::ApplySysctl));
        if wants_sysctl {
            self.apply_sysctl(settings)?;
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
            "kernel": {"sysctl": {"vm.max_map_count": "262144"}},
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
