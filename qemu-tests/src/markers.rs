//! Console lines the boot contract (docs/boot.md) promises, as regular expressions.

/// The kernel's banner: first kernel line on the serial console, once per boot.
pub const KERNEL_BANNER: &str = r"Linux version \d";
/// Any line of the initramfs PID 1.
pub const EARLY_INIT: &str = r"early-init: ";
/// early-init's last line before it execs systemd.
pub const SWITCH_ROOT: &str = r"early-init: switching root to systemd";
/// early-init's single failure line.
pub const EARLY_INIT_FATAL: &str = r"early-init: FATAL: ";
/// early-init stopping the machine (a `private` e2fsck could not repair): one line, then
/// power off.
pub const EARLY_INIT_STOP: &str = r"early-init: STOP: ";
/// early-init repaired a damaged `private` with e2fsck instead of formatting it.
pub const PRIVATE_REPAIRED: &str = r"early-init: private repaired by e2fsck";
/// A line that means this boot failed: early-init gave up or stopped, the kernel panicked,
/// or the kernel is restarting the machine.
pub const BOOT_FAILURE: &str =
    r"early-init: FATAL: |early-init: STOP: |Kernel panic - not syncing|reboot: Restarting system";
/// early-init failing because the root read back wrong (I/O error from dm-verity).
pub const EARLY_INIT_READ_ERROR: &str =
    r"early-init: FATAL: .*(?i:corrupt|input/output error|os error 5\))";
/// systemd reached multi-user.target.
pub const MULTI_USER: &str = r"Reached target.*[Mm]ulti-[Uu]ser";
/// The UEFI boot manager starting a boot option: printed once per firmware boot.
pub const FIRMWARE_BOOT: &str = r"BdsDxe: (loading|starting) Boot";
/// The kernel reporting a block that does not match the dm-verity hash tree.
pub const VERITY_CORRUPTION: &str = r"device-mapper: verity: .*(corrupted|corruption)";
/// An SELinux denial (docs/selinux.md): the kernel prints AVC records on the console when no
/// audit daemon takes them, in enforcing and permissive mode alike.
pub const SELINUX_DENIAL: &str = r"avc:\s+denied";
/// The kernel restarting the machine (for instance after dm-verity corruption).
pub const KERNEL_RESTART: &str = r"reboot: Restarting system";
/// A line of the guest probe: `berth-probe: key=value`, as printed, or with journald's
/// console prefix (`StandardOutput=journal+console`): `berth-probe[pid]: berth-probe: ...`.
pub const PROBE_LINE: &str = r"berth-probe(?:\[\d+\])?: (?:berth-probe: )?(.*)$";
/// The probe's last line.
pub const PROBE_END: &str = r"berth-probe(?:\[\d+\])?: (?:berth-probe: )?end\s*$";
/// The kernel's EFI stub: the firmware enforces Secure Boot (docs/secure-boot.md).
pub const SECURE_BOOT_ENABLED: &str = r"UEFI Secure Boot is enabled";
/// Debian's kernel locking itself down because the firmware enforces Secure Boot.
pub const LOCKDOWN_SECURE_BOOT: &str = r"Kernel is locked down from EFI Secure Boot";
/// The firmware refusing an image whose signature it does not trust, as the firmware's boot
/// manager (BdsDxe) or systemd-boot reports the EFI status.
pub const SECURE_BOOT_REFUSED: &str = r"(?i)access denied|security violation";
/// systemd's status line once the settings API is up: apiserver.service is `Type=notify` and
/// tells systemd it is ready after it listens on /run/api.sock.
pub const API_READY: &str = r"Started apiserver\.service";
