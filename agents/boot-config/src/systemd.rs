//! Restarting units through systemd's D-Bus API (no `systemctl` subprocess), behind a trait
//! with a recording fake for tests.

use anyhow::{Context, Result};

/// How a unit is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Restart; starts the unit when it is not running.
    Restart,
    /// Restart only when running.
    TryRestart,
    /// Reload when the unit supports it, else restart.
    ReloadOrRestart,
}

impl Verb {
    fn method(self) -> &'static str {
        match self {
            Verb::Restart => "RestartUnit",
            Verb::TryRestart => "TryRestartUnit",
            Verb::ReloadOrRestart => "ReloadOrRestartUnit",
        }
    }

    pub fn parse(s: &str) -> Option<Verb> {
        match s {
            "restart" => Some(Verb::Restart),
            "try-restart" => Some(Verb::TryRestart),
            "reload-or-restart" => Some(Verb::ReloadOrRestart),
            _ => None,
        }
    }
}

/// The systemd unit manager.
pub trait Units {
    fn restart(&self, verb: Verb, unit: &str) -> Result<()>;
}

/// systemd's manager on the system bus.
#[derive(Debug)]
pub struct DbusUnits {
    conn: zbus::blocking::Connection,
}

impl DbusUnits {
    pub fn connect() -> Result<DbusUnits> {
        let conn = zbus::blocking::Connection::system()
            .context("cannot connect to the D-Bus system bus")?;
        Ok(DbusUnits { conn })
    }
}

impl Units for DbusUnits {
    fn restart(&self, verb: Verb, unit: &str) -> Result<()> {
        let proxy = zbus::blocking::Proxy::new(
            &self.conn,
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )
        .context("cannot reach systemd's manager over D-Bus")?;
        let job: zbus::zvariant::OwnedObjectPath = proxy
            .call(verb.method(), &(unit, "replace"))
            .with_context(|| format!("systemd {} {unit} failed", verb.method()))?;
        tracing::info!(unit, job = %job.as_str(), "queued {}", verb.method());
        Ok(())
    }
}

/// Records restarts, for tests.
#[derive(Debug, Default)]
pub struct RecordingUnits(pub std::sync::Mutex<Vec<(Verb, String)>>);

impl Units for RecordingUnits {
    fn restart(&self, verb: Verb, unit: &str) -> Result<()> {
        self.0
            .lock()
            .expect("no test panics while holding the lock")
            .push((verb, unit.to_string()));
        Ok(())
    }
}
