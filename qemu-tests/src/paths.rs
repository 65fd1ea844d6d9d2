//! Host paths the harness relies on. `scripts/host-deps.sh` installs all of them.

/// x86_64 UEFI firmware code (read-only pflash), 4 MiB build without Secure Boot.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// x86_64 UEFI firmware code with Secure Boot (needs q35 with SMM and a secure pflash), for
/// images signed with Berth's keys (docs/secure-boot.md).
pub const OVMF_CODE_SECURE_BOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// x86_64 UEFI variable store template; each VM gets a private copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// aarch64 UEFI firmware code (read-only pflash). Built with Secure Boot: it enforces
/// signatures once a variable store with keys (an image's `uefi-vars.fd`) is given.
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// aarch64 UEFI variable store template; each VM gets a private copy.
pub const AAVMF_VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";
/// Creates the per-VM qcow2 overlays.
pub const QEMU_IMG: &str = "qemu-img";
/// Environment variable that enables the QEMU scenarios.
pub const ENABLE_VAR: &str = "BERTH_QEMU_TESTS";
/// Environment variable that overrides where built images are looked up.
pub const BUILD_DIR_VAR: &str = "BERTH_BUILD_DIR";
/// Environment variable that keeps each VM's temporary directory (overlay, firmware vars,
/// QEMU stderr) after the VM is gone, for debugging.
pub const KEEP_VAR: &str = "BERTH_KEEP_VM_DIR";
/// Environment variable: how many QEMU scenarios may run at once (default 1).
pub const SLOTS_VAR: &str = "BERTH_QEMU_SLOTS";
/// Environment variable: a file each scenario appends its name and time to when it ends.
pub const SCENARIO_TIMES_VAR: &str = "BERTH_SCENARIO_TIMES";
