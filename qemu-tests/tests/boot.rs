//! Boot scenarios on the images os-build made (`build/qemu/<arch>/`), per docs/boot.md.
//!
//! Gated by BERTH_QEMU_TESTS=1: scripts/test.sh builds the images and sets it. Each
//! architecture boots once for (a) reaching multi-user, (b) the probe's facts and (d) the
//! boot time split; (c) boots a copy of the image with one byte of the root file system
//! flipped and expects dm-verity to restart the machine.
//!
//! Serial logs are kept under `target/tmp/qemu-tests/` for after-the-fact reading.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use boot_contract::{Partition, Slot, UkiName};
use qemu_tests::{
    boot_times, fault, gpt, markers, scenario, tamper, Arch, BootOutcome, BootTimes, Checks, Image,
    PowerOff, ProbeReport, RestartDetector, Vm,
};

const VARIANT: &str = "qemu";
/// Its presence makes berth-probe.service run (ConditionPathExists on the fw_cfg file).
const PROBE_FW_CFG: &str = "opt/org.berth/probe";
/// How long the probe may take after multi-user.target (it is part of that target, so its
/// report normally comes first).
const PROBE_DEADLINE: Duration = Duration::from_secs(60);
/// How long the guest may take to power off after the ACPI / GPIO power button.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(30);
/// Byte of root-a flipped by the corruption scenario: in the EROFS superblock (which
/// starts at 1024 and is read by every mount), inside the first 4096-byte verity block.
const CORRUPT_OFFSET_IN_ROOT: u64 = 1024 + 8;

/// Generous time to multi-user under TCG (about 25 s is usual on x86_64 without Secure Boot;
/// OVMF's Secure Boot build runs its variable services in SMM, which TCG emulates slowly:
/// 148 s to the kernel measured on a host with a load of 19, docs/secure-boot.md).
fn multi_user_deadline(arch: Arch) -> Duration {
    match arch {
        Arch::X86_64 => Duration::from_secs(400),
        Arch::Aarch64 => Duration::from_secs(400),
    }
}

fn serial_log(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("qemu-tests")
        .join(format!("{name}.serial.log"))
}

fn boot(arch: Arch) -> Result<()> {
    let name = format!("boot_{arch}");
    let deadline = multi_user_deadline(arch);
    let Some(_lock) = scenario::begin(
        &name,
        &[
            &format!("(a) the image reaches systemd's multi-user target within {deadline:?}"),
            "(a) it boots once: no restart, no early-init FATAL, no dm-verity error",
            "(b) berth-probe: root is dm-verity (verified), EROFS, read-only",
            "(b) berth-probe: /etc is a writable tmpfs; /var is on the data partition",
            "(b) berth-probe: slot A booted, from slot A's UKI (berth-<version>...efi)",
            "(d) boot time per phase: firmware, kernel, initramfs, userspace",
            "(e) the signed image boots with Secure Boot enforced (its uefi-vars.fd): the EFI stub and the kernel's lockdown say so, berth-probe reads secure-boot=enabled and lockdown=integrity, and early-init's modules load under lockdown",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    let version = image.version().unwrap_or("?").to_owned();
    println!("  image: {} (version {version})", image.qcow2.display());
    let log = serial_log(&name);
    println!("  serial log: {}", log.display());
    // (e) The harness boots a signed build with its uefi-vars.fd: Secure Boot enforced.
    let signed = image.signed() && image.uefi_vars().is_some();
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&image.qcow2)
        .fw_cfg_string(PROBE_FW_CFG, "1")
        .serial_log(&log)
        .boot()?;

    // (a)
    let multi_user =
        vm.wait_for_line_or_fail(markers::MULTI_USER, markers::BOOT_FAILURE, deadline)?;
    println!(
        "  multi-user after {:.1}s: {}",
        multi_user.elapsed.as_secs_f64(),
        multi_user.text
    );

    // (b)
    // Wait for a report that parses, not for the end line: a line wait also matches the
    // unfinished last line, which `lines()` does not hold yet.
    let report = vm
        .wait_until("a complete berth-probe report", PROBE_DEADLINE, |lines| {
            ProbeReport::parse(lines.iter().map(|l| l.text.as_str())).ok()
        })
        .context("berth-probe did not finish its report")?;
    let lines = vm.lines();
    println!("  berth-probe reported:\n{report}");

    let mut checks = Checks::new();
    let once = |pattern: &str| -> Result<usize> { Ok(vm.count_matches(pattern)?) };
    checks.check(
        "booted once",
        once(markers::KERNEL_BANNER)? == 1,
        format!("{} kernel banners", once(markers::KERNEL_BANNER)?),
    );
    checks.check(
        "no early-init FATAL line",
        once(markers::EARLY_INIT_FATAL)? == 0,
        format!("{} lines", once(markers::EARLY_INIT_FATAL)?),
    );
    checks.check(
        "no dm-verity corruption reported",
        once(markers::VERITY_CORRUPTION)? == 0,
        format!("{} lines", once(markers::VERITY_CORRUPTION)?),
    );
    let denials = vm.count_matches(markers::SELINUX_DENIAL)?;
    checks.check(
        "no SELinux denial on the console",
        denials == 0,
        format!("{denials} lines"),
    );
    // Every long-running host service in the domain docs/selinux.md gives it: systemd in
    // init_t, apiserver in api_t, everything else systemd starts in system_t.
    let domains = report.get("selinux-domains").unwrap_or("none");
    let wrong: Vec<&str> = domains
        .split(',')
        .filter(|pair| {
            let (comm, domain) = pair.split_once(':').unwrap_or((pair, ""));
            let want = match comm {
                "systemd" => "init_t",
                "apiserver" => "api_t",
                _ => "system_t",
            };
            domain != want
        })
        .collect();
    checks.check(
        "services in their SELinux domains (journald in system_t, apiserver in api_t)",
        wrong.is_empty() && domains.contains("systemd-journal:") && domains.contains("apiserver:"),
        format!("{domains}; wrong: {wrong:?}"),
    );
    for (key, expected) in [
        ("selinux-enforce", "1"),
        (
            "selinux-context",
            "system_u:system_r:system_t:s0-s0:c0.c1023",
        ),
        ("root-dm-target", "verity"),
        ("root-dm-status", "V"),
        ("root-ro", "true"),
        ("root-fstype", "erofs"),
        ("etc-fstype", "tmpfs"),
        ("etc-writable", "true"),
        ("var-partname", "data"),
        ("private-partname", "private"),
        ("slot", "a"),
    ] {
        checks.equal(format!("probe {key}"), report.get(key), expected);
    }
    // (e)
    checks.check(
        "the image is signed and boots with Secure Boot enforced (build it with --secure-boot-keys, as scripts/test.sh does)",
        signed,
        format!("manifest secure_boot {:?}, uefi-vars.fd {:?}", image.manifest.get("secure_boot"), image.uefi_vars()),
    );
    for (what, pattern) in [
        (
            "the EFI stub reports Secure Boot enabled",
            markers::SECURE_BOOT_ENABLED,
        ),
        (
            "the kernel locks itself down under Secure Boot",
            markers::LOCKDOWN_SECURE_BOOT,
        ),
    ] {
        checks.check(what, once(pattern)? == 1, vm.first_complete_line(pattern)?);
    }
    checks.equal("probe secure-boot", report.get("secure-boot"), "enabled");
    checks.equal("probe lockdown", report.get("lockdown"), "integrity");
    let modules = vm.first_complete_line(r"early-init: loaded \d+ of \d+ modules")?;
    checks.check(
        "early-init loads every initramfs module under lockdown (Debian-signed modules)",
        regex::Regex::new(r"loaded (\d+) of (\d+) modules")?
            .captures(&modules)
            .is_some_and(|c| c[1] == c[2]),
        modules.clone(),
    );

    let entry = report.get("loader-entry").unwrap_or("none");
    checks.check(
        "probe loader-entry is slot A's UKI",
        UkiName::parse(entry).is_some_and(|uki| version == "?" || uki.version == version),
        format!("expected berth-{version}[+tries].efi, found {entry}"),
    );

    // (d)
    match BootTimes::from_lines(&lines) {
        Ok(times) => {
            println!("  boot time split:");
            for row in boot_times::table(&[(arch, times)]).lines() {
                println!("    {row}");
            }
        }
        Err(e) => checks.check("boot phases on the console", false, e),
    }
    match boot_times::since_kernel(&lines, markers::API_READY) {
        Ok(api) => println!(
            "  kernel -> settings API ready (apiserver.service started): {:.2}s",
            api.as_secs_f64()
        ),
        Err(e) => checks.check("settings API started on the console", false, e),
    }

    let tail = vm.tail(40);
    // Not a check of this scenario (yet): a guest that ignores the power button costs
    // POWER_OFF_DEADLINE, then QEMU quits.
    let off = vm.power_off(POWER_OFF_DEADLINE)?;
    match off {
        PowerOff::Guest { after, .. } => {
            println!("  power button: guest powered off in {:.1}s", after.as_secs_f64())
        }
        other => println!(
            "  note: the guest did not power off within {POWER_OFF_DEADLINE:?} of the power button ({other:?})"
        ),
    }
    checks
        .finish()
        .map_err(|e| anyhow!("{e}\nlast serial lines:\n{tail}"))
}

#[test]
fn boot_x86_64() -> Result<()> {
    boot(Arch::X86_64)
}

#[test]
fn boot_aarch64() -> Result<()> {
    boot(Arch::Aarch64)
}

fn corrupt_root_restarts(arch: Arch) -> Result<()> {
    let name = format!("corrupt_root_{arch}");
    let deadline = multi_user_deadline(arch);
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "(c) one flipped byte in root-a's first block (EROFS superblock) is caught by dm-verity",
            "(c) the kernel (or early-init) reports it and the machine restarts",
            "(c) the corrupted image never reaches multi-user",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    let raw = image.raw()?;
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let copy = work.path().join("disk.raw");
    fault::sparse_copy(&raw, &copy)?;
    let root_a = Partition::Root(Slot::A);
    let root = gpt::find(&copy, root_a)?;
    let manifest_offset = image.manifest["layout"]["partitions"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["name"] == root_a.label()))
        .and_then(|p| p["offset"].as_u64());
    if let Some(manifest_offset) = manifest_offset {
        anyhow::ensure!(
            manifest_offset == root.offset(),
            "manifest.json puts root-a at byte {manifest_offset}, the GPT at {}",
            root.offset()
        );
    }
    let offset = root.offset() + CORRUPT_OFFSET_IN_ROOT;
    let (old, new) = fault::flip_byte(&copy, offset)?;
    println!(
        "  flipped byte {offset} of a copy of {} (root-a + {CORRUPT_OFFSET_IN_ROOT}): {old:#04x} -> {new:#04x}",
        raw.display()
    );
    let log = serial_log(&name);
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&copy)
        .serial_log(&log)
        .boot()?;

    let detector = RestartDetector::new();
    let outcome = vm.wait_until(
        "a restart (a second kernel banner, or the firmware again after a failure line)",
        deadline,
        |lines| detector.outcome(lines),
    )?;
    let tail = vm.tail(40);
    vm.kill()?;

    let mut checks = Checks::new();
    match outcome {
        BootOutcome::MultiUser(line) => checks.check(
            "never reaches multi-user",
            false,
            format!("reached it after {:.1}s", line.elapsed.as_secs_f64()),
        ),
        BootOutcome::Restarted { restart, evidence } => {
            checks.check(
                "never reaches multi-user",
                true,
                "no multi-user line before the restart",
            );
            checks.check(
                "machine restarts",
                true,
                format!("{:.1}s: {}", restart.elapsed.as_secs_f64(), restart.text),
            );
            for line in &evidence {
                println!("  evidence: {}", line.to_log());
            }
            checks.check(
                "dm-verity corruption (or early-init's I/O error) reported before the restart",
                !evidence.is_empty(),
                format!("{} lines", evidence.len()),
            );
        }
    }
    checks
        .finish()
        .map_err(|e| anyhow!("{e}\nlast serial lines:\n{tail}"))
}

#[test]
fn corrupt_root_restarts_x86_64() -> Result<()> {
    corrupt_root_restarts(Arch::X86_64)
}

#[test]
fn corrupt_root_restarts_aarch64() -> Result<()> {
    corrupt_root_restarts(Arch::Aarch64)
}

/// Tampering with a signed image's ESP, each on a short boot that never reaches a kernel:
/// 1. slot A's UKI replaced by one whose command line names another root hash, signed with a
///    foreign key: the firmware refuses to start it and the host stops there (this image has
///    no other entry to fall back to); no kernel ever starts.
/// 2. systemd-boot replaced by the same build without its signature: the firmware refuses it.
fn secure_boot_refuses_tampering(arch: Arch) -> Result<()> {
    let name = format!("secure_boot_tamper_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "(1) a UKI naming another root hash, signed with a foreign key, is refused by the firmware; no kernel starts (the host stops before running anything of it)",
            "(2) an unsigned systemd-boot is refused by the firmware; no kernel starts",
        ],
    )?
    else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    anyhow::ensure!(
        image.signed() && image.uefi_vars().is_some(),
        "{} is not a signed build (os-build build --secure-boot-keys, as scripts/test.sh does)",
        image.dir.display()
    );
    let version = image
        .version()
        .context("manifest has no version")?
        .to_owned();
    let esp_offset = image.manifest["layout"]["partitions"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["name"] == "ESP"))
        .and_then(|p| p["offset"].as_u64())
        .context("manifest.json has no ESP partition")?;
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = work.path();
    let (key, cert) = tamper::foreign_key(dir)?;

    // (1) The UKI: unsigned, another root hash, signed with the foreign key.
    let uki = dir.join("uki.unsigned.efi");
    tamper::unsigned(&image.dir.join("uki-a.efi"), &uki)?;
    let other_root = tamper::change_root_hash(&uki)?;
    let foreign_uki = dir.join("uki.foreign.efi");
    tamper::sign(&uki, &foreign_uki, &key, &cert)?;
    println!("  (1) uki-a.efi with berth.verity.root={other_root}, signed by CN=Not Berth");
    let esp = dir.join("esp-uki.img");
    tamper::esp_with(
        &image.dir.join("esp.img"),
        &[(&foreign_uki, &format!("EFI/Linux/berth-{version}+3.efi"))],
        &esp,
    )?;
    let disk = dir.join("disk-uki.qcow2");
    tamper::disk_with_esp(&image.qcow2, &esp, esp_offset, &disk)?;
    let refused_uki = refused_boot(arch, &format!("{name}_uki"), &image, &disk)?;

    // (2) systemd-boot without its signature, at both paths the firmware may start.
    let boot = dir.join("systemd-boot.unsigned.efi");
    let esp_signed = dir.join("esp-signed.img");
    std::fs::copy(image.dir.join("esp.img"), &esp_signed)?;
    let suffix = match arch {
        Arch::X86_64 => "x64",
        Arch::Aarch64 => "aa64",
    };
    let extracted = dir.join("systemd-boot.signed.efi");
    let status = std::process::Command::new("mcopy")
        .args(["-o", "-i"])
        .arg(&esp_signed)
        .arg(format!("::/EFI/systemd/systemd-boot{suffix}.efi"))
        .arg(&extracted)
        .status()?;
    anyhow::ensure!(
        status.success(),
        "mcopy could not read systemd-boot from esp.img"
    );
    tamper::unsigned(&extracted, &boot)?;
    let esp = dir.join("esp-boot.img");
    tamper::esp_with(
        &image.dir.join("esp.img"),
        &[
            (
                &boot,
                &format!("EFI/BOOT/BOOT{}.EFI", suffix.to_uppercase()),
            ),
            (&boot, &format!("EFI/systemd/systemd-boot{suffix}.efi")),
        ],
        &esp,
    )?;
    let disk = dir.join("disk-boot.qcow2");
    tamper::disk_with_esp(&image.qcow2, &esp, esp_offset, &disk)?;
    let refused_boot_loader = refused_boot(arch, &format!("{name}_systemd_boot"), &image, &disk)?;

    let mut checks = Checks::new();
    for (what, result) in [
        (
            "(1) foreign-signed UKI with another root hash refused, no kernel started",
            refused_uki,
        ),
        (
            "(2) unsigned systemd-boot refused, no kernel started",
            refused_boot_loader,
        ),
    ] {
        checks.check(what, result.is_ok(), result.unwrap_or_else(|e| e));
    }
    checks.finish().map_err(|e| anyhow!("{e}"))
}

/// Boots `disk` with the image's firmware variables (Secure Boot on) until the firmware
/// refuses an image, then a few seconds more; Ok(the refusal line) when no kernel started.
fn refused_boot(
    arch: Arch,
    name: &str,
    image: &Image,
    disk: &std::path::Path,
) -> Result<Result<String, String>> {
    let vars = image.uefi_vars().context("no uefi-vars.fd")?;
    let log = serial_log(name);
    println!("  {name}: serial log {}", log.display());
    let vm = Vm::builder(arch)
        .name(name)
        .disk(disk)
        .secure_boot(&vars)
        .serial_log(&log)
        .boot()?;
    let started = std::time::Instant::now();
    let refused = vm.wait_for_line_or_fail(
        markers::SECURE_BOOT_REFUSED,
        markers::KERNEL_BANNER,
        REFUSAL_DEADLINE,
    );
    // Anything the boot loader might still start would show within seconds.
    std::thread::sleep(AFTER_REFUSAL);
    let kernels = vm.count_matches(markers::KERNEL_BANNER)?
        + vm.count_matches(markers::SECURE_BOOT_ENABLED)?;
    let tail = vm.tail(15);
    vm.kill()?;
    println!("  {name}: {:.1}s", started.elapsed().as_secs_f64());
    Ok(match refused {
        Ok(line) if kernels == 0 => {
            println!(
                "  {name}: refused after {:.1}s: {}",
                line.elapsed.as_secs_f64(),
                line.text.trim()
            );
            Ok(line.text)
        }
        Ok(line) => Err(format!(
            "refused ({}) but {kernels} kernel lines followed:\n{tail}",
            line.text
        )),
        Err(e) => Err(format!("{e}")),
    })
}

/// Firmware start and the refusal under TCG: about 10 s unloaded, 120 s measured on a host
/// running three other builds.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(300);
const AFTER_REFUSAL: Duration = Duration::from_secs(5);

#[test]
fn secure_boot_refuses_tampering_x86_64() -> Result<()> {
    secure_boot_refuses_tampering(Arch::X86_64)
}

#[test]
fn secure_boot_refuses_tampering_aarch64() -> Result<()> {
    secure_boot_refuses_tampering(Arch::Aarch64)
}
