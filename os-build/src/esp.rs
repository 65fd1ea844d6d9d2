//! The EFI system partition: a FAT32 image with systemd-boot, its loader.conf and the
//! slot's UKI, written with the `fatfs` crate (no mount, no mtools).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use crate::arch::Arch;

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("cannot create ESP image {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {file} into the ESP image {path}")]
    Write {
        path: PathBuf,
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Fixed timestamps keep the image reproducible.
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}
static FIXED_TIME: FixedTime = FixedTime;

/// systemd-boot settings: boot the default entry at once, no editor (the command line is
/// part of the verified chain).
pub const LOADER_CONF: &str = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n";

/// Where os-build puts slot A's UKI on a new image: with boot tries, named as the updater
/// names the UKIs it installs (docs/boot.md).
pub fn initial_uki_path(version: &str) -> String {
    boot_contract::UkiName::fresh(version).esp_path()
}

#[derive(Debug)]
pub struct EspContent<'a> {
    pub arch: Arch,
    pub systemd_boot: &'a [u8],
    /// Files to add, by path on the ESP.
    pub files: Vec<(String, &'a [u8])>,
}

/// Writes a FAT32 image of `size_mib` with systemd-boot at the removable-media path and
/// the given files.
pub fn build(out: &Path, size_mib: u64, content: &EspContent<'_>) -> Result<(), EspError> {
    let create = |source| EspError::Create {
        path: out.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(create)?;
    file.set_len(size_mib << 20).map_err(create)?;
    fatfs::format_volume(
        &file,
        FormatVolumeOptions::new()
            .fat_type(FatType::Fat32)
            .bytes_per_cluster(512)
            .volume_id(0x4245_5254) // "BERT"
            .volume_label(*b"ESP        "),
    )
    .map_err(create)?;
    let fs = FileSystem::new(&file, FsOptions::new().time_provider(&FIXED_TIME)).map_err(create)?;
    let root = fs.root_dir();
    let suffix = content.arch.efi_suffix();
    let boot_name = format!("EFI/BOOT/BOOT{}.EFI", suffix.to_uppercase());
    let own_name = format!("EFI/systemd/systemd-boot{suffix}.efi");
    let mut files: Vec<(String, &[u8])> = vec![
        (boot_name, content.systemd_boot),
        (own_name, content.systemd_boot),
        ("loader/loader.conf".into(), LOADER_CONF.as_bytes()),
    ];
    files.extend(content.files.iter().map(|(p, d)| (p.clone(), *d)));
    for dir in [
        "EFI",
        "EFI/BOOT",
        "EFI/systemd",
        boot_contract::uki::DIR,
        "loader",
        "loader/entries",
    ] {
        root.create_dir(dir).map_err(|source| EspError::Write {
            path: out.to_owned(),
            file: dir.into(),
            source,
        })?;
    }
    for (path, data) in files {
        let write = |source| EspError::Write {
            path: out.to_owned(),
            file: path.clone(),
            source,
        };
        let mut f = root.create_file(&path).map_err(write)?;
        f.truncate().map_err(write)?;
        f.write_all(data).map_err(write)?;
        f.flush().map_err(write)?;
    }
    drop(root);
    fs.unmount().map_err(create)?;
    file_sync(&file).map_err(create)
}

fn file_sync(file: &File) -> std::io::Result<()> {
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn esp_holds_bootloader_and_uki() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("esp.img");
        let uki = vec![7u8; 100_000];
        let path = initial_uki_path("1.2.3");
        assert_eq!(path, "EFI/Linux/berth-1.2.3+3.efi");
        build(
            &out,
            40,
            &EspContent {
                arch: Arch::X86_64,
                systemd_boot: b"MZboot",
                files: vec![(path.clone(), &uki)],
            },
        )
        .unwrap();
        let file = File::open(&out).unwrap();
        let fs = FileSystem::new(file, FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat32);
        let mut got = Vec::new();
        fs.root_dir()
            .open_file(&path)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, uki);
        let mut boot = String::new();
        fs.root_dir()
            .open_file("EFI/BOOT/BOOTX64.EFI")
            .unwrap()
            .read_to_string(&mut boot)
            .unwrap();
        assert_eq!(boot, "MZboot");
    }
}
