//! The root file system: Debian packages assembled by mmdebstrap, then configured for
//! Berth (os-release, programs, units, files) and pruned to what the variant needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::arch::Arch;
use crate::variant::Variant;

pub const SUITE: &str = "trixie";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mmdebstrap failed ({status}); its output is in {log}")]
    Mmdebstrap { status: String, log: PathBuf },
    #[error("cannot run {tool}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    Tool { tool: &'static str, stderr: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no kernel in {0}/boot: is the variant's kernel.package right?")]
    NoKernel(PathBuf),
    #[error("bad prune pattern `{pattern}` (variant key prune): {reason}")]
    Pattern { pattern: String, reason: String },
    #[error("unit {unit} (variant key systemd.enable) not found in the image")]
    NoUnit { unit: String },
    #[error("production variant still ships {0}: add it to the variant's prune list")]
    Forbidden(String),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[derive(Debug)]
pub struct MmdebstrapRun<'a> {
    pub arch: Arch,
    pub variant: &'a Variant,
    pub mirror: &'a str,
    pub cache: &'a Path,
    pub target: &'a Path,
    pub log: &'a Path,
    pub source_date_epoch: u64,
}

/// Packages every image needs at build time besides the variant's: the kernel, and
/// systemd-boot's EFI binaries (taken out of the root into the ESP and UKIs). Sorted and
/// without duplicates: apt does not care about the order, and the same set must give the
/// same [`recipe`].
fn packages(run: &MmdebstrapRun<'_>) -> Vec<String> {
    let mut pkgs = run.variant.packages.clone();
    pkgs.push(run.variant.kernel_package.clone());
    pkgs.push("systemd-boot-efi".into());
    pkgs.sort();
    pkgs.dedup();
    pkgs
}

/// The mmdebstrap command for `run`, output not yet redirected.
fn command(run: &MmdebstrapRun<'_>) -> Command {
    let cache = run.cache.display().to_string();
    let mut cmd = Command::new("mmdebstrap");
    cmd.env("SOURCE_DATE_EPOCH", run.source_date_epoch.to_string())
        // The kernel's postinst hook skips building an initrd we would not use.
        .env("INITRD", "No")
        .arg("--mode=root")
        .arg("--variant=essential")
        .arg("--format=directory")
        .arg(format!("--arch={}", run.arch.debian()))
        .arg(format!("--include={}", packages(run).join(",")))
        .arg("--aptopt=Apt::Install-Recommends \"false\"")
        // Docs, man pages and translations never reach the image; licenses stay.
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-exclude=/usr/share/lintian/*")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {cache} /var/cache/apt/archives/"
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {cache}"
        ))
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        .arg(SUITE)
        .arg(run.target)
        .arg(run.mirror);
    cmd
}

/// What decides the root mmdebstrap makes for `run`, as a sha256 (hex): its program,
/// arguments and environment, the target folder left out. Two runs with the same recipe
/// against the same state of the archive make the same root (`--root-cache`).
pub fn recipe(run: &MmdebstrapRun<'_>) -> String {
    use sha2::{Digest, Sha256};
    let cmd = command(run);
    let mut hash = Sha256::new();
    hash.update(cmd.get_program().as_encoded_bytes());
    for arg in cmd.get_args().filter(|a| Path::new(a) != run.target) {
        hash.update(b"\0arg ");
        hash.update(arg.as_encoded_bytes());
    }
    for (key, value) in cmd.get_envs() {
        hash.update(b"\0env ");
        hash.update(key.as_encoded_bytes());
        hash.update(b"=");
        hash.update(value.unwrap_or_default().as_encoded_bytes());
    }
    hex::encode(hash.finalize())
}

pub fn mmdebstrap(run: &MmdebstrapRun<'_>) -> Result<(), RootfsError> {
    if run.target.exists() {
        std::fs::remove_dir_all(run.target).map_err(io("remove old root", run.target))?;
    }
    std::fs::create_dir_all(run.cache).map_err(io("create package cache", run.cache))?;
    std::fs::create_dir_all(run.target).map_err(io("create", run.target))?;
    let log = std::fs::File::create(run.log).map_err(io("create log", run.log))?;
    let mut cmd = command(run);
    cmd.stdout(log.try_clone().map_err(io("open log", run.log))?)
        .stderr(log);
    let status = cmd.status().map_err(|source| RootfsError::Spawn {
        tool: "mmdebstrap",
        source,
    })?;
    if !status.success() {
        return Err(RootfsError::Mmdebstrap {
            status: status.to_string(),
            log: run.log.to_owned(),
        });
    }
    Ok(())
}

/// Kernel release of the one kernel in the root (`/boot/vmlinuz-<release>`).
pub fn kernel_release(root: &Path) -> Result<(String, PathBuf), RootfsError> {
    let boot = root.join("boot");
    let mut kernels: Vec<PathBuf> = std::fs::read_dir(&boot)
        .map_err(io("list", &boot))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    let path = kernels
        .pop()
        .ok_or_else(|| RootfsError::NoKernel(root.to_owned()))?;
    let release = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("filtered on the vmlinuz- prefix")
        .to_owned();
    Ok((release, path))
}

/// Removes the paths matching the variant's prune patterns (relative to the root).
pub fn prune(root: &Path, patterns: &[String]) -> Result<u64, RootfsError> {
    let mut removed = 0;
    for pattern in patterns {
        let full = root.join(pattern.trim_start_matches('/'));
        let matches = glob::glob(&full.to_string_lossy()).map_err(|e| RootfsError::Pattern {
            pattern: pattern.clone(),
            reason: e.to_string(),
        })?;
        for path in matches.flatten() {
            let meta = std::fs::symlink_metadata(&path).map_err(io("inspect", &path))?;
            if meta.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io("remove", &path))?;
            } else {
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Shells, interpreters and package managers a production image must not ship.
const FORBIDDEN: &[&str] = &[
    "usr/bin/sh",
    "usr/bin/bash",
    "usr/bin/dash",
    "usr/bin/rbash",
    "usr/bin/busybox",
    "usr/bin/perl",
    "usr/bin/python3",
    "usr/bin/dpkg",
    "usr/bin/apt",
    "usr/bin/apt-get",
    "bin/sh",
    "bin/bash",
    "bin/dash",
];

pub fn check_production(root: &Path) -> Result<(), RootfsError> {
    for path in FORBIDDEN {
        if std::fs::symlink_metadata(root.join(path)).is_ok() {
            return Err(RootfsError::Forbidden(format!("/{path}")));
        }
    }
    Ok(())
}

/// Regenerates modules.dep and friends after modules were pruned.
pub fn depmod(root: &Path, release: &str) -> Result<(), RootfsError> {
    let out = Command::new("depmod")
        .arg("-b")
        .arg(root)
        .arg(release)
        .output()
        .map_err(|source| RootfsError::Spawn {
            tool: "depmod",
            source,
        })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            tool: "depmod",
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

pub fn write_file(root: &Path, path: &str, content: &[u8], mode: u32) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let full = root.join(path.trim_start_matches('/'));
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    // Replace symlinks (e.g. /etc/os-release) rather than writing through them.
    if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(&full).map_err(io("replace", &full))?;
    }
    std::fs::write(&full, content).map_err(io("write", &full))?;
    std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &full))
}

pub fn symlink(root: &Path, link: &str, target: &str) -> Result<(), RootfsError> {
    let full = root.join(link.trim_start_matches('/'));
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    if std::fs::symlink_metadata(&full).is_ok() {
        std::fs::remove_file(&full).map_err(io("replace", &full))?;
    }
    std::os::unix::fs::symlink(target, &full).map_err(io("symlink", &full))
}

/// Enables a unit the way `systemctl enable` would, from its `[Install]` section:
/// symlinks in `<target>.wants/` under /usr/lib (the image's /etc is rebuilt every boot
/// from the image, so vendor symlinks are the stable place), following `Also=`.
pub fn enable_unit(root: &Path, unit: &str) -> Result<(), RootfsError> {
    let mut queue = vec![unit.to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(unit) = queue.pop() {
        if !seen.insert(unit.clone()) {
            continue;
        }
        let dir = "usr/lib/systemd/system";
        let path = root.join(dir).join(&unit);
        let text = std::fs::read_to_string(&path)
            .map_err(|_| RootfsError::NoUnit { unit: unit.clone() })?;
        let mut in_install = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_install = line == "[Install]";
                continue;
            }
            if !in_install {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            for item in value.split_whitespace() {
                match key.trim() {
                    "WantedBy" => symlink(
                        root,
                        &format!("{dir}/{item}.wants/{unit}"),
                        &format!("../{unit}"),
                    )?,
                    "RequiredBy" => symlink(
                        root,
                        &format!("{dir}/{item}.requires/{unit}"),
                        &format!("../{unit}"),
                    )?,
                    "Also" => queue.push(item.to_owned()),
                    "Alias" => symlink(root, &format!("{dir}/{item}"), &unit)?,
                    _ => {}
                }
            }
        }
    }
    Ok(())
}

pub fn mask_unit(root: &Path, unit: &str) -> Result<(), RootfsError> {
    symlink(root, &format!("/etc/systemd/system/{unit}"), "/dev/null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_removes_matches_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["usr/share/doc/a/x", "usr/bin/bash", "usr/bin/ls"] {
            write_file(root, f, b"x", 0o644).unwrap();
        }
        let n = prune(
            root,
            &[
                "usr/share/doc".into(),
                "/usr/bin/ba*".into(),
                "nothing/*".into(),
            ],
        )
        .unwrap();
        assert_eq!(n, 2);
        assert!(root.join("usr/bin/ls").exists());
        assert!(!root.join("usr/bin/bash").exists());
        assert!(prune(root, &["[".into()]).is_err());
    }

    #[test]
    fn production_check_finds_shell() {
        let dir = tempfile::tempdir().unwrap();
        check_production(dir.path()).unwrap();
        symlink(dir.path(), "usr/bin/sh", "dash").unwrap();
        let err = check_production(dir.path()).unwrap_err().to_string();
        assert!(err.contains("/usr/bin/sh"), "{err}");
    }

    #[test]
    fn enable_follows_install_section() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_file(
            root,
            "usr/lib/systemd/system/a.service",
            b"[Unit]\n[Install]\nWantedBy=multi-user.target\nAlso=a.socket\n",
            0o644,
        )
        .unwrap();
        write_file(
            root,
            "usr/lib/systemd/system/a.socket",
            b"[Install]\nWantedBy=sockets.target\n",
            0o644,
        )
        .unwrap();
        enable_unit(root, "a.service").unwrap();
        let link = root.join("usr/lib/systemd/system/multi-user.target.wants/a.service");
        assert_eq!(std::fs::read_link(link).unwrap(), Path::new("../a.service"));
        assert!(root
            .join("usr/lib/systemd/system/sockets.target.wants/a.socket")
            .exists());
        assert!(matches!(
            enable_unit(root, "b.service"),
            Err(RootfsError::NoUnit { .. })
        ));
    }

    #[test]
    fn kernel_release_is_found() {
        let dir = tempfile::tempdir().unwrap();
        assert!(kernel_release(dir.path()).is_err());
        write_file(dir.path(), "boot/vmlinuz-6.12.1-amd64", b"k", 0o644).unwrap();
        write_file(dir.path(), "boot/config-6.12.1-amd64", b"c", 0o644).unwrap();
        assert_eq!(kernel_release(dir.path()).unwrap().0, "6.12.1-amd64");
    }
}
