//! The ECS agent's configuration: `/etc/ecs/ecs.config`, a systemd `EnvironmentFile` that
//! `ecs.service` passes to the agent.
//!
//! Variables and defaults follow Bottlerocket's ECS templates (`ecs-base-conf`,
//! `ecs-defaults.conf`), which match the agent's own defaults, except where the host says
//! otherwise (README, "ECS"). Every name is one the agent reads: `data/ecs-agent-environment.txt`
//! lists them for the agent version Berth targets, and a test pins the names written here to
//! that list. Values are written unquoted, in systemd's `EnvironmentFile` syntax: inner
//! spaces and quotes (the JSON values) are kept as they are, and a backslash is doubled
//! because systemd reads it as an escape.

use super::{OutputFile, RenderError};
use crate::facts::Facts;
use crate::paths;
use serde_json::{Map, Value};
use settings_api::model::{Ecs, EcsLogLevel, ImagePullBehavior, Settings};
use std::collections::BTreeMap;

/// Logging drivers offered when `settings.ecs.logging-drivers` is not set: Bottlerocket's
/// list. The agent's own default (`json-file`, `none`) leaves out `awslogs`, so tasks that log
/// to CloudWatch could not be placed.
const DEFAULT_LOGGING_DRIVERS: [&str; 3] = ["json-file", "awslogs", "none"];

/// The agent's metadata endpoint throttle: sustained requests per second and burst.
const DEFAULT_METADATA_RPS: i64 = 40;
const DEFAULT_METADATA_BURST: i64 = 60;

fn invalid(key: &str, reason: impl Into<String>) -> RenderError {
    RenderError::InvalidSetting {
        key: format!("settings.ecs.{key}"),
        reason: reason.into(),
    }
}

fn duration(
    ecs_value: Option<&settings_api::model::NonEmpty>,
    key: &str,
    default: &str,
) -> Result<String, RenderError> {
    match ecs_value {
        Some(v) => {
            crate::duration::check(v.as_ref()).map_err(|r| invalid(key, r))?;
            Ok(v.as_ref().to_string())
        }
        None => Ok(default.to_string()),
    }
}

/// The variables, by name.
pub fn variables(
    ecs: &Ecs,
    settings: &Settings,
    facts: &Facts,
) -> Result<BTreeMap<&'static str, String>, RenderError> {
    if settings.oci_defaults.is_some() && settings.kubernetes.is_none() {
        // containerd's base runtime spec is for Kubernetes pods; dockerd has no default
        // capability set to change, so on an ECS instance the settings would do nothing.
        return Err(RenderError::InvalidSetting {
            key: "settings.oci-defaults".to_string(),
            reason: "applies to Kubernetes pods only (containerd's base runtime spec); ECS tasks \
                     set their own limits and capabilities in the task definition (ulimits, \
                     linuxParameters.capabilities); remove it"
                .to_string(),
        });
    }
    let mut v = BTreeMap::new();
    let flag = |b: bool| b.to_string();

    // Paths and features that are fixed on Berth.
    v.insert("ECS_AUDIT_LOGFILE", paths::ECS_AUDIT_LOGFILE.to_string());
    v.insert("ECS_DATADIR", paths::ECS_DATADIR.to_string());
    v.insert("ECS_LOGFILE", paths::ECS_LOGFILE.to_string());
    v.insert("ECS_ENABLE_AWSLOGS_EXECUTIONROLE_OVERRIDE", flag(true));
    // Task IAM roles, also for host-network tasks.
    v.insert("ECS_ENABLE_TASK_IAM_ROLE", flag(true));
    v.insert("ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST", flag(true));
    // docker runs with selinux-enabled (variants/shared/ecs.toml): every container is labelled
    // container_t with its own categories, and tasks' `label:` security options are honoured.
    v.insert("ECS_SELINUX_CAPABLE", flag(true));
    // ECS_ENABLE_TASK_ENI is left at the agent's default (false): awsvpc tasks need the
    // agent's CNI plugins, which Berth does not ship yet, so the instance must not offer them.

    // From settings.
    if let Some(cluster) = &ecs.cluster {
        v.insert("ECS_CLUSTER", cluster.as_ref().to_string());
    }
    // The API says "allow"; the agent's variable says "disable".
    v.insert(
        "ECS_DISABLE_PRIVILEGED",
        flag(!ecs.allow_privileged_containers.unwrap_or(false)),
    );
    let drivers: Vec<&str> = match &ecs.logging_drivers {
        Some(list) => list.iter().map(|d| d.as_ref()).collect(),
        None => DEFAULT_LOGGING_DRIVERS.to_vec(),
    };
    let json = serde_json::to_string(&drivers).map_err(|source| RenderError::Serialize {
        what: "ECS logging drivers",
        source,
    })?;
    v.insert("ECS_AVAILABLE_LOGGING_DRIVERS", json);
    let level = match ecs.loglevel.unwrap_or(EcsLogLevel::Info) {
        EcsLogLevel::Debug => "debug",
        EcsLogLevel::Info => "info",
        EcsLogLevel::Warn => "warn",
        EcsLogLevel::Error => "error",
        EcsLogLevel::Crit => "crit",
    };
    v.insert("ECS_LOGLEVEL", level.to_string());
    v.insert(
        "ECS_ENABLE_SPOT_INSTANCE_DRAINING",
        flag(ecs.enable_spot_instance_draining.unwrap_or(false)),
    );
    let pull = match ecs
        .image_pull_behavior
        .unwrap_or(ImagePullBehavior::Default)
    {
        ImagePullBehavior::Default => "default",
        ImagePullBehavior::Always => "always",
        ImagePullBehavior::Once => "once",
        ImagePullBehavior::PreferCached => "prefer-cached",
    };
    v.insert("ECS_IMAGE_PULL_BEHAVIOR", pull.to_string());
    v.insert(
        "ECS_CONTAINER_STOP_TIMEOUT",
        duration(
            ecs.container_stop_timeout.as_ref(),
            "container-stop-timeout",
            "30s",
        )?,
    );
    v.insert(
        "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION",
        duration(ecs.task_cleanup_wait.as_ref(), "task-cleanup-wait", "3h")?,
    );
    let rps = ecs
        .metadata_service_rps
        .map_or(DEFAULT_METADATA_RPS, i64::from);
    let burst = ecs
        .metadata_service_burst
        .map_or(DEFAULT_METADATA_BURST, i64::from);
    if burst < rps {
        // The agent's token bucket cannot refill faster than it may hold.
        return Err(invalid(
            "metadata-service-burst",
            format!("{burst} must be at least metadata-service-rps ({rps})"),
        ));
    }
    v.insert("ECS_TASK_METADATA_RPS_LIMIT", format!("{rps},{burst}"));
    v.insert(
        "ECS_RESERVED_MEMORY",
        ecs.reserved_memory.map_or(0, i64::from).to_string(),
    );
    v.insert(
        "ECS_AWSVPC_BLOCK_IMDS",
        flag(ecs.awsvpc_block_imds.unwrap_or(false)),
    );
    v.insert(
        "ECS_ENABLE_CONTAINER_METADATA",
        flag(ecs.enable_container_metadata.unwrap_or(false)),
    );

    let mut attributes = Map::new();
    if let Some(variant) = &facts.variant {
        attributes.insert("berth.variant".into(), variant.as_str().into());
    }
    for (k, val) in ecs.instance_attributes.iter().flatten() {
        attributes.insert(k.as_ref().to_string(), val.as_str().into());
    }
    if !attributes.is_empty() {
        v.insert(
            "ECS_INSTANCE_ATTRIBUTES",
            Value::Object(attributes).to_string(),
        );
    }

    if let Some(creds) = settings
        .container_registry
        .as_ref()
        .and_then(|r| r.credentials.as_ref())
        .filter(|c| !c.is_empty())
    {
        let mut auth = Map::new();
        for c in creds {
            // Docker Hub's credentials are keyed by its v1 index URL in dockercfg.
            let registry = match c.registry.as_ref() {
                "docker.io" => "https://index.docker.io/v1/",
                other => other,
            };
            let mut entry = Map::new();
            entry.insert("email".into(), ".".into());
            if let Some(a) = &c.auth {
                entry.insert("auth".into(), a.as_ref().into());
            }
            if let Some(u) = &c.username {
                entry.insert("username".into(), u.as_str().into());
            }
            if let Some(p) = &c.password {
                entry.insert("password".into(), p.as_str().into());
            }
            auth.insert(registry.to_string(), Value::Object(entry));
        }
        v.insert("ECS_ENGINE_AUTH_TYPE", "dockercfg".to_string());
        v.insert("ECS_ENGINE_AUTH_DATA", Value::Object(auth).to_string());
    }

    for (name, value) in &v {
        if value.chars().any(char::is_control) || value.trim() != value {
            // An env file line cannot carry these unquoted; only user text can have them.
            return Err(RenderError::InvalidSetting {
                key: setting_of(name).to_string(),
                reason: format!(
                    "{name} would hold a control character (a line break, a tab) or surrounding \
                     spaces ({value:?}); remove them from the setting"
                ),
            });
        }
    }
    Ok(v)
}

/// The setting a variable's user text comes from, for error messages.
fn setting_of(variable: &str) -> &'static str {
    match variable {
        "ECS_CLUSTER" => "settings.ecs.cluster",
        "ECS_AVAILABLE_LOGGING_DRIVERS" => "settings.ecs.logging-drivers",
        "ECS_INSTANCE_ATTRIBUTES" => "settings.ecs.instance-attributes",
        "ECS_CONTAINER_STOP_TIMEOUT" => "settings.ecs.container-stop-timeout",
        "ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION" => "settings.ecs.task-cleanup-wait",
        "ECS_ENGINE_AUTH_DATA" => "settings.container-registry.credentials",
        _ => "settings.ecs",
    }
}

/// `/etc/ecs/ecs.config`, 0600 since registry credentials may be in it.
pub fn config_file(
    ecs: &Ecs,
    settings: &Settings,
    facts: &Facts,
) -> Result<OutputFile, RenderError> {
    let text: String = variables(ecs, settings, facts)?
        .into_iter()
        .map(|(k, v)| format!("{k}={}\n", v.replace('\\', "\\\\")))
        .collect();
    Ok(OutputFile::new(paths::ECS_CONFIG, 0o600, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The names `data/ecs-agent-environment.txt` lists: what the targeted agent reads.
    fn agent_reads() -> Vec<&'static str> {
        include_str!("../../data/ecs-agent-environment.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    }

    fn every_setting() -> Settings {
        Settings::from_json(&json!({
            "ecs": {
                "cluster": "c",
                "instance-attributes": {"team": "a"},
                "allow-privileged-containers": true,
                "logging-drivers": ["json-file"],
                "loglevel": "debug",
                "enable-spot-instance-draining": true,
                "image-pull-behavior": "once",
                "container-stop-timeout": "1m",
                "task-cleanup-wait": "1h",
                "metadata-service-rps": 10,
                "metadata-service-burst": 20,
                "reserved-memory": 64,
                "awsvpc-block-imds": true,
                "enable-container-metadata": true
            },
            "container-registry": {"credentials": [{"registry": "docker.io", "auth": "aGk="}]}
        }))
        .expect("valid settings")
    }

    #[test]
    fn every_variable_written_is_one_the_agent_reads() {
        let reads = agent_reads();
        assert!(reads.len() > 80, "the list is read: {}", reads.len());
        for settings in [
            every_setting(),
            Settings::from_json(&json!({"ecs": {}})).unwrap(),
        ] {
            let ecs = settings.ecs.as_ref().expect("ecs settings");
            let facts = Facts {
                variant: Some("aws-ecs".into()),
                ..Facts::default()
            };
            for name in variables(ecs, &settings, &facts).expect("render").keys() {
                assert!(reads.contains(name), "{name} is not read by the ECS agent");
            }
        }
    }

    #[test]
    fn ecs_service_sets_only_variables_the_agent_reads() {
        let reads = agent_reads();
        let unit = include_str!("../../units/ecs.service");
        let names: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("Environment="))
            .filter_map(|l| l.split_once('=').map(|(name, _)| name))
            .collect();
        assert!(!names.is_empty());
        for name in names {
            assert!(reads.contains(&name), "ecs.service sets {name}");
        }
    }

    #[test]
    fn the_list_catches_the_old_misspelling() {
        // The name Berth wrote before: the agent never read it, so privileged tasks ran.
        assert!(!agent_reads().contains(&"ECS_PRIVILEGED_DISABLED"));
        assert!(agent_reads().contains(&"ECS_DISABLE_PRIVILEGED"));
    }

    #[test]
    fn privileged_containers_are_disabled_unless_allowed() {
        let facts = Facts::default();
        let default = Settings::from_json(&json!({"ecs": {}})).unwrap();
        let v = variables(default.ecs.as_ref().unwrap(), &default, &facts).unwrap();
        assert_eq!(v["ECS_DISABLE_PRIVILEGED"], "true");
        let allowed = every_setting();
        let v = variables(allowed.ecs.as_ref().unwrap(), &allowed, &facts).unwrap();
        assert_eq!(v["ECS_DISABLE_PRIVILEGED"], "false");
    }

    #[test]
    fn logging_drivers_default_to_bottlerockets_and_the_setting_replaces_them() {
        let facts = Facts::default();
        let default = Settings::from_json(&json!({"ecs": {}})).unwrap();
        let v = variables(default.ecs.as_ref().unwrap(), &default, &facts).unwrap();
        assert_eq!(
            v["ECS_AVAILABLE_LOGGING_DRIVERS"],
            r#"["json-file","awslogs","none"]"#
        );
        let set = every_setting();
        let v = variables(set.ecs.as_ref().unwrap(), &set, &facts).unwrap();
        assert_eq!(v["ECS_AVAILABLE_LOGGING_DRIVERS"], r#"["json-file"]"#);
    }

    #[test]
    fn awsvpc_is_not_offered_and_selinux_is() {
        let facts = Facts::default();
        let s = every_setting();
        let v = variables(s.ecs.as_ref().unwrap(), &s, &facts).unwrap();
        assert!(!v.contains_key("ECS_ENABLE_TASK_ENI"), "{v:?}");
        assert_eq!(v["ECS_SELINUX_CAPABLE"], "true");
    }
}
