//! early-init: PID 1 of the Berth initramfs (docs/boot.md).
//!
//! Loads the initramfs modules, sets up dm-verity for the slot named on the kernel command
//! line, mounts the root read-only, a tmpfs `/etc` seeded from the image, `private` and
//! `data` (made and grown on first boot), then switches root to systemd. Any failure prints
//! one line and reboots.

pub mod boot;
pub mod devices;
pub mod etc_seed;
pub mod fatal;
pub mod host;
pub mod modules;
pub mod paths;
pub mod storage;
mod sys;

pub use sys::DmTarget;

use std::convert::Infallible;
use std::path::PathBuf;
use std::time::Duration;

/// If systemd has not been started by then, something hangs (a device, a mount, mke2fs
/// waiting for entropy): reboot rather than hang, so boot counting can act.
const WATCHDOG: Duration = Duration::from_secs(300);

/// Boots the machine from the real initramfs; returns only on failure.
pub fn run() -> anyhow::Result<Infallible> {
    // exec() ends this thread together with the rest of the initramfs process.
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        fatal::reboot_with(&format!(
            "early-init: FATAL: boot did not reach systemd within {} s; rebooting",
            WATCHDOG.as_secs()
        ));
    });
    let kernel = rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned();
    let mut boot = boot::Boot {
        root: PathBuf::from("/"),
        host: host::RealHost,
        kernel,
        device_timeout: Duration::from_secs(30),
    };
    boot.run()
}

#[cfg(test)]
mod tests;
