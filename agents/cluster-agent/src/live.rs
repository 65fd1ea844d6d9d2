//! `berth-cluster-agent apply`: a live settings change. boot-config's `kubernetes` and `ecs`
//! services (`apply-cluster` in the metadata) run it after `apiclient set kubernetes...` or
//! `apiclient set ecs...` is committed. It renders the files again from the live settings
//! and the facts the boot step recorded, writes them only when they differ from the files in
//! place, and restarts the agent that reads them (kubelet for kubelet's files, the ECS agent
//! for `/etc/ecs/ecs.config`, containerd for its base runtime spec, which it reads only when
//! it starts) when it was started at this boot. containerd's config.toml is boot-config's
//! (`containerd` service) and docker's configuration is static.
//!
//! Before the boot step has run at this boot (no facts record in `/run`, for example while
//! user data is applied at first boot) there is nothing to update: the boot step renders
//! the settings then.

use crate::boot::{self, CONTAINERD_UNIT, ECS_UNIT, KUBELET_UNIT};
use crate::facts::Facts;
use crate::{input, output, paths, render, version::KubeletVersion};
use anyhow::{Context, Result};
use host::systemd::{self, Job, Systemd, UnitState};
use settings_api::model::Settings;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Arguments of the live step.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The settings API socket.
    #[arg(long, default_value = settings_api::paths::API_SOCKET)]
    pub socket_path: PathBuf,
    /// Host root: the facts record is read and files are written under it.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The facts the boot step recorded (JSON), relative to the root.
    #[arg(long, default_value = paths::FACTS_RECORD)]
    pub facts_record: String,
    /// Kubelet version the image ships (the variant's), as for `boot`.
    #[arg(long, value_name = "1.MINOR", default_value = "1.33")]
    pub kubelet_version: KubeletVersion,
}

/// What a live run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Files whose contents or mode changed (host paths under the root).
    pub changed: Vec<PathBuf>,
    /// The units restarted (containerd.service, kubelet.service, ecs.service), with their
    /// state after it.
    pub restarted: Vec<(&'static str, UnitState)>,
}

/// Runs the live step with the real settings API and systemd.
pub fn run(args: &ApplyArgs) -> Result<Applied> {
    let units = systemd::DbusSystemd::connect()?;
    from_api(args, &units)
}

/// Reads the live settings from the API socket, then [`apply`]s them.
pub fn from_api(args: &ApplyArgs, units: &dyn Systemd) -> Result<Applied> {
    let settings = boot::settings_from(&boot::get_settings(&args.socket_path)?)?;
    if settings.kubernetes.is_none() && settings.ecs.is_none() {
        tracing::info!("no settings.kubernetes or settings.ecs; nothing to apply");
        return Ok(Applied::default());
    }
    apply(args, &settings, units)
}

/// Renders, writes what changed and restarts the agents that read it: the part tests drive
/// with fakes.
pub fn apply(args: &ApplyArgs, settings: &Settings, units: &dyn Systemd) -> Result<Applied> {
    let record = args.root.join(args.facts_record.trim_start_matches('/'));
    if !record.exists() {
        tracing::info!(
            record = %record.display(),
            "the boot step has not rendered at this boot yet; it will render these settings"
        );
        return Ok(Applied::default());
    }
    let facts: Facts = input::facts(&record)
        .with_context(|| format!("cannot read the boot step's facts {}", record.display()))?;
    let files = render::render(settings, &facts, args.kubelet_version)
        .context("cannot render the cluster configuration from the live settings")?;
    let changed: Vec<&render::OutputFile> =
        files.iter().filter(|f| differs(&args.root, f)).collect();
    if changed.is_empty() {
        tracing::info!("cluster configuration unchanged; nothing restarted");
        return Ok(Applied::default());
    }
    for file in &changed {
        if file.path == paths::KUBELET_CONFIG {
            let keys = changed_keys(&args.root.join(&file.path), &file.contents);
            // marker: qemu-tests/src/markers.rs
            tracing::info!(path = %paths::host(&file.path), keys = %keys.join(","), "changed");
        } else {
            tracing::info!(path = %paths::host(&file.path), "changed");
        }
    }
    let ecs_changed = changed.iter().any(|f| f.path == paths::ECS_CONFIG);
    let spec_changed = changed
        .iter()
        .any(|f| f.path == paths::CONTAINERD_BASE_RUNTIME_SPEC);
    let kubelet_changed = changed
        .iter()
        .any(|f| f.path != paths::ECS_CONFIG && f.path != paths::CONTAINERD_BASE_RUNTIME_SPEC);
    let changed: Vec<PathBuf> = changed.iter().map(|f| args.root.join(&f.path)).collect();
    // All files, all or nothing (unchanged ones are rewritten with the same bytes).
    output::write_all(&args.root, &files)?;
    let mut applied = Applied {
        changed,
        restarted: Vec::new(),
    };
    // containerd first: kubelet talks to it. Pods keep running through a containerd restart
    // (their shims stay); containers started afterwards get the new base spec.
    for (unit, needed) in [
        (CONTAINERD_UNIT, spec_changed),
        (KUBELET_UNIT, kubelet_changed),
        (ECS_UNIT, ecs_changed),
    ] {
        if needed {
            if let Some(state) = restart_if_started(units, unit)? {
                applied.restarted.push((unit, state));
            }
        }
    }
    Ok(applied)
}

/// How long systemd may take to run a restart job of kubelet or the ECS agent.
const RESTART_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Restarts `unit` when it was started at this boot (it has an invocation id); a unit never
/// started is left alone: the boot step starts it with the files now in place.
fn restart_if_started(units: &dyn Systemd, unit: &'static str) -> Result<Option<UnitState>> {
    let before = units
        .state(unit)
        .with_context(|| format!("cannot read {unit}'s state"))?;
    if before.invocation_id.is_empty() {
        tracing::info!(
            unit,
            "not started at this boot; it reads the new files when it starts"
        );
        return Ok(None);
    }
    let after = units
        .run(Job::Restart, unit, RESTART_DEADLINE)
        .with_context(|| format!("cannot restart {unit}"))?;
    // marker: qemu-tests/src/markers.rs
    tracing::info!(
        unit,
        invocation = %after.invocation_id,
        previous = %before.invocation_id,
        state = %after.active,
        "restarted"
    );
    Ok(Some(after))
}

/// Whether the file in place differs from `file` in contents or mode (or is missing).
fn differs(root: &Path, file: &render::OutputFile) -> bool {
    let path = root.join(&file.path);
    let same_mode = std::fs::metadata(&path)
        .map(|m| m.permissions().mode() & 0o7777 == file.mode)
        .unwrap_or(false);
    !same_mode || std::fs::read(&path).ok().as_deref() != Some(&file.contents[..])
}

/// Top-level keys of the kubelet config that differ between the file in place and `new`
/// (all of them when the old file is missing or not JSON), sorted.
fn changed_keys(old_path: &Path, new: &[u8]) -> Vec<String> {
    let parse = |bytes: &[u8]| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
            .unwrap_or_default()
    };
    let old = parse(&std::fs::read(old_path).unwrap_or_default());
    let new = parse(new);
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use host::systemd::RecordingSystemd;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        apply: ApplyArgs,
    }

    fn args(root: &Path) -> ApplyArgs {
        Wrap::try_parse_from(["x", "--root", root.to_str().unwrap()])
            .unwrap()
            .apply
    }

    fn settings(max_pods: u32) -> Settings {
        boot::settings_from(&serde_json::json!({
            "kubernetes": {
                "cluster-name": "berth-eks",
                "api-server": "https://ABC.gr7.us-west-2.eks.amazonaws.com",
                "cluster-certificate": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJkekNDQVIyZ0F3SUJBZ0lCQURBS0JnZ3Foa2pPUFFRREFqQWpNU0V3SHdZRFZRUUREQmhyTTNNdGMyVnkKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo=",
                "max-pods": max_pods,
            },
            "aws": {"region": "us-west-2"}
        }))
        .unwrap()
    }

    fn facts() -> Facts {
        Facts {
            instance_type: Some("m5.large".into()),
            instance_id: Some("i-0123456789abcdef0".into()),
            availability_zone: Some("us-west-2a".into()),
            region: Some("us-west-2".into()),
            private_dns_name: Some("ip-10-0-1-23.us-west-2.compute.internal".into()),
            local_ipv4: Some("10.0.1.23".parse().unwrap()),
            cpus: Some(2),
            ..Facts::default()
        }
    }

    /// A root as the boot step leaves it: facts recorded, files rendered for `max_pods`.
    fn booted(max_pods: u32) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(paths::FACTS_RECORD);
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        std::fs::write(&record, serde_json::to_string(&facts()).unwrap()).unwrap();
        let files = render::render(&settings(max_pods), &facts(), KubeletVersion::new(33)).unwrap();
        output::write_all(dir.path(), &files).unwrap();
        dir
    }

    /// kubelet and the ECS agent started at this boot.
    fn started_kubelet() -> RecordingSystemd {
        RecordingSystemd::with_active(&[KUBELET_UNIT, ECS_UNIT])
    }

    /// The units restarted, in order.
    fn restarted(units: &RecordingSystemd) -> Vec<String> {
        units
            .jobs()
            .into_iter()
            .filter(|(job, _)| *job == Job::Restart)
            .map(|(_, unit)| unit)
            .collect()
    }

    fn max_pods(root: &Path) -> serde_json::Value {
        let text = std::fs::read_to_string(root.join(paths::KUBELET_CONFIG)).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["maxPods"].clone()
    }

    #[test]
    fn a_changed_setting_rewrites_the_config_and_restarts_a_started_kubelet() {
        let dir = booted(110);
        let units = started_kubelet();
        let applied = apply(&args(dir.path()), &settings(42), &units).unwrap();
        assert_eq!(max_pods(dir.path()), 42);
        // max-pods also sizes the memory reservation, so only config.json changes.
        assert_eq!(applied.changed, [dir.path().join(paths::KUBELET_CONFIG)]);
        assert_eq!(restarted(&units), [KUBELET_UNIT]);
        assert!(
            units.jobs().iter().all(|(job, _)| *job == Job::Restart),
            "nothing started"
        );
        assert_eq!(applied.restarted.len(), 1);
    }

    #[test]
    fn unchanged_settings_write_nothing_and_restart_nothing() {
        let dir = booted(110);
        let units = started_kubelet();
        let applied = apply(&args(dir.path()), &settings(110), &units).unwrap();
        assert_eq!(applied, Applied::default());
        assert!(restarted(&units).is_empty());
    }

    #[test]
    fn a_changed_mode_counts_as_a_change() {
        let dir = booted(110);
        let config = dir.path().join(paths::KUBELET_CONFIG);
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let units = started_kubelet();
        let applied = apply(&args(dir.path()), &settings(110), &units).unwrap();
        assert_eq!(applied.changed, std::slice::from_ref(&config));
        let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_kubelet_never_started_is_left_alone() {
        let dir = booted(110);
        let units = RecordingSystemd::default();
        let applied = apply(&args(dir.path()), &settings(42), &units).unwrap();
        assert_eq!(max_pods(dir.path()), 42, "the files are still updated");
        assert!(restarted(&units).is_empty());
        assert!(applied.restarted.is_empty());
    }

    #[test]
    fn before_the_boot_step_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let units = started_kubelet();
        let applied = apply(&args(dir.path()), &settings(42), &units).unwrap();
        assert_eq!(applied, Applied::default());
        assert!(!dir.path().join(paths::KUBELET_CONFIG).exists());
        assert!(restarted(&units).is_empty());
    }

    #[test]
    fn bad_settings_leave_the_files_and_kubelet_alone() {
        let dir = booted(110);
        let before = std::fs::read(dir.path().join(paths::KUBELET_CONFIG)).unwrap();
        let units = started_kubelet();
        // The model takes it; rendering needs an API server for an EKS node.
        let bad =
            boot::settings_from(&serde_json::json!({"kubernetes": {"cluster-name": "c"}})).unwrap();
        let err = apply(&args(dir.path()), &bad, &units).unwrap_err();
        assert!(
            format!("{err:#}").contains("settings.kubernetes."),
            "{err:#}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(paths::KUBELET_CONFIG)).unwrap(),
            before
        );
        assert!(restarted(&units).is_empty());
    }

    fn ecs_settings(cluster: &str) -> Settings {
        boot::settings_from(&serde_json::json!({"ecs": {"cluster": cluster}})).unwrap()
    }

    #[test]
    fn a_changed_ecs_setting_rewrites_ecs_config_and_restarts_only_the_ecs_agent() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(paths::FACTS_RECORD);
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        std::fs::write(&record, serde_json::to_string(&facts()).unwrap()).unwrap();
        let files =
            render::render(&ecs_settings("old"), &facts(), KubeletVersion::new(33)).unwrap();
        output::write_all(dir.path(), &files).unwrap();
        let units = started_kubelet();
        let applied = apply(&args(dir.path()), &ecs_settings("new"), &units).unwrap();
        let config = dir.path().join(paths::ECS_CONFIG);
        assert_eq!(applied.changed, std::slice::from_ref(&config));
        assert!(std::fs::read_to_string(&config)
            .unwrap()
            .lines()
            .any(|l| l == "ECS_CLUSTER=new"));
        assert_eq!(restarted(&units), [ECS_UNIT]);
        assert_eq!(applied.restarted.len(), 1);
        assert_eq!(applied.restarted[0].0, ECS_UNIT);
    }

    #[test]
    fn changed_oci_defaults_rewrite_the_base_spec_and_restart_only_containerd() {
        let dir = booted(110);
        let units = RecordingSystemd::with_active(&[CONTAINERD_UNIT, KUBELET_UNIT]);
        let mut s = settings(110);
        s.oci_defaults = boot::settings_from(&serde_json::json!({
            "oci-defaults": {"resource-limits": {"max-open-files": {"hard-limit": 4096, "soft-limit": 1024}}}
        }))
        .unwrap()
        .oci_defaults;
        let applied = apply(&args(dir.path()), &s, &units).unwrap();
        let spec = dir.path().join(paths::CONTAINERD_BASE_RUNTIME_SPEC);
        assert_eq!(applied.changed, std::slice::from_ref(&spec));
        assert!(std::fs::read_to_string(&spec)
            .unwrap()
            .contains("\"soft\": 1024"));
        assert_eq!(restarted(&units), [CONTAINERD_UNIT]);
    }

    #[test]
    fn changed_keys_names_the_top_level_fields() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("c.json");
        std::fs::write(&old, r#"{"a": 1, "b": {"x": 1}, "c": 3}"#).unwrap();
        assert_eq!(
            changed_keys(&old, br#"{"a": 1, "b": {"x": 2}, "d": 4}"#),
            ["b", "c", "d"]
        );
    }
}
