//! Platform security facts of a host: the firmware's Secure Boot state (the `SecureBoot`
//! EFI variable) and the kernel lockdown mode, for the CIS report, `GET /os` and the
//! tests (docs/secure-boot.md). Read through a [`HostRoot`], so tests use a fixture tree.
//! The EFI variable reading moves to the boot-contract crate when it lands.

use serde::Serialize;

use crate::host::HostRoot;
use crate::paths;

/// EFI_GLOBAL_VARIABLE, the vendor GUID of `SecureBoot` and `SetupMode`.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Whether the firmware enforces Secure Boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureBoot {
    /// `SecureBoot` is 1: the firmware starts only signed boot loaders and kernels.
    Enabled,
    /// UEFI with Secure Boot support, but off (setup mode, or turned off).
    Disabled,
    /// Not booted by UEFI, or a firmware without Secure Boot (no `SecureBoot` variable).
    Unsupported,
}

impl SecureBoot {
    pub fn as_str(self) -> &'static str {
        match self {
            SecureBoot::Enabled => "enabled",
            SecureBoot::Disabled => "disabled",
            SecureBoot::Unsupported => "unsupported",
        }
    }
}

/// The firmware's Secure Boot state, from efivarfs.
pub fn secure_boot(host: &HostRoot) -> SecureBoot {
    let var = host
        .path(paths::EFIVARS)
        .join(format!("SecureBoot-{EFI_GLOBAL_VARIABLE}"));
    match std::fs::read(var) {
        // 4 bytes of attributes, then the value.
        Ok(bytes) if bytes.get(4) == Some(&1) => SecureBoot::Enabled,
        Ok(_) => SecureBoot::Disabled,
        Err(_) => SecureBoot::Unsupported,
    }
}

/// The kernel lockdown mode (`none`, `integrity`, `confidentiality`): the bracketed word of
/// /sys/kernel/security/lockdown; `None` when the kernel has no lockdown LSM.
pub fn lockdown(host: &HostRoot) -> Option<String> {
    let text = host.read(paths::LOCKDOWN).ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_and_lockdown_from_a_host_tree() {
        let dir = tempfile::tempdir().unwrap();
        let host = HostRoot::new(dir.path());
        assert_eq!(secure_boot(&host), SecureBoot::Unsupported);
        assert_eq!(lockdown(&host), None);
        let vars = host.path(paths::EFIVARS);
        std::fs::create_dir_all(&vars).unwrap();
        let var = vars.join(format!("SecureBoot-{EFI_GLOBAL_VARIABLE}"));
        std::fs::write(&var, [6, 0, 0, 0, 0]).unwrap();
        assert_eq!(secure_boot(&host), SecureBoot::Disabled);
        std::fs::write(&var, [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(secure_boot(&host), SecureBoot::Enabled);
        let lock = host.path(paths::LOCKDOWN);
        std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
        std::fs::write(&lock, "none [integrity] confidentiality\n").unwrap();
        assert_eq!(lockdown(&host).as_deref(), Some("integrity"));
    }
}
