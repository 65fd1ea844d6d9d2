//! Boot-time configuration (docs/boot-config.md): user data by QEMU fw_cfg at first boot,
//! configuration rendered from settings, changes through the real `apiclient`.
//!
//! The host services (hostname, proxy, DNS, CA bundle, containerd config) are checked through
//! berth-probe's report after each boot, and live changes through boot-config's console lines.
//! The reboot is a real one, asked for with `apiclient reboot`.
//!
//! Gated by BERTH_QEMU_TESTS=1 like the boot scenarios; boots the `qemu-test` variant (the
//! `qemu` image plus `berth-api-bridge`, which forwards guest TCP port 8080 to /run/api.sock).
//! The host forwards a Unix socket to that port, so `apiclient --socket-path` drives the guest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use qemu_tests::api::{build_apiclient, Api};
use qemu_tests::{markers, scenario, Arch, Checks, Image, ProbeReport, Vm};

const VARIANT: &str = "qemu-test";
const USER_DATA_FW_CFG: &str = "opt/org.berth/user-data";
const PROBE_FW_CFG: &str = "opt/org.berth/probe";
const CONFIGURED: &str = markers::CONFIGURED;
/// Generous under TCG on a loaded 2-core machine (about 20 s is usual).
const CONFIGURED_DEADLINE: Duration = Duration::from_secs(300);
/// boot-config's log lines (through apiserver's stderr, on the console).
const RENDERED: &str = markers::RENDERED;
const RESTARTED: &str = markers::RESTARTED;
/// Matches only once the line is complete enough to name the unit.
const RESTARTED_CHRONY: &str = markers::RESTARTED_CHRONY;
const STEP_DEADLINE: Duration = Duration::from_secs(120);
const RESTARTED_RESOLVED: &str = markers::RESTARTED_RESOLVED;
const CONTAINERD_SKIPPED: &str = markers::CONTAINERD_NOT_LOADED;
/// boot-config's apply-hostname line.
const HOSTNAME_SET: &str = markers::HOSTNAME_SET;
/// The kernel's last line before a reboot (reboot(2) with LINUX_REBOOT_CMD_RESTART).
const REBOOTING: &str = markers::KERNEL_RESTART;

const USER_DATA: &str = r#"[settings]
motd = "hello from user data"

[settings.ntp]
time-servers = ["10.0.2.2", "ntp.example.com"]

[settings.kernel.sysctl]
"vm.max_map_count" = "262144"

[settings.network]
hostname = "berth-test.example.com"
https-proxy = "http://10.0.2.2:3128"
no-proxy = [".example.com"]

# 192.0.2.0/24 is TEST-NET-1: told apart from QEMU's DHCP server (10.0.2.3).
[settings.dns]
name-servers = ["192.0.2.53"]
search-list = ["example.com"]

[[settings.container-registry.mirrors]]
registry = "docker.io"
endpoint = ["https://mirror.example.com"]

[[settings.container-registry.credentials]]
registry = "registry.example.com"
username = "berth"
password = "secret"
"#;

/// A test CA (agents/boot-config/tests/fixtures), added to the trust store by settings.pki.
const CORP_CA: &str = include_str!("../../agents/boot-config/tests/fixtures/corp-ca.pem");

/// The user data of the config scenario: [`USER_DATA`] plus the test CA as `settings.pki.corp`.
fn user_data() -> String {
    format!(
        "{USER_DATA}\n[settings.pki.corp]\ntrusted = true\ndata = \"{}\"\n",
        settings_api::pem::encode_base64(CORP_CA.as_bytes())
    )
}

/// The last 24 base64 characters of the CA's body (what the probe reports of the bundle).
fn corp_ca_end() -> String {
    let body = CORP_CA
        .rsplit_once("-----END CERTIFICATE-----")
        .map(|(b, _)| b.trim_end())
        .unwrap_or_default();
    body[body.len().saturating_sub(24)..].to_string()
}

fn serial_log(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("qemu-tests")
        .join(format!("{name}.serial.log"))
}

/// Boots the qemu-test image with `user_data` by fw_cfg, the probe on, and the API reachable
/// through a host Unix socket. The temporary folder holds the user data and the socket.
fn boot_with_user_data(
    arch: Arch,
    name: &str,
    user_data: &str,
) -> Result<(qemu_tests::RunningVm, Api, tempfile::TempDir)> {
    let image = Image::locate(VARIANT, arch)?;
    let dir = tempfile::tempdir()?;
    let user_data_path = dir.path().join("user-data.toml");
    std::fs::File::create(&user_data_path)?.write_all(user_data.as_bytes())?;
    let api = Api::forward(
        build_apiclient(Path::new(env!("CARGO_TARGET_TMPDIR")))?,
        dir.path().join("api.sock"),
    )?;
    let log = serial_log(name);
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(name)
        .disk(&image.qcow2)
        .fw_cfg_file(USER_DATA_FW_CFG, &user_data_path)
        .fw_cfg_string(PROBE_FW_CFG, "1")
        .net_user([api.hostfwd()])
        .serial_log(&log)
        .boot()?;
    Ok((vm, api, dir))
}

/// Waits for configured.target and for the probe's complete report.
fn configured_report(vm: &qemu_tests::RunningVm) -> Result<ProbeReport> {
    let configured = vm
        .wait_for_line_or_fail(CONFIGURED, markers::BOOT_FAILURE, CONFIGURED_DEADLINE)
        .context("configured.target")?;
    println!(
        "  configured after {:.1}s",
        configured.elapsed.as_secs_f64()
    );
    report_since(vm, Duration::ZERO)
}

/// Waits for the first complete probe report printed after `since` (VM time; a reboot prints
/// a second report).
fn report_since(vm: &qemu_tests::RunningVm, since: Duration) -> Result<ProbeReport> {
    // The end line may still be unfinished (no newline yet) when a line wait matches it, so
    // wait for a report that parses.
    let report = vm.wait_until("a complete berth-probe report", STEP_DEADLINE, |lines| {
        ProbeReport::parse(
            lines
                .iter()
                .filter(|l| l.elapsed >= since)
                .map(|l| l.text.as_str()),
        )
        .ok()
    })?;
    for key in [
        "rss-kib-apiserver",
        "rss-kib-chronyd",
        "rss-kib-berth-api-bridge",
    ] {
        println!("  {key}: {}", report.get(key).unwrap_or("-"));
    }
    Ok(report)
}

/// The host services rendered from the user data, as the probe saw them after boot.
fn check_host_services(checks: &mut Checks, report: &ProbeReport) {
    checks.equal(
        "kernel host name",
        report.get("hostname"),
        "berth-test.example.com",
    );
    checks.equal(
        "/etc/hostname",
        report.get("etc-hostname"),
        "berth-test.example.com",
    );
    checks.equal(
        "/etc/hosts names the host",
        report.get("hosts-hostname"),
        "berth-test.example.com,berth-test",
    );
    checks.equal(
        "proxy.env HTTPS_PROXY",
        report.get("proxy-https"),
        "http://10.0.2.2:3128",
    );
    checks.check(
        "proxy.env NO_PROXY has the setting and localhost",
        report
            .get("proxy-no")
            .is_some_and(|v| v.contains(".example.com") && v.contains("localhost")),
        format!("{:?}", report.get("proxy-no")),
    );
    checks.check(
        "systemd-resolved uses dns.name-servers",
        report
            .get("dns-servers")
            .is_some_and(|s| s.split(',').any(|x| x == "192.0.2.53")),
        format!("{:?}", report.get("dns-servers")),
    );
    checks.check(
        "systemd-resolved searches dns.search-list",
        report
            .get("dns-search")
            .is_some_and(|s| s.split(',').any(|x| x == "example.com")),
        format!("{:?}", report.get("dns-search")),
    );
    checks.equal(
        "/etc/resolv.conf points at resolved's stub",
        report.get("resolv-conf-link"),
        "../run/systemd/resolve/stub-resolv.conf",
    );
    checks.check(
        "CA bundle: the Mozilla certificates plus settings.pki.corp",
        report
            .get("ca-bundle-certs")
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n > 100),
        format!("{:?} certificates", report.get("ca-bundle-certs")),
    );
    checks.equal("CA bundle pki bundles", report.get("ca-bundle-pki"), "corp");
    checks.equal(
        "CA bundle ends with the corp CA",
        report.get("ca-bundle-last-cert-end"),
        corp_ca_end().as_str(),
    );
    checks.equal(
        "containerd mirrors",
        report.get("containerd-mirrors"),
        "docker.io",
    );
    checks.equal(
        "containerd mirror endpoints",
        report.get("containerd-endpoints"),
        r#"["https://mirror.example.com"]"#,
    );
    checks.equal(
        "containerd registry auth",
        report.get("containerd-auth"),
        "registry.example.com",
    );
    checks.equal(
        "containerd config is root-only",
        report.get("containerd-config-mode"),
        "600",
    );
}

#[test]
fn invalid_user_data_leaves_defaults_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("config_invalid_user_data_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "user data with an invalid value: the host still reaches configured.target",
            "the error names the key on the console and at /boot/user-data",
            "nothing of the user data is stored: motd and ntp keep their defaults",
        ],
    )?
    else {
        return Ok(());
    };
    let (vm, api, _dir) = boot_with_user_data(
        arch,
        &name,
        "[settings]\nmotd = \"not applied\"\n[settings.ntp]\ntime-servers = [\"bad server name\"]\n",
    )?;
    let mut checks = Checks::new();
    let report = configured_report(&vm)?;
    checks.equal("user data state", report.get("user-data-state"), "invalid");
    checks.equal(
        "motd is the default",
        report.get("motd"),
        "Welcome to Berth!",
    );
    let console = vm.wait_for_line(markers::USER_DATA_INVALID_NTP, STEP_DEADLINE);
    checks.check(
        "console names the key",
        console.is_ok(),
        console.map(|l| l.text).unwrap_or_else(|e| e.to_string()),
    );
    api.wait_ready(STEP_DEADLINE)?;
    let out = api.run(&["raw", "-u", "/boot/user-data"])?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    checks.check(
        "/boot/user-data: invalid, with the key",
        status["state"] == "invalid"
            && status["key"]
                .as_str()
                .is_some_and(|k| k.starts_with("settings.ntp.time-servers")),
        format!("{status}"),
    );
    let got = api.get("settings")?;
    checks.check(
        "defaults kept",
        got.pointer("/settings/motd") == Some(&serde_json::json!("Welcome to Berth!"))
            && got.pointer("/settings/ntp/time-servers")
                == Some(&serde_json::json!(["2.debian.pool.ntp.org"])),
        format!("{got}"),
    );
    vm.power_off(Duration::from_secs(60))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\n{}", vm.tail(40)))
}

#[test]
fn user_data_rendering_and_apiclient_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("config_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "user data by fw_cfg (motd, ntp.time-servers, kernel.sysctl) applied at first boot",
            "configured.target reached; chrony.conf lists the servers; the sysctl is live",
            "apiclient get (through berth-api-bridge) shows the user data settings",
            "apiclient set ntp.time-servers re-renders chrony.conf and restarts chrony only",
            "apiclient set with an invalid value: 400 naming the key, old value kept",
            "hostname, proxy env, resolver, CA bundle, containerd config rendered from user data",
            "apiclient set network.hostname applies live; dns restarts only systemd-resolved",
            "apiclient reboot: a real reboot; user data not applied again, settings kept, /etc re-rendered",
        ],
    )?
    else {
        return Ok(());
    };
    let (vm, api, _dir) = boot_with_user_data(arch, &name, &user_data())?;
    let mut checks = Checks::new();

    let report = configured_report(&vm)?;
    checks.equal("user data state", report.get("user-data-state"), "applied");
    checks.equal("motd", report.get("motd"), "hello from user data");
    checks.equal(
        "chrony.conf servers",
        report.get("chrony-servers"),
        "10.0.2.2,ntp.example.com",
    );
    checks.equal(
        "vm.max_map_count live",
        report.get("sysctl-vm.max_map_count"),
        "262144",
    );
    check_host_services(&mut checks, &report);

    api.wait_ready(STEP_DEADLINE)?;
    let got = api.get("settings")?;
    checks.equal(
        "apiclient get: motd",
        got.pointer("/settings/motd").and_then(|v| v.as_str()),
        "hello from user data",
    );
    checks.check(
        "apiclient get: ntp.time-servers",
        got.pointer("/settings/ntp/time-servers")
            == Some(&serde_json::json!(["10.0.2.2", "ntp.example.com"])),
        format!("{:?}", got.pointer("/settings/ntp")),
    );
    checks.check(
        "apiclient get: kernel.sysctl",
        got.pointer("/settings/kernel/sysctl/vm.max_map_count")
            == Some(&serde_json::json!("262144")),
        format!("{:?}", got.pointer("/settings/kernel/sysctl")),
    );

    // A change re-renders chrony.conf and restarts chrony, and nothing else.
    let rendered_before = vm.count_matches(RENDERED)?;
    let restarted_before = vm.count_matches(RESTARTED)?;
    let set_at = vm.elapsed();
    let out = api.run(&["set", r#"ntp.time-servers=["10.0.2.3"]"#])?;
    checks.check(
        "apiclient set ntp.time-servers",
        out.status.success(),
        "exit status",
    );
    let restarted_chrony = vm.count_matches(RESTARTED_CHRONY)?;
    let restarted = vm.wait_for_nth_line(RESTARTED_CHRONY, restarted_chrony + 1, STEP_DEADLINE)?;
    println!(
        "  apiclient set -> chrony restarted and active: {:.1}s ({})",
        (restarted.elapsed.saturating_sub(set_at)).as_secs_f64(),
        restarted.text
    );
    std::thread::sleep(Duration::from_secs(3));
    let lines = vm.lines();
    let rendered_line = regex::Regex::new(RENDERED)?;
    let rendered: Vec<&str> = lines
        .iter()
        .filter(|l| l.elapsed >= set_at && rendered_line.is_match(&l.text))
        .map(|l| l.text.as_str())
        .collect();
    checks.check(
        "only chrony.conf re-rendered",
        rendered.len() == 1 && rendered[0].contains("/etc/chrony/chrony.conf"),
        format!("{rendered:?}"),
    );
    checks.check(
        "only one unit restarted",
        vm.count_matches(RESTARTED)? == restarted_before + 1
            && vm.count_matches(RENDERED)? == rendered_before + 1,
        "restart lines after set",
    );
    let got = api.get("settings.ntp")?;
    checks.check(
        "new servers stored",
        got.pointer("/settings/ntp/time-servers") == Some(&serde_json::json!(["10.0.2.3"])),
        format!("{got}"),
    );

    // An invalid value is refused with the key, and the old value stays.
    let out = api.run(&[
        "set",
        "kernel.sysctl.\"vm.max_map_count\"=1",
        "ntp.time-servers=[\"bad server name\"]",
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    checks.check("invalid set fails", !out.status.success(), "exit status");
    checks.check(
        "invalid set names the key and 400",
        stderr.contains("settings.ntp.time-servers") && stderr.contains("400"),
        stderr.trim().to_string(),
    );
    let got = api.get("settings")?;
    checks.check(
        "nothing of the invalid set stored",
        got.pointer("/settings/ntp/time-servers") == Some(&serde_json::json!(["10.0.2.3"]))
            && got.pointer("/settings/kernel/sysctl/vm.max_map_count")
                == Some(&serde_json::json!("262144")),
        format!("{got}"),
    );

    // The host name applies live: rendered files and the kernel's name, no unit restarted.
    let restarted_before = vm.count_matches(RESTARTED)?;
    let hostname_set = vm.count_matches(HOSTNAME_SET)?;
    let out = api.run(&["set", "network.hostname=berth-live"])?;
    checks.check(
        "apiclient set network.hostname",
        out.status.success(),
        "exit status",
    );
    let line = vm.wait_for_nth_line(HOSTNAME_SET, hostname_set + 1, STEP_DEADLINE)?;
    checks.check(
        "kernel host name set live",
        line.text.contains("berth-live"),
        line.text.clone(),
    );
    // DNS: resolved (running since early boot) restarts with the new servers.
    let restarted_resolved = vm.count_matches(RESTARTED_RESOLVED)?;
    let out = api.run(&["set", r#"dns.name-servers=["192.0.2.54"]"#])?;
    checks.check(
        "apiclient set dns.name-servers",
        out.status.success(),
        "exit status",
    );
    let restarted = vm.wait_for_nth_line(RESTARTED_RESOLVED, restarted_resolved + 1, STEP_DEADLINE);
    checks.check(
        "systemd-resolved restarted for dns",
        restarted.is_ok(),
        restarted.map(|l| l.text).unwrap_or_else(|e| e.to_string()),
    );
    // containerd's config is rendered; containerd is not in this image, so nothing restarts.
    let containerd_skipped = vm.count_matches(CONTAINERD_SKIPPED)?;
    let out = api.run(&[
        "set",
        r#"container-registry.mirrors=[{"registry": "quay.io", "endpoint": ["https://quay-mirror.example.com"]}]"#,
    ])?;
    checks.check(
        "apiclient set container-registry.mirrors",
        out.status.success(),
        "exit status",
    );
    let skipped = vm.wait_for_nth_line(CONTAINERD_SKIPPED, containerd_skipped + 1, STEP_DEADLINE);
    checks.check(
        "absent containerd.service is not restarted",
        skipped.is_ok(),
        skipped.map(|l| l.text).unwrap_or_else(|e| e.to_string()),
    );
    std::thread::sleep(Duration::from_secs(2));
    checks.check(
        "only systemd-resolved restarted by hostname, dns and registry changes",
        vm.count_matches(RESTARTED)? == restarted_before + 1,
        "restart lines",
    );
    // pki data that is not PEM is refused with the key.
    let out = api.run(&["set", "pki.bad.data=aGVsbG8=", "pki.bad.trusted=true"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    checks.check(
        "pki data that is not PEM: 400 naming the key",
        !out.status.success() && stderr.contains("settings.pki.bad.data") && stderr.contains("400"),
        stderr.trim().to_string(),
    );

    // A real reboot through the API: systemd stops everything and the firmware boots again.
    let configured_before = vm.count_matches(CONFIGURED)?;
    let out = api.run(&["reboot"])?;
    checks.check("apiclient reboot", out.status.success(), "exit status");
    let rebooting = vm.wait_for_line(REBOOTING, STEP_DEADLINE);
    checks.check(
        "the kernel restarts the machine (not a crash)",
        rebooting.is_ok(),
        rebooting.map(|l| l.text).unwrap_or_else(|e| e.to_string()),
    );
    let again = vm.wait_for_nth_line(CONFIGURED, configured_before + 1, CONFIGURED_DEADLINE)?;
    println!(
        "  configured again after apiclient reboot at {:.1}s",
        again.elapsed.as_secs_f64()
    );
    let skipped = vm.wait_for_line(markers::USER_DATA_DONE, STEP_DEADLINE);
    checks.check(
        "user data not applied again after the reboot",
        skipped.is_ok() && vm.count_matches(r"user data applied")? == 1,
        "boot-config userdata log lines",
    );
    let report = report_since(&vm, again.elapsed)?;
    checks.equal(
        "after reboot: chrony.conf from the stored setting",
        report.get("chrony-servers"),
        "10.0.2.3",
    );
    checks.equal(
        "after reboot: host name",
        report.get("hostname"),
        "berth-live",
    );
    checks.equal(
        "after reboot: /etc/hostname",
        report.get("etc-hostname"),
        "berth-live",
    );
    checks.check(
        "after reboot: resolver uses the stored server",
        report
            .get("dns-servers")
            .is_some_and(|s| s.split(',').any(|x| x == "192.0.2.54")),
        format!("{:?}", report.get("dns-servers")),
    );
    checks.equal(
        "after reboot: containerd mirrors",
        report.get("containerd-mirrors"),
        "quay.io",
    );
    checks.equal(
        "after reboot: CA bundle keeps corp",
        report.get("ca-bundle-pki"),
        "corp",
    );
    api.wait_ready(STEP_DEADLINE)?;
    let got = api.get("settings")?;
    checks.check(
        "settings kept across the reboot",
        got.pointer("/settings/ntp/time-servers") == Some(&serde_json::json!(["10.0.2.3"]))
            && got.pointer("/settings/motd") == Some(&serde_json::json!("hello from user data"))
            && got.pointer("/settings/network/hostname") == Some(&serde_json::json!("berth-live"))
            && got.pointer("/settings/pki/bad").is_none(),
        format!("{got}"),
    );

    vm.power_off(Duration::from_secs(60))?;
    checks
        .finish()
        .map_err(|e| anyhow::anyhow!("{e}\n{}", vm.tail(40)))
}
