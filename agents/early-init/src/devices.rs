//! Finding the slot's partitions by GPT partition name in sysfs.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boot_contract::efi;
use boot_contract::{Partition, Slot};

#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    #[error("cannot list block devices in {path}")]
    List { path: PathBuf, source: io::Error },
    #[error("partition {name} found on several disks ({disks}) and the boot disk cannot be told apart; detach the extra disks")]
    Ambiguous { name: String, disks: String },
    #[error("no partition named {missing} appeared within {secs} s (block devices seen: {seen})")]
    Timeout {
        missing: String,
        secs: u64,
        seen: String,
    },
}

/// One block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name, e.g. `vda2`; the node is `/dev/<name>`.
    pub name: String,
    /// Whole disk this is a partition of, e.g. `vda` (the device itself for a disk).
    pub disk: String,
    /// Partition number, for partitions.
    pub partno: Option<u32>,
    /// GPT partition name, for partitions that have one.
    pub partname: Option<String>,
    pub major: u32,
    pub minor: u32,
}

impl BlockDev {
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }
    pub fn devno(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// The slot's partitions, all on one disk, and that disk's ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDisk {
    pub disk: String,
    pub esp: BlockDev,
    pub root: BlockDev,
    pub verity: BlockDev,
    pub private: BlockDev,
    pub data: BlockDev,
}

/// The disk the firmware booted from, known by the partition GUID of its ESP that
/// systemd-boot stores in the EFI variable `LoaderDevicePartUUID`.
#[derive(Debug, Default)]
pub struct BootDisk {
    pub esp_guid: Option<uuid::Uuid>,
    /// Answers per disk name, so each disk's GPT is read once.
    seen: BTreeMap<String, bool>,
}

impl BootDisk {
    /// Reads `LoaderDevicePartUUID` from efivarfs under `root`.
    pub fn from_efivars(root: &Path) -> Self {
        let esp_guid = efi::LOADER_DEVICE_PART_UUID
            .read_string(root)
            .and_then(|s| uuid::Uuid::parse_str(s.trim()).ok());
        Self {
            esp_guid,
            seen: BTreeMap::new(),
        }
    }

    /// Does `disk`'s partition table hold the ESP the firmware booted from?
    pub fn holds_esp(&mut self, root: &Path, disk: &str) -> bool {
        let Some(guid) = self.esp_guid else {
            return false;
        };
        *self.seen.entry(disk.to_string()).or_insert_with(|| {
            gpt::GptConfig::new()
                .open(root.join("dev").join(disk))
                .map(|g| g.partitions().values().any(|p| p.part_guid == guid))
                .unwrap_or(false)
        })
    }
}

/// Parses a sysfs `uevent` file into key/value pairs.
pub fn parse_uevent(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Lists the block devices under `<sys>/class/block`.
pub fn scan(sys: &Path) -> Result<Vec<BlockDev>, DevicesError> {
    let dir = sys.join("class/block");
    let list_err = |source| DevicesError::List {
        path: dir.clone(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        // A device may vanish between readdir and read; skip it.
        let Ok(text) = std::fs::read_to_string(entry.path().join("uevent")) else {
            continue;
        };
        let ev = parse_uevent(&text);
        let Some(name) = ev.get("DEVNAME").cloned() else {
            continue;
        };
        let num = |k: &str| ev.get(k).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
        let is_part = ev.get("DEVTYPE").map(String::as_str) == Some("partition");
        let disk = if is_part {
            std::fs::canonicalize(entry.path())
                .ok()
                .and_then(|p| {
                    p.parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                })
                .unwrap_or_default()
        } else {
            name.clone()
        };
        out.push(BlockDev {
            partno: is_part.then(|| num("PARTN")),
            partname: ev.get("PARTNAME").cloned(),
            major: num("MAJOR"),
            minor: num("MINOR"),
            name,
            disk,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Picks the slot's partitions out of `devs`. `Ok(Err(missing))` names what is not there yet.
///
/// When several disks carry the slot's root partition, `is_boot_disk` picks the one the
/// firmware booted from (see [`BootDisk`]).
pub fn select(
    devs: &[BlockDev],
    slot: Slot,
    is_boot_disk: &mut dyn FnMut(&str) -> bool,
) -> Result<Result<SlotDisk, String>, DevicesError> {
    let root_name = Partition::Root(slot).label();
    let mut roots: Vec<&BlockDev> = devs
        .iter()
        .filter(|d| d.partno.is_some() && d.partname.as_deref() == Some(root_name))
        .collect();
    if roots.len() > 1 {
        let booted: Vec<&BlockDev> = roots
            .iter()
            .copied()
            .filter(|d| is_boot_disk(&d.disk))
            .collect();
        if booted.len() == 1 {
            roots = booted;
        }
    }
    let root = match roots.as_slice() {
        [] => return Ok(Err(root_name.to_owned())),
        [one] => (*one).clone(),
        many => {
            return Err(DevicesError::Ambiguous {
                name: root_name.to_owned(),
                disks: many
                    .iter()
                    .map(|d| d.disk.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let on_disk = |partition: Partition| {
        let partname = partition.label();
        devs.iter()
            .find(|d| {
                d.disk == root.disk && d.partno.is_some() && d.partname.as_deref() == Some(partname)
            })
            .cloned()
            .ok_or_else(|| partname.to_string())
    };
    let found = (|| {
        Ok(SlotDisk {
            disk: root.disk.clone(),
            esp: on_disk(Partition::Esp)?,
            verity: on_disk(Partition::Verity(slot))?,
            private: on_disk(Partition::Private)?,
            data: on_disk(Partition::Data)?,
            root: root.clone(),
        })
    })();
    Ok(found)
}

/// Waits until the slot's partitions and their device nodes exist, or the deadline passes.
pub fn wait_for_slot(
    root: &Path,
    slot: Slot,
    timeout: Duration,
    boot_disk: &mut BootDisk,
) -> Result<SlotDisk, DevicesError> {
    let start = Instant::now();
    loop {
        let devs = scan(&root.join("sys"))?;
        let missing = match select(&devs, slot, &mut |disk| boot_disk.holds_esp(root, disk))? {
            Ok(found) => {
                let nodes = [
                    &found.esp,
                    &found.root,
                    &found.verity,
                    &found.private,
                    &found.data,
                ]
                .map(|d| root.join("dev").join(&d.name));
                match nodes.iter().find(|n| !n.exists()) {
                    None => return Ok(found),
                    Some(n) => n.display().to_string(),
                }
            }
            Err(missing) => missing,
        };
        if start.elapsed() >= timeout {
            let seen: Vec<String> = devs
                .iter()
                .map(|d| match &d.partname {
                    Some(p) => format!("{}({p})", d.name),
                    None => d.name.clone(),
                })
                .collect();
            return Err(DevicesError::Timeout {
                missing,
                secs: timeout.as_secs(),
                seen: if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(" ")
                },
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a sysfs-like tree with disk `disk` and partitions `(number, name)`.
    pub(crate) fn fake_disk(root: &Path, disk: &str, major: u32, parts: &[(u32, &str)]) {
        let dev = root.join("sys/devices/virtual/block").join(disk);
        let class = root.join("sys/class/block");
        std::fs::create_dir_all(&dev).expect("mkdir");
        std::fs::create_dir_all(&class).expect("mkdir");
        std::fs::create_dir_all(root.join("dev")).expect("mkdir");
        std::fs::write(
            dev.join("uevent"),
            format!("MAJOR={major}\nMINOR=0\nDEVNAME={disk}\nDEVTYPE=disk\n"),
        )
        .expect("write");
        std::os::unix::fs::symlink(&dev, class.join(disk)).expect("symlink");
        std::fs::write(root.join("dev").join(disk), "").expect("node");
        for (n, name) in parts {
            let pname = format!("{disk}{n}");
            let p = dev.join(&pname);
            std::fs::create_dir_all(&p).expect("mkdir");
            std::fs::write(
                p.join("uevent"),
                format!("MAJOR={major}\nMINOR={n}\nDEVNAME={pname}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={name}\n"),
            )
            .expect("write");
            std::os::unix::fs::symlink(&p, class.join(&pname)).expect("symlink");
            std::fs::write(root.join("dev").join(&pname), "").expect("node");
        }
    }

    /// Every partition of the contract, `(number, GPT name)`, in disk order.
    pub(crate) fn layout() -> [(u32, &'static str); 7] {
        Partition::LAYOUT.map(|p| (p.number(), p.label()))
    }

    #[test]
    fn finds_the_slot_partitions_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_disk(dir.path(), "vda", 254, &layout());
        fake_disk(dir.path(), "vdb", 253, &[(1, "other")]);
        let found = wait_for_slot(
            dir.path(),
            Slot::B,
            Duration::from_secs(1),
            &mut BootDisk::default(),
        )
        .expect("found");
        assert_eq!(found.disk, "vda");
        assert_eq!(found.esp.name, "vda1");
        assert_eq!(found.root.name, "vda4");
        assert_eq!(found.verity.name, "vda5");
        assert_eq!(found.private.name, "vda6");
        assert_eq!(found.data.name, "vda7");
        assert_eq!(found.data.partno, Some(7));
        assert_eq!(found.root.devno(), "254:4");
    }

    #[test]
    fn times_out_naming_the_missing_partition() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_disk(dir.path(), "vda", 254, &layout()[..5]);
        let err = wait_for_slot(
            dir.path(),
            Slot::A,
            Duration::from_millis(100),
            &mut BootDisk::default(),
        )
        .expect_err("no private");
        let msg = err.to_string();
        assert!(
            msg.starts_with("no partition named private appeared"),
            "{msg}"
        );
        assert!(msg.contains("vda2(root-a)"), "{msg}");
    }

    #[test]
    fn partitions_on_another_disk_do_not_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_disk(dir.path(), "vda", 254, &layout()[..5]);
        fake_disk(dir.path(), "vdb", 253, &[(1, "private"), (2, "data")]);
        let devs = scan(&dir.path().join("sys")).expect("scan");
        assert_eq!(
            select(&devs, Slot::A, &mut |_| false).expect("no error"),
            Err("private".to_string())
        );
    }

    #[test]
    fn the_boot_disk_is_found_by_its_esp_guid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fake_disk(root, "vda", 254, &layout());
        fake_disk(root, "vdb", 253, &layout());
        crate::storage::tests::make_image(&root.join("dev/vda"), 16 << 20, 0x10);
        crate::storage::tests::make_image(&root.join("dev/vdb"), 16 << 20, 0x20);
        let esp = crate::storage::tests::uuid_for(0x20); // ESP of vdb
        let vars = root.join(efi::EFIVARS_DIR);
        std::fs::create_dir_all(&vars).expect("mkdir");
        std::fs::write(
            efi::LOADER_DEVICE_PART_UUID.path(root),
            efi::encode_string(&esp.to_string().to_uppercase()),
        )
        .expect("write");

        let mut boot_disk = BootDisk::from_efivars(root);
        assert_eq!(boot_disk.esp_guid, Some(esp));
        assert!(!boot_disk.holds_esp(root, "vda"));
        assert!(boot_disk.holds_esp(root, "vdb"));
        let found =
            wait_for_slot(root, Slot::A, Duration::from_secs(1), &mut boot_disk).expect("found");
        assert_eq!(found.root.name, "vdb2");
        // Without the variable the two disks are ambiguous.
        let err = wait_for_slot(
            root,
            Slot::A,
            Duration::from_secs(1),
            &mut BootDisk::default(),
        )
        .expect_err("ambiguous");
        assert!(err.to_string().contains("(vda, vdb)"), "{err}");
    }

    #[test]
    fn two_disks_with_the_slot_are_ambiguous() {
        let dir = tempfile::tempdir().expect("tempdir");
        fake_disk(dir.path(), "vda", 254, &layout());
        fake_disk(dir.path(), "vdb", 253, &layout());
        let devs = scan(&dir.path().join("sys")).expect("scan");
        assert!(matches!(
            select(&devs, Slot::A, &mut |_| false),
            Err(DevicesError::Ambiguous { .. })
        ));
        let found = select(&devs, Slot::A, &mut |d| d == "vdb")
            .expect("no error")
            .expect("found");
        assert_eq!(found.disk, "vdb");
        assert_eq!(found.data.name, "vdb7");
    }
}
