//! Target architectures and the names each tool uses for them.

use std::fmt;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use uuid::{uuid, Uuid};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[value(name = "x86_64")]
    X86_64,
    #[value(name = "aarch64")]
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Debian's architecture name (dpkg, mmdebstrap).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// Multiarch triplet: library directories under /usr/lib.
    pub fn triplet(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Aarch64 => "aarch64-linux-gnu",
        }
    }

    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Suffix of EFI file names: `BOOTX64.EFI`, `linuxx64.efi.stub`.
    pub fn efi_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Aarch64 => "aa64",
        }
    }

    /// Discoverable Partitions Specification: root partition type.
    pub fn root_type(self) -> Uuid {
        match self {
            Arch::X86_64 => uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            Arch::Aarch64 => uuid!("b921b045-1df0-41c3-af44-4c6f280d3fae"),
        }
    }

    /// Discoverable Partitions Specification: root verity partition type.
    pub fn root_verity_type(self) -> Uuid {
        match self {
            Arch::X86_64 => uuid!("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
            Arch::Aarch64 => uuid!("df3300ce-d69f-4c92-978c-9bfb0f38d820"),
        }
    }

    /// The architecture os-build itself runs on, if it is one we build for.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
