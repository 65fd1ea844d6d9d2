//! Gating and serialising of QEMU scenarios.
//!
//! QEMU scenarios run only with `BERTH_QEMU_TESTS=1` (scripts/test.sh sets it after
//! building the images); otherwise each says it was skipped and why. A scenario holds a
//! host-wide lock while its VMs run: two TCG guests on the two CI cores would each run at
//! half speed and miss their deadlines, and cargo test (threads) or nextest (processes)
//! would otherwise start them together.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

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

/// Held while a scenario runs; released on drop.
#[derive(Debug)]
pub struct HostLock {
    _file: File,
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

/// Takes the host-wide QEMU lock for the scenario `name`, waiting for other scenarios.
pub fn lock(name: &str) -> Result<HostLock, ScenarioError> {
    let path = std::env::temp_dir().join("berth-qemu-tests.lock");
    let err = |source: io::Error| ScenarioError::Lock {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(err)?;
    if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
        println!(
            "{name}: waiting for another QEMU scenario to finish ({})",
            path.display()
        );
        flock(&file, FlockOperation::LockExclusive).map_err(|e| err(e.into()))?;
    }
    Ok(HostLock { _file: file })
}
