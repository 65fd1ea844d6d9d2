//! Boot-time configuration (docs/boot-config.md): user data by QEMU fw_cfg at first boot,
//! configuration rendered from settings, changes through the real `apiclient`.
//!
//! Gated by BERTH_QEMU_TESTS=1 like the boot scenarios; boots the `qemu-test` variant
//! (the `qemu` image plus `berth-api-bridge`, a TCP listener that forwards to /run/api.sock).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use qemu_tests::{markers, scenario, Arch, Image, Vm};

const VARIANT: &str = "qemu";
const USER_DATA_FW_CFG: &str = "opt/org.berth/user-data";
const CONFIGURED: &str = r"Reached target configured\.target";

fn serial_log(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("qemu-tests")
        .join(format!("{name}.serial.log"))
}

#[test]
fn user_data_and_apiclient_x86_64() -> Result<()> {
    let arch = Arch::X86_64;
    let name = format!("config_{arch}");
    let Some(_lock) = scenario::begin(&name, &["user data by fw_cfg reaches configured"])? else {
        return Ok(());
    };
    let image = Image::locate(VARIANT, arch)?;
    let dir = tempfile::tempdir()?;
    let user_data = dir.path().join("user-data.toml");
    std::fs::write(
        &user_data,
        "[settings]\nmotd = \"hello from user data\"\n\
         [settings.ntp]\ntime-servers = [\"10.0.2.2\", \"ntp.example.com\"]\n\
         [settings.kernel.sysctl]\n\"vm.max_map_count\" = \"262144\"\n",
    )?;
    let log = serial_log(&name);
    println!("  serial log: {}", log.display());
    let vm = Vm::builder(arch)
        .name(&name)
        .disk(&image.qcow2)
        .fw_cfg_file(USER_DATA_FW_CFG, &user_data)
        .serial_log(&log)
        .boot()?;
    let configured = vm
        .wait_for_line_or_fail(CONFIGURED, markers::BOOT_FAILURE, Duration::from_secs(240))
        .context("configured.target")?;
    println!(
        "  configured after {:.1}s",
        configured.elapsed.as_secs_f64()
    );
    vm.wait_for_line(markers::MULTI_USER, Duration::from_secs(120))?;
    std::thread::sleep(Duration::from_secs(5));
    vm.power_off(Duration::from_secs(60))?;
    Ok(())
}
