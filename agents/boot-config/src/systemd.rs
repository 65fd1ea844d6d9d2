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
    /// Restarts `unit`; a try-restart of a unit that is not loaded or not running does nothing.
    fn restart(&self, verb: Verb, unit: &str) -> Result<()>;
    /// Reloads unit files and drop-ins (`systemctl daemon-reload`).
    fn daemon_reload(&self) -> Result<()>;
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

impl DbusUnits {
    fn proxy<'a>(&'a self, path: &'a str, interface: &'a str) -> Result<zbus::blocking::Proxy<'a>> {
        zbus::blocking::Proxy::new(&self.conn, "org.freedesktop.systemd1", path, interface)
            .with_context(|| format!("cannot reach systemd's {interface} over D-Bus"))
    }

    /// ActiveState and ActiveEnterTimestamp of a loaded unit.
    fn state(&self, unit: &str) -> Result<(String, u64)> {
        let manager = self.proxy(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )?;
        let path: zbus::zvariant::OwnedObjectPath = manager
            .call("GetUnit", &(unit,))
            .with_context(|| format!("systemd does not know {unit}"))?;
        let proxy = self.proxy(path.as_str(), "org.freedesktop.systemd1.Unit")?;
        let state: String = proxy.get_property("ActiveState")?;
        let since: u64 = proxy.get_property("ActiveEnterTimestamp")?;
        Ok((state, since))
    }
}

/// How long a restarted unit may take to be active again.
const ACTIVE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

impl Units for DbusUnits {
    /// Queues the job, then waits until the unit is active again (for restarts of a running
    /// unit) so that the log line marks the moment the new configuration is in effect.
    fn restart(&self, verb: Verb, unit: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let before = self.state(unit).ok();
        if verb == Verb::TryRestart {
            // Not loaded (no such unit in this image, e.g. containerd on a qemu variant) or not
            // running: nothing to restart, and no job is queued that could replace a pending
            // start job of a unit waiting for configured.target.
            match &before {
                None => {
                    // marker: qemu-tests/src/markers.rs
                    tracing::info!(unit, "not loaded; not restarted");
                    return Ok(());
                }
                Some((state, _)) if state != "active" => {
                    tracing::info!(unit, state = %state, "not running; not restarted");
                    return Ok(());
                }
                Some(_) => {}
            }
        }
        let manager = self.proxy(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )?;
        let job: zbus::zvariant::OwnedObjectPath = manager
            .call(verb.method(), &(unit, "replace"))
            .with_context(|| format!("systemd {} {unit} failed", verb.method()))?;
        tracing::debug!(unit, job = %job.as_str(), "queued {}", verb.method());
        let Some((_, since)) = before else {
            return Ok(());
        };
        loop {
            let (now, entered) = self.state(unit)?;
            if now == "active" && entered > since {
                // marker: qemu-tests/src/markers.rs
                tracing::info!(
                    unit,
                    seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "restarted and active"
                );
                return Ok(());
            }
            if now == "failed" || started.elapsed() > ACTIVE_DEADLINE {
                anyhow::bail!("{unit} is {now} after {}", verb.method());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `Reload` returns once systemd has reloaded its units.
    fn daemon_reload(&self) -> Result<()> {
        let manager = self.proxy(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
        )?;
        manager
            .call::<_, _, ()>("Reload", &())
            .context("systemd Reload (daemon-reload) failed")
    }
}

/// Records restarts and daemon-reloads (as `(None, "daemon-reload")`), for tests.
#[derive(Debug, Default)]
pub struct RecordingUnits(pub std::sync::Mutex<Vec<(Option<Verb>, String)>>);

impl RecordingUnits {
    fn record(&self, verb: Option<Verb>, what: &str) {
        self.0
            .lock()
            .expect("no test panics while holding the lock")
            .push((verb, what.to_string()));
    }
}

impl Units for RecordingUnits {
    fn restart(&self, verb: Verb, unit: &str) -> Result<()> {
        self.record(Some(verb), unit);
        Ok(())
    }

    fn daemon_reload(&self) -> Result<()> {
        self.record(None, "daemon-reload");
        Ok(())
    }
}
