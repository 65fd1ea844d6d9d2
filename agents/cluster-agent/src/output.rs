//! Writes rendered files under an output root, all or nothing: every file is first written
//! and synced as a temporary sibling, and only when all are in place are they renamed over
//! their targets. A failure before the renames removes the temporaries and leaves the old
//! files untouched.

use crate::render::OutputFile;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("create folder {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replace {path}")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn temp_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn write_temp(temp: &Path, file: &OutputFile) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(file.mode)
        .open(temp)?;
    // The umask may have narrowed the creation mode; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(file.mode))?;
    f.write_all(&file.contents)?;
    f.sync_all()
}

/// Writes `files` under `root`; returns the paths written.
pub fn write_all(root: &Path, files: &[OutputFile]) -> Result<Vec<PathBuf>, OutputError> {
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |staged: &[(PathBuf, PathBuf)]| {
        for (temp, _) in staged {
            let _ = fs::remove_file(temp);
        }
    };
    for file in files {
        let target = root.join(&file.path);
        let dir = target.parent().unwrap_or(root).to_path_buf();
        if let Err(source) = fs::create_dir_all(&dir) {
            cleanup(&staged);
            return Err(OutputError::CreateDir { path: dir, source });
        }
        let temp = temp_path(&target);
        if let Err(source) = write_temp(&temp, file) {
            let _ = fs::remove_file(&temp);
            cleanup(&staged);
            return Err(OutputError::Write {
                path: target,
                source,
            });
        }
        staged.push((temp, target));
    }
    let mut written = Vec::new();
    for (temp, target) in &staged {
        fs::rename(temp, target).map_err(|source| OutputError::Rename {
            path: target.clone(),
            source,
        })?;
        written.push(target.clone());
    }
    // Make the renames durable: sync each folder that received a file.
    let mut dirs: Vec<&Path> = staged.iter().filter_map(|(_, t)| t.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, mode: u32, text: &str) -> OutputFile {
        OutputFile {
            path: path.to_string(),
            mode,
            contents: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn writes_files_with_their_modes_and_no_temporaries() {
        let dir = tempfile::tempdir().expect("temp dir");
        write_all(
            dir.path(),
            &[file("a/b/secret", 0o600, "s"), file("a/open", 0o644, "o")],
        )
        .expect("write");
        let meta = fs::metadata(dir.path().join("a/b/secret")).expect("secret");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let meta = fs::metadata(dir.path().join("a/open")).expect("open");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["secret"]);
    }

    #[test]
    fn a_failed_write_leaves_old_files_and_no_temporaries() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("keep"), "old").expect("seed");
        // "blocker" is a file, so "blocker/x" cannot be created.
        fs::write(dir.path().join("blocker"), "").expect("seed");
        let err = write_all(
            dir.path(),
            &[file("keep", 0o644, "new"), file("blocker/x", 0o644, "x")],
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("blocker"), "{err}");
        assert_eq!(
            fs::read_to_string(dir.path().join("keep")).expect("keep"),
            "old"
        );
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["blocker", "keep"]);
    }
}
