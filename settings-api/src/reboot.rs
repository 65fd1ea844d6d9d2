//! `POST /actions/reboot`: reboots the host through systemd's D-Bus API (no `systemctl`
//! subprocess), behind a trait with a logging fake for tests.

use anyhow::Context;
use clap::ValueEnum;

/// Reboots the host.
pub trait Rebooter: Send + Sync + std::fmt::Debug {
    fn reboot(&self) -> anyhow::Result<()>;
}

/// How apiserver reboots (`--reboot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootMethod {
    /// Start `reboot.target` through systemd's manager on the system bus (an orderly reboot).
    Systemd,
    /// Only log the request (host tests and development).
    Log,
}

impl RebootMethod {
    pub fn rebooter(self) -> std::sync::Arc<dyn Rebooter> {
        match self {
            RebootMethod::Systemd => std::sync::Arc::new(SystemdReboot),
            RebootMethod::Log => std::sync::Arc::new(LogReboot),
        }
    }
}

/// systemd's reboot ([`host::systemd::Systemd::reboot`]): an orderly reboot that later jobs
/// cannot cancel, apiserver stopped in order with every other unit.
#[derive(Debug, Default)]
pub struct SystemdReboot;

impl Rebooter for SystemdReboot {
    fn reboot(&self) -> anyhow::Result<()> {
        use host::systemd::{DbusSystemd, Systemd};
        DbusSystemd::connect()?
            .reboot()
            .context("cannot start reboot.target")
    }
}

/// Logs the request and does nothing else.
#[derive(Debug, Default)]
pub struct LogReboot;

impl Rebooter for LogReboot {
    fn reboot(&self) -> anyhow::Result<()> {
        tracing::warn!("reboot requested; apiserver runs with --reboot log: not rebooting");
        Ok(())
    }
}
