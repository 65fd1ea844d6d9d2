//! The ECS container instance (issue 6): the `aws-ecs-test` image, built with
//! `--allow-missing-artifacts` since no ECS agent binary can be downloaded here, boots as an
//! "EC2 instance" (DMI vendor through QEMU's SMBIOS tables) against the IMDSv2 emulator with
//! ECS user data. berth-cluster-agent renders `/etc/ecs/ecs.config` from the settings, starts
//! docker (which must answer on its socket), the IMDS DROP rule (awsvpc-block-imds) and then
//! ecs.service, whose ExecStartPre commands (route_localnet, the metadata-endpoint iptables
//! rules) run and whose missing binary fails to exec; `/os` lists the missing artifact. A live
//! `apiclient set ecs.cluster` then rewrites ecs.config and restarts the agent unit.
//!
//! SELinux (docs/selinux.md): docker runs with `selinux-enabled`, and the image's test-only
//! `berth-container-check.service` (variants/aws-ecs-test) runs the host's berth-probe and
//! `apiclient get settings.motd` in containers of an empty image with the host's /usr
//! bind-mounted. The container must run as `container_t` with two MCS categories, its API
//! call must be refused (SELinux denies `write` on the socket, `api_socket_t`) while the
//! same call from the host works, and that denial must be the only one on the console.
//!
//! Gated by BERTH_QEMU_TESTS=1; needs the aws-ecs-test image (scripts/test.sh builds it).

use std::time::Duration;

use anyhow::{Context, Result};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::imds::{self, Imds};
use qemu_tests::{markers, scenario, Arch, Checks, Image, ProbeReport, Vm};

const VARIANT: &str = "aws-ecs-test";
const PROBE_FW_CFG: &str = "opt/org.berth/probe";
const CONFIGURED: &str = markers::CONFIGURED;
// berth-cluster-agent's events at boot (qemu-tests/src/markers.rs).
const DOCKER_ACTIVE: &str = markers::DOCKER_ACTIVE;
const BLOCK_IMDS_ACTIVE: &str = markers::ECS_BLOCK_IMDS_ACTIVE;
const ECS_STARTED: &str = markers::ECS_STARTED;
const ECS_COMMAND: &str = markers::ECS_COMMAND;
const ECS_EXEC_FAILED: &str = markers::ECS_EXEC_FAILED;
// berth-cluster-agent apply (boot-config's `ecs` service) after a live `apiclient set ecs...`.
const LIVE_CHANGED: &str = markers::ECS_CONFIG_CHANGED;
const LIVE_RESTARTED: &str = markers::ECS_RESTARTED;
/// Generous under TCG on a loaded 2-core machine.
const CONFIGURED_DEADLINE: Duration = Duration::from_secs(360);
const STEP_DEADLINE: Duration = Duration::from_secs(240);
const REGION: &str = "eu-central-1";
// berth-container-check.service's console lines (SyslogIdentifier=berth-container-check).
const CONTAINER_LINE: &str = "berth-container-check[";
const CONTAINER_DONE: &str = r"berth-container-check\[\d+\]: container check done";
// systemd shortens the unit name in its status line.
const CONTAINER_FAILED: &str = r"Failed to start berth-container-ch";
const CONTAINER_API: &str = r"berth-container-check\[\d+\]: apiclient: ";
/// A container's domain: container_t with two distinct categories of c0-c1023, lower first
/// (go-selinux's MCS pick from lxc_contexts).
const CONTAINER_CONTEXT: &str = r"^system_u:system_r:container_t:s0:c(\d+),c(\d+)$";
/// The one denial the scenario expects: the container's apiclient connecting to the API
/// socket (sock_file write on api_socket_t). Any other `avc:  denied` line fails the test.
fn expected_denial(line: &str) -> bool {
    line.contains("denied  { write }")
        && line.contains("scontext=system_u:system_r:container_t:s0:c")
        && line.contains("tcontext=system_u:object_r:api_socket_t:s0 ")
        && line.contains("tclass=sock_file")
}

const USER_DATA: &str = r#"[settings.ecs]
cluster = "berth-ecs"
allow-privileged-containers = true
awsvpc-block-imds = true
loglevel = "debug"

[settings.ecs.instance-attributes]
team = "payments"
"#;

#[test]
fn ecs_instance_renders_and_starts_docker_and_the_agent_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("ecs_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "ECS user data (cluster, privileged, awsvpc-block-imds, attributes) from the IMDSv2 emulator",
            "/etc/ecs/ecs.config (0600): cluster, privileged allowed, IMDS block, attributes with berth.variant",
            "ecs.config names are all read by the ECS agent; logging drivers default with awslogs; SELinux capable; no task ENI",
            "docker started by the agent, active and answering GET /_ping and /version on /run/docker.sock",
            "ecs-block-imds.service (DROP to 169.254.169.254 in DOCKER-USER) active before the agent",
            "ecs.service started with ExecStart /usr/bin/amazon-ecs-agent and EnvironmentFile /etc/ecs/ecs.config",
            "its ExecStartPre commands (route_localnet, nat PREROUTING/OUTPUT DNAT, INPUT filters) exit 0; route_localnet is 1",
            "/os lists the missing external artifact (amazon-ecs-agent)",
            "apiclient set ecs.cluster=... live: ecs.config rewritten, ecs.service restarted",
            "SELinux: a docker container runs as container_t:s0:cN,cM (berth-probe inside it)",
            "SELinux: apiclient in the container is refused (Permission denied), from the host it works",
            "SELinux: the only AVC denial is the container's write on api.sock (api_socket_t)",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    let target_tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tempfile::tempdir()?;
    let api = Api::forward(build_apiclient(target_tmp)?, dir.path().join("api.sock"))?;

    let mut config = imds::Config::instance(REGION);
    config.user_data = Some(USER_DATA.into());
    let emulator = Imds::start(config)?;
    let relay = std::path::Path::new(env!("CARGO_BIN_EXE_tcp-relay"));

    let log = target_tmp
        .join("qemu-tests")
        .join(format!("{name}.serial.log"));
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&image.qcow2)
        .memory_mib(2048)
        .fw_cfg_string(PROBE_FW_CFG, "1")
        .smbios_system("Amazon EC2", "m5.large")
        .net_user([api.hostfwd()])
        .net_options(emulator.guestfwd(relay))
        .serial_log(&log)
        .boot()?;
    let mut checks = Checks::new();

    let configured = vm
        .wait_for_line_or_fail(CONFIGURED, markers::BOOT_FAILURE, CONFIGURED_DEADLINE)
        .context("configured.target")?;
    let docker = vm
        .wait_for_line(DOCKER_ACTIVE, STEP_DEADLINE)
        .context("berth-cluster-agent did not report docker active")?;
    let block = vm
        .wait_for_line(BLOCK_IMDS_ACTIVE, STEP_DEADLINE)
        .context("berth-cluster-agent did not report ecs-block-imds.service active")?;
    let agent = vm
        .wait_for_line(ECS_STARTED, STEP_DEADLINE)
        .context("berth-cluster-agent did not report ecs.service started")?;
    let banner = vm.wait_for_line(markers::KERNEL_BANNER, STEP_DEADLINE)?;
    let since_kernel = |l: &qemu_tests::Line| (l.elapsed - banner.elapsed).as_secs_f64();
    println!(
        "  host clock from the kernel banner: configured.target {:.1}s, docker active {:.1}s, ecs.service started {:.1}s",
        since_kernel(&configured),
        since_kernel(&docker),
        since_kernel(&agent)
    );
    checks.check(
        "the IMDS block comes after docker and before the agent",
        docker.elapsed <= block.elapsed && block.elapsed <= agent.elapsed,
        format!(
            "docker {:.1}s, block {:.1}s, agent {:.1}s",
            since_kernel(&docker),
            since_kernel(&block),
            since_kernel(&agent)
        ),
    );

    vm.wait_for_line(markers::PROBE_END, STEP_DEADLINE)
        .context("berth-probe did not finish its report")?;
    // The host's report; the container's probe (below) prints the same kind of lines.
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        ProbeReport::parse(
            lines
                .iter()
                .map(|l| l.text.as_str())
                .filter(|t| !t.contains(CONTAINER_LINE)),
        )
        .ok()
    })?;
    checks.equal("user data state", report.get("user-data-state"), "applied");
    checks.equal("ECS_CLUSTER", report.get("ecs-cluster"), "berth-ecs");
    checks.equal(
        "ECS_DISABLE_PRIVILEGED (allow-privileged-containers = true)",
        report.get("ecs-disable-privileged"),
        "false",
    );
    checks.equal(
        "ECS_AVAILABLE_LOGGING_DRIVERS (default: Bottlerocket's, awslogs included)",
        report.get("ecs-logging-drivers"),
        r#"["json-file","awslogs","none"]"#,
    );
    checks.equal(
        "ECS_SELINUX_CAPABLE (docker labels containers)",
        report.get("ecs-selinux-capable"),
        "true",
    );
    // Every name in the file is one the targeted agent reads (the list the cluster agent's
    // tests use); awsvpc is not offered (no CNI plugins ship).
    let reads = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../agents/cluster-agent/data/ecs-agent-environment.txt"
    ))?;
    let reads: Vec<&str> = reads
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let names = report.get("ecs-config-names").unwrap_or_default();
    let unknown: Vec<&str> = names.split(',').filter(|n| !reads.contains(n)).collect();
    checks.check(
        "every ecs.config name is one the ECS agent reads",
        names.split(',').count() > 15 && unknown.is_empty(),
        format!("unknown {unknown:?} in {names}"),
    );
    checks.check(
        "ECS_ENABLE_TASK_ENI is not written (awsvpc tasks cannot run)",
        !names.split(',').any(|n| n == "ECS_ENABLE_TASK_ENI"),
        names,
    );
    checks.equal(
        "ECS_AWSVPC_BLOCK_IMDS",
        report.get("ecs-awsvpc-block-imds"),
        "true",
    );
    checks.equal(
        "ECS_INSTANCE_ATTRIBUTES (the variant from os-release, the user's attribute)",
        report.get("ecs-instance-attributes"),
        r#"{"berth.variant":"aws-ecs-test","team":"payments"}"#,
    );
    checks.equal("ecs.config mode", report.get("ecs-config-mode"), "600");
    checks.equal(
        "docker answers GET /_ping on /run/docker.sock",
        report.get("docker-ping"),
        "OK",
    );
    let version = report.get("docker-version").unwrap_or_default();
    checks.check(
        "docker answers GET /version with an engine version",
        version.chars().next().is_some_and(|c| c.is_ascii_digit()),
        version,
    );
    checks.equal(
        "route_localnet set by ecs.service's ExecStartPre",
        report.get("route-localnet"),
        "1",
    );
    checks.equal(
        "probe: missing artifacts",
        report.get("missing-artifacts"),
        "amazon-ecs-agent",
    );
    // The agent's own account of the start. Lines are taken again once complete: a match may
    // come before the line's end arrived.
    let _ = vm.wait_for_line(ECS_EXEC_FAILED, STEP_DEADLINE);
    let started = vm.first_complete_line(ECS_STARTED)?;
    checks.check(
        "ecs.service was started (systemd gave it an invocation id)",
        started.split_whitespace().any(|w| {
            w.strip_prefix("invocation=")
                .is_some_and(|id| id.len() == 32)
        }),
        &started,
    );
    let command = vm.first_complete_line(ECS_COMMAND)?;
    checks.check(
        "ecs.service runs /usr/bin/amazon-ecs-agent with /etc/ecs/ecs.config",
        command.contains("exec_start=/usr/bin/amazon-ecs-agent")
            && command.contains("environment_files=/etc/ecs/ecs.config"),
        &command,
    );
    // route_localnet, nat PREROUTING DNAT, nat OUTPUT DNAT, INPUT loopback filter, INPUT
    // introspection filter: each iptables -A/-I succeeded, so the rules were in place when
    // the agent was started (they go again in ExecStopPost when it fails to exec).
    checks.check(
        "ecs.service's five ExecStartPre commands exited 0",
        command.contains("pre_status=0,0,0,0,0"),
        &command,
    );
    let failed = vm.first_complete_line(ECS_EXEC_FAILED)?;
    checks.check(
        "ecs.service fails to exec the missing binary: status 203/EXEC (expected with --allow-missing-artifacts)",
        failed.contains("exec_main_status=203"),
        &failed,
    );

    // SELinux: the containers of berth-container-check.service (started with docker).
    let done = vm
        .wait_for_line_or_fail(CONTAINER_DONE, CONTAINER_FAILED, STEP_DEADLINE)
        .context("berth-container-check.service did not finish")?;
    println!(
        "  berth-container-check done {:.1}s after docker active (host clock: docker import, two docker runs)",
        done.elapsed.saturating_sub(docker.elapsed).as_secs_f64()
    );
    let lines = vm.lines();
    let container = ProbeReport::parse(
        lines
            .iter()
            .map(|l| l.text.as_str())
            .filter(|t| t.contains(CONTAINER_LINE)),
    )
    .context("the container's berth-probe report")?;
    let context = container.get("selinux-context").unwrap_or_default();
    let levels = regex::Regex::new(CONTAINER_CONTEXT)?
        .captures(context)
        .and_then(|c| Some((c[1].parse::<u32>().ok()?, c[2].parse::<u32>().ok()?)));
    checks.check(
        "the container runs as system_u:system_r:container_t:s0:cN,cM (N < M < 1024)",
        levels.is_some_and(|(n, m)| n < m && m < 1024),
        context,
    );
    let in_container = vm.first_complete_line(CONTAINER_API)?;
    checks.check(
        "apiclient get settings.motd in the container: refused by SELinux (Permission denied on /run/api.sock)",
        in_container.contains("failed to connect to the API socket /run/api.sock")
            && in_container.contains("Permission denied"),
        &in_container,
    );

    api.wait_ready(STEP_DEADLINE)?;
    let motd = api.run(&["get", "settings.motd"])?;
    checks.check(
        "apiclient get settings.motd from the host works",
        motd.status.success() && String::from_utf8_lossy(&motd.stdout).contains("\"motd\""),
        format!(
            "{} {}",
            String::from_utf8_lossy(&motd.stdout).trim(),
            String::from_utf8_lossy(&motd.stderr).trim()
        ),
    );
    let out = api.run(&["raw", "-u", "/os"])?;
    let os: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let missing: Vec<&str> = os["missing_artifacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    checks.check(
        "/os lists the missing artifact",
        missing == ["amazon-ecs-agent"],
        format!("{os}"),
    );
    checks.equal("/os variant_id", os["variant_id"].as_str(), VARIANT);

    // A live change: boot-config's `ecs` service runs `berth-cluster-agent apply`, which
    // rewrites ecs.config and restarts the (started) agent unit.
    let t0 = vm.elapsed();
    let out = api.run(&["set", "ecs.cluster=berth-ecs-2"])?;
    checks.check(
        "apiclient set ecs.cluster=berth-ecs-2",
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    );
    let changed = vm
        .wait_for_line(LIVE_CHANGED, STEP_DEADLINE)
        .context("berth-cluster-agent apply did not rewrite /etc/ecs/ecs.config")?;
    let restarted = vm
        .wait_for_line(LIVE_RESTARTED, STEP_DEADLINE)
        .context("berth-cluster-agent apply did not report ecs.service restarted")?;
    println!(
        "  apiclient set ecs.cluster -> ecs.config rewritten {:.2}s, ecs.service restarted {:.2}s (host clock)",
        changed.elapsed.saturating_sub(t0).as_secs_f64(),
        restarted.elapsed.saturating_sub(t0).as_secs_f64()
    );
    let live = api.run(&["get", "settings.ecs.cluster"])?;
    checks.check(
        "the live setting is berth-ecs-2",
        String::from_utf8_lossy(&live.stdout).contains("berth-ecs-2"),
        String::from_utf8_lossy(&live.stdout).trim().to_string(),
    );

    let denial = regex::Regex::new(markers::SELINUX_DENIAL)?;
    let denials: Vec<String> = vm
        .lines()
        .into_iter()
        .filter(|l| denial.is_match(&l.text))
        .map(|l| l.text)
        .collect();
    checks.check(
        "the container's write on api.sock was denied and logged",
        denials.iter().any(|d| expected_denial(d)),
        denials.join("\n"),
    );
    let unexpected: Vec<&String> = denials.iter().filter(|d| !expected_denial(d)).collect();
    checks.check(
        "no other SELinux denial on the console",
        unexpected.is_empty(),
        format!("{unexpected:?}"),
    );

    vm.power_off(Duration::from_secs(90))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\n{}", vm.tail(80)))
}
