//! The GPT disk: partition layout (computed, golden-tested) and the raw image written from
//! the ESP, root and verity images. Slot B and `data` stay empty; `private` holds only
//! early-init's never-formatted marker: early-init makes the file systems on first boot (and
//! repairs, never formats, a `private` without the marker), the updater fills slot B.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use boot_contract::Partition;
use serde::Serialize;
use uuid::{uuid, Uuid};

use crate::arch::Arch;
use crate::variant::Partitions;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
const ESP_TYPE: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
const LINUX_DATA_TYPE: Uuid = uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4");
/// Namespace for the deterministic disk and partition GUIDs.
const BERTH_NAMESPACE: Uuid = uuid!("6f3c54a4-8a36-4e53-9a5e-62c8d3f3b1a0");

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot write disk image {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the partition table of {path}: {reason}")]
    Gpt { path: PathBuf, reason: String },
    #[error("{what} is {size} bytes but partition `{partition}` holds only {capacity} (raise partitions.{key} in the variant)")]
    TooBig {
        what: PathBuf,
        size: u64,
        partition: &'static str,
        capacity: u64,
        key: &'static str,
    },
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PartitionEntry {
    pub number: u32,
    pub name: &'static str,
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Layout {
    pub disk_guid: Uuid,
    pub size: u64,
    pub partitions: Vec<PartitionEntry>,
}

impl Layout {
    pub fn get(&self, partition: Partition) -> &PartitionEntry {
        self.partitions
            .iter()
            .find(|p| p.name == partition.label())
            .expect("layout has every partition of the contract")
    }
}

/// Partition type and size (MiB) of each partition.
fn type_and_size(arch: Arch, sizes: &Partitions, partition: Partition) -> (Uuid, u64) {
    match partition {
        Partition::Esp => (ESP_TYPE, sizes.esp_mib),
        Partition::Root(_) => (arch.root_type(), sizes.root_mib),
        Partition::Verity(_) => (arch.root_verity_type(), sizes.verity_mib),
        Partition::Private => (LINUX_DATA_TYPE, sizes.private_mib),
        Partition::Data => (LINUX_DATA_TYPE, sizes.data_mib),
    }
}

/// Partition layout for a variant: 1 MiB aligned, in the order of docs/boot.md.
/// GUIDs derive from `identity` (variant, arch, version) so builds are reproducible.
pub fn layout(arch: Arch, sizes: &Partitions, identity: &str) -> Layout {
    let mut offset = MIB;
    let mut partitions = Vec::new();
    for partition in Partition::LAYOUT {
        let (type_guid, mib) = type_and_size(arch, sizes, partition);
        let name = partition.label();
        let size = mib * MIB;
        partitions.push(PartitionEntry {
            number: partition.number(),
            name,
            type_guid,
            guid: Uuid::new_v5(&BERTH_NAMESPACE, format!("{identity}/{name}").as_bytes()),
            first_lba: offset / SECTOR,
            last_lba: (offset + size) / SECTOR - 1,
            offset,
            size,
        });
        offset += size;
    }
    Layout {
        disk_guid: Uuid::new_v5(&BERTH_NAMESPACE, identity.as_bytes()),
        // One more MiB for the backup GPT.
        size: offset + MIB,
        partitions,
    }
}

/// Writes the raw disk: GPT + protective MBR, then each `(partition, image)` copied in.
pub fn write_raw(
    out: &Path,
    layout: &Layout,
    contents: &[(Partition, &Path)],
) -> Result<(), DiskError> {
    let werr = |source| DiskError::Write {
        path: out.to_owned(),
        source,
    };
    for (partition, image) in contents {
        let size = std::fs::metadata(image).map_err(werr)?.len();
        let part = layout.get(*partition);
        if size > part.size {
            return Err(DiskError::TooBig {
                what: image.to_path_buf(),
                size,
                partition: part.name,
                capacity: part.size,
                key: size_key(*partition),
            });
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(werr)?;
    file.set_len(layout.size).map_err(werr)?;
    let gpt_err = |reason: String| DiskError::Gpt {
        path: out.to_owned(),
        reason,
    };
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(layout.size / SECTOR - 1).unwrap_or(u32::MAX),
    );
    let mut file = file;
    mbr.overwrite_lba0(&mut file)
        .map_err(|e| gpt_err(e.to_string()))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(layout.disk_guid))
        .map_err(|e| gpt_err(e.to_string()))?;
    for p in &layout.partitions {
        let part_type = gpt::partition_types::Type {
            guid: p.type_guid,
            os: gpt::partition_types::OperatingSystem::Custom("berth".into()),
        };
        disk.add_partition_at(
            p.name,
            p.number,
            p.first_lba,
            p.last_lba - p.first_lba + 1,
            part_type,
            0,
        )
        .map_err(|e| gpt_err(format!("partition {}: {e}", p.name)))?;
    }
    let mut table = disk.partitions().clone();
    for p in &layout.partitions {
        if let Some(entry) = table.get_mut(&p.number) {
            entry.part_guid = p.guid;
        }
    }
    disk.update_partitions(table)
        .map_err(|e| gpt_err(e.to_string()))?;
    let mut file = disk.write().map_err(|e| gpt_err(e.to_string()))?;

    for (partition, image) in contents {
        let part = layout.get(*partition);
        let mut src = File::open(image).map_err(werr)?;
        file.seek(SeekFrom::Start(part.offset)).map_err(werr)?;
        copy_sparse(&mut src, &mut file).map_err(werr)?;
    }
    file.seek(SeekFrom::Start(layout.get(Partition::Private).offset))
        .map_err(werr)?;
    file.write_all(early_init::storage::NEVER_FORMATTED)
        .map_err(werr)?;
    file.sync_all().map_err(werr)
}

/// Copies `src` to the current position of `dst`, seeking over all-zero blocks so the
/// raw image stays sparse.
fn copy_sparse(src: &mut File, dst: &mut File) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for chunk in buf[..n].chunks(4096) {
            if chunk.iter().all(|&b| b == 0) {
                dst.seek(SeekFrom::Current(chunk.len() as i64))?;
            } else {
                dst.write_all(chunk)?;
            }
        }
    }
}

fn size_key(partition: Partition) -> &'static str {
    match partition {
        Partition::Esp => "esp-mib",
        Partition::Root(_) => "root-mib",
        Partition::Verity(_) => "verity-mib",
        Partition::Private => "private-mib",
        Partition::Data => "data-mib",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boot_contract::Slot;

    fn sizes() -> Partitions {
        Partitions {
            esp_mib: 40,
            root_mib: 8,
            verity_mib: 1,
            private_mib: 2,
            data_mib: 4,
        }
    }

    #[test]
    fn layout_matches_golden() {
        let l = layout(Arch::X86_64, &sizes(), "qemu/x86_64/1.0.0");
        let got = serde_json::to_string_pretty(&l).unwrap();
        let golden =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout-x86_64.json");
        if std::env::var_os("BERTH_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        assert_eq!(
            got,
            std::fs::read_to_string(&golden).unwrap(),
            "run with BERTH_BLESS=1 to update"
        );
    }

    #[test]
    fn raw_disk_has_named_partitions_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(Arch::Aarch64, &sizes(), "t");
        let root = dir.path().join("root.img");
        std::fs::write(&root, vec![0x5au8; 3 * 4096]).unwrap();
        let out = dir.path().join("disk.raw");
        write_raw(&out, &l, &[(Partition::Root(Slot::A), &root)]).unwrap();
        let disk = gpt::GptConfig::new().open(&out).unwrap();
        let names: Vec<_> = disk.partitions().values().map(|p| p.name.clone()).collect();
        assert_eq!(
            names,
            ["ESP", "root-a", "verity-a", "root-b", "verity-b", "private", "data"]
        );
        let root_a = &disk.partitions()[&2];
        assert_eq!(root_a.part_type_guid.guid, Arch::Aarch64.root_type());
        assert_eq!(root_a.part_guid, l.get(Partition::Root(Slot::A)).guid);
        let bytes = std::fs::read(&out).unwrap();
        let at = l.get(Partition::Root(Slot::A)).offset as usize;
        assert_eq!(&bytes[at..at + 3 * 4096], &vec![0x5au8; 3 * 4096][..]);
        // private starts with the marker early-init formats on (first boot only).
        let private = l.get(Partition::Private).offset as usize;
        let marker = early_init::storage::NEVER_FORMATTED;
        assert_eq!(&bytes[private..private + marker.len()], marker);
        // sfdisk, when present, reads the same table.
        if let Ok(o) = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&out)
            .output()
        {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                text.contains("\"name\":\"verity-b\"") || text.contains("\"name\": \"verity-b\""),
                "{text}"
            );
        }
    }

    #[test]
    fn too_big_image_names_the_variant_key() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(Arch::X86_64, &sizes(), "t");
        let big = dir.path().join("big.img");
        File::create(&big).unwrap().set_len(9 * MIB).unwrap();
        let err = write_raw(
            &dir.path().join("d"),
            &l,
            &[(Partition::Root(Slot::A), &big)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("partitions.root-mib"), "{err}");
    }
}
