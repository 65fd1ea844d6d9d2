//! Gating and serialising of QEMU scenarios.
//!
//! QEMU scenarios run only with `BERTH_QEMU_TESTS=1` (scripts/test.sh sets it after
//! building the images); otherwise each says it was skipped and why. A scenario holds one of
//! the host's QEMU slots while its VMs run, so that TCG guests do not outnumber the cores and
//! miss their deadlines: cargo test (threads) and nextest (processes) would otherwise start
//! them all together. There is one slot unless `BERTH_QEMU_SLOTS` says more (scripts/test.sh
//! gives two on CI's two cores; VMs then get one vCPU each, see [`default_vcpus`]). A slot is
//! an exclusive `flock` on `$TMPDIR/berth-qemu-tests.lock` (slot 0) or
//! `berth-qemu-tests.<n>.lock`, so a shell can hold one too (`flock`(1)): scripts/test.sh
//! does while it builds images, which leaves the other core to a scenario.
//!
//! When `BERTH_SCENARIO_TIMES` names a file, each scenario appends a line to it when it ends:
//! `<name> <seconds on a slot> <seconds waited for it>`; scripts/test.sh prints the slowest.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("take the QEMU test lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Held while a scenario runs; released on drop, when the scenario's time is recorded.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
    name: String,
    slot: usize,
    waited: Duration,
    since: Instant,
}

impl HostLock {
    /// Which of the host's QEMU slots this is (0 when there is one).
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        let held = self.since.elapsed().as_secs_f64();
        let waited = self.waited.as_secs_f64();
        println!(
            "scenario {}: {held:.1}s on QEMU slot {} (waited {waited:.1}s for it)",
            self.name, self.slot
        );
        if let Some(path) = std::env::var_os(paths::SCENARIO_TIMES_VAR).filter(|p| !p.is_empty()) {
            let line = format!("{} {held:.1} {waited:.1}\n", self.name);
            // One write of a short line to a file opened for appending: lines of scenarios
            // ending together do not interleave.
            let written = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                eprintln!(
                    "scenario {}: cannot record its time in {}: {e}",
                    self.name,
                    PathBuf::from(path).display()
                );
            }
        }
    }
}

/// How many QEMU scenarios may run at once on this host: `BERTH_QEMU_SLOTS`, default 1.
pub fn slots() -> usize {
    slots_from(std::env::var(paths::SLOTS_VAR).ok().as_deref())
}

fn slots_from(value: Option<&str>) -> usize {
    value
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// vCPUs a VM gets unless its builder says otherwise: the host's cores shared among the QEMU
/// slots, at least one and at most two (TCG gains little from more for one boot).
pub fn default_vcpus() -> u32 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    vcpus_for(cores, slots())
}

fn vcpus_for(cores: usize, slots: usize) -> u32 {
    u32::try_from((cores / slots.max(1)).clamp(1, 2)).unwrap_or(1)
}

/// The lock file of QEMU slot `n`.
pub fn slot_path(n: usize) -> PathBuf {
    let name = if n == 0 {
        "berth-qemu-tests.lock".to_owned()
    } else {
        format!("berth-qemu-tests.{n}.lock")
    };
    std::env::temp_dir().join(name)
}

/// True when `BERTH_QEMU_TESTS=1`.
pub fn enabled() -> bool {
    std::env::var(paths::ENABLE_VAR).is_ok_and(|v| v == "1")
}

/// Starts a scenario: returns `None` (after printing why) if QEMU scenarios are not
/// enabled; otherwise waits until no other scenario runs, prints the scenario's name and
/// what it checks, and returns the host lock.
pub fn begin(name: &str, checks: &[&str]) -> Result<Option<HostLock>, ScenarioError> {
    if !enabled() {
        // Straight to the process's stderr: libtest captures print! and eprint!, and a
        // skipped scenario must say so even when the test passes.
        let line = format!(
            "{name}: skipped: {} is not set (scripts/test.sh sets it after building the images)\n",
            paths::ENABLE_VAR
        );
        let _ = io::stderr().write_all(line.as_bytes());
        return Ok(None);
    }
    // Print after taking the lock, so that the scenario's output is not interleaved with
    // another one's when cargo test runs them on parallel threads.
    let lock = lock(name)?;
    println!("scenario {name}");
    for check in checks {
        println!("  checks: {check}");
    }
    Ok(Some(lock))
}

/// Takes a free QEMU slot for the scenario `name`, waiting while every slot is held.
/// Waiting scenarios get slots in the order they asked for one (see `Ticket`), so the order
/// scripts/test.sh starts scenarios in is the order they run in.
pub fn lock(name: &str) -> Result<HostLock, ScenarioError> {
    let slots = slots();
    let asked = Instant::now();
    let mut files = Vec::with_capacity(slots);
    for n in 0..slots {
        let path = slot_path(n);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| ScenarioError::Lock { path, source })?;
        files.push(file);
    }
    let ticket = Ticket::take(&queue_dir())?;
    let mut said = false;
    loop {
        if ticket.is_first()? {
            for (slot, file) in files.iter().enumerate() {
                if flock(file, FlockOperation::NonBlockingLockExclusive).is_ok() {
                    drop(ticket);
                    return Ok(HostLock {
                        _file: files.swap_remove(slot),
                        name: name.to_owned(),
                        slot,
                        waited: asked.elapsed(),
                        since: Instant::now(),
                    });
                }
            }
        }
        if !said {
            println!(
                "{name}: waiting for one of {slots} QEMU slot(s) ({})",
                slot_path(0).display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The folder of waiting scenarios' tickets.
fn queue_dir() -> PathBuf {
    std::env::temp_dir().join("berth-qemu-queue")
}

/// A waiting scenario's place in the queue: a file named by the time it asked, locked by it
/// while it waits. A ticket whose lock nobody holds belongs to a process that died, and is
/// removed by the next waiter that looks.
#[derive(Debug)]
struct Ticket {
    dir: PathBuf,
    name: String,
    _file: File,
}

impl Ticket {
    fn take(dir: &std::path::Path) -> Result<Ticket, ScenarioError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let err = |path: PathBuf| move |source: io::Error| ScenarioError::Lock { path, source };
        std::fs::create_dir_all(dir).map_err(err(dir.to_owned()))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "{nanos:024}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(&name);
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(err(path.clone()))?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| err(path)(e.into()))?;
        Ok(Ticket {
            dir: dir.to_owned(),
            name,
            _file: file,
        })
    }

    /// True when no live ticket is older than this one.
    fn is_first(&self) -> Result<bool, ScenarioError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| ScenarioError::Lock {
            path: self.dir.clone(),
            source,
        })?;
        let mut older: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.') && *n < self.name)
            .collect();
        older.sort();
        for name in older {
            let path = self.dir.join(&name);
            let Ok(file) = File::open(&path) else {
                continue; // gone meanwhile
            };
            if flock(&file, FlockOperation::NonBlockingLockShared).is_ok() {
                // Nobody holds it: its scenario died while waiting.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            return Ok(false);
        }
        Ok(true)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(&self.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_default_to_one_and_ignore_nonsense() {
        assert_eq!(slots_from(None), 1);
        assert_eq!(slots_from(Some("2")), 2);
        assert_eq!(slots_from(Some(" 3 ")), 3);
        assert_eq!(slots_from(Some("0")), 1);
        assert_eq!(slots_from(Some("two")), 1);
    }

    #[test]
    fn vcpus_share_the_cores_among_the_slots() {
        assert_eq!(vcpus_for(2, 1), 2);
        assert_eq!(vcpus_for(2, 2), 1);
        assert_eq!(vcpus_for(8, 1), 2);
        assert_eq!(vcpus_for(8, 2), 2);
        assert_eq!(vcpus_for(1, 4), 1);
    }

    #[test]
    fn tickets_are_served_in_order_and_dead_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ticket::take(dir.path()).unwrap();
        let second = Ticket::take(dir.path()).unwrap();
        assert!(first.is_first().unwrap());
        assert!(!second.is_first().unwrap());
        // A ticket left by a process that died: a file nobody holds a lock on.
        let name = first.name.clone();
        drop(first);
        std::fs::write(dir.path().join(&name), b"").unwrap();
        assert!(second.is_first().unwrap());
        assert!(!dir.path().join(&name).exists());
        drop(second);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn slot_zero_keeps_the_old_lock_name() {
        assert!(slot_path(0).ends_with("berth-qemu-tests.lock"));
        assert!(slot_path(1).ends_with("berth-qemu-tests.1.lock"));
    }
}
