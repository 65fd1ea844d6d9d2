//! Which platform the host runs on, which decides where user data comes from and which
//! generators ask a metadata service.
//!
//! In order, the first that answers wins:
//! 1. `--platform` (not `auto`);
//! 2. the kernel command line `berth.platform=aws|vmware|qemu|metal` (in a signed UKI, so
//!    fixed per image);
//! 3. QEMU fw_cfg `opt/org.berth/platform` (a test harness tells a QEMU guest what to be);
//! 4. the DMI system vendor (`/sys/class/dmi/id/sys_vendor`): `Amazon EC2` -> aws,
//!    `VMware, Inc.` -> vmware, `QEMU` -> qemu;
//! 5. fw_cfg present (`/sys/firmware/qemu_fw_cfg`) -> qemu;
//! 6. otherwise metal.

use std::path::{Path, PathBuf};

pub const CMDLINE_KEY: &str = "berth.platform";
/// Relative to the host root.
const CMDLINE: &str = "proc/cmdline";
const SYS_VENDOR: &str = "sys/class/dmi/id/sys_vendor";
const FW_CFG_DIR: &str = "sys/firmware/qemu_fw_cfg";
const FW_CFG_PLATFORM: &str = "sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/platform/raw";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Platform {
    /// Amazon EC2: user data and instance facts from IMDSv2.
    Aws,
    /// VMware: user data from guestinfo.
    Vmware,
    /// QEMU: user data from fw_cfg, or a config drive.
    Qemu,
    /// Bare metal: user data from a config drive.
    Metal,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Aws => "aws",
            Platform::Vmware => "vmware",
            Platform::Qemu => "qemu",
            Platform::Metal => "metal",
        }
    }

    fn parse(s: &str) -> Option<Platform> {
        match s.trim() {
            "aws" | "ec2" => Some(Platform::Aws),
            "vmware" => Some(Platform::Vmware),
            "qemu" => Some(Platform::Qemu),
            "metal" => Some(Platform::Metal),
            _ => None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What decided the platform, for the log and the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub platform: Platform,
    pub reason: String,
}

/// Detects the platform from the host tree under `root` (`/` on a host).
pub fn detect(root: &Path) -> Detected {
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).ok();
    if let Some(cmdline) = read(CMDLINE) {
        let value = cmdline
            .split_whitespace()
            .filter_map(|w| w.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))
            .next_back();
        if let Some(value) = value {
            match Platform::parse(value) {
                Some(platform) => {
                    return Detected {
                        platform,
                        reason: format!("kernel command line {CMDLINE_KEY}={value}"),
                    }
                }
                None => tracing::warn!(
                    "ignoring unknown {CMDLINE_KEY}={value} on the kernel command line (aws, vmware, qemu or metal)"
                ),
            }
        }
    }
    if let Some(value) = read(FW_CFG_PLATFORM) {
        if let Some(platform) = Platform::parse(&value) {
            return Detected {
                platform,
                reason: "fw_cfg opt/org.berth/platform".into(),
            };
        }
    }
    if let Some(vendor) = read(SYS_VENDOR) {
        let vendor = vendor.trim();
        let platform = match vendor {
            "Amazon EC2" => Some(Platform::Aws),
            "VMware, Inc." => Some(Platform::Vmware),
            "QEMU" => Some(Platform::Qemu),
            _ => None,
        };
        if let Some(platform) = platform {
            return Detected {
                platform,
                reason: format!("DMI system vendor {vendor:?}"),
            };
        }
    }
    if root.join(FW_CFG_DIR).is_dir() {
        return Detected {
            platform: Platform::Qemu,
            reason: "QEMU fw_cfg present".into(),
        };
    }
    Detected {
        platform: Platform::Metal,
        reason: "no cloud or hypervisor detected".into(),
    }
}

/// `--platform`: `auto` detects, anything else is taken as given.
pub fn choose(given: Option<Platform>, root: &Path) -> Detected {
    match given {
        Some(platform) => Detected {
            platform,
            reason: "--platform".into(),
        },
        None => detect(root),
    }
}

/// A path under the host root.
pub fn under(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn detection_order() {
        let d = host(&[(SYS_VENDOR, "Amazon EC2\n")]);
        assert_eq!(detect(d.path()).platform, Platform::Aws);
        let d = host(&[(SYS_VENDOR, "VMware, Inc.\n")]);
        assert_eq!(detect(d.path()).platform, Platform::Vmware);
        let d = host(&[(SYS_VENDOR, "Dell Inc.\n")]);
        assert_eq!(detect(d.path()).platform, Platform::Metal);
        // fw_cfg without a known vendor: QEMU.
        let d = host(&[
            (SYS_VENDOR, "Dell Inc.\n"),
            ("sys/firmware/qemu_fw_cfg/rev", "3"),
        ]);
        assert_eq!(detect(d.path()).platform, Platform::Qemu);
        // The DMI vendor beats fw_cfg presence (QEMU -smbios type=1,manufacturer=Amazon EC2).
        let d = host(&[
            (SYS_VENDOR, "Amazon EC2\n"),
            ("sys/firmware/qemu_fw_cfg/rev", "3"),
        ]);
        assert_eq!(detect(d.path()).platform, Platform::Aws);
        // The fw_cfg flag beats DMI; the kernel command line beats both.
        let d = host(&[(SYS_VENDOR, "QEMU\n"), (FW_CFG_PLATFORM, "metal")]);
        assert_eq!(detect(d.path()).platform, Platform::Metal);
        let d = host(&[
            (SYS_VENDOR, "Amazon EC2\n"),
            (FW_CFG_PLATFORM, "metal"),
            (CMDLINE, "console=ttyS0 berth.platform=vmware quiet\n"),
        ]);
        let got = detect(d.path());
        assert_eq!(got.platform, Platform::Vmware);
        assert!(got.reason.contains("berth.platform=vmware"), "{got:?}");
        // An unknown value is ignored, not fatal.
        let d = host(&[(CMDLINE, "berth.platform=mars\n"), (SYS_VENDOR, "QEMU\n")]);
        assert_eq!(detect(d.path()).platform, Platform::Qemu);
        assert_eq!(detect(host(&[]).path()).platform, Platform::Metal);
    }

    #[test]
    fn explicit_platform_wins() {
        let d = host(&[(SYS_VENDOR, "Amazon EC2\n")]);
        assert_eq!(
            choose(Some(Platform::Metal), d.path()).platform,
            Platform::Metal
        );
        assert_eq!(choose(None, d.path()).platform, Platform::Aws);
    }
}
