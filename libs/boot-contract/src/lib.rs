//! The boot contract (docs/boot.md) as types, written once and shared by its writer
//! (`os-build`) and its readers (`early-init`, the updater, `berth-probe`, the QEMU tests).
//!
//! Each fact has one definition here, with a format and a parse that are tested against each
//! other, so a rename cannot pass the unit tests and fail only when an image boots:
//!
//! - [`cmdline`]: the `berth.*` kernel command-line parameters of a slot's UKI;
//! - [`partition`]: the GPT partitions by role and partition name;
//! - [`uki`]: UKI file names on the ESP, with Boot Loader Specification boot counters;
//! - [`efi`]: systemd-boot's EFI variables (vendor GUID, UTF-16 strings in efivarfs);
//! - [`dm`]: the device-mapper ioctl header and target spec (`<linux/dm-ioctl.h>`).
//!
//! No dependencies and no `unsafe`: callers that issue the ioctls keep their `unsafe` blocks.

pub mod cmdline;
pub mod dm;
pub mod efi;
pub mod partition;
pub mod slot;
pub mod uki;

pub use cmdline::{Cmdline, CmdlineError, Verity};
pub use partition::Partition;
pub use slot::Slot;
pub use uki::{BootCounter, UkiName};
