//! What the updater learns from the running host when not told: the variant and version from
//! os-release, the running slot from the kernel command line (`berth.slot=`, see
//! docs/boot.md), and the partitions of the disk that holds the running root (from the mounts
//! and sysfs). Reads go through a root folder so tests run on a temp dir.
//!
//! Partitions are resolved on the disk of the running dm-verity root, never by
//! `/dev/disk/by-partlabel` alone: a second disk cloned from the same image (an AMI-derived
//! volume attached for recovery) carries the same partition names, and udev points the label
//! links at whichever disk it saw last.

use std::path::{Path, PathBuf};

use boot_contract::cmdline::{self, CmdlineError};
use boot_contract::Slot;
use semver::Version;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no {key}; pass it with a flag")]
    Missing { path: PathBuf, key: &'static str },
    #[error("{path}: {key}={value:?} is not valid")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
    },
    #[error("{0} is not mounted (no line in /proc/self/mountinfo)")]
    NotMounted(PathBuf),
    #[error("cannot tell which disk holds block device {devno} from {path}")]
    Disk { devno: String, path: PathBuf },
    #[error("the devices under block device {devno} are on several disks ({disks})")]
    SeveralDisks { devno: String, disks: String },
    #[error("disk {disk}, which holds the running root, has no partition named {label}; pass the partition with a flag")]
    NoPartition { disk: String, label: String },
    #[error("{path}: {key} is given twice")]
    Duplicate { path: PathBuf, key: &'static str },
}

fn read(root: &Path, rel: &str) -> Result<(PathBuf, String), HostError> {
    let path = root.join(rel);
    let text = std::fs::read_to_string(&path).map_err(|e| HostError::Read {
        path: path.clone(),
        source: e,
    })?;
    Ok((path, text))
}

/// A key of an os-release file, quotes removed.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_owned())
    })
}

/// `VARIANT_ID` of `<root>/usr/lib/os-release`.
pub fn variant(root: &Path) -> Result<String, HostError> {
    let (path, text) = read(root, "usr/lib/os-release")?;
    os_release_value(&text, "VARIANT_ID").ok_or(HostError::Missing {
        path,
        key: "VARIANT_ID",
    })
}

/// `VERSION_ID` of `<root>/usr/lib/os-release`.
pub fn version(root: &Path) -> Result<Version, HostError> {
    let (path, text) = read(root, "usr/lib/os-release")?;
    let value = os_release_value(&text, "VERSION_ID").ok_or(HostError::Missing {
        path: path.clone(),
        key: "VERSION_ID",
    })?;
    Version::parse(&value).map_err(|_| HostError::Invalid {
        path,
        key: "VERSION_ID",
        value,
    })
}

/// The slot the host runs from (`berth.slot=` of `<root>/proc/cmdline`).
pub fn running_slot(root: &Path) -> Result<Slot, HostError> {
    inactive_slot(root).map(Slot::other)
}

/// The slot the host is not running from (`berth.slot=` of `<root>/proc/cmdline`).
pub fn inactive_slot(root: &Path) -> Result<Slot, HostError> {
    let (path, text) = read(root, "proc/cmdline")?;
    match cmdline::slot(&text) {
        Ok(slot) => Ok(slot.other()),
        Err(CmdlineError::Missing(key)) => Err(HostError::Missing { path, key }),
        Err(CmdlineError::Invalid { key, value, .. }) => {
            Err(HostError::Invalid { path, key, value })
        }
        Err(CmdlineError::Duplicate(key)) => Err(HostError::Duplicate { path, key }),
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the mounted device.
    pub devno: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// The mount table of the updater's own mount namespace.
#[derive(Debug, Clone, Default)]
pub struct Mounts(Vec<Mount>);

impl Mounts {
    pub fn read(root: &Path) -> Result<Mounts, HostError> {
        let (_, text) = read(root, "proc/self/mountinfo")?;
        Ok(Mounts::parse(&text))
    }

    pub fn parse(text: &str) -> Mounts {
        let unescape = |s: &str| {
            s.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        };
        Mounts(
            text.lines()
                .filter_map(|line| {
                    let (before, after) = line.split_once(" - ")?;
                    let fields: Vec<&str> = before.split(' ').collect();
                    let mut after = after.split(' ');
                    Some(Mount {
                        devno: fields.get(2)?.to_string(),
                        mount_point: PathBuf::from(unescape(fields.get(4)?)),
                        fstype: after.next()?.to_string(),
                        source: unescape(after.next()?),
                    })
                })
                .collect(),
        )
    }

    /// The mount on `point` that is visible (the last one mounted there).
    pub fn at(&self, point: &Path) -> Option<&Mount> {
        self.0.iter().rev().find(|m| m.mount_point == point)
    }
}

/// The whole disk that holds block device `devno` (`major:minor`), read from sysfs under
/// `sys`: a partition's parent; for a device-mapper device (the verity root), the disk of the
/// devices under it, which must be one.
pub fn disk_of(sys: &Path, devno: &str) -> Result<String, HostError> {
    let link = sys.join("dev/block").join(devno);
    let dir = std::fs::canonicalize(&link).map_err(|_| HostError::Disk {
        devno: devno.to_owned(),
        path: link.clone(),
    })?;
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    if dir.join("partition").is_file() {
        return dir.parent().and_then(name).ok_or(HostError::Disk {
            devno: devno.to_owned(),
            path: dir.clone(),
        });
    }
    let slaves: Vec<String> = std::fs::read_dir(dir.join("slaves"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        return name(&dir).ok_or(HostError::Disk {
            devno: devno.to_owned(),
            path: dir.clone(),
        });
    }
    let mut disks = std::collections::BTreeSet::new();
    for slave in slaves {
        let dev = std::fs::read_to_string(sys.join("class/block").join(&slave).join("dev"))
            .map_err(|e| HostError::Read {
                path: sys.join("class/block").join(&slave).join("dev"),
                source: e,
            })?;
        disks.insert(disk_of(sys, dev.trim())?);
    }
    match disks.len() {
        1 => Ok(disks.into_iter().next().unwrap_or_default()),
        _ => Err(HostError::SeveralDisks {
            devno: devno.to_owned(),
            disks: disks.into_iter().collect::<Vec<_>>().join(", "),
        }),
    }
}

/// The disk that holds the running root (its dm-verity device's data and hash partitions).
pub fn running_disk(root: &Path) -> Result<String, HostError> {
    let mounts = Mounts::read(root)?;
    let root_mount = mounts
        .at(Path::new("/"))
        .ok_or_else(|| HostError::NotMounted(PathBuf::from("/")))?;
    disk_of(&root.join("sys"), &root_mount.devno)
}

/// The device node of the partition named `label` on `disk` (`/dev/vda4`), from sysfs.
pub fn partition_on(root: &Path, disk: &str, label: &str) -> Result<PathBuf, HostError> {
    let dir = root.join("sys/class/block").join(disk);
    let entries = std::fs::read_dir(&dir).map_err(|e| HostError::Read {
        path: dir.clone(),
        source: e,
    })?;
    for entry in entries.filter_map(|e| e.ok()) {
        let Ok(uevent) = std::fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let value = |key: &str| {
            uevent
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        if value("DEVTYPE").as_deref() == Some("partition")
            && value("PARTNAME").as_deref() == Some(label)
        {
            if let Some(devname) = value("DEVNAME") {
                return Ok(Path::new("/dev").join(devname));
            }
        }
    }
    Err(HostError::NoPartition {
        disk: disk.to_owned(),
        label: label.to_owned(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fake sysfs and mount table under `root`: disks `vda` (the booted one, root-a under
    /// dm-0) and `vdb` (a clone with the same partition names); the ESP of `esp_on` (when
    /// given) mounted on `esp_at` as vfat.
    pub(crate) fn fake_disks(root: &Path, esp_on: Option<&str>, esp_at: &Path) {
        let sys = root.join("sys");
        let layout = [
            (1, "ESP"),
            (2, "root-a"),
            (3, "verity-a"),
            (4, "root-b"),
            (5, "verity-b"),
            (6, "private"),
            (7, "data"),
        ];
        for (disk, major) in [("vda", 253), ("vdb", 252)] {
            let dev = sys.join("devices/pci0000:00/block").join(disk);
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(
                dev.join("uevent"),
                format!("DEVTYPE=disk\nDEVNAME={disk}\n"),
            )
            .unwrap();
            link(&sys, &format!("{major}:0"), &dev, disk);
            for (n, label) in layout {
                let part = dev.join(format!("{disk}{n}"));
                std::fs::create_dir_all(&part).unwrap();
                std::fs::write(part.join("partition"), format!("{n}\n")).unwrap();
                std::fs::write(part.join("dev"), format!("{major}:{n}\n")).unwrap();
                std::fs::write(
                    part.join("uevent"),
                    format!("DEVTYPE=partition\nPARTN={n}\nPARTNAME={label}\nDEVNAME={disk}{n}\n"),
                )
                .unwrap();
                link(&sys, &format!("{major}:{n}"), &part, &format!("{disk}{n}"));
            }
        }
        let dm = sys.join("devices/virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("slaves/vda2")).unwrap();
        std::fs::create_dir_all(dm.join("slaves/vda3")).unwrap();
        link(&sys, "254:0", &dm, "dm-0");
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        let mut mountinfo = "20 1 254:0 / / ro,relatime shared:1 - erofs /dev/mapper/root ro\n\
             30 20 0:25 / /proc rw shared:2 - proc proc rw\n"
            .to_owned();
        if let Some(disk) = esp_on {
            let devno = if disk == "vdb" { "252:1" } else { "253:1" };
            mountinfo.push_str(&format!(
                "60 20 {devno} / {} rw,nosuid shared:9 - vfat /dev/{disk}1 rw,umask=0077\n",
                esp_at.display()
            ));
        }
        std::fs::write(root.join("proc/self/mountinfo"), mountinfo).unwrap();
    }

    fn link(sys: &Path, devno: &str, target: &Path, name: &str) {
        for (dir, link_name) in [("dev/block", devno), ("class/block", name)] {
            let d = sys.join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::os::unix::fs::symlink(target, d.join(link_name)).unwrap();
        }
    }

    #[test]
    fn partitions_come_from_the_disk_of_the_running_root() {
        let dir = tempfile::tempdir().unwrap();
        fake_disks(dir.path(), Some("vda"), Path::new("/boot"));
        assert_eq!(running_disk(dir.path()).unwrap(), "vda");
        assert_eq!(
            partition_on(dir.path(), "vda", "root-b").unwrap(),
            PathBuf::from("/dev/vda4")
        );
        let err = partition_on(dir.path(), "vda", "root-c").unwrap_err();
        assert!(
            err.to_string().contains("no partition named root-c"),
            "{err}"
        );
        let mounts = Mounts::read(dir.path()).unwrap();
        let esp = mounts.at(Path::new("/boot")).unwrap();
        assert_eq!(esp.fstype, "vfat");
        assert_eq!(disk_of(&dir.path().join("sys"), &esp.devno).unwrap(), "vda");
        assert!(mounts.at(Path::new("/private")).is_none());
    }

    #[test]
    fn mount_points_with_spaces_are_unescaped() {
        let m = Mounts::parse("1 0 8:1 / /a\\040b rw - ext4 /dev/sda1 rw\n");
        assert!(m.at(Path::new("/a b")).is_some());
    }

    #[test]
    fn facts_from_a_host_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("usr/lib/os-release"),
            "NAME=Berth\nVERSION_ID=1.2.3\nVARIANT_ID=\"qemu-test\"\n",
        )
        .unwrap();
        std::fs::write(
            root.join("proc/cmdline"),
            "berth.slot=a berth.verity.root=00 console=ttyS0\n",
        )
        .unwrap();
        assert_eq!(variant(root).unwrap(), "qemu-test");
        assert_eq!(version(root).unwrap(), Version::new(1, 2, 3));
        assert_eq!(inactive_slot(root).unwrap(), Slot::B);
        std::fs::write(root.join("proc/cmdline"), "berth.slot=b\n").unwrap();
        assert_eq!(inactive_slot(root).unwrap(), Slot::A);
        std::fs::write(root.join("proc/cmdline"), "root=/dev/sda\n").unwrap();
        let err = inactive_slot(root).unwrap_err().to_string();
        assert!(err.contains("berth.slot"), "{err}");
        std::fs::write(root.join("proc/cmdline"), "berth.slot=c\n").unwrap();
        assert!(inactive_slot(root).is_err());
        std::fs::write(root.join("usr/lib/os-release"), "VERSION_ID=1.2\n").unwrap();
        let err = version(root).unwrap_err().to_string();
        assert!(err.contains("VERSION_ID=\"1.2\""), "{err}");
    }
}
