//! User data from a config drive, for bare metal (and QEMU without fw_cfg user data): a
//! vfat or iso9660 file system labelled `CIDATA`/`cidata` (NoCloud; file `user-data`) or
//! `config-2` (OpenStack; file `openstack/latest/user_data`).
//!
//! The device is found by label: first `/dev/disk/by-label/` (udev), then, since udev may not
//! have processed every disk yet so early, by reading the label straight from each block
//! device in `/sys/class/block` (iso9660 volume id, FAT boot sector), without blkid. It is
//! mounted read-only (nodev, nosuid, noexec) on a folder under `/run`, read, and unmounted.
//! The kernel loads `vfat`/`iso9660` and the code pages on demand (`fs-*` module aliases); the
//! variants keep those modules (variants/shared/base.toml).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Labels and the user data file inside, in the order they are looked for.
pub const LABELS: [(&str, &str); 3] = [
    ("CIDATA", "user-data"),
    ("cidata", "user-data"),
    ("config-2", "openstack/latest/user_data"),
];
/// Where the drive is mounted while it is read.
pub const MOUNT_POINT: &str = "/run/boot-config/config-drive";

#[derive(Debug, thiserror::Error)]
pub enum ConfigDriveError {
    #[error("cannot create the mount point {0}")]
    MountPoint(PathBuf, #[source] std::io::Error),
    #[error("cannot mount config drive {device} ({label}) read-only")]
    Mount {
        device: PathBuf,
        label: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path} on config drive {device}")]
    Read {
        device: PathBuf,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// File system types of a config drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsType {
    Iso9660,
    Vfat,
}

impl FsType {
    pub fn name(self) -> &'static str {
        match self {
            FsType::Iso9660 => "iso9660",
            FsType::Vfat => "vfat",
        }
    }
}

/// Mounting, behind a trait so that tests need no privileges.
pub trait Mounter {
    fn mount(&self, device: &Path, fs: FsType, target: &Path) -> std::io::Result<()>;
    fn unmount(&self, target: &Path) -> std::io::Result<()>;
}

/// The real thing: mount(2) read-only, umount(2).
#[derive(Debug, Default)]
pub struct SysMounter;

impl Mounter for SysMounter {
    fn mount(&self, device: &Path, fs: FsType, target: &Path) -> std::io::Result<()> {
        use rustix::mount::MountFlags;
        let flags =
            MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
        rustix::mount::mount(device, target, fs.name(), flags, c"")?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> std::io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty())?;
        Ok(())
    }
}

/// A config drive found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub device: PathBuf,
    pub label: String,
    /// The user data file inside.
    pub file: &'static str,
    /// Known when the label was read from the device; tried in turn otherwise.
    pub fs: Option<FsType>,
}

/// Finds a config drive under the host root `root`.
pub fn find(root: &Path) -> Option<Found> {
    for (label, file) in LABELS {
        let link = root.join("dev/disk/by-label").join(label);
        if let Ok(device) = std::fs::canonicalize(&link) {
            return Some(Found {
                device,
                label: label.to_string(),
                file,
                fs: None,
            });
        }
    }
    scan(root)
}

/// Reads the label of every block device in `/sys/class/block`.
fn scan(root: &Path) -> Option<Found> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/block"))
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("dm-"))
        .collect();
    names.sort();
    for name in names {
        let device = root.join("dev").join(&name);
        let Ok(mut f) = std::fs::File::open(&device) else {
            continue;
        };
        let Some((fs, label)) = read_label(&mut f) else {
            continue;
        };
        if let Some((label, file)) = LABELS.iter().find(|(l, _)| *l == label) {
            return Some(Found {
                device,
                label: label.to_string(),
                file,
                fs: Some(fs),
            });
        }
    }
    None
}

/// The label of an iso9660 or FAT file system at the start of `dev`.
pub fn read_label(dev: &mut (impl Read + Seek)) -> Option<(FsType, String)> {
    // iso9660: primary volume descriptor in sector 16 (2048-byte sectors): type 1, "CD001",
    // volume identifier at byte 40, 32 characters padded with spaces.
    let mut pvd = [0u8; 72];
    if dev.seek(SeekFrom::Start(16 * 2048)).is_ok()
        && dev.read_exact(&mut pvd).is_ok()
        && pvd[0] == 1
        && &pvd[1..6] == b"CD001"
    {
        return Some((FsType::Iso9660, trim_label(&pvd[40..72])));
    }
    // FAT: boot sector signature 0x55AA; FAT32 has "FAT32   " at 82 and the label at 71,
    // FAT12/16 "FAT" at 54 and the label at 43 (11 characters each, padded with spaces).
    let mut boot = [0u8; 512];
    dev.seek(SeekFrom::Start(0)).ok()?;
    dev.read_exact(&mut boot).ok()?;
    if boot[510..512] != [0x55, 0xAA] {
        return None;
    }
    if &boot[82..87] == b"FAT32" {
        return Some((FsType::Vfat, trim_label(&boot[71..82])));
    }
    if &boot[54..57] == b"FAT" {
        return Some((FsType::Vfat, trim_label(&boot[43..54])));
    }
    None
}

fn trim_label(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// Mounts `found` read-only on `mount_point`, reads its user data file and unmounts it.
/// `None` when the drive has no user data file.
pub fn read_user_data(
    found: &Found,
    mounter: &dyn Mounter,
    mount_point: &Path,
) -> Result<Option<Vec<u8>>, ConfigDriveError> {
    std::fs::create_dir_all(mount_point)
        .map_err(|e| ConfigDriveError::MountPoint(mount_point.to_owned(), e))?;
    let kinds = match found.fs {
        Some(fs) => vec![fs],
        None => vec![FsType::Iso9660, FsType::Vfat],
    };
    let mut last = None;
    let mut mounted = false;
    for fs in kinds {
        match mounter.mount(&found.device, fs, mount_point) {
            Ok(()) => {
                mounted = true;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if !mounted {
        return Err(ConfigDriveError::Mount {
            device: found.device.clone(),
            label: found.label.clone(),
            source: last.unwrap_or_else(|| std::io::Error::other("no file system type to try")),
        });
    }
    let path = mount_point.join(found.file);
    let result = match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigDriveError::Read {
            device: found.device.clone(),
            path: found.file.to_string(),
            source,
        }),
    };
    if let Err(e) = mounter.unmount(mount_point) {
        tracing::warn!(mount_point = %mount_point.display(), "cannot unmount the config drive: {e}");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::io::Cursor;

    fn iso_with_label(label: &str) -> Vec<u8> {
        let mut img = vec![0u8; 17 * 2048];
        let pvd = &mut img[16 * 2048..];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        let padded = format!("{label:<32}");
        pvd[40..72].copy_from_slice(padded.as_bytes());
        img
    }

    fn fat_with_label(label: &str, fat32: bool) -> Vec<u8> {
        let mut img = vec![0u8; 40 * 1024];
        img[510] = 0x55;
        img[511] = 0xAA;
        let padded = format!("{label:<11}");
        if fat32 {
            img[71..82].copy_from_slice(padded.as_bytes());
            img[82..90].copy_from_slice(b"FAT32   ");
        } else {
            img[43..54].copy_from_slice(padded.as_bytes());
            img[54..62].copy_from_slice(b"FAT16   ");
        }
        img
    }

    #[test]
    fn reads_labels_without_blkid() {
        let got = read_label(&mut Cursor::new(iso_with_label("cidata")));
        assert_eq!(got, Some((FsType::Iso9660, "cidata".into())));
        let got = read_label(&mut Cursor::new(fat_with_label("CIDATA", true)));
        assert_eq!(got, Some((FsType::Vfat, "CIDATA".into())));
        let got = read_label(&mut Cursor::new(fat_with_label("config-2", false)));
        assert_eq!(got, Some((FsType::Vfat, "config-2".into())));
        assert_eq!(read_label(&mut Cursor::new(vec![0u8; 64 * 1024])), None);
        assert_eq!(read_label(&mut Cursor::new(vec![0u8; 100])), None);
    }

    #[test]
    fn finds_by_label_link_then_by_scanning() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(find(root), None);
        // Scanning: vda has no label, vdb is a NoCloud iso.
        std::fs::create_dir_all(root.join("sys/class/block/vda")).unwrap();
        std::fs::create_dir_all(root.join("sys/class/block/vdb")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/vda"), vec![0u8; 40 * 1024]).unwrap();
        std::fs::write(root.join("dev/vdb"), iso_with_label("cidata")).unwrap();
        let found = find(root).unwrap();
        assert_eq!(found.device, root.join("dev/vdb"));
        assert_eq!((found.label.as_str(), found.file), ("cidata", "user-data"));
        assert_eq!(found.fs, Some(FsType::Iso9660));
        // A udev link wins.
        std::fs::create_dir_all(root.join("dev/disk/by-label")).unwrap();
        std::fs::write(root.join("dev/vdc"), fat_with_label("config-2", true)).unwrap();
        std::os::unix::fs::symlink("../../vdc", root.join("dev/disk/by-label/config-2")).unwrap();
        let found = find(root).unwrap();
        assert_eq!(found.file, "openstack/latest/user_data");
        assert_eq!(found.fs, None);
        assert_eq!(found.device, root.join("dev/vdc").canonicalize().unwrap());
    }

    /// "Mounts" by copying a folder, records what was asked.
    struct FakeMounter {
        content: PathBuf,
        accept: FsType,
        calls: RefCell<Vec<String>>,
    }

    impl Mounter for FakeMounter {
        fn mount(&self, device: &Path, fs: FsType, target: &Path) -> std::io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("mount {} {}", device.display(), fs.name()));
            if fs != self.accept {
                return Err(std::io::Error::from_raw_os_error(22));
            }
            for entry in walk(&self.content) {
                let rel = entry.strip_prefix(&self.content).unwrap();
                let to = target.join(rel);
                std::fs::create_dir_all(to.parent().unwrap())?;
                std::fs::copy(&entry, to)?;
            }
            Ok(())
        }

        fn unmount(&self, target: &Path) -> std::io::Result<()> {
            self.calls.borrow_mut().push("unmount".into());
            std::fs::remove_dir_all(target)?;
            std::fs::create_dir(target)
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn mounts_reads_and_unmounts() {
        let dir = tempfile::tempdir().unwrap();
        let content = dir.path().join("drive");
        std::fs::create_dir_all(content.join("openstack/latest")).unwrap();
        std::fs::write(
            content.join("openstack/latest/user_data"),
            "[settings]\nmotd = \"m\"\n",
        )
        .unwrap();
        let mounter = FakeMounter {
            content,
            accept: FsType::Vfat,
            calls: RefCell::new(vec![]),
        };
        let found = Found {
            device: "/dev/sr0".into(),
            label: "config-2".into(),
            file: "openstack/latest/user_data",
            fs: None,
        };
        let mp = dir.path().join("mnt");
        let got = read_user_data(&found, &mounter, &mp).unwrap();
        assert_eq!(got.unwrap(), b"[settings]\nmotd = \"m\"\n");
        assert_eq!(
            *mounter.calls.borrow(),
            ["mount /dev/sr0 iso9660", "mount /dev/sr0 vfat", "unmount"]
        );
        // A drive without the file: no user data, still unmounted.
        let nocloud = Found {
            label: "cidata".into(),
            file: "user-data",
            fs: Some(FsType::Vfat),
            ..found
        };
        mounter.calls.borrow_mut().clear();
        assert_eq!(read_user_data(&nocloud, &mounter, &mp).unwrap(), None);
        assert_eq!(*mounter.calls.borrow(), ["mount /dev/sr0 vfat", "unmount"]);
    }
}
