//! `berth-cluster-agent boot`: what `berth-cluster-agent.service` runs once `configured.target`
//! is reached. Reads the live settings from the API socket, gathers the instance facts,
//! renders every file into `/etc` (tmpfs, rebuilt each boot) and `/var/lib/kubelet`, then
//! starts containerd and kubelet through systemd.
//!
//! Settings come from the API rather than the datastore file: the API is the only interface
//! to settings (DESIGN.md), it fills in the variant defaults, and the datastore's on-disk
//! format stays apiserver's own business.

use crate::facts::Facts;
use crate::units::{UnitState, Units};
use crate::{hostfacts, output, paths, render, version::KubeletVersion};
use anyhow::{Context, Result};
use settings_api::model::Settings;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// containerd, then kubelet (kubelet needs the CRI socket).
pub const CONTAINERD_UNIT: &str = "containerd.service";
pub const KUBELET_UNIT: &str = "kubelet.service";
/// containerd comes up in about a second; under TCG on a loaded host, much slower.
const CONTAINERD_DEADLINE: Duration = Duration::from_secs(180);

/// Arguments of the boot step.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// The settings API socket.
    #[arg(long, default_value = settings_api::paths::API_SOCKET)]
    pub socket_path: PathBuf,
    /// Instance metadata service (`host:port`), read on EC2 only.
    #[arg(long, default_value = boot_config::imds::DEFAULT_ENDPOINT)]
    pub imds_endpoint: String,
    /// Host root: facts are read from it, files are written under it.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Where the facts used are recorded (JSON), relative to the root.
    #[arg(long, default_value = paths::FACTS_RECORD)]
    pub facts_record: String,
    /// Kubelet version the image ships (the variant's), for nodeadm's version rules.
    #[arg(long, value_name = "1.MINOR", default_value = "1.33")]
    pub kubelet_version: KubeletVersion,
    /// Render only; start no unit (for a look at the files on a running host).
    #[arg(long)]
    pub no_start: bool,
}

/// What a boot run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub written: Vec<PathBuf>,
    pub started: Vec<(String, UnitState)>,
}

/// Runs the boot step with the real settings API, IMDS and systemd.
pub fn run(args: &BootArgs) -> Result<Outcome> {
    let settings_json = get_settings(&args.socket_path)?;
    let settings = settings_from(&settings_json)?;
    if settings.kubernetes.is_none() {
        tracing::info!("no settings.kubernetes; nothing to join, no unit started");
        return Ok(Outcome::default());
    }
    let platform = boot_config::platform::detect(&args.root);
    tracing::info!(platform = platform.platform.name(), reason = %platform.reason, "gathering instance facts");
    let facts = hostfacts::gather(
        platform.platform,
        &args.root,
        &args.imds_endpoint,
        boot_config::imds::Retry::default(),
    )?;
    if args.no_start {
        return apply(args, &settings, &facts, None);
    }
    let units = crate::units::DbusUnits::connect()?;
    apply(args, &settings, &facts, Some(&units))
}

/// Renders, records the facts, and starts the units: the part tests drive with fakes.
pub fn apply(
    args: &BootArgs,
    settings: &Settings,
    facts: &Facts,
    units: Option<&dyn Units>,
) -> Result<Outcome> {
    let files = render::render(settings, facts, args.kubelet_version)
        .context("cannot render the cluster configuration from the live settings")?;
    let record = args.root.join(args.facts_record.trim_start_matches('/'));
    write_record(&record, facts)?;
    let written = output::write_all(&args.root, &files)?;
    for path in &written {
        tracing::info!(path = %path.display(), "wrote");
    }
    let mut outcome = Outcome {
        written,
        started: Vec::new(),
    };
    let Some(units) = units else {
        return Ok(outcome);
    };
    let t = Instant::now();
    let state = units
        .start_and_wait(CONTAINERD_UNIT, CONTAINERD_DEADLINE)
        .context("containerd did not start")?;
    tracing::info!(
        unit = CONTAINERD_UNIT,
        seconds = format!("{:.2}", t.elapsed().as_secs_f64()),
        "started and active"
    );
    outcome.started.push((CONTAINERD_UNIT.into(), state));

    let t = Instant::now();
    let state = units.start(KUBELET_UNIT).context("cannot start kubelet")?;
    tracing::info!(
        unit = KUBELET_UNIT,
        seconds = format!("{:.2}", t.elapsed().as_secs_f64()),
        state = %state.active,
        invocation = %state.invocation_id,
        "started"
    );
    // A line of its own: console lines are cut at the kernel's limit.
    tracing::info!(
        unit = KUBELET_UNIT,
        exec_start = %state.exec_start,
        environment_files = %state.environment_files.join(" "),
        "command"
    );
    if !args.root.join("usr/bin/kubelet").exists() {
        // An image built with --allow-missing-artifacts: the unit is started with the
        // rendered flags and fails to exec. Say so plainly once, with systemd's verdict,
        // instead of leaving only systemd's exec error at every restart in the journal.
        let failed = wait_for_exit(units, KUBELET_UNIT, EXEC_FAILURE_WAIT);
        tracing::warn!(
            unit = KUBELET_UNIT,
            exec_main_status = failed.exec_main_status,
            result = %failed.result,
            restarts = failed.n_restarts,
            "/usr/bin/kubelet is not in this image (built with --allow-missing-artifacts; \
             see /usr/share/berth/missing-artifacts.json); kubelet cannot run"
        );
    }
    outcome.started.push((KUBELET_UNIT.into(), state));
    Ok(outcome)
}

/// How long to watch kubelet.service fail to exec its missing binary.
const EXEC_FAILURE_WAIT: Duration = Duration::from_secs(15);

/// The unit's state once its main process has exited (or after `wait`).
fn wait_for_exit(units: &dyn Units, unit: &str, wait: Duration) -> UnitState {
    let started = Instant::now();
    loop {
        let state = units.state(unit).unwrap_or_default();
        if state.exec_main_status != 0 || started.elapsed() > wait {
            return state;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn get_settings(socket: &Path) -> Result<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime for the API client")?;
    let body = rt
        .block_on(settings_api::client::call(socket, "GET", "/settings", None))
        .with_context(|| format!("cannot read the live settings from {}", socket.display()))?;
    serde_json::from_slice(&body).context("GET /settings did not return JSON")
}

/// `GET /settings` answers with the settings object itself (Bottlerocket's shape), not the
/// `{"settings": ...}` wrapper `apiclient get` prints.
pub(crate) fn settings_from(value: &serde_json::Value) -> Result<Settings> {
    Settings::from_json(value).context("the live settings (GET /settings) do not fit the model")
}

fn write_record(path: &Path, facts: &Facts) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(facts).context("facts serialize")? + "\n";
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::RecordingUnits;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        boot: BootArgs,
    }

    fn args(root: &Path) -> BootArgs {
        let root = root.to_str().unwrap();
        Wrap::try_parse_from(["x", "--root", root]).unwrap().boot
    }

    fn settings() -> Settings {
        let v = serde_json::json!({
            "kubernetes": {
                "cluster-name": "berth-eks",
                "api-server": "https://ABC.gr7.us-west-2.eks.amazonaws.com",
                "cluster-certificate": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJkekNDQVIyZ0F3SUJBZ0lCQURBS0JnZ3Foa2pPUFFRREFqQWpNU0V3SHdZRFZRUUREQmhyTTNNdGMyVnkKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="
            },
            "aws": {"region": "us-west-2"}
        });
        settings_from(&v).unwrap()
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

    #[test]
    fn boot_args_default_to_the_host_paths() {
        let a = Wrap::try_parse_from(["x"]).unwrap().boot;
        assert_eq!(a.socket_path, PathBuf::from("/run/api.sock"));
        assert_eq!(a.root, PathBuf::from("/"));
        assert_eq!(a.kubelet_version, KubeletVersion::new(33));
        assert!(!a.no_start);
    }

    #[test]
    fn renders_records_facts_then_starts_containerd_before_kubelet() {
        let dir = tempfile::tempdir().unwrap();
        // An image with its kubelet: no wait for an exec failure.
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/kubelet"), "").unwrap();
        let units = RecordingUnits::default();
        let out = apply(&args(dir.path()), &settings(), &facts(), Some(&units)).unwrap();
        assert_eq!(
            *units.started.lock().unwrap(),
            [CONTAINERD_UNIT, KUBELET_UNIT]
        );
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(paths::KUBELET_CONFIG)).unwrap(),
        )
        .unwrap();
        assert_eq!(config["maxPods"], 29, "m5.large: 3 ENIs x (10 - 1) + 2");
        assert_eq!(
            config["providerID"],
            "aws:///us-west-2a/i-0123456789abcdef0"
        );
        let env = std::fs::read_to_string(dir.path().join(paths::KUBELET_ENV)).unwrap();
        assert!(env.starts_with("KUBELET_ARGS="), "{env}");
        assert!(env.contains("--node-ip=10.0.1.23"), "{env}");
        assert!(dir.path().join(paths::KUBECONFIG).is_file());
        let record: Facts = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(paths::FACTS_RECORD)).unwrap(),
        )
        .unwrap();
        assert_eq!(record, facts());
        assert!(out.written.len() >= 4, "{:?}", out.written);
    }

    #[test]
    fn bad_settings_write_nothing_and_start_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let units = RecordingUnits::default();
        let mut f = facts();
        f.region = None;
        let v = serde_json::json!({"kubernetes": {"cluster-name": "c"}});
        let s = settings_from(&v).unwrap();
        let err = apply(&args(dir.path()), &s, &f, Some(&units)).unwrap_err();
        assert!(units.started.lock().unwrap().is_empty(), "{err:#}");
        assert!(!dir.path().join(paths::KUBELET_CONFIG).exists());
    }
}
