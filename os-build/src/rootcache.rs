//! Reusing a Debian root between builds (`os-build build --root-cache DIR`).
//!
//! Variants that ask for the same packages get the same root from mmdebstrap: `qemu` and
//! `qemu-test`, the three `*-k8s-1.33-test` variants, and a second version of one variant (the
//! update scenario's v2). The first build keeps a copy of its root, before Berth configures
//! it, under `DIR/<arch>-<recipe>`; later builds with the same [`rootfs::recipe`] start from
//! a copy of it instead of running mmdebstrap again (on aarch64 that runs every maintainer
//! script under qemu-user, minutes per root).
//!
//! The recipe covers mmdebstrap's arguments, not the state of the Debian archive: a kept
//! root holds the package versions of the day it was made. So the cache is for builds that
//! belong together (scripts/test.sh empties it at the start of every run); the package lock
//! check still runs on the copied root.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rootfs::{self, MmdebstrapRun, RootfsError};

#[derive(Debug, thiserror::Error)]
pub enum RootCacheError {
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run cp to copy {from} to {to}")]
    SpawnCopy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cp could not copy {from} to {to}: {stderr}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        stderr: String,
    },
}

/// Where the root came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// mmdebstrap made it (and, with a cache, a copy was kept in this entry).
    Mmdebstrap { kept: Option<PathBuf> },
    /// Copied from this cache entry.
    Reused(PathBuf),
}

/// The cache entry of `run` in `cache`: `<arch>-<first 16 hex digits of the recipe>`.
pub fn entry(cache: &Path, run: &MmdebstrapRun<'_>) -> PathBuf {
    let recipe = rootfs::recipe(run);
    cache.join(format!("{}-{}", run.arch.name(), &recipe[..16]))
}

/// Makes the root at `run.target`: a copy of the cached one when `cache` holds a root with
/// the same recipe, else mmdebstrap (keeping a copy in `cache` when there is one).
pub fn assemble(cache: Option<&Path>, run: &MmdebstrapRun<'_>) -> Result<Origin, RootCacheError> {
    let Some(cache) = cache else {
        rootfs::mmdebstrap(run)?;
        return Ok(Origin::Mmdebstrap { kept: None });
    };
    let entry = entry(cache, run);
    let (root, log) = (entry.join("root"), entry.join("mmdebstrap.log"));
    if root.is_dir() {
        remove(run.target)?;
        // A fresh build has no work folder yet (mmdebstrap makes its target's parents).
        if let Some(parent) = run.target.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        copy_tree(&root, run.target)?;
        let note = format!(
            "os-build: root copied from {} (--root-cache); mmdebstrap's output when it made it:\n",
            entry.display()
        );
        let earlier = std::fs::read(&log).unwrap_or_default();
        std::fs::write(run.log, [note.as_bytes(), &earlier].concat())
            .map_err(io("write", run.log))?;
        return Ok(Origin::Reused(entry));
    }
    rootfs::mmdebstrap(run)?;
    // Copied into a temporary entry and renamed, so that a build running beside this one
    // never sees half a root; if one finished first, its copy stays and ours goes.
    std::fs::create_dir_all(cache).map_err(io("create", cache))?;
    let tmp = cache.join(format!(
        ".{}.{}",
        entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    remove(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
    copy_tree(run.target, &tmp.join("root"))?;
    std::fs::copy(run.log, tmp.join("mmdebstrap.log")).map_err(io("copy", run.log))?;
    if std::fs::rename(&tmp, &entry).is_err() {
        remove(&tmp)?;
    }
    Ok(Origin::Mmdebstrap { kept: Some(entry) })
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RootCacheError + 'a {
    move |source| RootCacheError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn remove(path: &Path) -> Result<(), RootCacheError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

/// `cp -a`: owners, modes, device nodes, hard links, extended attributes and times, as a
/// root needs them (`--reflink=auto` shares the blocks where the file system can).
fn copy_tree(from: &Path, to: &Path) -> Result<(), RootCacheError> {
    let out = Command::new("cp")
        .args(["-a", "--reflink=auto", "--no-target-directory"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|source| RootCacheError::SpawnCopy {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(RootCacheError::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use crate::variant;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn run<'a>(v: &'a variant::Variant, arch: Arch, target: &'a Path) -> MmdebstrapRun<'a> {
        MmdebstrapRun {
            arch,
            variant: v,
            mirror: "http://deb.debian.org/debian",
            cache: Path::new("/var/cache/berth/debs/amd64"),
            target,
            log: Path::new("/tmp/mmdebstrap.log"),
            source_date_epoch: 1,
        }
    }

    #[test]
    fn variants_with_the_same_packages_share_an_entry() {
        let variants = workspace().join("variants");
        let load = |name: &str, arch| variant::load(&variants, name, arch).unwrap();
        let (qemu, qemu_test) = (load("qemu", Arch::X86_64), load("qemu-test", Arch::X86_64));
        let (eks, vmware, metal) = (
            load("aws-k8s-1.33-test", Arch::X86_64),
            load("vmware-k8s-1.33-test", Arch::X86_64),
            load("metal-k8s-1.33-test", Arch::X86_64),
        );
        let cache = Path::new("/cache");
        let (a, b) = (Path::new("/build/a/root"), Path::new("/build/b/root"));
        let of = |v, target| entry(cache, &run(v, Arch::X86_64, target));
        // The target folder is not part of the recipe; the package set is.
        assert_eq!(of(&qemu, a), of(&qemu_test, b));
        assert_eq!(of(&eks, a), of(&vmware, b));
        assert_eq!(of(&eks, a), of(&metal, b));
        assert_ne!(of(&qemu, a), of(&eks, a));
        assert!(of(&qemu, a).to_string_lossy().starts_with("/cache/x86_64-"));
        let arm = load("qemu", Arch::Aarch64);
        assert_ne!(of(&qemu, a), entry(cache, &run(&arm, Arch::Aarch64, a)));
    }

    #[test]
    fn package_order_does_not_change_the_recipe() {
        let variants = workspace().join("variants");
        let mut v = variant::load(&variants, "qemu", Arch::X86_64).unwrap();
        let target = Path::new("/r");
        let before = rootfs::recipe(&run(&v, Arch::X86_64, target));
        v.packages.reverse();
        v.packages.push(v.packages[0].clone());
        assert_eq!(before, rootfs::recipe(&run(&v, Arch::X86_64, target)));
        v.packages.push("bash".into());
        assert_ne!(before, rootfs::recipe(&run(&v, Arch::X86_64, target)));
    }

    #[test]
    fn a_kept_root_is_copied_into_a_fresh_build_folder() {
        let dir = tempfile::tempdir().unwrap();
        let variants = workspace().join("variants");
        let v = variant::load(&variants, "qemu", Arch::X86_64).unwrap();
        let cache = dir.path().join("cache");
        // The first build of a variant: its work folder does not exist yet.
        let target = dir.path().join("build/qemu-test/x86_64/work/root");
        let log = dir.path().join("mmdebstrap.log");
        let mut r = run(&v, Arch::X86_64, &target);
        r.log = &log;
        let kept = entry(&cache, &r);
        std::fs::create_dir_all(kept.join("root/etc")).unwrap();
        std::fs::write(kept.join("root/etc/os-release"), "ID=debian\n").unwrap();
        assemble(Some(&cache), &r).unwrap();
        assert!(target.join("etc/os-release").is_file());
    }

    #[test]
    fn a_kept_root_is_copied_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let variants = workspace().join("variants");
        let v = variant::load(&variants, "qemu", Arch::X86_64).unwrap();
        let cache = dir.path().join("cache");
        let target = dir.path().join("work/root");
        let log = dir.path().join("mmdebstrap.log");
        let mut r = run(&v, Arch::X86_64, &target);
        r.log = &log;
        // A kept entry, as an earlier build leaves it.
        let kept = entry(&cache, &r);
        std::fs::create_dir_all(kept.join("root/usr/bin")).unwrap();
        std::fs::write(kept.join("root/usr/bin/tool"), "x").unwrap();
        std::os::unix::fs::symlink("usr/bin", kept.join("root/bin")).unwrap();
        std::fs::write(kept.join("mmdebstrap.log"), "I: success\n").unwrap();
        // Whatever an earlier build left at the target goes.
        std::fs::create_dir_all(target.join("stale")).unwrap();

        assert_eq!(
            assemble(Some(&cache), &r).unwrap(),
            Origin::Reused(kept.clone())
        );
        assert_eq!(
            std::fs::read_to_string(target.join("bin/tool")).unwrap(),
            "x"
        );
        assert!(!target.join("stale").exists());
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.starts_with("os-build: root copied from "), "{text}");
        assert!(text.ends_with("I: success\n"), "{text}");
        // The kept root is untouched by the build that copied it.
        std::fs::write(target.join("usr/bin/tool"), "changed").unwrap();
        assert_eq!(
            std::fs::read_to_string(kept.join("root/usr/bin/tool")).unwrap(),
            "x"
        );
    }
}
