//! ext4 detection, the first-boot marker of `private`, the first-boot GUIDs of the disk, and the
//! first-boot growth of the `data` partition.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use gpt::disk::LogicalBlockSize;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot read the superblock of {path}")]
    Superblock { path: PathBuf, source: io::Error },
    #[error("cannot read the partition table of {path}")]
    ReadGpt {
        path: PathBuf,
        source: gpt::GptError,
    },
    #[error("cannot write the partition table of {path}")]
    WriteGpt {
        path: PathBuf,
        source: gpt::GptError,
    },
    #[error("partition {name} is not the last partition of {path}; not growing it")]
    NotLast { name: String, path: PathBuf },
    #[error("no partition named {name} in the partition table of {path}")]
    NoPartition { name: String, path: PathBuf },
    #[error("partition entries of {path} are not numbered 1..n; not rewriting the table")]
    Holes { path: PathBuf },
}

/// The first bytes os-build writes on the `private` partition of an image. early-init makes a
/// file system only on a partition that starts with them (the first boot): a partition that
/// merely lacks a valid superblock was made before and is damaged, and is repaired with
/// e2fsck rather than formatted over.
pub const NEVER_FORMATTED: &[u8] = b"BERTH PARTITION NEVER FORMATTED\n";

/// Where e2fsck finds the first backup superblock, by file system block size: block group 1
/// starts at block 32768 (4 KiB blocks), 16384 (2 KiB) or 8193 (1 KiB).
pub const BACKUP_SUPERBLOCKS: [(u64, u64); 3] = [(4096, 32768), (2048, 16384), (1024, 8193)];

/// Whether `dev` starts with [`NEVER_FORMATTED`].
pub fn never_formatted(dev: &Path) -> Result<bool, StorageError> {
    let err = |source| StorageError::Superblock {
        path: dev.to_path_buf(),
        source,
    };
    let mut head = vec![0u8; NEVER_FORMATTED.len()];
    let mut f = File::open(dev).map_err(err)?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(head == NEVER_FORMATTED),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(err(e)),
    }
}

/// Gives `disk` and each of its partitions a new random GUID, as systemd-repart does on first
/// boot: every instance made from one image otherwise shares them, and a second disk cloned
/// from the image (an AMI-derived volume attached for recovery) could not be told from the
/// boot disk. Names, types and extents stay.
pub fn randomize_guids(disk: &Path, lb: LogicalBlockSize) -> Result<uuid::Uuid, StorageError> {
    let read_err = |source| StorageError::ReadGpt {
        path: disk.to_path_buf(),
        source,
    };
    let write_err = |source| StorageError::WriteGpt {
        path: disk.to_path_buf(),
        source,
    };
    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .open(disk)
        .map_err(read_err)?;
    let mut parts = gpt.partitions().clone();
    ensure_packed(&parts, disk)?;
    for p in parts.values_mut().filter(|p| p.is_used()) {
        p.part_guid = uuid::Uuid::new_v4();
    }
    let guid = uuid::Uuid::new_v4();
    gpt.update_guid(Some(guid));
    gpt.update_partitions(parts).map_err(write_err)?;
    let dev = gpt.write().map_err(write_err)?;
    dev.sync_all().map_err(|e| write_err(e.into()))?;
    Ok(guid)
}

/// The gpt crate writes used entries packed from index 0; that keeps the partition numbers
/// only if they already are 1..n, so a table with holes is refused before any write.
fn ensure_packed(
    parts: &std::collections::BTreeMap<u32, gpt::partition::Partition>,
    disk: &Path,
) -> Result<(), StorageError> {
    let used = parts.iter().filter(|(_, p)| p.is_used()).map(|(k, _)| *k);
    if used.enumerate().any(|(i, k)| k as usize != i + 1) {
        return Err(StorageError::Holes {
            path: disk.to_path_buf(),
        });
    }
    Ok(())
}

/// What an ext4 superblock says about size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Info {
    pub block_size: u64,
    pub blocks: u64,
}

const EXT4_MAGIC: u16 = 0xEF53;
const SB_OFFSET: u64 = 1024;
const INCOMPAT_64BIT: u32 = 0x80;

/// Reads the ext2/3/4 superblock of `dev`; `None` when there is no ext file system.
pub fn read_ext4(dev: &Path) -> Result<Option<Ext4Info>, StorageError> {
    let err = |source| StorageError::Superblock {
        path: dev.to_path_buf(),
        source,
    };
    let mut f = File::open(dev).map_err(err)?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(SB_OFFSET)).map_err(err)?;
    match f.read_exact(&mut sb) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    Ok(parse_superblock(&sb))
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Parses a 1024-byte superblock (the bytes at offset 1024 of the device).
pub fn parse_superblock(sb: &[u8; 1024]) -> Option<Ext4Info> {
    if u16::from_le_bytes([sb[56], sb[57]]) != EXT4_MAGIC {
        return None;
    }
    let log = le32(sb, 24);
    if log > 6 {
        return None;
    }
    let block_size = 1024u64 << log;
    let lo = u64::from(le32(sb, 4));
    let hi = if le32(sb, 96) & INCOMPAT_64BIT != 0 {
        u64::from(le32(sb, 0x150))
    } else {
        0
    };
    Some(Ext4Info {
        block_size,
        blocks: (hi << 32) | lo,
    })
}

/// A partition that was grown: where it is now, in bytes, for BLKPG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grown {
    pub partno: u32,
    pub start: u64,
    pub length: u64,
}

/// Moves the backup GPT to the end of `disk` and extends partition `name`, which must be the
/// last one, to the last usable block. `Ok(None)` when the disk did not grow.
pub fn grow_last_partition(
    disk: &Path,
    name: &str,
    lb: LogicalBlockSize,
) -> Result<Option<Grown>, StorageError> {
    let read_err = |source| StorageError::ReadGpt {
        path: disk.to_path_buf(),
        source,
    };
    let write_err = |source| StorageError::WriteGpt {
        path: disk.to_path_buf(),
        source,
    };
    let lb_bytes: u64 = lb.into();
    let mut file = File::open(disk).map_err(|e| read_err(e.into()))?;
    let disk_bytes = file
        .seek(SeekFrom::End(0))
        .map_err(|e| read_err(e.into()))?;
    let last_lba = disk_bytes / lb_bytes - 1;
    drop(file);

    let mut gpt = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .open(disk)
        .map_err(read_err)?;
    let primary = gpt
        .primary_header()
        .map_err(|e| read_err(e.into()))?
        .clone();
    if primary.backup_lba >= last_lba {
        return Ok(None);
    }

    let parts = gpt.partitions().clone();
    ensure_packed(&parts, disk)?;
    let (partno, target) = parts
        .iter()
        .map(|(k, p)| (*k, p.clone()))
        .find(|(_, p)| p.is_used() && p.name == name)
        .ok_or_else(|| StorageError::NoPartition {
            name: name.to_string(),
            path: disk.to_path_buf(),
        })?;
    if parts
        .values()
        .any(|p| p.is_used() && p.last_lba > target.last_lba)
    {
        return Err(StorageError::NotLast {
            name: name.to_string(),
            path: disk.to_path_buf(),
        });
    }

    // Recompute both headers for the new disk size (backup at the last LBA).
    gpt.update_partitions(parts.clone()).map_err(write_err)?;
    let last_usable = gpt.header().last_usable;
    let mut parts = parts;
    let first_lba = target.first_lba;
    if let Some(p) = parts.get_mut(&partno) {
        p.last_lba = last_usable;
    }
    gpt.update_partitions(parts).map_err(write_err)?;
    let mut dev = gpt.write().map_err(write_err)?;
    // Keep the protective MBR covering the whole disk.
    let size_lb = u32::try_from(last_lba).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(size_lb)
        .update_conservative(&mut dev)
        .map_err(|e| write_err(gpt::GptError::Io(io::Error::other(e.to_string()))))?;
    dev.sync_all().map_err(|e| write_err(e.into()))?;

    Ok(Some(Grown {
        partno,
        start: first_lba * lb_bytes,
        length: (last_usable - first_lba + 1) * lb_bytes,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const MIB: u64 = 1024 * 1024;

    /// Makes a GPT image of `size` bytes with the Berth layout (small partitions); partition
    /// i gets GUID `uuid_for(guid_base + i)`.
    pub(crate) fn make_image(path: &Path, size: u64, guid_base: usize) {
        let f = File::create(path).expect("create");
        f.set_len(size).expect("set_len");
        drop(f);
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .create(path)
            .expect("gpt create");
        let mut parts = BTreeMap::new();
        let names = boot_contract::Partition::LAYOUT.map(|p| p.label());
        let mut lba = 2048;
        for (i, name) in names.iter().enumerate() {
            let len = if *name == "data" { 4096 } else { 2048 };
            parts.insert(
                i as u32 + 1,
                gpt::partition::Partition {
                    part_type_guid: gpt::partition_types::LINUX_FS,
                    part_guid: uuid_for(guid_base + i),
                    first_lba: lba,
                    last_lba: lba + len - 1,
                    flags: 0,
                    name: (*name).to_string(),
                },
            );
            lba += len;
        }
        disk.update_partitions(parts).expect("partitions");
        let mut dev = disk.write().expect("write");
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(size / 512 - 1).expect("small"))
            .overwrite_lba0(&mut dev)
            .expect("mbr");
    }

    pub(crate) fn uuid_for(i: usize) -> uuid::Uuid {
        uuid::Uuid::from_u128(0x1234_5678_0000_0000_0000_0000_0000_0000 + i as u128)
    }

    #[test]
    fn grows_data_to_the_new_end_of_the_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.img");
        make_image(&img, 16 * MIB, 0);
        // Same size: nothing to do.
        assert_eq!(
            grow_last_partition(&img, "data", LogicalBlockSize::Lb512).expect("grow"),
            None
        );

        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("open")
            .set_len(64 * MIB)
            .expect("enlarge");
        let grown = grow_last_partition(&img, "data", LogicalBlockSize::Lb512)
            .expect("grow")
            .expect("disk grew");

        let disk = gpt::GptConfig::new()
            .only_valid_headers(true)
            .open(&img)
            .expect("both headers valid");
        let h = disk.header();
        let last_lba = 64 * MIB / 512 - 1;
        assert_eq!(h.backup_lba, last_lba);
        assert_eq!(h.last_usable, last_lba - 33);
        let data = &disk.partitions()[&7];
        assert_eq!(data.name, "data");
        assert_eq!(data.last_lba, h.last_usable);
        assert_eq!(grown.partno, 7);
        assert_eq!(grown.start, data.first_lba * 512);
        assert_eq!(grown.length, (data.last_lba - data.first_lba + 1) * 512);
        // Other partitions are untouched, and the GUIDs kept.
        assert_eq!(disk.partitions()[&2].name, "root-a");
        assert_eq!(disk.partitions()[&2].last_lba, 2048 + 2 * 2048 - 1);
        assert_eq!(disk.partitions()[&6].part_guid, uuid_for(5));

        // Growing again is a no-op.
        assert_eq!(
            grow_last_partition(&img, "data", LogicalBlockSize::Lb512).expect("grow"),
            None
        );
    }

    #[test]
    fn refuses_to_grow_a_partition_that_is_not_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.img");
        make_image(&img, 16 * MIB, 0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("open")
            .set_len(32 * MIB)
            .expect("enlarge");
        let err =
            grow_last_partition(&img, "private", LogicalBlockSize::Lb512).expect_err("not last");
        assert!(matches!(err, StorageError::NotLast { .. }), "{err}");
    }

    #[test]
    fn randomized_guids_are_new_and_the_layout_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("disk.img");
        make_image(&img, 16 * MIB, 0);
        let before = gpt::GptConfig::new().open(&img).expect("open");
        let guid = randomize_guids(&img, LogicalBlockSize::Lb512).expect("randomize");
        let after = gpt::GptConfig::new()
            .only_valid_headers(true)
            .open(&img)
            .expect("both headers valid");
        assert_eq!(after.guid(), &guid);
        assert_ne!(before.guid(), after.guid());
        for (n, p) in before.partitions() {
            let q = &after.partitions()[n];
            assert_ne!(p.part_guid, q.part_guid, "partition {n} kept its GUID");
            assert_eq!(
                (&p.name, p.first_lba, p.last_lba, &p.part_type_guid),
                (&q.name, q.first_lba, q.last_lba, &q.part_type_guid)
            );
        }
    }

    #[test]
    fn the_never_formatted_marker_is_read_from_the_first_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("private");
        let mut bytes = NEVER_FORMATTED.to_vec();
        bytes.resize(1 << 20, 0);
        std::fs::write(&p, &bytes).expect("write");
        assert!(never_formatted(&p).expect("read"));
        std::fs::write(&p, vec![0u8; 1 << 20]).expect("write");
        assert!(
            !never_formatted(&p).expect("read"),
            "zeros are not the marker"
        );
        std::fs::write(&p, b"BERTH").expect("write");
        assert!(!never_formatted(&p).expect("short"));
    }

    #[test]
    fn superblock_parsing() {
        let mut sb = [0u8; 1024];
        assert_eq!(parse_superblock(&sb), None);
        sb[56] = 0x53;
        sb[57] = 0xEF;
        sb[24] = 2; // 4096-byte blocks
        sb[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            parse_superblock(&sb),
            Some(Ext4Info {
                block_size: 4096,
                blocks: 1000
            })
        );
        sb[96] = 0x80; // 64bit
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            parse_superblock(&sb).map(|i| i.blocks),
            Some((1 << 32) + 1000)
        );
    }

    #[test]
    fn read_ext4_on_a_zeroed_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("blank");
        std::fs::write(&p, vec![0u8; 4096]).expect("write");
        assert_eq!(read_ext4(&p).expect("read"), None);
        std::fs::write(&p, vec![0u8; 100]).expect("write");
        assert_eq!(read_ext4(&p).expect("short"), None);
    }
}
