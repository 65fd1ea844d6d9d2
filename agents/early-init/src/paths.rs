//! Paths early-init uses, relative to the initramfs root.

/// Module list written by os-build.
pub const INITRD_JSON: &str = "etc/berth/initrd.json";
/// The real root is assembled here.
pub const SYSROOT: &str = "sysroot";
/// Staging mount point for the tmpfs that becomes `/sysroot/etc`.
pub const ETC_STAGING: &str = "run/berth/etc";
/// mke2fs, shipped in the initramfs.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";
/// e2fsck, shipped in the initramfs (repairs a damaged `private`).
pub const E2FSCK: &str = "/usr/sbin/e2fsck";
/// Drop-in that points `boot.mount` at the ESP of the disk this boot's root came from.
pub const BOOT_MOUNT_DROP_IN: &str = "run/systemd/system/boot.mount.d/10-boot-disk.conf";
/// The init of the real root.
pub const SYSTEMD: &str = "/usr/lib/systemd/systemd";
/// device-mapper control node (devtmpfs creates it when dm-mod loads).
pub const DM_CONTROL: &str = "dev/mapper/control";
/// Name of the dm-verity device of the root.
pub const DM_ROOT_NAME: &str = "root";
/// Machine id kept on the private partition.
pub const PRIVATE_MACHINE_ID: &str = "machine-id";
