//! The EC2 path (docs/boot-config.md): the qemu-test image boots as an "EC2 instance" — DMI
//! system vendor `Amazon EC2` through QEMU's SMBIOS tables, no kernel command line change —
//! and takes its user data and instance facts from the IMDSv2 emulator (qemu_tests::imds),
//! which runs on the host loopback and is reached at 169.254.169.254 through QEMU's user
//! network (guestfwd + tcp-relay).
//!
//! Gated by BERTH_QEMU_TESTS=1; needs the qemu-test image (scripts/test.sh builds it).

use std::time::Duration;

use anyhow::{Context, Result};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::imds::{self, Imds};
use qemu_tests::{markers, scenario, Arch, Checks, Image, ProbeReport, Vm};
use serde_json::json;

const VARIANT: &str = "qemu-test";
const PROBE_FW_CFG: &str = "opt/org.berth/probe";
const CONFIGURED: &str = markers::CONFIGURED;
/// Generous under TCG on a loaded 2-core machine.
const CONFIGURED_DEADLINE: Duration = Duration::from_secs(300);
const STEP_DEADLINE: Duration = Duration::from_secs(120);
const REGION: &str = "eu-central-1";

const USER_DATA: &str = r#"[settings]
motd = "hello from IMDS"

[settings.ntp]
time-servers = ["169.254.169.123"]

[settings.kubernetes]
cluster-name = "berth-ec2"
# Set by the user: beats the node-ip generator (IMDS local-ipv4 is 10.0.1.23).
node-ip = "10.9.8.7"
"#;

#[test]
fn ec2_imds_user_data_and_generated_settings_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("ec2_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "DMI vendor Amazon EC2 (QEMU -smbios): the guest detects aws",
            "user data from the IMDSv2 emulator at 169.254.169.254 applied at first boot",
            "generated: network.hostname from IMDS local-hostname, aws.region, kubernetes.provider-id",
            "kubernetes.node-ip set in user data beats the generator",
            "the emulator saw a token PUT before any GET, and every GET carried the token",
            "after apiclient set network.hostname and a reset: the user's host name is kept",
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
    println!(
        "  configured after {:.1}s",
        configured.elapsed.as_secs_f64()
    );
    vm.wait_for_line(markers::PROBE_END, STEP_DEADLINE)
        .context("berth-probe did not finish its report")?;
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        ProbeReport::parse(lines.iter().map(|l| l.text.as_str())).ok()
    })?;
    checks.equal("user data state", report.get("user-data-state"), "applied");
    checks.equal("motd rendered", report.get("motd"), "hello from IMDS");
    checks.equal(
        "chrony.conf servers",
        report.get("chrony-servers"),
        "169.254.169.123",
    );
    let detected = vm.wait_for_line(markers::USER_DATA_FROM_AWS, STEP_DEADLINE);
    checks.check(
        "platform aws from DMI",
        detected
            .as_ref()
            .is_ok_and(|l| l.text.contains("DMI system vendor")),
        detected.map(|l| l.text).unwrap_or_else(|e| e.to_string()),
    );

    api.wait_ready(STEP_DEADLINE)?;
    let got = api.get("settings")?;
    let s = &got["settings"];
    checks.equal("apiclient get: motd", s["motd"].as_str(), "hello from IMDS");
    checks.equal(
        "apiclient get: kubernetes.cluster-name",
        s.pointer("/kubernetes/cluster-name")
            .and_then(|v| v.as_str()),
        "berth-ec2",
    );
    checks.equal(
        "generated network.hostname = IMDS local-hostname",
        s.pointer("/network/hostname").and_then(|v| v.as_str()),
        facts["local-hostname"].as_str(),
    );
    checks.equal(
        "generated aws.region",
        s.pointer("/aws/region").and_then(|v| v.as_str()),
        REGION,
    );
    checks.equal(
        "generated kubernetes.provider-id",
        s.pointer("/kubernetes/provider-id")
            .and_then(|v| v.as_str()),
        format!("aws:///{REGION}a/{}", facts["instance-id"]).as_str(),
    );
    checks.equal(
        "user-set kubernetes.node-ip beats IMDS local-ipv4",
        s.pointer("/kubernetes/node-ip").and_then(|v| v.as_str()),
        "10.9.8.7",
    );
    let out = api.run(&["raw", "-u", "/boot/user-data"])?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    checks.check(
        "/boot/user-data names the IMDS source and the platform",
        status["state"] == "applied"
            && status["platform"]
                .as_str()
                .is_some_and(|p| p.starts_with("aws"))
            && status["sources"] == json!(["imds http://169.254.169.254:80/latest/user-data"]),
        format!("{status}"),
    );

    let requests = emulator.requests();
    println!("  IMDS requests: {}", requests.len());
    for r in &requests {
        println!(
            "    {} {} -> {} (token {})",
            r.method, r.path, r.status, r.valid_token
        );
    }
    let first_get = requests.iter().position(|r| r.method == "GET");
    let first_put = requests
        .iter()
        .position(|r| r.method == "PUT" && r.status == 200);
    checks.check(
        "token PUT before the first GET",
        matches!((first_put, first_get), (Some(p), Some(g)) if p < g),
        format!("PUT at {first_put:?}, GET at {first_get:?}"),
    );
    checks.check(
        "every GET carried a valid token",
        requests
            .iter()
            .filter(|r| r.method == "GET")
            .all(|r| r.valid_token && r.status != 401),
        "see the request list above",
    );
    checks.check(
        "user data fetched from IMDS",
        requests
            .iter()
            .any(|r| r.path == "/latest/user-data" && r.status == 200),
        "GET /latest/user-data",
    );

    // The user renames the host: the generator leaves it alone at the next boot.
    let out = api.run(&["set", "network.hostname=picked-by-user"])?;
    checks.check(
        "apiclient set network.hostname",
        out.status.success(),
        "exit status",
    );
    let configured_before = vm.count_matches(CONFIGURED)?;
    vm.qmp("system_reset", None)?;
    let again = vm.wait_for_nth_line(CONFIGURED, configured_before + 1, CONFIGURED_DEADLINE)?;
    println!(
        "  configured again after the reset at {:.1}s",
        again.elapsed.as_secs_f64()
    );
    let skipped = vm.wait_for_line(markers::HOSTNAME_NOT_GENERATED, STEP_DEADLINE);
    checks.check(
        "generator skips the user's host name",
        skipped.is_ok(),
        skipped.map(|l| l.text).unwrap_or_else(|e| e.to_string()),
    );
    api.wait_ready(STEP_DEADLINE)?;
    let got = api.get("settings")?;
    checks.check(
        "host name and region after the reset",
        got.pointer("/settings/network/hostname") == Some(&json!("picked-by-user"))
            && got.pointer("/settings/aws/region") == Some(&json!(REGION)),
        format!(
            "{:?} {:?}",
            got.pointer("/settings/network"),
            got.pointer("/settings/aws")
        ),
    );

    vm.power_off(Duration::from_secs(60))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\n{}", vm.tail(60)))
}
