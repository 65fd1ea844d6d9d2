//! Finds the dynamic loader and shared libraries an ELF program needs, inside a root tree,
//! so the initramfs can carry them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

#[derive(Debug, thiserror::Error)]
pub enum ElfDepsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ELF file we can parse: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("library {library} needed by {by} is not in {root}")]
    Missing {
        library: String,
        by: PathBuf,
        root: PathBuf,
    },
}

/// Absolute in-image paths (`/usr/lib/...`) of the loader and every library `programs`
/// need, transitively. `programs` are host paths; libraries are looked up in `root`.
pub fn closure(
    root: &Path,
    triplet: &str,
    programs: &[PathBuf],
) -> Result<BTreeSet<String>, ElfDepsError> {
    let search = [
        format!("usr/lib/{triplet}"),
        format!("lib/{triplet}"),
        "usr/lib".to_owned(),
        "lib".to_owned(),
    ];
    let mut found = BTreeSet::new();
    let mut queue: Vec<PathBuf> = programs.to_vec();
    let mut seen_libs = BTreeSet::new();
    while let Some(path) = queue.pop() {
        let bytes = std::fs::read(&path).map_err(|source| ElfDepsError::Read {
            path: path.clone(),
            source,
        })?;
        let elf = Elf::parse(&bytes).map_err(|e| ElfDepsError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if let Some(interp) = elf.interpreter {
            found.insert(interp.to_owned());
        }
        for lib in &elf.libraries {
            if !seen_libs.insert(lib.to_string()) {
                continue;
            }
            let hit = search
                .iter()
                .map(|dir| format!("{dir}/{lib}"))
                .find(|rel| root.join(rel).exists())
                .ok_or_else(|| ElfDepsError::Missing {
                    library: lib.to_string(),
                    by: path.clone(),
                    root: root.to_owned(),
                })?;
            found.insert(format!("/{hit}"));
            queue.push(root.join(hit));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_program_needs_libc_and_loader() {
        // The host is Debian too: resolve /usr/bin/ls against the host root.
        let triplet = match std::env::consts::ARCH {
            "aarch64" => "aarch64-linux-gnu",
            _ => "x86_64-linux-gnu",
        };
        let libs = closure(Path::new("/"), triplet, &[PathBuf::from("/usr/bin/ls")]).unwrap();
        assert!(libs.iter().any(|l| l.ends_with("/libc.so.6")), "{libs:?}");
        assert!(libs.iter().any(|l| l.contains("ld-linux")), "{libs:?}");
    }

    #[test]
    fn missing_library_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = closure(
            dir.path(),
            "x86_64-linux-gnu",
            &[PathBuf::from("/usr/bin/ls")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("libc.so.6") || err.contains("lib"), "{err}");
    }
}
