//! The initramfs: early-init as `/init`, the variant's kernel modules with their
//! dependencies, `mke2fs` and `e2fsck` with their libraries, and the few device nodes and
//! folders PID 1 needs before it mounts anything. Layout: docs/boot.md.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufWriter;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::cpio::CpioWriter;
use crate::elfdeps;

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write initramfs {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module `{module}` (variant key kernel.initramfs-modules) is neither in {dep} nor built in")]
    UnknownModule { module: String, dep: PathBuf },
    #[error("symlink loop or escape while resolving {path} in the root")]
    Symlink { path: String },
    #[error(transparent)]
    ElfDeps(#[from] elfdeps::ElfDepsError),
}

/// What early-init reads from `/etc/berth/initrd.json`.
#[derive(Debug, Serialize)]
pub struct InitrdConfig {
    pub kernel_version: String,
    /// In-initramfs paths, dependencies first.
    pub modules: Vec<String>,
}

#[derive(Debug)]
pub struct InitramfsInput<'a> {
    pub root: &'a Path,
    pub kernel_version: &'a str,
    pub modules: &'a [String],
    pub early_init: &'a Path,
    pub triplet: &'a str,
    pub mtime: u32,
}

/// Writes the initramfs to `out` and returns the module list it carries.
pub fn build(input: &InitramfsInput<'_>, out: &Path) -> Result<InitrdConfig, InitramfsError> {
    let modules_dir = format!("usr/lib/modules/{}", input.kernel_version);
    let modules = module_closure(&input.root.join(&modules_dir), input.modules)?;
    let config = InitrdConfig {
        kernel_version: input.kernel_version.to_owned(),
        modules: modules
            .iter()
            .map(|m| format!("/{modules_dir}/{m}"))
            .collect(),
    };

    // mke2fs makes private and data on first boot; e2fsck repairs a damaged private.
    let (mke2fs, e2fsck) = ("/usr/sbin/mke2fs", "/usr/sbin/e2fsck");
    let mke2fs_host = resolve(input.root, mke2fs)?;
    let e2fsck_host = resolve(input.root, e2fsck)?;
    let libs = elfdeps::closure(
        input.root,
        input.triplet,
        &[input.early_init.to_owned(), mke2fs_host, e2fsck_host],
    )?;

    // Files to carry from the root: in-image path -> path inside the root to read.
    let mut from_root: BTreeMap<String, String> = BTreeMap::new();
    for lib in &libs {
        from_root.insert(merged_usr(lib), lib.clone());
    }
    from_root.insert(mke2fs.to_owned(), mke2fs.to_owned());
    from_root.insert(e2fsck.to_owned(), e2fsck.to_owned());
    if resolve(input.root, "/etc/mke2fs.conf").is_ok() {
        from_root.insert("/etc/mke2fs.conf".into(), "/etc/mke2fs.conf".into());
    }
    for module in &config.modules {
        from_root.insert(module.clone(), module.clone());
    }

    let write_err = |source| InitramfsError::Write {
        path: out.to_owned(),
        source,
    };
    let file = std::fs::File::create(out).map_err(write_err)?;
    let mut cpio = CpioWriter::new(BufWriter::new(file), input.mtime);
    let mut dirs = BTreeSet::new();
    for dir in [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/sysroot",
        "/tmp",
        "/usr/bin",
        "/usr/sbin",
        "/usr/lib",
        "/usr/lib64",
        "/etc/berth",
    ] {
        add_parents(&mut cpio, &mut dirs, &format!("{dir}/x")).map_err(write_err)?;
    }
    for (link, target) in [
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
    ] {
        cpio.symlink(link, target).map_err(write_err)?;
    }
    // The kernel opens /dev/console for PID 1 before early-init mounts devtmpfs.
    cpio.char_device("/dev/console", 0o600, 5, 1)
        .map_err(write_err)?;

    let init = std::fs::read(input.early_init).map_err(|source| InitramfsError::Read {
        path: input.early_init.to_owned(),
        source,
    })?;
    cpio.file("/init", 0o755, &init).map_err(write_err)?;
    let json = serde_json::to_vec_pretty(&config).expect("initrd config serializes");
    cpio.file("/etc/berth/initrd.json", 0o644, &json)
        .map_err(write_err)?;

    for (dest, src) in &from_root {
        let host = resolve(input.root, src)?;
        let data = std::fs::read(&host).map_err(|source| InitramfsError::Read {
            path: host.clone(),
            source,
        })?;
        let mode = if dest.contains(".ko") || dest.starts_with("/etc/") {
            0o644
        } else {
            0o755
        };
        add_parents(&mut cpio, &mut dirs, dest).map_err(write_err)?;
        cpio.file(dest, mode, &data).map_err(write_err)?;
    }
    let writer = cpio.finish().map_err(write_err)?;
    writer
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .sync_all()
        .map_err(write_err)?;
    Ok(config)
}

fn add_parents<W: std::io::Write>(
    cpio: &mut CpioWriter<W>,
    dirs: &mut BTreeSet<String>,
    path: &str,
) -> std::io::Result<()> {
    let mut current = String::new();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        current.push('/');
        current.push_str(part);
        if dirs.insert(current.clone()) {
            cpio.dir(&current, 0o755)?;
        }
    }
    Ok(())
}

/// `/lib/...` -> `/usr/lib/...` (and bin, sbin, lib64): the initramfs is merged-/usr.
fn merged_usr(path: &str) -> String {
    for top in ["/lib64/", "/lib/", "/bin/", "/sbin/"] {
        if let Some(rest) = path.strip_prefix(top) {
            return format!("/usr{top}{rest}");
        }
    }
    path.to_owned()
}

/// Host path of `path` inside `root`, following symlinks (absolute ones relative to root).
pub fn resolve(root: &Path, path: &str) -> Result<PathBuf, InitramfsError> {
    let mut parts: Vec<String> = Vec::new();
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = root.join(parts.join("/")).join(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) => {
                hops += 1;
                if hops > 40 {
                    return Err(InitramfsError::Symlink { path: path.into() });
                }
                if target.is_absolute() {
                    parts.clear();
                }
                for comp in target.components().rev() {
                    match comp {
                        Component::Normal(c) => pending.push(c.to_string_lossy().into_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            Err(_) => parts.push(part),
        }
    }
    let host = root.join(parts.join("/"));
    if host.exists() {
        Ok(host)
    } else {
        Err(InitramfsError::Read {
            path: host,
            source: std::io::ErrorKind::NotFound.into(),
        })
    }
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = base.split(".ko").next().unwrap_or(base);
    stem.replace('-', "_")
}

/// Module paths (relative to the modules dir), dependencies before dependents.
fn module_closure(modules_dir: &Path, wanted: &[String]) -> Result<Vec<String>, InitramfsError> {
    let dep_path = modules_dir.join("modules.dep");
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| InitramfsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let dep_text = read(&dep_path)?;
    let builtin: BTreeSet<String> = read(&modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .map(module_name)
        .collect();
    let mut by_name: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep_text.lines() {
        let Some((module, deps)) = line.split_once(':') else {
            continue;
        };
        let deps = deps.split_whitespace().map(str::to_owned).collect();
        by_name.insert(module_name(module), (module.to_owned(), deps));
    }
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    fn visit(
        path: &str,
        deps_of: &BTreeMap<String, (String, Vec<String>)>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !done.insert(path.to_owned()) {
            return;
        }
        if let Some((_, deps)) = deps_of.get(&module_name(path)) {
            // modules.dep lists dependencies in the reverse of their load order.
            for dep in deps.iter().rev() {
                visit(dep, deps_of, done, order);
            }
        }
        order.push(path.to_owned());
    }
    for want in wanted {
        let name = want.replace('-', "_");
        match by_name.get(&name) {
            Some((path, _)) => visit(&path.clone(), &by_name, &mut done, &mut order),
            None if builtin.contains(&name) => {}
            None => {
                return Err(InitramfsError::UnknownModule {
                    module: want.clone(),
                    dep: dep_path,
                })
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closure_puts_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/a/dm-verity.ko.xz: kernel/a/dm-bufio.ko.xz kernel/a/dm-mod.ko.xz\n\
             kernel/a/dm-bufio.ko.xz: kernel/a/dm-mod.ko.xz\n\
             kernel/a/dm-mod.ko.xz:\n\
             kernel/fs/erofs.ko.xz:\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/virtio_pci.ko\n",
        )
        .unwrap();
        let order = module_closure(
            dir.path(),
            &[
                "dm_verity".into(),
                "virtio-pci".into(),
                "erofs".into(),
                "dm-mod".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "kernel/a/dm-mod.ko.xz",
                "kernel/a/dm-bufio.ko.xz",
                "kernel/a/dm-verity.ko.xz",
                "kernel/fs/erofs.ko.xz"
            ]
        );
        let err = module_closure(dir.path(), &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("`nope`"), "{err}");
    }

    #[test]
    fn resolve_stays_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib/x")).unwrap();
        std::fs::write(root.join("usr/lib/x/ld.so"), b"ld").unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::os::unix::fs::symlink("/lib/x/ld.so", root.join("usr/lib64/ld.so")).unwrap();
        std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
        let host = resolve(root, "/lib64/ld.so").unwrap();
        assert_eq!(host, root.join("usr/lib/x/ld.so"));
        assert_eq!(merged_usr("/lib64/ld.so"), "/usr/lib64/ld.so");
    }
}
