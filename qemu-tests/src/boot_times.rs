//! Where boot time goes, from the console's timestamps.
//!
//! | phase | from | to |
//! |---|---|---|
//! | firmware | QEMU start | kernel banner (`Linux version`) |
//! | kernel | kernel banner | first `early-init: ` line |
//! | initramfs | first `early-init: ` line | `early-init: switching root to systemd` |
//! | userspace | switch root | systemd's multi-user target |
//!
//! Without `earlycon` the kernel prints its banner when the serial console registers, a
//! little after it started, so "firmware" includes the kernel's first moments (and the
//! UKI's EFI stub).

use std::fmt::Write;
use std::time::Duration;

use regex::Regex;

use crate::{markers, Arch, Line};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootTimesError {
    #[error("no console line matches {marker} (boot phase marker)")]
    MissingMarker { marker: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimes {
    pub firmware: Duration,
    pub kernel: Duration,
    pub initramfs: Duration,
    pub userspace: Duration,
    pub total: Duration,
}

impl BootTimes {
    /// Splits the first boot in `lines` into phases.
    pub fn from_lines(lines: &[Line]) -> Result<Self, BootTimesError> {
        let at = |marker: &'static str, after: Duration| -> Result<Duration, BootTimesError> {
            #[allow(clippy::expect_used)]
            let re = Regex::new(marker).expect("markers are valid regexes");
            lines
                .iter()
                .find(|l| l.elapsed >= after && re.is_match(&l.text))
                .map(|l| l.elapsed)
                .ok_or(BootTimesError::MissingMarker { marker })
        };
        let kernel = at(markers::KERNEL_BANNER, Duration::ZERO)?;
        let init = at(markers::EARLY_INIT, kernel)?;
        let switch = at(markers::SWITCH_ROOT, init)?;
        let multi_user = at(markers::MULTI_USER, switch)?;
        Ok(BootTimes {
            firmware: kernel,
            kernel: init - kernel,
            initramfs: switch - init,
            userspace: multi_user - switch,
            total: multi_user,
        })
    }
}

/// Host-clock time from the first boot's kernel banner to the first line after it that
/// matches `marker`, e.g. [`markers::API_READY`]: kernel -> settings API up.
pub fn since_kernel(lines: &[Line], marker: &'static str) -> Result<Duration, BootTimesError> {
    #[allow(clippy::expect_used)]
    let (banner, re) = (
        Regex::new(markers::KERNEL_BANNER).expect("markers are valid regexes"),
        Regex::new(marker).expect("markers are valid regexes"),
    );
    let kernel =
        lines
            .iter()
            .find(|l| banner.is_match(&l.text))
            .ok_or(BootTimesError::MissingMarker {
                marker: markers::KERNEL_BANNER,
            })?;
    lines
        .iter()
        .find(|l| l.index > kernel.index && re.is_match(&l.text))
        .map(|l| l.elapsed - kernel.elapsed)
        .ok_or(BootTimesError::MissingMarker { marker })
}

/// A table of boot times, one row per architecture, for the test output.
pub fn table(rows: &[(Arch, BootTimes)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "arch", "firmware", "kernel", "initramfs", "userspace", "total"
    );
    for (arch, t) in rows {
        let s = |d: Duration| format!("{:.2}s", d.as_secs_f64());
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>9} {:>10} {:>10} {:>9}",
            arch.as_str(),
            s(t.firmware),
            s(t.kernel),
            s(t.initramfs),
            s(t.userspace),
            s(t.total)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(index: usize, ms: u64, text: &str) -> Line {
        Line {
            index,
            elapsed: Duration::from_millis(ms),
            text: text.to_owned(),
        }
    }

    #[test]
    fn splits_a_boot_into_phases() -> anyhow::Result<()> {
        let lines = [
            line(0, 1_000, "BdsDxe: loading Boot0001"),
            line(1, 4_000, "[    0.000000] Linux version 6.12.48+deb13-amd64"),
            line(2, 6_500, "early-init: loading 5 modules"),
            line(3, 8_000, "early-init: switching root to systemd"),
            line(4, 9_000, "[  OK  ] Reached target sysinit.target"),
            line(
                5,
                20_000,
                "[  OK  ] Reached target multi-user.target - Multi-User System.",
            ),
        ];
        let t = BootTimes::from_lines(&lines)?;
        assert_eq!(t.firmware, Duration::from_millis(4_000));
        assert_eq!(t.kernel, Duration::from_millis(2_500));
        assert_eq!(t.initramfs, Duration::from_millis(1_500));
        assert_eq!(t.userspace, Duration::from_millis(12_000));
        assert_eq!(t.total, Duration::from_millis(20_000));
        let table = table(&[(Arch::X86_64, t)]);
        assert_eq!(
            table.lines().nth(1),
            Some("x86_64       4.00s     2.50s      1.50s     12.00s    20.00s")
        );
        Ok(())
    }

    #[test]
    fn kernel_to_api_ready() {
        let lines = [
            line(
                0,
                1_000,
                "[  OK  ] Started apiserver.service - from an earlier boot?",
            ),
            line(1, 4_000, "[    0.000000] Linux version 6.12.48+deb13-amd64"),
            line(
                2,
                19_500,
                "[  OK  ] Started apiserver.service - Berth settings API server.",
            ),
        ];
        assert_eq!(
            since_kernel(&lines, markers::API_READY),
            Ok(Duration::from_millis(15_500))
        );
        assert_eq!(
            since_kernel(&lines[..2], markers::API_READY),
            Err(BootTimesError::MissingMarker {
                marker: markers::API_READY
            })
        );
    }

    #[test]
    fn missing_phase_is_named() {
        let lines = [line(0, 4_000, "Linux version 6.12")];
        assert_eq!(
            BootTimes::from_lines(&lines),
            Err(BootTimesError::MissingMarker {
                marker: markers::EARLY_INIT
            })
        );
    }
}
