//! Recursive copy of a directory tree that keeps modes, owners and symlinks: seeds the tmpfs
//! `/etc` from the image and, on first boot, `data`'s `var` from the image's `/var`.

use std::fs;
use std::io;
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot copy {from} to {to}")]
pub struct CopyError {
    pub from: PathBuf,
    pub to: PathBuf,
    pub source: io::Error,
}

/// Copies the contents of directory `src` into directory `dst` (which must exist), keeping
/// file modes, owners and symlinks. Sockets, FIFOs and device nodes are skipped.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<u64, CopyError> {
    let mut count = 0;
    copy_dir_contents(src, dst, &mut count)?;
    Ok(count)
}

fn wrap(from: &Path, to: &Path) -> impl Fn(io::Error) -> CopyError {
    let (from, to) = (from.to_path_buf(), to.to_path_buf());
    move |source| CopyError {
        from: from.clone(),
        to: to.clone(),
        source,
    }
}

fn copy_dir_contents(src: &Path, dst: &Path, count: &mut u64) -> Result<(), CopyError> {
    let err = wrap(src, dst);
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let err = wrap(&from, &to);
        let meta = fs::symlink_metadata(&from).map_err(&err)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(&err)?;
            symlink(&target, &to).map_err(&err)?;
        } else if ft.is_dir() {
            fs::create_dir(&to).map_err(&err)?;
            copy_dir_contents(&from, &to, count)?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(&err)?;
        } else {
            continue;
        }
        lchown(&to, Some(meta.uid()), Some(meta.gid())).map_err(&err)?;
        if !ft.is_symlink() {
            // After chown, which clears set-id bits; after the contents, for read-only dirs.
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(&err)?;
        }
        // Last, since copying a directory's contents changes its mtime. Kept because systemd's
        // ConditionNeedsUpdate= compares /etc/.updated with /usr.
        let times = rustix::fs::Timestamps {
            last_access: timespec(meta.atime(), meta.atime_nsec()),
            last_modification: timespec(meta.mtime(), meta.mtime_nsec()),
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &to,
            &times,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| err(e.into()))?;
        *count += 1;
    }
    Ok(())
}

fn timespec(sec: i64, nsec: i64) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_dirs_symlinks_with_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        fs::create_dir_all(src.join("ssl/certs")).expect("mkdir");
        fs::create_dir(&dst).expect("mkdir");
        fs::write(src.join("hostname"), "berth\n").expect("write");
        fs::write(src.join("shadow"), "root:*:1::::::\n").expect("write");
        fs::set_permissions(src.join("shadow"), fs::Permissions::from_mode(0o640)).expect("chmod");
        fs::write(src.join("ssl/certs/ca.pem"), "pem").expect("write");
        fs::set_permissions(src.join("ssl/certs"), fs::Permissions::from_mode(0o555))
            .expect("chmod");
        symlink("../proc/self/mounts", src.join("mtab")).expect("symlink");
        symlink("ssl/certs/ca.pem", src.join("ca.pem")).expect("symlink");
        let old = rustix::fs::Timestamps {
            last_access: timespec(1_000_000_000, 5),
            last_modification: timespec(1_000_000_000, 5),
        };
        for p in ["hostname", "ssl/certs", "ssl", "mtab"] {
            rustix::fs::utimensat(
                rustix::fs::CWD,
                src.join(p),
                &old,
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .expect("utimensat");
        }

        let n = copy_tree(&src, &dst).expect("copy");
        assert_eq!(n, 7);
        assert_eq!(
            fs::read_to_string(dst.join("hostname")).expect("read"),
            "berth\n"
        );
        assert_eq!(
            fs::metadata(dst.join("shadow")).expect("meta").mode() & 0o7777,
            0o640
        );
        assert_eq!(
            fs::metadata(dst.join("ssl/certs")).expect("meta").mode() & 0o7777,
            0o555
        );
        assert_eq!(
            fs::read_to_string(dst.join("ssl/certs/ca.pem")).expect("read"),
            "pem"
        );
        assert_eq!(
            fs::read_link(dst.join("mtab")).expect("link"),
            Path::new("../proc/self/mounts")
        );
        assert_eq!(
            fs::read_to_string(dst.join("ca.pem")).expect("through link"),
            "pem"
        );
        let (s, d) = (
            fs::metadata(src.join("hostname")).expect("meta"),
            fs::metadata(dst.join("hostname")).expect("meta"),
        );
        assert_eq!((s.uid(), s.gid()), (d.uid(), d.gid()));
        for p in ["hostname", "ssl", "ssl/certs", "mtab"] {
            let (s, d) = (
                fs::symlink_metadata(src.join(p)).expect("meta"),
                fs::symlink_metadata(dst.join(p)).expect("meta"),
            );
            assert_eq!(
                (s.mtime(), s.mtime_nsec()),
                (d.mtime(), d.mtime_nsec()),
                "{p}"
            );
        }
    }

    #[test]
    fn missing_source_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = copy_tree(&dir.path().join("nope"), dir.path()).expect_err("missing");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
