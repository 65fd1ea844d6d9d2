//! Host tools os-build runs, checked up front so a missing one is one clear error that
//! says how to install it.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("host tool `{tool}` is missing: run `sudo scripts/host-deps.sh` (or `apt-get install {package}`)")]
pub struct MissingTool {
    pub tool: &'static str,
    pub package: &'static str,
}

/// (tool, Debian package) needed by `os-build build`.
pub const BUILD_TOOLS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("mkfs.erofs", "erofs-utils"),
    ("qemu-img", "qemu-utils"),
    ("depmod", "kmod"),
];

/// Extra tools for variants with an SELinux policy.
pub const SELINUX_TOOLS: &[(&str, &str)] = &[("secilc", "secilc")];

/// Extra tools for aarch64 builds on an x86_64 host.
pub const CROSS_TOOLS: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("/usr/bin/rustc", "rustc-web libstd-rust-web-dev:arm64"),
    ("/usr/bin/cargo", "cargo-web"),
];

pub fn find(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

pub fn check(tools: &[(&'static str, &'static str)]) -> Result<(), MissingTool> {
    for &(tool, package) in tools {
        if !find(tool) {
            return Err(MissingTool { tool, package });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package_and_script() {
        let err = check(&[("surely-not-a-tool-berth", "berth-pkg")]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("surely-not-a-tool-berth") && text.contains("apt-get install berth-pkg")
        );
        assert!(check(&[("sh", "dash")]).is_ok());
    }
}
