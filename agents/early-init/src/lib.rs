//! early-init: PID 1 of the Berth initramfs (docs/boot.md).
//!
//! Loads the initramfs modules, sets up dm-verity for the slot named on the kernel command
//! line, mounts the root read-only, a tmpfs `/etc` seeded from the image, `private` and
//! `data` (made and grown on first boot), then switches root to systemd. Any failure prints
//! one line and reboots.

pub mod boot;
pub mod cmdline;
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

/// Boots the machine from the real initramfs; returns only on failure.
pub fn run() -> anyhow::Result<Infallible> {
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
