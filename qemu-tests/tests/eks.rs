//! The EKS node (issue 6): the `aws-k8s-1.33-test` image, built with
//! `--allow-missing-artifacts` since no kubelet can be downloaded here, boots as an "EC2
//! instance" (DMI vendor through QEMU's SMBIOS tables) against the IMDSv2 emulator with EKS
//! user data. berth-cluster-agent renders kubelet's files from the settings and the IMDS
//! facts, starts containerd (which must answer on its socket) and then kubelet.service, which
//! is started with the rendered flags and fails to exec the missing binary; `/os` lists the
//! missing artifacts.
//!
//! Gated by BERTH_QEMU_TESTS=1; needs the aws-k8s-1.33-test image (scripts/test.sh builds it).

use std::time::Duration;

use anyhow::{Context, Result};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::imds::{self, Imds};
use qemu_tests::{markers, scenario, Arch, Checks, Image, ProbeReport, Vm};

const VARIANT: &str = "aws-k8s-1.33-test";
const PROBE_FW_CFG: &str = "opt/org.berth/probe";
const CONFIGURED: &str = r"Reached target configured\.target";
// berth-cluster-agent's log lines (tracing target cluster_agent::boot).
const CONTAINERD_ACTIVE: &str =
    r#"cluster_agent::boot: started and active unit="?containerd\.service"#;
const KUBELET_STARTED: &str = r#"cluster_agent::boot: started unit="?kubelet\.service"#;
const KUBELET_COMMAND: &str = r#"cluster_agent::boot: command unit="?kubelet\.service"#;
const KUBELET_EXEC_FAILED: &str = r#"cluster_agent::boot: .*kubelet cannot run"#;
/// Generous under TCG on a loaded 2-core machine.
const CONFIGURED_DEADLINE: Duration = Duration::from_secs(360);
const STEP_DEADLINE: Duration = Duration::from_secs(240);
const REGION: &str = "eu-central-1";
const MAC: &str = "02:00:0a:00:01:17";

const USER_DATA: &str = r#"[settings.kubernetes]
cluster-name = "berth-eks"
api-server = "https://0123456789ABCDEF0123456789ABCDEF.gr7.eu-central-1.eks.amazonaws.com"
cluster-certificate = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVQnc9PQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg=="
"#;

#[test]
fn eks_node_renders_and_starts_containerd_and_kubelet_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("eks_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "EKS user data (cluster-name, api-server, cluster-certificate) from the IMDSv2 emulator",
            "kubelet config: max-pods 29 for m5.large, provider id, cluster DNS from the VPC CIDR",
            "kubelet flags: node IP and hostname override from IMDS",
            "kubeconfig (0600) names the API server; cluster CA and ECR provider config written",
            "containerd started by the agent, active and answering HTTP/2 on its socket",
            "kubelet.service started with ExecStart $KUBELET_ARGS from the rendered environment file",
            "/os lists the missing external artifacts (kubelet, aws-iam-authenticator, ecr-credential-provider)",
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
    // The VPC is in 10/8, so the cluster DNS is EKS's 172.20.0.10 (no service CIDR given).
    config.meta_data.insert(
        format!("network/interfaces/macs/{MAC}/vpc-ipv4-cidr-blocks"),
        "10.0.0.0/16".into(),
    );
    let facts = config.meta_data.clone();
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
    let containerd = vm
        .wait_for_line(CONTAINERD_ACTIVE, STEP_DEADLINE)
        .context("berth-cluster-agent did not report containerd active")?;
    let kubelet = vm
        .wait_for_line(KUBELET_STARTED, STEP_DEADLINE)
        .context("berth-cluster-agent did not report kubelet.service started")?;
    let banner = vm.wait_for_line(markers::KERNEL_BANNER, STEP_DEADLINE)?;
    let since_kernel = |l: &qemu_tests::Line| (l.elapsed - banner.elapsed).as_secs_f64();
    println!(
        "  host clock from the kernel banner: configured.target {:.1}s, containerd active {:.1}s, kubelet.service started {:.1}s",
        since_kernel(&configured),
        since_kernel(&containerd),
        since_kernel(&kubelet)
    );

    vm.wait_for_line(markers::PROBE_END, STEP_DEADLINE)
        .context("berth-probe did not finish its report")?;
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        ProbeReport::parse(lines.iter().map(|l| l.text.as_str())).ok()
    })?;
    checks.equal("user data state", report.get("user-data-state"), "applied");
    checks.equal(
        "kubelet maxPods (m5.large)",
        report.get("kubelet-max-pods"),
        "29",
    );
    checks.equal(
        "kubelet providerID",
        report.get("kubelet-provider-id"),
        &format!("aws:///{REGION}a/{}", facts["instance-id"]),
    );
    checks.equal(
        "kubelet clusterDNS",
        report.get("kubelet-cluster-dns"),
        "172.20.0.10",
    );
    checks.equal(
        "kubelet cgroupDriver",
        report.get("kubelet-cgroup-driver"),
        "systemd",
    );
    let args = report.get("kubelet-args").unwrap_or_default();
    for flag in [
        "--node-ip=10.0.1.23".to_string(),
        format!("--hostname-override={}", facts["local-hostname"]),
        "--cloud-provider=external".to_string(),
        "--kubeconfig=/var/lib/kubelet/kubeconfig".to_string(),
        "--config=/etc/kubernetes/kubelet/config.json".to_string(),
    ] {
        checks.check(
            format!("kubelet flags hold {flag}"),
            args.split_whitespace().any(|a| a == flag),
            args,
        );
    }
    checks.equal(
        "kubeconfig server",
        report.get("kubeconfig-server"),
        "https://0123456789ABCDEF0123456789ABCDEF.gr7.eu-central-1.eks.amazonaws.com",
    );
    checks.equal("kubeconfig mode", report.get("kubeconfig-mode"), "600");
    checks.equal("cluster CA mode", report.get("kubernetes-ca-mode"), "644");
    checks.equal(
        "ECR credential provider config mode",
        report.get("credential-provider-config-mode"),
        "644",
    );
    checks.equal(
        "containerd answers on /run/containerd/containerd.sock",
        report.get("containerd-socket"),
        "http2",
    );
    checks.equal(
        "probe: missing artifacts",
        report.get("missing-artifacts"),
        "kubelet,aws-iam-authenticator,ecr-credential-provider",
    );
    // The agent's own account of the start (systemd's exec error is in the journal only).
    // Lines are taken again once complete: a match may come before the line's end arrived.
    let full = |pattern: &str| -> String {
        let re = regex::Regex::new(pattern).expect("the patterns above are valid");
        vm.lines()
            .into_iter()
            .find(|l| re.is_match(&l.text))
            .map(|l| l.text)
            .unwrap_or_default()
    };
    let _ = vm.wait_for_line(KUBELET_EXEC_FAILED, STEP_DEADLINE);
    let started = full(KUBELET_STARTED);
    checks.check(
        "kubelet.service was started (systemd gave it an invocation id)",
        started.split_whitespace().any(|w| {
            w.strip_prefix("invocation=")
                .is_some_and(|id| id.len() == 32)
        }),
        &started,
    );
    let command = full(KUBELET_COMMAND);
    checks.check(
        "kubelet.service runs $KUBELET_ARGS from /etc/kubernetes/kubelet/environment",
        command.contains("exec_start=/usr/bin/kubelet $KUBELET_ARGS")
            && command.contains("environment_files=/etc/kubernetes/kubelet/environment"),
        &command,
    );
    let failed = full(KUBELET_EXEC_FAILED);
    checks.check(
        "kubelet.service fails to exec the missing binary: status 203/EXEC (expected with --allow-missing-artifacts)",
        failed.contains("exec_main_status=203"),
        &failed,
    );

    api.wait_ready(STEP_DEADLINE)?;
    let out = api.run(&["raw", "-u", "/os"])?;
    let os: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let missing: Vec<&str> = os["missing_artifacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    checks.check(
        "/os lists the missing artifacts",
        missing
            == [
                "kubelet",
                "aws-iam-authenticator",
                "ecr-credential-provider",
            ],
        format!("{os}"),
    );
    checks.equal(
        "/os variant_id",
        os["variant_id"].as_str(),
        "aws-k8s-1.33-test",
    );

    vm.power_off(Duration::from_secs(90))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\n{}", vm.tail(80)))
}
