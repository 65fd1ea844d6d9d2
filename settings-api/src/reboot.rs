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

/// `org.freedesktop.systemd1.Manager.StartUnit("reboot.target", "replace-irreversibly")`: the
/// job cannot be cancelled by later jobs, and systemd stops every unit in order (apiserver
/// included) before the kernel reboots.
#[derive(Debug, Default)]
pub struct SystemdReboot;

impl Rebooter for SystemdReboot {
    fn reboot(&self) -> anyhow::Result<()> {
        let conn = zbus::blocking::Connection::system()
            .context("cannot connect to the D-Bus system bus")?;
        let manager = zbus::blocking::Proxy::new(
            &conn,
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )
        .context("cannot reach systemd's manager over D-Bus")?;
        let job: zbus::zvariant::OwnedObjectPath = manager
            .call("StartUnit", &("reboot.target", "replace-irreversibly"))
            .context("systemd StartUnit reboot.target failed")?;
        tracing::info!(job = %job.as_str(), "reboot.target started");
        Ok(())
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
