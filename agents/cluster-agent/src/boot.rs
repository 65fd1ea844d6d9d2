//! `berth-cluster-agent boot`: what `berth-cluster-agent.service` runs once `configured.target`
//! is reached. Reads the live settings from the API socket, gathers the instance facts,
//! renders every file into `/etc` (tmpfs, rebuilt each boot) and `/var/lib/kubelet`, then
//! starts the container runtime and the cluster's node agent through systemd: containerd and
//! kubelet for `settings.kubernetes`, docker and the ECS agent for `settings.ecs`.
//!
//! Settings come from the API rather than the datastore file: the API is the only interface
//! to settings (DESIGN.md), it fills in the variant defaults, and the datastore's on-disk
//! format stays apiserver's own business.

use crate::facts::Facts;
use crate::{hostfacts, output, paths, render, version::KubeletVersion};
use anyhow::{Context, Result};
use host::systemd::{self, Job, Systemd, SystemdError, UnitState};
use settings_api::model::Settings;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// containerd, then kubelet (kubelet needs the CRI socket).
pub const CONTAINERD_UNIT: &str = "containerd.service";
pub const KUBELET_UNIT: &str = "kubelet.service";
/// Imports the pause image into containerd, between containerd and kubelet.
pub const PAUSE_IMAGE_UNIT: &str = "berth-pause-image.service";
/// docker, then the ECS agent (the agent needs the docker socket).
pub const DOCKER_UNIT: &str = "docker.service";
pub const ECS_UNIT: &str = "ecs.service";
/// The DROP rule for bridge-network containers' traffic to IMDS (`awsvpc-block-imds`).
pub const ECS_BLOCK_IMDS_UNIT: &str = "ecs-block-imds.service";
/// A runtime comes up in seconds; under TCG on a loaded host, much slower.
const RUNTIME_DEADLINE: Duration = Duration::from_secs(180);

/// One node agent and what must be active before it: the units `boot` starts, in order.
struct Join {
    /// The container runtime, started and waited for until active.
    runtime: &'static str,
    /// Oneshot units between the runtime and the agent, waited for until active.
    then: Vec<&'static str>,
    /// The node agent, started (not waited for: it may run for ever or fail to exec).
    agent: &'static str,
    /// The agent's binary on the host (an external artifact).
    binary: &'static str,
    /// What to call it in the log line when the binary is missing.
    display: &'static str,
}

/// The joins the settings ask for: Kubernetes first, then ECS. `root` is the host tree.
fn joins(settings: &Settings, root: &Path) -> Vec<Join> {
    let mut out = Vec::new();
    if settings.kubernetes.is_some() {
        let mut then = Vec::new();
        if root.join(paths::PAUSE_IMAGE_ARCHIVE).is_file() {
            then.push(PAUSE_IMAGE_UNIT);
        } else {
            tracing::warn!(
                archive = %paths::host(paths::PAUSE_IMAGE_ARCHIVE),
                "this image ships no pause image; containerd will pull its sandbox_image"
            );
        }
        out.push(Join {
            runtime: CONTAINERD_UNIT,
            then,
            agent: KUBELET_UNIT,
            binary: "usr/bin/kubelet",
            display: "kubelet",
        });
    }
    if let Some(ecs) = &settings.ecs {
        let mut then = Vec::new();
        if ecs.awsvpc_block_imds == Some(true) {
            then.push(ECS_BLOCK_IMDS_UNIT);
        }
        out.push(Join {
            runtime: DOCKER_UNIT,
            then,
            agent: ECS_UNIT,
            binary: "usr/bin/amazon-ecs-agent",
            display: "the ECS agent",
        });
    }
    out
}

/// Arguments of the boot step.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// The settings API socket.
    #[arg(long, default_value = settings_api::paths::API_SOCKET)]
    pub socket_path: PathBuf,
    /// Instance metadata service (`host:port`), read on EC2 only.
    #[arg(long, default_value = host::imds::DEFAULT_ENDPOINT)]
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
    if settings.kubernetes.is_none() && settings.ecs.is_none() {
        tracing::info!(
            "neither settings.kubernetes nor settings.ecs; nothing to join, no unit started"
        );
        return Ok(Outcome::default());
    }
    let platform = host::platform::detect(&args.root);
    tracing::info!(platform = platform.platform.name(), reason = %platform.reason, "gathering instance facts");
    let facts = hostfacts::gather(
        platform.platform,
        &args.root,
        &args.imds_endpoint,
        host::imds::Retry::default(),
    )?;
    if args.no_start {
        return apply(args, &settings, &facts, None);
    }
    let units = systemd::DbusSystemd::connect()?;
    apply(args, &settings, &facts, Some(&units))
}

/// Renders, records the facts, and starts the units: the part tests drive with fakes.
pub fn apply(
    args: &BootArgs,
    settings: &Settings,
    facts: &Facts,
    units: Option<&dyn Systemd>,
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
    for join in joins(settings, &args.root) {
        start_join(args, units, &join, &mut outcome)?;
    }
    Ok(outcome)
}

/// Starts the runtime and waits until it is active, then the units in between, then the
/// agent, logging each with its time; says plainly when the agent's binary is missing.
fn start_join(
    args: &BootArgs,
    units: &dyn Systemd,
    join: &Join,
    outcome: &mut Outcome,
) -> Result<()> {
    for unit in std::iter::once(&join.runtime).chain(&join.then) {
        let t = Instant::now();
        let state = systemd::start_and_wait(units, unit, RUNTIME_DEADLINE)
            .with_context(|| format!("{unit} did not start"))?;
        // marker: qemu-tests/src/markers.rs
        tracing::info!(
            unit = *unit,
            seconds = format!("{:.2}", t.elapsed().as_secs_f64()),
            "started and active"
        );
        outcome.started.push((unit.to_string(), state));
    }

    let agent = join.agent;
    let t = Instant::now();
    let state = match units.run(Job::Start, agent, AGENT_START_DEADLINE) {
        Ok(state) => state,
        // The agent's own failure (a missing binary, a refused ExecStartPre=) is reported
        // below with systemd's verdict; the boot step has done its part.
        Err(SystemdError::JobFailed { .. }) => units.state(agent)?,
        Err(e) => return Err(e).with_context(|| format!("cannot start {agent}")),
    };
    // marker: qemu-tests/src/markers.rs
    tracing::info!(
        unit = agent,
        seconds = format!("{:.2}", t.elapsed().as_secs_f64()),
        state = %state.active,
        invocation = %state.invocation_id,
        "started"
    );
    // A line of its own: console lines are cut at the kernel's limit.
    // marker: qemu-tests/src/markers.rs
    tracing::info!(
        unit = agent,
        exec_start = %state.exec_start,
        environment_files = %state.environment_files.join(" "),
        pre_status = %join_status(&state.exec_start_pre_status),
        "command"
    );
    if !args.root.join(join.binary).exists() {
        // An image built with --allow-missing-artifacts: the unit is started with the
        // rendered configuration and fails to exec. Say so plainly once, with systemd's
        // verdict, instead of leaving only systemd's exec error at every restart in the journal.
        let failed = wait_for_exit(units, agent, EXEC_FAILURE_WAIT);
        // marker: qemu-tests/src/markers.rs
        tracing::warn!(
            unit = agent,
            exec_main_status = failed.exec_main_status,
            result = %failed.result,
            restarts = failed.n_restarts,
            "/{} is not in this image (built with --allow-missing-artifacts; \
             see /usr/share/berth/missing-artifacts.json); {} cannot run",
            join.binary,
            join.display,
        );
    }
    outcome.started.push((agent.to_string(), state));
    Ok(())
}

/// `0,0,1`: exit statuses, comma-separated (`none` for no command).
fn join_status(status: &[i32]) -> String {
    if status.is_empty() {
        return "none".into();
    }
    status
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// How long systemd may take to run an agent's start job (its ExecStartPre= commands).
const AGENT_START_DEADLINE: Duration = Duration::from_secs(30);

/// How long to watch an agent's unit fail to exec its missing binary.
const EXEC_FAILURE_WAIT: Duration = Duration::from_secs(15);

/// The unit's state once its main process has exited (or after `wait`).
fn wait_for_exit(units: &dyn Systemd, unit: &str, wait: Duration) -> UnitState {
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
    use clap::Parser;
    use host::systemd::RecordingSystemd;

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

    /// The units started, in order.
    fn started(units: &RecordingSystemd) -> Vec<String> {
        units
            .jobs()
            .into_iter()
            .filter(|(job, _)| *job == Job::Start)
            .map(|(_, unit)| unit)
            .collect()
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
        let units = RecordingSystemd::default();
        let out = apply(&args(dir.path()), &settings(), &facts(), Some(&units)).unwrap();
        assert_eq!(
            started(&units),
            [CONTAINERD_UNIT, KUBELET_UNIT],
            "no pause image in this tree: nothing to import"
        );
        // With the image's pause archive: imported after containerd, before kubelet.
        let archive = dir.path().join(paths::PAUSE_IMAGE_ARCHIVE);
        std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
        std::fs::write(&archive, "").unwrap();
        let units = RecordingSystemd::default();
        apply(&args(dir.path()), &settings(), &facts(), Some(&units)).unwrap();
        assert_eq!(
            started(&units),
            [CONTAINERD_UNIT, PAUSE_IMAGE_UNIT, KUBELET_UNIT]
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

    fn ecs_settings(extra: serde_json::Value) -> Settings {
        let mut ecs = serde_json::json!({"cluster": "berth-ecs"});
        ecs.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        settings_from(&serde_json::json!({ "ecs": ecs })).unwrap()
    }

    #[test]
    fn ecs_renders_the_config_then_starts_docker_before_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/amazon-ecs-agent"), "").unwrap();
        let units = RecordingSystemd::default();
        let s = ecs_settings(serde_json::json!({}));
        let out = apply(&args(dir.path()), &s, &facts(), Some(&units)).unwrap();
        assert_eq!(started(&units), [DOCKER_UNIT, ECS_UNIT]);
        let config = std::fs::read_to_string(dir.path().join(paths::ECS_CONFIG)).unwrap();
        assert!(config.contains("ECS_CLUSTER=berth-ecs\n"), "{config}");
        assert!(config.contains("ECS_AWSVPC_BLOCK_IMDS=false\n"), "{config}");
        assert!(!dir.path().join(paths::KUBELET_CONFIG).exists());
        let started: Vec<&str> = out.started.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(started, [DOCKER_UNIT, ECS_UNIT]);
    }

    #[test]
    fn blocking_imds_starts_the_drop_rule_between_docker_and_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/amazon-ecs-agent"), "").unwrap();
        let units = RecordingSystemd::default();
        let s = ecs_settings(serde_json::json!({"awsvpc-block-imds": true}));
        apply(&args(dir.path()), &s, &facts(), Some(&units)).unwrap();
        assert_eq!(
            started(&units),
            [DOCKER_UNIT, ECS_BLOCK_IMDS_UNIT, ECS_UNIT]
        );
        let config = std::fs::read_to_string(dir.path().join(paths::ECS_CONFIG)).unwrap();
        assert!(config.contains("ECS_AWSVPC_BLOCK_IMDS=true\n"), "{config}");
    }

    #[test]
    fn a_missing_agent_binary_still_starts_the_unit_and_reports_its_exit() {
        let dir = tempfile::tempdir().unwrap();
        // systemd's verdict for a missing binary: 203/EXEC, so the wait ends at once.
        let units = RecordingSystemd::default();
        units.set(
            ECS_UNIT,
            UnitState {
                load: "loaded".into(),
                active: "activating".into(),
                result: "exit-code".into(),
                exec_main_status: 203,
                ..UnitState::default()
            },
        );
        let s = ecs_settings(serde_json::json!({}));
        let t0 = Instant::now();
        let out = apply(&args(dir.path()), &s, &facts(), Some(&units)).unwrap();
        assert!(t0.elapsed() < EXEC_FAILURE_WAIT);
        assert_eq!(out.started.last().unwrap().1.exec_main_status, 203);
        assert_eq!(started(&units), [DOCKER_UNIT, ECS_UNIT]);
    }

    #[test]
    fn bad_settings_write_nothing_and_start_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let units = RecordingSystemd::default();
        let mut f = facts();
        f.region = None;
        let v = serde_json::json!({"kubernetes": {"cluster-name": "c"}});
        let s = settings_from(&v).unwrap();
        let err = apply(&args(dir.path()), &s, &f, Some(&units)).unwrap_err();
        assert!(units.calls().is_empty(), "{err:#}");
        assert!(!dir.path().join(paths::KUBELET_CONFIG).exists());
    }
}
