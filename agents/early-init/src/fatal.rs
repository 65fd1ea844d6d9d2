//! The failure path: one line on the console, a pause, then a reboot so that boot counting
//! can act. early-init never hangs and never drops to a shell.

use std::time::Duration;

/// Pause before the reboot, so the line can be read on a screen.
const PAUSE: Duration = Duration::from_secs(3);

/// A failure that a reboot cannot fix and that must not be retried over and over: early-init
/// prints one line and powers the machine off, leaving the disks as they are (a `private`
/// e2fsck could not repair, say: formatting it would lose the host's settings).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stop(pub String);

/// Whether `err` (or a cause of it) is a [`Stop`].
pub fn is_stop(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Stop>())
}

/// The single line printed for a [`Stop`]: `early-init: STOP: <what>: <why>; powering off`.
pub fn stop_line(err: &anyhow::Error) -> String {
    let chain = format!("{err:#}").replace('\n', " ");
    format!("early-init: STOP: {chain}; powering off, the disks are left as they are")
}

/// Prints `line`, waits, syncs and powers off. Falls back to exiting (a kernel panic).
pub fn poweroff_with(line: &str) -> ! {
    eprintln!("{line}");
    std::thread::sleep(PAUSE);
    rustix::fs::sync();
    let err = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
    eprintln!("early-init: power off failed: {err:?}; exiting");
    std::process::exit(1)
}

/// Prints one console line (`early-init: ...`).
pub fn say(msg: &str) {
    eprintln!("early-init: {msg}");
}

/// The single line printed for a fatal error: `early-init: FATAL: <what>: <why>; rebooting`.
pub fn fatal_line(err: &anyhow::Error) -> String {
    let chain = format!("{err:#}").replace('\n', " ");
    format!("early-init: FATAL: {chain}; rebooting")
}

/// Prints `line`, waits, syncs and reboots. Falls back to exiting, which makes the kernel
/// panic (and `panic=N` reboot) if the reboot call itself fails.
pub fn reboot_with(line: &str) -> ! {
    eprintln!("{line}");
    std::thread::sleep(PAUSE);
    rustix::fs::sync();
    let err = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    eprintln!("early-init: reboot failed: {err:?}; exiting");
    std::process::exit(1)
}

/// Reboots through [`reboot_with`] on a panic too.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', ": ");
        reboot_with(&format!(
            "early-init: FATAL: internal error: {msg}; rebooting"
        ));
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn fatal_line_is_one_line_with_what_and_why() {
        let err = Err::<(), _>(std::io::Error::other("No such device"))
            .context("mount /dev/mapper/root on /sysroot")
            .expect_err("error");
        assert_eq!(
            fatal_line(&err),
            "early-init: FATAL: mount /dev/mapper/root on /sysroot: No such device; rebooting"
        );
        let err = anyhow::anyhow!("two\nlines");
        assert!(!fatal_line(&err).contains('\n'));
    }
}
