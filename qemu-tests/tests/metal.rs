//! The bare-metal path (docs/boot-config.md): the qemu-test image is told it is on metal
//! (fw_cfg `opt/org.berth/platform` = `metal`, as a harness would say it) and takes its user
//! data from a config drive — a second disk holding a FAT file system labelled `CIDATA` with
//! a `user-data` file (cloud-init NoCloud's layout), made on the host with mkfs.vfat and
//! mcopy (dosfstools, mtools: scripts/host-deps.sh).
//!
//! The EKS Anywhere bare-metal node (issue 6) takes the same path: the `metal-k8s-1.33-test`
//! image (built with `--allow-missing-artifacts`: no kubelet can be downloaded here) gets EKS
//! Anywhere user data (bootstrap token, authentication-mode tls) from the config drive; the
//! cluster agent renders the bootstrap kubeconfig, starts containerd and kubelet.service.
//!
//! Gated by BERTH_QEMU_TESTS=1; needs the qemu-test and metal-k8s-1.33-test images
//! (scripts/test.sh builds them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::{markers, scenario, Arch, Checks, Image, ProbeReport, Vm};
use serde_json::Value;

const VARIANT: &str = "qemu-test";
const CONFIGURED: &str = markers::CONFIGURED;
const CONFIGURED_DEADLINE: Duration = Duration::from_secs(300);
const STEP_DEADLINE: Duration = Duration::from_secs(120);
const MOTD: &str = "hello from a config drive";

const USER_DATA: &str = r#"[settings]
motd = "hello from a config drive"

[settings.ntp]
time-servers = ["ntp.metal.example"]
"#;

/// A 4 MiB FAT image labelled CIDATA holding `user-data`.
fn config_drive(dir: &Path, content: &str) -> Result<PathBuf> {
    let image = dir.join("cidata.img");
    std::fs::File::create(&image)?.set_len(4 << 20)?;
    let user_data = dir.join("user-data");
    std::fs::write(&user_data, content)?;
    for (program, args) in [
        (
            "mkfs.vfat",
            vec!["-n".into(), "CIDATA".into(), path(&image)],
        ),
        (
            "mcopy",
            vec![
                "-i".into(),
                path(&image),
                path(&user_data),
                "::user-data".into(),
            ],
        ),
    ] {
        let out = Command::new(program)
            .args(&args)
            .output()
            .with_context(|| format!("cannot run {program} (dosfstools, mtools)"))?;
        ensure!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(image)
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn metal_config_drive_user_data_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("metal_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "fw_cfg platform=metal: the guest takes the metal path",
            "user data from a FAT config drive labelled CIDATA applied at first boot",
            "/boot/user-data names the config drive as the source",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    let dir = tempfile::tempdir()?;
    let drive = config_drive(dir.path(), USER_DATA)?;
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let api = Api::forward(build_apiclient(target_tmp)?, dir.path().join("api.sock"))?;
    let log = target_tmp
        .join("qemu-tests")
        .join(format!("{name}.serial.log"));
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&image.qcow2)
        .disk(&drive)
        .fw_cfg_string("opt/org.berth/platform", "metal")
        .fw_cfg_string("opt/org.berth/probe", "1")
        .net_user([api.hostfwd()])
        .serial_log(&log)
        .boot()?;
    let mut checks = Checks::new();
    let configured = vm
        .wait_for_line_or_fail(CONFIGURED, markers::BOOT_FAILURE, CONFIGURED_DEADLINE)
        .context("configured.target")?;
    println!(
        "  configured after {:.1}s",
        configured.elapsed.as_secs_f64()
    );
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        ProbeReport::parse(lines.iter().map(|l| l.text.as_str())).ok()
    })?;
    checks.equal("user data state", report.get("user-data-state"), "applied");
    checks.equal("motd rendered", report.get("motd"), MOTD);
    checks.equal(
        "chrony.conf servers",
        report.get("chrony-servers"),
        "ntp.metal.example",
    );
    api.wait_ready(STEP_DEADLINE)?;
    let out = api.stdout(&["raw", "-u", "/boot/user-data"])?;
    let status: Value = serde_json::from_str(&out).unwrap_or_default();
    let sources = status["sources"].as_array().cloned().unwrap_or_default();
    checks.check(
        "/boot/user-data: applied, platform metal, one config-drive source (CIDATA)",
        status["state"] == "applied"
            && status["platform"]
                .as_str()
                .is_some_and(|p| p.starts_with("metal"))
            && sources.len() == 1
            && sources[0].as_str().is_some_and(|s| {
                s.starts_with("config-drive ") && s.contains("(CIDATA) user-data")
            }),
        format!("{status}"),
    );
    let tail = vm.tail(30);
    vm.power_off(STEP_DEADLINE)?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\nlast serial lines:\n{tail}"))
}

const METAL_K8S: &str = "metal-k8s-1.33-test";
const CONTAINERD_ACTIVE: &str = markers::CONTAINERD_ACTIVE;
const KUBELET_STARTED: &str = markers::KUBELET_STARTED;
const EKSA_USER_DATA: &str = r#"[settings.kubernetes]
cluster-name = "berth-eksa-metal"
api-server = "https://10.30.0.5:6443"
cluster-certificate = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVQnc9PQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg=="
bootstrap-token = "metal1.0123456789abcdef"
authentication-mode = "tls"
"#;

#[test]
fn eksa_metal_node_joins_with_a_bootstrap_token_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("metal_k8s_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "fw_cfg platform=metal: EKS Anywhere user data from a CIDATA config drive",
            "bootstrap kubeconfig (0600) with the API server and the token id",
            "kubelet flags: --bootstrap-kubeconfig, --kubeconfig; no cloud provider",
            "containerd active and answering HTTP/2; kubelet.service started",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(METAL_K8S, arch)?;
    let dir = tempfile::tempdir()?;
    let drive = config_drive(dir.path(), EKSA_USER_DATA)?;
    let target_tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let log = target_tmp
        .join("qemu-tests")
        .join(format!("{name}.serial.log"));
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&image.qcow2)
        .disk(&drive)
        .memory_mib(2048)
        .fw_cfg_string("opt/org.berth/platform", "metal")
        .fw_cfg_string("opt/org.berth/probe", "1")
        .serial_log(&log)
        .boot()?;
    let mut checks = Checks::new();
    let configured = vm
        .wait_for_line_or_fail(CONFIGURED, markers::BOOT_FAILURE, CONFIGURED_DEADLINE)
        .context("configured.target")?;
    let containerd = vm
        .wait_for_line(CONTAINERD_ACTIVE, STEP_DEADLINE * 2)
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
    vm.wait_for_line(markers::PROBE_END, STEP_DEADLINE * 2)
        .context("berth-probe did not finish its report")?;
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        ProbeReport::parse(lines.iter().map(|l| l.text.as_str())).ok()
    })?;
    checks.equal("user data state", report.get("user-data-state"), "applied");
    checks.equal(
        "bootstrap kubeconfig server",
        report.get("bootstrap-kubeconfig-server"),
        "https://10.30.0.5:6443",
    );
    checks.equal(
        "bootstrap kubeconfig token id",
        report.get("bootstrap-kubeconfig-token-id"),
        "metal1",
    );
    checks.equal(
        "bootstrap kubeconfig mode",
        report.get("bootstrap-kubeconfig-mode"),
        "600",
    );
    let args = report.get("kubelet-args").unwrap_or_default();
    for flag in [
        "--bootstrap-kubeconfig=/var/lib/kubelet/bootstrap-kubeconfig",
        "--kubeconfig=/var/lib/kubelet/kubeconfig",
    ] {
        checks.check(
            format!("kubelet flags hold {flag}"),
            args.split_whitespace().any(|a| a == flag),
            args,
        );
    }
    checks.check(
        "kubelet flags: no cloud provider",
        !args.contains("--cloud-provider"),
        args,
    );
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
    let tail = vm.tail(40);
    vm.power_off(Duration::from_secs(90))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\nlast serial lines:\n{tail}"))
}
