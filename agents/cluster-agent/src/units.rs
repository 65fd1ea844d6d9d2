//! Starting containerd and kubelet through systemd's manager over D-Bus (zbus, blocking API;
//! no `systemctl` subprocess), behind a trait with a recording fake for tests.

use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    #[error("cannot connect to the D-Bus system bus")]
    Connect(#[source] Box<zbus::Error>),
    // Boxed: zbus's error is large and every call site returns this enum.
    #[error("systemd D-Bus call {method} for {unit} failed")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("{unit} is {state} ({result}) instead of active after {seconds:.1} s")]
    NotActive {
        unit: String,
        state: String,
        result: String,
        seconds: f64,
    },
}

/// What systemd says about a unit after a start.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    /// `active`, `activating`, `failed`, ...
    pub active: String,
    /// `success`, `exit-code`, `resources`, ...
    pub result: String,
    /// ExecStart as systemd holds it: the program and its arguments before expansion.
    pub exec_start: String,
    /// EnvironmentFile= entries (a leading `-` marks an optional one).
    pub environment_files: Vec<String>,
    /// The invocation id systemd gave the unit's last start (hex); empty if never started.
    pub invocation_id: String,
    /// Exit status of the main process (203 is systemd's EXEC failure).
    pub exec_main_status: i32,
    /// Automatic restarts since the last manual start.
    pub n_restarts: u32,
    /// Exit status of each ExecStartPre= command at its last run, in order (ecs.service's
    /// iptables rules); empty when the unit has none or they have not run.
    pub exec_start_pre_status: Vec<i32>,
}

/// The systemd unit manager, as far as the agent needs it.
pub trait Units {
    /// Starts `unit` and waits until it is active (or has failed, or `deadline` passed).
    fn start_and_wait(&self, unit: &str, deadline: Duration) -> Result<UnitState, UnitsError>;
    /// Queues a start of `unit` and returns once systemd has run the job (for a simple
    /// service: forked it, or failed to), with the unit's state then.
    fn start(&self, unit: &str) -> Result<UnitState, UnitsError>;
    /// The unit's state now.
    fn state(&self, unit: &str) -> Result<UnitState, UnitsError>;
    /// Restarts `unit` (stop, then start) and returns once systemd has run the job, with the
    /// unit's state then.
    fn restart(&self, unit: &str) -> Result<UnitState, UnitsError>;
}

/// systemd on the system bus.
pub struct DbusUnits {
    conn: zbus::blocking::Connection,
}

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

impl DbusUnits {
    pub fn connect() -> Result<DbusUnits, UnitsError> {
        let conn =
            zbus::blocking::Connection::system().map_err(|e| UnitsError::Connect(Box::new(e)))?;
        Ok(DbusUnits { conn })
    }

    fn call_err(method: &'static str, unit: &str) -> impl FnOnce(zbus::Error) -> UnitsError {
        let unit = unit.to_string();
        move |source| UnitsError::Call {
            method,
            unit,
            source: Box::new(source),
        }
    }

    fn proxy<'a>(
        &'a self,
        path: &'a str,
        interface: &'a str,
        unit: &str,
    ) -> Result<zbus::blocking::Proxy<'a>, UnitsError> {
        zbus::blocking::Proxy::new(&self.conn, DEST, path, interface)
            .map_err(Self::call_err("Proxy", unit))
    }

    fn queue_start(&self, unit: &str) -> Result<zbus::zvariant::OwnedObjectPath, UnitsError> {
        self.queue("StartUnit", unit)
    }

    /// Queues a job (`StartUnit`, `RestartUnit`) for `unit`, replacing a queued one.
    fn queue(
        &self,
        method: &'static str,
        unit: &str,
    ) -> Result<zbus::zvariant::OwnedObjectPath, UnitsError> {
        let manager = self.proxy(MANAGER_PATH, MANAGER, unit)?;
        manager
            .call(method, &(unit, "replace"))
            .map_err(Self::call_err(method, unit))
    }

    fn read_state(&self, unit: &str) -> Result<UnitState, UnitsError> {
        let manager = self.proxy(MANAGER_PATH, MANAGER, unit)?;
        let path: zbus::zvariant::OwnedObjectPath = manager
            .call("LoadUnit", &(unit,))
            .map_err(Self::call_err("LoadUnit", unit))?;
        let u = self.proxy(path.as_str(), "org.freedesktop.systemd1.Unit", unit)?;
        let get = |p: &'static str| -> Result<String, UnitsError> {
            u.get_property(p).map_err(Self::call_err("Get", unit))
        };
        let active = get("ActiveState")?;
        let invocation: Vec<u8> = u.get_property("InvocationID").unwrap_or_default();
        let invocation_id = invocation.iter().map(|b| format!("{b:02x}")).collect();
        let service = self.proxy(path.as_str(), "org.freedesktop.systemd1.Service", unit)?;
        // Services only; other unit types have no Result/ExecStart.
        let result: String = service.get_property("Result").unwrap_or_default();
        // a(sasbttttuii): path, argv, ignore-failure, timestamps, pid, code, status.
        type Exec = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);
        let exec: Vec<Exec> = service.get_property("ExecStart").unwrap_or_default();
        let exec_start = exec.first().map(|e| e.1.join(" ")).unwrap_or_default();
        let pre: Vec<Exec> = service.get_property("ExecStartPre").unwrap_or_default();
        let exec_start_pre_status = pre.iter().map(|e| e.9).collect();
        let files: Vec<(String, bool)> =
            service.get_property("EnvironmentFiles").unwrap_or_default();
        let environment_files = files
            .into_iter()
            .map(|(p, optional)| if optional { format!("-{p}") } else { p })
            .collect();
        Ok(UnitState {
            active,
            result,
            exec_start,
            environment_files,
            invocation_id,
            exec_main_status: service.get_property("ExecMainStatus").unwrap_or_default(),
            n_restarts: service.get_property("NRestarts").unwrap_or_default(),
            exec_start_pre_status,
        })
    }

    /// Waits until no job is queued for `unit` (the start job has run).
    fn wait_no_job(&self, unit: &str, deadline: Duration) -> Result<(), UnitsError> {
        let started = Instant::now();
        loop {
            let manager = self.proxy(MANAGER_PATH, MANAGER, unit)?;
            let path: zbus::zvariant::OwnedObjectPath = manager
                .call("LoadUnit", &(unit,))
                .map_err(Self::call_err("LoadUnit", unit))?;
            let u = self.proxy(path.as_str(), "org.freedesktop.systemd1.Unit", unit)?;
            let job: (u32, zbus::zvariant::OwnedObjectPath) =
                u.get_property("Job").map_err(Self::call_err("Get", unit))?;
            if job.0 == 0 || started.elapsed() > deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Units for DbusUnits {
    fn start_and_wait(&self, unit: &str, deadline: Duration) -> Result<UnitState, UnitsError> {
        let started = Instant::now();
        self.queue_start(unit)?;
        loop {
            let state = self.read_state(unit)?;
            if state.active == "active" {
                return Ok(state);
            }
            if state.active == "failed" || started.elapsed() > deadline {
                return Err(UnitsError::NotActive {
                    unit: unit.to_string(),
                    state: state.active,
                    result: state.result,
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(&self, unit: &str) -> Result<UnitState, UnitsError> {
        self.queue_start(unit)?;
        self.wait_no_job(unit, Duration::from_secs(30))?;
        self.read_state(unit)
    }

    fn state(&self, unit: &str) -> Result<UnitState, UnitsError> {
        self.read_state(unit)
    }

    fn restart(&self, unit: &str) -> Result<UnitState, UnitsError> {
        self.queue("RestartUnit", unit)?;
        self.wait_no_job(unit, Duration::from_secs(30))?;
        self.read_state(unit)
    }
}

/// Records the units started and restarted, in order, and answers with a fixed state.
#[derive(Debug, Default)]
pub struct RecordingUnits {
    pub started: std::sync::Mutex<Vec<String>>,
    pub restarted: std::sync::Mutex<Vec<String>>,
    pub state: UnitState,
}

impl Units for RecordingUnits {
    fn start_and_wait(&self, unit: &str, _deadline: Duration) -> Result<UnitState, UnitsError> {
        self.start(unit)
    }

    fn start(&self, unit: &str) -> Result<UnitState, UnitsError> {
        self.started
            .lock()
            .expect("no test thread panics while holding the lock")
            .push(unit.to_string());
        Ok(self.state.clone())
    }

    fn state(&self, _unit: &str) -> Result<UnitState, UnitsError> {
        Ok(self.state.clone())
    }

    fn restart(&self, unit: &str) -> Result<UnitState, UnitsError> {
        self.restarted
            .lock()
            .expect("no test thread panics while holding the lock")
            .push(unit.to_string());
        Ok(self.state.clone())
    }
}
