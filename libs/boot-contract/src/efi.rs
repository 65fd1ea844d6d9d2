//! EFI variables as efivarfs shows them (`/sys/firmware/efi/efivars/<Name>-<vendor GUID>`:
//! 4 attribute bytes, then the value), and those systemd-boot and systemd-stub set for the
//! booted OS.

use std::path::{Path, PathBuf};

/// efivarfs, relative to a host root.
pub const EFIVARS_DIR: &str = "sys/firmware/efi/efivars";
/// Vendor GUID of systemd-boot's and systemd-stub's variables.
pub const LOADER_VENDOR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// Vendor GUID of the variables the UEFI specification defines (`SecureBoot`, `PK`, ...).
pub const GLOBAL_VENDOR: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Attributes systemd-boot gives its variables: boot service and runtime access, volatile.
pub const LOADER_ATTRIBUTES: u32 = 0x6;

/// One EFI variable: its name and vendor GUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub vendor: &'static str,
}

/// Partition GUID of the ESP the loader was started from (early-init: which disk booted).
pub const LOADER_DEVICE_PART_UUID: Variable = Variable::loader("LoaderDevicePartUUID");
/// ESP path of the counted UKI this boot came from (health gate: what to mark good).
pub const LOADER_BOOT_COUNT_PATH: Variable = Variable::loader("LoaderBootCountPath");
/// Boot loader entry that was booted (probe: which UKI).
pub const LOADER_ENTRY_SELECTED: Variable = Variable::loader("LoaderEntrySelected");
/// ESP path of the UKI systemd-stub ran from (probe).
pub const STUB_IMAGE_IDENTIFIER: Variable = Variable::loader("StubImageIdentifier");

impl Variable {
    /// A variable of systemd-boot or systemd-stub.
    pub const fn loader(name: &'static str) -> Variable {
        Variable {
            name,
            vendor: LOADER_VENDOR,
        }
    }

    /// A variable of the UEFI specification.
    pub const fn global(name: &'static str) -> Variable {
        Variable {
            name,
            vendor: GLOBAL_VENDOR,
        }
    }

    /// The file name in efivarfs: `<Name>-<vendor GUID>`.
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.name, self.vendor)
    }

    /// The file in efivarfs under a host root (`/` on a host, a temp dir in tests).
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(EFIVARS_DIR).join(self.file_name())
    }

    /// The value (attributes stripped); `None` when the variable does not exist or is
    /// shorter than its attributes.
    pub fn read(&self, root: &Path) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(root)).ok()?;
        Some(bytes.get(4..)?.to_vec())
    }

    /// The value as the UTF-16LE string systemd-boot writes; `None` when absent or not
    /// UTF-16.
    pub fn read_string(&self, root: &Path) -> Option<String> {
        decode_string(&self.read(root)?)
    }
}

/// A UTF-16LE string value, up to its NUL; `None` when it is not valid UTF-16.
pub fn decode_string(value: &[u8]) -> Option<String> {
    let units: Vec<u16> = value
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// The efivarfs bytes of a string variable as systemd-boot writes it: attributes, UTF-16LE,
/// NUL. For tests and fixtures.
pub fn encode_string(value: &str) -> Vec<u8> {
    let mut out = LOADER_ATTRIBUTES.to_le_bytes().to_vec();
    for unit in value.encode_utf16().chain([0]) {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_systemd_boot_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let var = LOADER_BOOT_COUNT_PATH;
        assert_eq!(var.read_string(dir.path()), None);
        std::fs::create_dir_all(dir.path().join(EFIVARS_DIR)).expect("mkdir");
        std::fs::write(
            var.path(dir.path()),
            encode_string("\\EFI\\Linux\\berth-1.0.0+2-1.efi"),
        )
        .expect("write");
        assert_eq!(
            var.read_string(dir.path()).as_deref(),
            Some("\\EFI\\Linux\\berth-1.0.0+2-1.efi")
        );
        assert!(var
            .path(dir.path())
            .ends_with("LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"));
        // Shorter than the attributes: no value.
        std::fs::write(var.path(dir.path()), [6, 0]).expect("write");
        assert_eq!(var.read(dir.path()), None);
        assert_eq!(
            Variable::global("SecureBoot").file_name(),
            "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
    }

    #[test]
    fn unpaired_surrogates_are_not_strings() {
        assert_eq!(decode_string(&[0x00, 0xd8, 0x41, 0x00]), None);
        // Without a NUL the whole value is the string; an odd last byte is ignored.
        assert_eq!(
            decode_string(&[0x41, 0, 0x42, 0, 0x43]).as_deref(),
            Some("AB")
        );
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(s in "[^\u{0}]*") {
            let bytes = encode_string(&s);
            prop_assert_eq!(decode_string(&bytes[4..]), Some(s));
        }
    }
}
