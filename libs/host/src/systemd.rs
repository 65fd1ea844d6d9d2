//! systemd's unit manager over D-Bus (zbus, no `systemctl` subprocess): one trait, the real
//! client, a recording fake for tests, one error type. Every Berth program that starts,
//! restarts or asks about units, reloads unit files or reboots goes through here.
//!
//! A job (start, restart, ...) is queued with the manager and waited for by its `JobRemoved`
//! signal, which carries systemd's verdict (`done`, `failed`, `dependency`, `timeout`, ...):
//! no polling of unit properties. For a `Type=notify` or `oneshot` service the job ends when
//! the service is up; for `Type=simple` when it has been forked.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SERVICE: &str = "org.freedesktop.systemd1.Service";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to the D-Bus system bus")]
    Connect(#[source] Box<zbus::Error>),
    // Boxed: zbus's error is large and every call returns this enum.
    #[error("systemd D-Bus call {method} for {unit} failed")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemd's {job} job for {unit} ended with `{result}`")]
    JobFailed {
        job: Job,
        unit: String,
        result: String,
    },
    #[error("systemd's {job} job for {unit} did not finish within {seconds:.0} s")]
    JobTimeout {
        job: Job,
        unit: String,
        seconds: f64,
    },
    #[error("{unit} is {state} ({result}) instead of active after {seconds:.1} s")]
    NotActive {
        unit: String,
        state: String,
        result: String,
        seconds: f64,
    },
}

impl SystemdError {
    /// The unit the error is about (`None` for the bus itself).
    pub fn unit(&self) -> Option<&str> {
        match self {
            SystemdError::Connect(_) => None,
            SystemdError::Call { unit, .. }
            | SystemdError::JobFailed { unit, .. }
            | SystemdError::JobTimeout { unit, .. }
            | SystemdError::NotActive { unit, .. } => Some(unit),
        }
    }
}

/// A job on a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Start,
    /// Stop, then start; starts a unit that is not running.
    Restart,
    /// Restart only when running; otherwise the job does nothing.
    TryRestart,
    /// Reload when the unit supports it, else restart.
    ReloadOrRestart,
}

impl Job {
    fn method(self) -> &'static str {
        match self {
            Job::Start => "StartUnit",
            Job::Restart => "RestartUnit",
            Job::TryRestart => "TryRestartUnit",
            Job::ReloadOrRestart => "ReloadOrRestartUnit",
        }
    }

    /// The name in metadata files and on the command line (`restart`, `try-restart`, ...).
    pub fn parse(s: &str) -> Option<Job> {
        match s {
            "start" => Some(Job::Start),
            "restart" => Some(Job::Restart),
            "try-restart" => Some(Job::TryRestart),
            "reload-or-restart" => Some(Job::ReloadOrRestart),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Job::Start => "start",
            Job::Restart => "restart",
            Job::TryRestart => "try-restart",
            Job::ReloadOrRestart => "reload-or-restart",
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What systemd says about a unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    /// `loaded`, `not-found` (no unit file), `masked`, ...
    pub load: String,
    /// `active`, `activating`, `failed`, `inactive`, ...
    pub active: String,
    /// Services: `success`, `exit-code`, `resources`, ...
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
    /// Exit status of each ExecStartPre= command at its last run, in order; empty when the
    /// unit has none or they have not run.
    pub exec_start_pre_status: Vec<i32>,
}

impl UnitState {
    pub fn is_active(&self) -> bool {
        self.active == "active"
    }
}

/// systemd's unit manager.
pub trait Systemd: Send + Sync {
    /// The unit's state. Loads the unit if nothing has: a unit without a file is
    /// `not-found`, one nothing pulled in is `inactive`.
    fn state(&self, unit: &str) -> Result<UnitState, SystemdError>;
    /// Queues `job` for `unit` (replacing a queued one) and waits, at most `deadline`, for
    /// systemd to finish it; the unit's state then. A job systemd ends other than `done`
    /// is [`SystemdError::JobFailed`].
    fn run(&self, job: Job, unit: &str, deadline: Duration) -> Result<UnitState, SystemdError>;
    /// Reloads unit files and drop-ins (`systemctl daemon-reload`); returns once done.
    fn daemon_reload(&self) -> Result<(), SystemdError>;
    /// Starts `reboot.target`, `replace-irreversibly`: no later job cancels it, and systemd
    /// stops every unit in order before the kernel reboots. Returns once queued.
    fn reboot(&self) -> Result<(), SystemdError>;
}

/// Starts `unit` and requires it active when the job is done (a `Type=notify` service:
/// ready).
pub fn start_and_wait(
    systemd: &dyn Systemd,
    unit: &str,
    deadline: Duration,
) -> Result<UnitState, SystemdError> {
    let started = Instant::now();
    let state = systemd.run(Job::Start, unit, deadline)?;
    require_active(unit, state, started)
}

fn require_active(
    unit: &str,
    state: UnitState,
    started: Instant,
) -> Result<UnitState, SystemdError> {
    if state.is_active() {
        return Ok(state);
    }
    Err(SystemdError::NotActive {
        unit: unit.to_owned(),
        state: state.active,
        result: state.result,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What [`restart`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Restarted {
    /// A try-restart of a unit this image does not have: nothing done.
    NotLoaded,
    /// A try-restart of a unit that is not running (`state`): nothing done.
    NotRunning { state: String },
    /// The job ran and the unit is active again.
    Active { seconds: f64 },
}

/// Restarts `unit` for new configuration and requires it active afterwards. A
/// [`Job::TryRestart`] of a unit that is not loaded or not running queues nothing (no job
/// that could replace a pending start job of a unit waiting for a target).
pub fn restart(
    systemd: &dyn Systemd,
    job: Job,
    unit: &str,
    deadline: Duration,
) -> Result<Restarted, SystemdError> {
    let started = Instant::now();
    if job == Job::TryRestart {
        let before = systemd.state(unit)?;
        if before.load != "loaded" {
            return Ok(Restarted::NotLoaded);
        }
        if !before.is_active() {
            return Ok(Restarted::NotRunning {
                state: before.active,
            });
        }
    }
    let state = systemd.run(job, unit, deadline)?;
    require_active(unit, state, started)?;
    Ok(Restarted::Active {
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// systemd's manager on the system bus.
pub struct DbusSystemd {
    conn: zbus::blocking::Connection,
}

impl fmt::Debug for DbusSystemd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DbusSystemd")
    }
}

fn call_err(method: &'static str, unit: &str) -> impl FnOnce(zbus::Error) -> SystemdError {
    let unit = unit.to_owned();
    move |source| SystemdError::Call {
        method,
        unit,
        source: Box::new(source),
    }
}

impl DbusSystemd {
    /// Connects to the system bus and subscribes to the manager's signals (systemd sends
    /// `JobRemoved` only to subscribed clients).
    pub fn connect() -> Result<DbusSystemd, SystemdError> {
        let conn =
            zbus::blocking::Connection::system().map_err(|e| SystemdError::Connect(Box::new(e)))?;
        let systemd = DbusSystemd { conn };
        systemd
            .manager()?
            .call::<_, _, ()>("Subscribe", &())
            .map_err(call_err("Subscribe", "the manager"))?;
        Ok(systemd)
    }

    fn proxy<'a>(
        &'a self,
        path: &'a str,
        interface: &'a str,
    ) -> Result<zbus::blocking::Proxy<'a>, SystemdError> {
        zbus::blocking::Proxy::new(&self.conn, DEST, path, interface)
            .map_err(call_err("Proxy", interface))
    }

    fn manager(&self) -> Result<zbus::blocking::Proxy<'_>, SystemdError> {
        self.proxy(MANAGER_PATH, MANAGER)
    }
}

impl Systemd for DbusSystemd {
    fn state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        // LoadUnit rather than GetUnit: a unit nothing pulled in is simply inactive.
        let path: OwnedObjectPath = self
            .manager()?
            .call("LoadUnit", &(unit,))
            .map_err(call_err("LoadUnit", unit))?;
        let u = self.proxy(path.as_str(), UNIT)?;
        let get = |p: &'static str| -> Result<String, SystemdError> {
            u.get_property(p).map_err(call_err("Get", unit))
        };
        let load = get("LoadState")?;
        let active = get("ActiveState")?;
        let invocation: Vec<u8> = u.get_property("InvocationID").unwrap_or_default();
        let invocation_id = invocation.iter().map(|b| format!("{b:02x}")).collect();
        // Services only; other unit types have none of these and answer with defaults.
        let service = self.proxy(path.as_str(), SERVICE)?;
        let result: String = service.get_property("Result").unwrap_or_default();
        // a(sasbttttuii): path, argv, ignore-failure, timestamps, pid, code, status.
        type Exec = (String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32);
        let exec: Vec<Exec> = service.get_property("ExecStart").unwrap_or_default();
        let exec_start = exec.first().map(|e| e.1.join(" ")).unwrap_or_default();
        let pre: Vec<Exec> = service.get_property("ExecStartPre").unwrap_or_default();
        let files: Vec<(String, bool)> =
            service.get_property("EnvironmentFiles").unwrap_or_default();
        Ok(UnitState {
            load,
            active,
            result,
            exec_start,
            environment_files: files
                .into_iter()
                .map(|(p, optional)| if optional { format!("-{p}") } else { p })
                .collect(),
            invocation_id,
            exec_main_status: service.get_property("ExecMainStatus").unwrap_or_default(),
            n_restarts: service.get_property("NRestarts").unwrap_or_default(),
            exec_start_pre_status: pre.iter().map(|e| e.9).collect(),
        })
    }

    fn run(&self, job: Job, unit: &str, deadline: Duration) -> Result<UnitState, SystemdError> {
        let manager = self.manager()?;
        let manager = manager.inner().clone();
        let method = job.method();
        let result = async_io::block_on(async {
            // Listen before queuing, so the signal of a job that ends at once is not missed.
            let mut removed = manager
                .receive_signal("JobRemoved")
                .await
                .map_err(call_err("JobRemoved", unit))?;
            let queued: OwnedObjectPath = manager
                .call(method, &(unit, "replace"))
                .await
                .map_err(call_err(method, unit))?;
            tracing::debug!(unit, job = %queued.as_str(), "queued {method}");
            let finished = async {
                while let Some(signal) = removed.next().await {
                    // JobRemoved(u id, o job, s unit, s result)
                    let Ok((_, path, _, result)) =
                        signal
                            .body()
                            .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    else {
                        continue;
                    };
                    if path == queued {
                        return Some(result);
                    }
                }
                None
            };
            let timer = async {
                async_io::Timer::after(deadline).await;
                None
            };
            Ok::<_, SystemdError>(
                futures_util::future::select(std::pin::pin!(finished), std::pin::pin!(timer))
                    .await
                    .factor_first()
                    .0,
            )
        })?;
        match result.as_deref() {
            Some("done") => self.state(unit),
            Some(other) => Err(SystemdError::JobFailed {
                job,
                unit: unit.to_owned(),
                result: other.to_owned(),
            }),
            None => Err(SystemdError::JobTimeout {
                job,
                unit: unit.to_owned(),
                seconds: deadline.as_secs_f64(),
            }),
        }
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        // Reload returns once systemd has reloaded its units.
        self.manager()?
            .call::<_, _, ()>("Reload", &())
            .map_err(call_err("Reload", "daemon-reload"))
    }

    fn reboot(&self) -> Result<(), SystemdError> {
        let unit = "reboot.target";
        let job: OwnedObjectPath = self
            .manager()?
            .call("StartUnit", &(unit, "replace-irreversibly"))
            .map_err(call_err("StartUnit", unit))?;
        tracing::info!(job = %job.as_str(), "reboot.target started");
        Ok(())
    }
}

/// What a test asked of systemd, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Run(Job, String),
    DaemonReload,
    Reboot,
}

/// Records every call and answers from fixed unit states; jobs of units in `failing` end
/// with `failed`. A unit without a state is `not-found` / `inactive` until a job runs on it,
/// which leaves it active (with an invocation id); a unit with a state keeps it.
#[derive(Debug, Default)]
pub struct RecordingSystemd {
    pub calls: Mutex<Vec<Call>>,
    pub states: Mutex<BTreeMap<String, UnitState>>,
    pub failing: Vec<String>,
}

impl RecordingSystemd {
    /// A fake where `units` are loaded and active (invocation id `01`).
    pub fn with_active(units: &[&str]) -> RecordingSystemd {
        let fake = RecordingSystemd::default();
        for unit in units {
            fake.set(unit, active_state());
        }
        fake
    }

    pub fn set(&self, unit: &str, state: UnitState) {
        self.states
            .lock()
            .expect("no test panics while holding the lock")
            .insert(unit.to_owned(), state);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .expect("no test panics while holding the lock")
            .clone()
    }

    /// The units of the jobs run, in order.
    pub fn jobs(&self) -> Vec<(Job, String)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Run(job, unit) => Some((job, unit)),
                _ => None,
            })
            .collect()
    }

    fn record(&self, call: Call) {
        self.calls
            .lock()
            .expect("no test panics while holding the lock")
            .push(call);
    }
}

fn active_state() -> UnitState {
    UnitState {
        load: "loaded".into(),
        active: "active".into(),
        result: "success".into(),
        invocation_id: "01".into(),
        ..UnitState::default()
    }
}

impl Systemd for RecordingSystemd {
    fn state(&self, unit: &str) -> Result<UnitState, SystemdError> {
        Ok(self
            .states
            .lock()
            .expect("no test panics while holding the lock")
            .get(unit)
            .cloned()
            .unwrap_or_else(|| UnitState {
                load: "not-found".into(),
                active: "inactive".into(),
                ..UnitState::default()
            }))
    }

    fn run(&self, job: Job, unit: &str, _deadline: Duration) -> Result<UnitState, SystemdError> {
        self.record(Call::Run(job, unit.to_owned()));
        if self.failing.iter().any(|u| u == unit) {
            return Err(SystemdError::JobFailed {
                job,
                unit: unit.to_owned(),
                result: "failed".into(),
            });
        }
        let mut states = self
            .states
            .lock()
            .expect("no test panics while holding the lock");
        Ok(states
            .entry(unit.to_owned())
            .or_insert_with(active_state)
            .clone())
    }

    fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.record(Call::DaemonReload);
        Ok(())
    }

    fn reboot(&self) -> Result<(), SystemdError> {
        self.record(Call::Reboot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_secs(5);

    #[test]
    fn try_restart_leaves_absent_and_stopped_units_alone() {
        let systemd = RecordingSystemd::default();
        systemd.set(
            "chrony.service",
            UnitState {
                load: "loaded".into(),
                active: "inactive".into(),
                ..UnitState::default()
            },
        );
        assert_eq!(
            restart(&systemd, Job::TryRestart, "containerd.service", DEADLINE).unwrap(),
            Restarted::NotLoaded
        );
        assert_eq!(
            restart(&systemd, Job::TryRestart, "chrony.service", DEADLINE).unwrap(),
            Restarted::NotRunning {
                state: "inactive".into()
            }
        );
        assert!(systemd.calls().is_empty(), "no job queued");
    }

    #[test]
    fn restart_runs_the_job_and_requires_the_unit_active() {
        let systemd = RecordingSystemd::with_active(&["chrony.service"]);
        assert!(matches!(
            restart(&systemd, Job::TryRestart, "chrony.service", DEADLINE).unwrap(),
            Restarted::Active { .. }
        ));
        assert!(matches!(
            restart(&systemd, Job::Restart, "systemd-resolved.service", DEADLINE).unwrap(),
            Restarted::Active { .. }
        ));
        assert_eq!(
            systemd.jobs(),
            [
                (Job::TryRestart, "chrony.service".to_owned()),
                (Job::Restart, "systemd-resolved.service".to_owned())
            ]
        );
    }

    #[test]
    fn a_failed_job_names_the_unit() {
        let systemd = RecordingSystemd {
            failing: vec!["kubelet.service".into()],
            ..RecordingSystemd::with_active(&["kubelet.service"])
        };
        let err = restart(&systemd, Job::Restart, "kubelet.service", DEADLINE).unwrap_err();
        assert_eq!(err.unit(), Some("kubelet.service"));
        assert_eq!(
            err.to_string(),
            "systemd's restart job for kubelet.service ended with `failed`"
        );
        let err = start_and_wait(&systemd, "kubelet.service", DEADLINE).unwrap_err();
        assert!(matches!(err, SystemdError::JobFailed { .. }), "{err}");
    }

    #[test]
    fn jobs_parse_from_their_names() {
        for job in [
            Job::Start,
            Job::Restart,
            Job::TryRestart,
            Job::ReloadOrRestart,
        ] {
            assert_eq!(Job::parse(job.name()), Some(job));
        }
        assert_eq!(Job::parse("stop"), None);
    }

    #[test]
    fn reboot_and_reload_are_recorded() {
        let systemd = RecordingSystemd::default();
        systemd.daemon_reload().unwrap();
        systemd.reboot().unwrap();
        assert_eq!(systemd.calls(), [Call::DaemonReload, Call::Reboot]);
    }
}
