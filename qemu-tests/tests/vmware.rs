//! The EKS Anywhere node on vSphere (issue 6): the `vmware-k8s-1.33-test` image, built with
//! `--allow-missing-artifacts` since no kubelet can be downloaded here, is told it is on VMware
//! (fw_cfg `opt/org.berth/platform` = `vmware`; the DMI vendor stays QEMU, so the VMware
//! backdoor is never touched) and takes EKS Anywhere user data (bootstrap token,
//! authentication-mode tls) from an OVF environment: an ISO labelled `OVF ENV` holding
//! `ovf-env.xml` with the vApp property `user-data` (base64), attached as a SATA CD-ROM, as
//! vSphere's ISO transport does. The ISO is made on the host with xorriso
//! (scripts/host-deps.sh).
//!
//! berth-cluster-agent renders the bootstrap kubeconfig and kubelet's flags, starts containerd
//! (which must answer on its socket) and then kubelet.service, which is started with the
//! rendered flags and fails to exec the missing binary.
//!
//! Gated by BERTH_QEMU_TESTS=1; needs the vmware-k8s-1.33-test image (scripts/test.sh builds
//! it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::{markers, scenario, Arch, Checks, Image, ProbeReport, Vm};
use serde_json::Value;

const VARIANT: &str = "vmware-k8s-1.33-test";
const CONFIGURED: &str = markers::CONFIGURED;
const CONTAINERD_ACTIVE: &str = markers::CONTAINERD_ACTIVE;
const KUBELET_STARTED: &str = markers::KUBELET_STARTED;
const KUBELET_COMMAND: &str = markers::KUBELET_COMMAND;
const KUBELET_EXEC_FAILED: &str = markers::KUBELET_EXEC_FAILED;
const CONFIGURED_DEADLINE: Duration = Duration::from_secs(360);
const STEP_DEADLINE: Duration = Duration::from_secs(240);
const API_SERVER: &str = "https://10.20.0.5:6443";
const TOKEN_ID: &str = "abcdef";

const USER_DATA: &str = r#"[settings.kubernetes]
cluster-name = "berth-eksa"
api-server = "https://10.20.0.5:6443"
cluster-certificate = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVQnc9PQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg=="
bootstrap-token = "abcdef.0123456789abcdef"
authentication-mode = "tls"
cluster-dns-ip = "10.96.0.10"

[settings.kubernetes.node-labels]
"eksa.example.com/pool" = "md-0"
"#;

/// `ovf-env.xml` as vSphere writes it for the VM, with `user-data` base64-encoded.
fn ovf_env(user_data: &str) -> String {
    let b64 = settings_api::pem::encode_base64(user_data.as_bytes());
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-1001">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.2</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
         <Property oe:key="user-data" oe:value="{b64}"/>
   </PropertySection>
</Environment>
"#
    )
}

/// An ISO labelled `OVF ENV` holding `ovf-env.xml` (Rock Ridge and Joliet names).
fn ovf_env_iso(dir: &Path) -> Result<PathBuf> {
    let content = dir.join("ovf-env");
    std::fs::create_dir_all(&content)?;
    std::fs::write(content.join("ovf-env.xml"), ovf_env(USER_DATA))?;
    let iso = dir.join("ovf-env.iso");
    let out = Command::new("xorriso")
        .args([
            "-as", "mkisofs", "-quiet", "-r", "-J", "-V", "OVF ENV", "-o",
        ])
        .arg(&iso)
        .arg(&content)
        .output()
        .context("cannot run xorriso (scripts/host-deps.sh installs it)")?;
    ensure!(
        out.status.success(),
        "xorriso failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(iso)
}

#[test]
fn eksa_vmware_node_takes_user_data_from_the_ovf_environment_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("vmware_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "fw_cfg platform=vmware: the guest takes the VMware path without the backdoor",
            "EKS Anywhere user data from ovf-env.xml on an OVF ENV CD-ROM (vApp ISO transport), applied at first boot",
            "/boot/user-data names the OVF environment as the source",
            "bootstrap kubeconfig (0600) with the API server and the bootstrap token; no kubeconfig rendered",
            "kubelet flags: --bootstrap-kubeconfig, --kubeconfig, node labels; no cloud provider",
            "containerd started by the agent, active and answering HTTP/2 on its socket",
            "kubelet.service started with ExecStart $KUBELET_ARGS from the rendered environment file",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    let dir = tempfile::tempdir()?;
    let iso = ovf_env_iso(dir.path())?;
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let api = Api::forward(build_apiclient(target_tmp)?, dir.path().join("api.sock"))?;
    let log = target_tmp
        .join("qemu-tests")
        .join(format!("{name}.serial.log"));
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&image.qcow2)
        .memory_mib(2048)
        .fw_cfg_string("opt/org.berth/platform", "vmware")
        .fw_cfg_string("opt/org.berth/probe", "1")
        // q35's built-in AHCI controller, as vSphere attaches the OVF environment (SATA CD-ROM).
        .arg("-drive")
        .arg(format!(
            "file={},if=none,id=ovfenv,media=cdrom,readonly=on,format=raw",
            iso.display()
        ))
        .arg("-device")
        .arg("ide-cd,drive=ovfenv,bus=ide.2")
        .net_user([api.hostfwd()])
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
        "bootstrap kubeconfig server",
        report.get("bootstrap-kubeconfig-server"),
        API_SERVER,
    );
    checks.equal(
        "bootstrap kubeconfig token id",
        report.get("bootstrap-kubeconfig-token-id"),
        TOKEN_ID,
    );
    checks.equal(
        "bootstrap kubeconfig mode",
        report.get("bootstrap-kubeconfig-mode"),
        "600",
    );
    checks.equal(
        "no kubeconfig before TLS bootstrap (kubelet writes it)",
        report.get("kubeconfig-server"),
        "none",
    );
    checks.equal(
        "kubelet maxPods (not on EC2: 110)",
        report.get("kubelet-max-pods"),
        "110",
    );
    checks.equal(
        "kubelet clusterDNS",
        report.get("kubelet-cluster-dns"),
        "10.96.0.10",
    );
    checks.equal(
        "kubelet providerID (none off EC2)",
        report.get("kubelet-provider-id"),
        "none",
    );
    let args = report.get("kubelet-args").unwrap_or_default();
    for flag in [
        "--bootstrap-kubeconfig=/var/lib/kubelet/bootstrap-kubeconfig",
        "--kubeconfig=/var/lib/kubelet/kubeconfig",
        "--config=/etc/kubernetes/kubelet/config.json",
        "--node-labels=eksa.example.com/pool=md-0",
        // boot-config's generator off EC2: the address of the default route's interface
        // (QEMU user networking).
        "--node-ip=10.0.2.15",
    ] {
        checks.check(
            format!("kubelet flags hold {flag}"),
            args.split_whitespace().any(|a| a == flag),
            args,
        );
    }
    checks.check(
        "kubelet flags: no cloud provider, no image credential provider",
        !args.contains("--cloud-provider") && !args.contains("--image-credential-provider"),
        args,
    );
    checks.equal("cluster CA mode", report.get("kubernetes-ca-mode"), "644");
    checks.equal(
        "containerd answers on /run/containerd/containerd.sock",
        report.get("containerd-socket"),
        "http2",
    );
    checks.equal(
        "probe: missing artifacts (kubelet only)",
        report.get("missing-artifacts"),
        "kubelet",
    );

    let _ = vm.wait_for_line(KUBELET_EXEC_FAILED, STEP_DEADLINE);
    let started = vm.first_complete_line(KUBELET_STARTED)?;
    checks.check(
        "kubelet.service was started (systemd gave it an invocation id)",
        started.split_whitespace().any(|w| {
            w.strip_prefix("invocation=")
                .is_some_and(|id| id.len() == 32)
        }),
        &started,
    );
    let command = vm.first_complete_line(KUBELET_COMMAND)?;
    checks.check(
        "kubelet.service runs $KUBELET_ARGS from /etc/kubernetes/kubelet/environment",
        command.contains("exec_start=/usr/bin/kubelet $KUBELET_ARGS")
            && command.contains("environment_files=/etc/kubernetes/kubelet/environment"),
        &command,
    );

    api.wait_ready(STEP_DEADLINE)?;
    let out = api.stdout(&["raw", "-u", "/boot/user-data"])?;
    let status: Value = serde_json::from_str(&out).unwrap_or_default();
    let sources = status["sources"].as_array().cloned().unwrap_or_default();
    checks.check(
        "/boot/user-data: applied, platform vmware, one source: ovf-env.xml on the CD-ROM, property user-data",
        status["state"] == "applied"
            && status["platform"]
                .as_str()
                .is_some_and(|p| p.starts_with("vmware"))
            && sources.len() == 1
            && sources[0].as_str().is_some_and(|s| {
                s.starts_with("ovf-env /dev/sr") && s.ends_with("ovf-env.xml property user-data")
            }),
        format!("{status}"),
    );
    let out = api.stdout(&["get", "settings.kubernetes.authentication-mode"])?;
    checks.check(
        "settings.kubernetes.authentication-mode is tls",
        out.contains("\"tls\""),
        &out,
    );

    vm.power_off(Duration::from_secs(90))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\n{}", vm.tail(80)))
}
