//! Fault injection on disk images: a private copy of an image with bytes changed.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cp could not copy {from} to {to}: {stderr}")]
    CopyFailed {
        from: PathBuf,
        to: PathBuf,
        stderr: String,
    },
    #[error("flip the byte at offset {offset} of {path}")]
    Flip {
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// Copies a (sparse) raw image, keeping its holes, so a multi-GiB image costs only its data.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<(), FaultError> {
    let output = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|source| FaultError::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(FaultError::CopyFailed {
            from: from.to_owned(),
            to: to.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Inverts every bit of the byte at `offset` and returns (old, new).
pub fn flip_byte(path: &Path, offset: u64) -> Result<(u8, u8), FaultError> {
    let flip = || -> io::Result<(u8, u8)> {
        let mut file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut byte = [0u8; 1];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut byte)?;
        let old = byte[0];
        byte[0] = !old;
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(&byte)?;
        file.sync_all()?;
        Ok((old, byte[0]))
    };
    flip().map_err(|source| FaultError::Flip {
        path: path.to_owned(),
        offset,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_one_byte_of_a_copy_only() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let original = dir.path().join("disk.raw");
        let copy = dir.path().join("copy.raw");
        std::fs::write(&original, [0x12u8; 4096])?;
        sparse_copy(&original, &copy)?;
        assert_eq!(flip_byte(&copy, 1032)?, (0x12, 0xed));
        let bytes = std::fs::read(&copy)?;
        assert_eq!(bytes[1032], 0xed);
        assert_eq!(bytes.iter().filter(|&&b| b != 0x12).count(), 1);
        assert_eq!(std::fs::read(&original)?, vec![0x12u8; 4096]);
        assert!(flip_byte(&copy, 5000).is_err());
        Ok(())
    }
}
