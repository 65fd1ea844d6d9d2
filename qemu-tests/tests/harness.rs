//! Self-tests of the QEMU harness that need no Berth image: boot the UEFI firmware alone
//! (no disk, so it ends in its built-in shell), wait for its lines on the serial console,
//! then power the VM off. Gated by BERTH_QEMU_TESTS=1 (they need qemu-system from
//! scripts/host-deps.sh).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use qemu_tests::{scenario, Arch, PowerOff, Vm, VmError};

/// The UEFI boot manager or its shell: the firmware ran and reached the serial console.
const FIRMWARE_UP: &str = r"BdsDxe: (loading|starting) Boot|UEFI Interactive Shell|Shell>";

fn log_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("qemu-tests")
        .join(format!("{name}.serial.log"))
}

fn firmware_boots(arch: Arch, deadline: Duration) -> Result<()> {
    let name = format!("harness_firmware_{arch}");
    let Some(_lock) = scenario::begin(
        &name,
        &[
            "QEMU starts with the UEFI firmware under TCG and a private variable store",
            "the firmware's boot manager / shell lines arrive on the serial console, timestamped",
            "the serial log file holds those lines with their timestamps",
            "fw_cfg entries are accepted by QEMU",
            "power_off ends QEMU (the firmware shell ignores the power button: QMP quit)",
        ],
    )?
    else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let fw_file = dir.path().join("probe,with-comma");
    std::fs::write(&fw_file, "1")?;
    let log = log_path(&name);
    let vm = Vm::builder(arch)
        .memory_mib(512)
        .fw_cfg_string("opt/org.berth/probe", "1")
        .fw_cfg_file("opt/org.berth/user-data", &fw_file)
        .serial_log(&log)
        .boot()?;
    let line = vm.wait_for_line(FIRMWARE_UP, deadline)?;
    println!(
        "  firmware line after {:.2}s: {}",
        line.elapsed.as_secs_f64(),
        line.text
    );
    ensure!(line.elapsed > Duration::ZERO, "line has no timestamp");

    let shell = vm.wait_for_line("Shell>", deadline)?;
    println!("  shell prompt after {:.2}s", shell.elapsed.as_secs_f64());
    ensure!(
        vm.count_matches("UEFI Interactive Shell")? == 1,
        "expected one shell banner; console:\n{}",
        vm.tail(40)
    );

    let outcome = vm.power_off(Duration::from_secs(5))?;
    println!("  power off: {outcome:?}");
    ensure!(
        matches!(outcome, PowerOff::Quit | PowerOff::Guest { .. }),
        "QEMU should have quit on request, got {outcome:?}"
    );
    ensure!(vm.try_wait()?.is_some(), "QEMU still runs after power_off");

    let text = std::fs::read_to_string(&log).with_context(|| format!("read {}", log.display()))?;
    let logged = text
        .lines()
        .find(|l| l.contains("UEFI Interactive Shell"))
        .context("the serial log lacks the shell banner")?;
    ensure!(
        regex::Regex::new(r"^\[ *\d+\.\d{3}\] UEFI Interactive Shell")?.is_match(logged),
        "serial log line is not timestamped: {logged:?}"
    );
    println!("  serial log: {}", log.display());
    Ok(())
}

#[test]
fn firmware_boots_x86_64() -> Result<()> {
    firmware_boots(Arch::X86_64, Duration::from_secs(120))
}

#[test]
fn firmware_boots_aarch64() -> Result<()> {
    firmware_boots(Arch::Aarch64, Duration::from_secs(240))
}

/// A QEMU that dies at start (here: a fw_cfg file that does not exist) must fail the wait
/// at once, with QEMU's own complaint in the error.
#[test]
fn early_qemu_exit_reports_its_stderr() -> Result<()> {
    let Some(_lock) = scenario::begin(
        "harness_early_exit",
        &["a wait on a QEMU that failed to start returns QEMU's stderr, not a timeout"],
    )?
    else {
        return Ok(());
    };
    let vm = Vm::builder(Arch::X86_64)
        .fw_cfg_file("opt/org.berth/probe", "/nonexistent/berth-probe")
        .boot()?;
    let err = vm
        .wait_for_line("Shell>", Duration::from_secs(60))
        .expect_err("QEMU cannot start");
    let msg = err.to_string();
    println!("  error: {msg}");
    ensure!(
        matches!(err, VmError::Exited { .. }),
        "not an exit error: {msg}"
    );
    ensure!(
        msg.contains("/nonexistent/berth-probe"),
        "stderr missing: {msg}"
    );
    Ok(())
}

/// kill() stops the machine at once (the power-cut primitive) and a later wait says so.
#[test]
fn kill_stops_the_vm_at_once() -> Result<()> {
    let Some(_lock) = scenario::begin(
        "harness_kill",
        &["kill() ends QEMU immediately and later waits fail with an exit error"],
    )?
    else {
        return Ok(());
    };
    let vm = Vm::builder(Arch::X86_64).memory_mib(512).boot()?;
    vm.wait_for_line(FIRMWARE_UP, Duration::from_secs(120))?;
    let status = vm.kill()?;
    println!("  killed: {status}");
    ensure!(!status.success(), "a killed QEMU cannot exit cleanly");
    let err = vm
        .wait_for_line("never printed", Duration::from_secs(30))
        .expect_err("QEMU is gone");
    ensure!(
        matches!(err, VmError::Exited { .. }),
        "not an exit error: {err}"
    );
    Ok(())
}
