//! Telling a machine that restarted from one that booted on, for fault-injection
//! scenarios (a corrupted root must restart the machine and never reach multi-user).

use regex::Regex;

use crate::{markers, Line};

/// What a boot did first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootOutcome {
    /// systemd reached multi-user.target.
    MultiUser(Line),
    /// The machine restarted: `restart` is the first line of the next boot (a second
    /// kernel banner, or the firmware's boot manager after a failure line); `evidence`
    /// holds the lines before it that blame corrupt data: the kernel's dm-verity report,
    /// or early-init failing with an I/O error.
    Restarted { restart: Line, evidence: Vec<Line> },
}

#[derive(Debug, Clone)]
pub struct RestartDetector {
    multi_user: Regex,
    banner: Regex,
    firmware: Regex,
    failure: Regex,
    evidence: Regex,
}

impl Default for RestartDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl RestartDetector {
    pub fn new() -> Self {
        let re = |pattern: &str| {
            #[allow(clippy::expect_used)]
            Regex::new(pattern).expect("markers are valid regexes")
        };
        RestartDetector {
            multi_user: re(markers::MULTI_USER),
            banner: re(markers::KERNEL_BANNER),
            // Only "loading", which the boot manager prints once per boot option it tries.
            firmware: re(r"BdsDxe: loading Boot"),
            failure: re(&format!(
                "{}|{}|{}",
                markers::VERITY_CORRUPTION,
                markers::EARLY_INIT_FATAL,
                markers::KERNEL_RESTART
            )),
            evidence: re(&format!(
                "{}|{}",
                markers::VERITY_CORRUPTION,
                markers::EARLY_INIT_READ_ERROR
            )),
        }
    }

    /// The outcome of the first boot in `lines`, once there is one.
    pub fn outcome(&self, lines: &[Line]) -> Option<BootOutcome> {
        let mut banners = 0;
        let mut failed = false;
        for (i, line) in lines.iter().enumerate() {
            if self.multi_user.is_match(&line.text) {
                return Some(BootOutcome::MultiUser(line.clone()));
            }
            if self.banner.is_match(&line.text) {
                banners += 1;
            }
            if banners >= 2 || (failed && self.firmware.is_match(&line.text)) {
                let evidence = lines[..i]
                    .iter()
                    .filter(|l| self.evidence.is_match(&l.text))
                    .cloned()
                    .collect();
                return Some(BootOutcome::Restarted {
                    restart: line.clone(),
                    evidence,
                });
            }
            failed |= banners > 0 && self.failure.is_match(&line.text);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines(texts: &[&str]) -> Vec<Line> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| Line {
                index,
                elapsed: Duration::from_secs(index as u64),
                text: (*text).to_owned(),
            })
            .collect()
    }

    const FIRST_BOOT: [&str; 4] = [
        "BdsDxe: loading Boot0001 \"UEFI QEMU HARDDISK\"",
        "BdsDxe: starting Boot0001 \"UEFI QEMU HARDDISK\"",
        "[    0.000000] Linux version 6.12.48+deb13-amd64 (debian-kernel@lists.debian.org)",
        "early-init: dm-verity root for slot a",
    ];

    #[test]
    fn verity_error_then_firmware_is_a_restart() {
        let mut t = FIRST_BOOT.to_vec();
        t.extend([
            "[    5.1] device-mapper: verity: 252:0: data block 0 is corrupted",
            "[    5.2] reboot: Restarting system with command 'dm-verity device corrupted'",
            "BdsDxe: loading Boot0001 \"UEFI QEMU HARDDISK\"",
        ]);
        let outcome = RestartDetector::new().outcome(&lines(&t));
        let Some(BootOutcome::Restarted { restart, evidence }) = outcome else {
            panic!("not a restart: {outcome:?}");
        };
        assert_eq!(restart.index, 6);
        assert_eq!(evidence.len(), 1);
        assert!(evidence[0].text.contains("data block 0 is corrupted"));
    }

    #[test]
    fn second_kernel_banner_is_a_restart_without_evidence() {
        let mut t = FIRST_BOOT.to_vec();
        t.push("[    0.000000] Linux version 6.12.48+deb13-amd64");
        let outcome = RestartDetector::new().outcome(&lines(&t));
        assert!(
            matches!(&outcome, Some(BootOutcome::Restarted { restart, evidence }) if restart.index == 4 && evidence.is_empty()),
            "{outcome:?}"
        );
    }

    #[test]
    fn unrelated_early_init_failure_is_no_evidence() {
        let mut t = FIRST_BOOT.to_vec();
        t.extend([
            "early-init: FATAL: load module /usr/lib/modules/x/libcrc32c.ko.xz: No such file or directory (os error 2); rebooting",
            "[    9.7] reboot: Restarting system",
            "BdsDxe: loading Boot0001 \"UEFI Misc Device\"",
        ]);
        let outcome = RestartDetector::new().outcome(&lines(&t));
        assert!(
            matches!(&outcome, Some(BootOutcome::Restarted { evidence, .. }) if evidence.is_empty()),
            "{outcome:?}"
        );
        let mut t = FIRST_BOOT.to_vec();
        t.extend([
            "early-init: FATAL: mount /dev/mapper/root on /sysroot: Input/output error (os error 5); rebooting",
            "BdsDxe: loading Boot0001 \"UEFI Misc Device\"",
        ]);
        let outcome = RestartDetector::new().outcome(&lines(&t));
        assert!(
            matches!(&outcome, Some(BootOutcome::Restarted { evidence, .. }) if evidence.len() == 1),
            "{outcome:?}"
        );
    }

    #[test]
    fn multi_user_and_unfinished_boots() {
        let detector = RestartDetector::new();
        assert_eq!(detector.outcome(&lines(&FIRST_BOOT)), None);
        let mut t = FIRST_BOOT.to_vec();
        t.push("[  OK  ] Reached target multi-user.target - Multi-User System.");
        assert!(matches!(
            detector.outcome(&lines(&t)),
            Some(BootOutcome::MultiUser(_))
        ));
    }
}
