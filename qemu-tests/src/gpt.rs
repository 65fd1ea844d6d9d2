//! Reads the partition table of a raw disk image, so that tests find a partition's bytes
//! the way the firmware and early-init do: by GPT partition name.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("read the partition table of {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} has no GPT header at LBA 1 (sector size 512 or 4096)")]
    NoHeader { path: PathBuf },
    #[error("{path} has a GPT header with an entry size of {size} bytes")]
    EntrySize { path: PathBuf, size: u32 },
    #[error("{path} has no partition named {name}; it has: {names}")]
    NotFound {
        path: PathBuf,
        name: String,
        names: String,
    },
}

/// One used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as Linux numbers partitions.
    pub number: u32,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub sector_size: u64,
}

impl Partition {
    /// Byte offset of the partition on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * self.sector_size
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The used partitions of the disk image at `path`, in table order.
pub fn partitions(path: &Path) -> Result<Vec<Partition>, GptError> {
    let read_err = |source| GptError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut header = [0u8; 92];
    let mut sector_size = 0;
    for size in [512u64, 4096] {
        file.seek(SeekFrom::Start(size)).map_err(read_err)?;
        if file.read_exact(&mut header).is_ok() && &header[..8] == b"EFI PART" {
            sector_size = size;
            break;
        }
    }
    if sector_size == 0 {
        return Err(GptError::NoHeader {
            path: path.to_owned(),
        });
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_size = u32_at(&header, 84);
    if !(128..=4096).contains(&entry_size) {
        return Err(GptError::EntrySize {
            path: path.to_owned(),
            size: entry_size,
        });
    }
    let mut table = vec![0u8; count as usize * entry_size as usize];
    file.seek(SeekFrom::Start(entries_lba * sector_size))
        .map_err(read_err)?;
    file.read_exact(&mut table).map_err(read_err)?;
    let mut out = Vec::new();
    for (i, entry) in table.chunks_exact(entry_size as usize).enumerate() {
        if entry[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        out.push(Partition {
            number: u32::try_from(i + 1).unwrap_or(u32::MAX),
            name: String::from_utf16_lossy(&name),
            first_lba: u64_at(entry, 32),
            last_lba: u64_at(entry, 40),
            sector_size,
        });
    }
    Ok(out)
}

/// The partition of the contract's `role`, by its GPT partition name (e.g. `root-a`).
pub fn find(path: &Path, role: boot_contract::Partition) -> Result<Partition, GptError> {
    let name = role.label();
    let all = partitions(path)?;
    let names = all
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    all.iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| GptError::NotFound {
            path: path.to_owned(),
            name: name.to_owned(),
            names,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use boot_contract::{Partition as Role, Slot};
    use std::io::Write;

    /// Writes a minimal GPT (header + entries, no CRCs: the reader does not check them)
    /// with the given (name, first, last) partitions.
    pub(crate) fn write_gpt(path: &Path, parts: &[(&str, u64, u64)]) -> anyhow::Result<()> {
        let mut disk = vec![0u8; 512 * 64];
        disk[512..520].copy_from_slice(b"EFI PART");
        disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = 1024 + i * 128;
            disk[e] = 0xaf; // any non-zero type GUID
            disk[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            disk[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in name.encode_utf16().enumerate() {
                disk[e + 56 + 2 * j..e + 58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
        }
        File::create(path)?.write_all(&disk)?;
        Ok(())
    }

    #[test]
    fn finds_partitions_by_name() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let disk = dir.path().join("disk.raw");
        write_gpt(&disk, &[("ESP", 2048, 4095), ("root-a", 4096, 8191)])?;
        let root = find(&disk, Role::Root(Slot::A))?;
        assert_eq!(root.number, 2);
        assert_eq!(root.offset(), 4096 * 512);
        assert_eq!(root.size(), 4096 * 512);
        let err = find(&disk, Role::Root(Slot::B)).expect_err("absent");
        assert!(err
            .to_string()
            .ends_with("no partition named root-b; it has: ESP, root-a"));
        Ok(())
    }

    #[test]
    fn refuses_a_disk_without_gpt() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let disk = dir.path().join("blank.raw");
        std::fs::write(&disk, vec![0u8; 8192])?;
        assert!(matches!(partitions(&disk), Err(GptError::NoHeader { .. })));
        Ok(())
    }
}
