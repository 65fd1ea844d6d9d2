//! Secure Boot tampering for the tests (docs/secure-boot.md): a foreign key, PE images
//! unsigned or re-signed with it, a UKI whose command line names another root, and a disk
//! whose ESP holds them. Uses the host's openssl, sbsigntool (sbsign, sbattach), mtools and
//! qemu-img / qemu-io, which scripts/host-deps.sh installs.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum TamperError {
    #[error("run {program}; install the host tools with scripts/host-deps.sh")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {stderr}")]
    Failed { what: String, stderr: String },
    #[error("{path}: {reason}")]
    Edit { path: PathBuf, reason: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn run(program: &str, args: &[&str], what: &str) -> Result<(), TamperError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| TamperError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(TamperError::Failed {
            what: what.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// A key pair that no Berth image trusts: `(key, certificate)` in `dir`.
pub fn foreign_key(dir: &Path) -> Result<(PathBuf, PathBuf), TamperError> {
    let (key, crt) = (dir.join("foreign.key"), dir.join("foreign.crt"));
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=Not Berth/",
            "-keyout",
            s(&key),
            "-out",
            s(&crt),
        ],
        "openssl req (foreign key)",
    )?;
    Ok((key, crt))
}

/// Writes `input` without its Authenticode signatures to `output`.
pub fn unsigned(input: &Path, output: &Path) -> Result<(), TamperError> {
    std::fs::copy(input, output).map_err(|source| TamperError::Io {
        path: output.to_owned(),
        source,
    })?;
    run("sbattach", &["--remove", s(output)], "sbattach --remove")
}

/// Signs `input` (unsigned) with `key`/`cert` into `output`.
pub fn sign(input: &Path, output: &Path, key: &Path, cert: &Path) -> Result<(), TamperError> {
    run(
        "sbsign",
        &[
            "--key",
            s(key),
            "--cert",
            s(cert),
            "--output",
            s(output),
            s(input),
        ],
        "sbsign (foreign key)",
    )
}

/// Changes the first hex digit of `berth.verity.root=` in the UKI at `path` (its `.cmdline`
/// section), so the UKI names a root hash no slot has. Returns the new hash.
pub fn change_root_hash(path: &Path) -> Result<String, TamperError> {
    let mut bytes = std::fs::read(path).map_err(|source| TamperError::Io {
        path: path.to_owned(),
        source,
    })?;
    let key = b"berth.verity.root=";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .ok_or_else(|| TamperError::Edit {
            path: path.to_owned(),
            reason: "no berth.verity.root= in the UKI".into(),
        })?
        + key.len();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    let hash = String::from_utf8_lossy(&bytes[at..at + 64]).into_owned();
    std::fs::write(path, &bytes).map_err(|source| TamperError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(hash)
}

/// Copies the ESP image `esp` to `out` and puts each `(file, path on the ESP)` in it.
pub fn esp_with(esp: &Path, files: &[(&Path, &str)], out: &Path) -> Result<(), TamperError> {
    std::fs::copy(esp, out).map_err(|source| TamperError::Io {
        path: out.to_owned(),
        source,
    })?;
    for (file, dest) in files {
        let dest = format!("::/{dest}");
        run(
            "mcopy",
            &["-o", "-i", s(out), s(file), &dest],
            &format!("mcopy {} to {dest}", file.display()),
        )?;
    }
    Ok(())
}

/// A qcow2 overlay `out` over `disk` whose ESP (at byte `esp_offset`) is replaced by `esp`.
pub fn disk_with_esp(
    disk: &Path,
    esp: &Path,
    esp_offset: u64,
    out: &Path,
) -> Result<(), TamperError> {
    let backing = std::fs::canonicalize(disk).map_err(|source| TamperError::Io {
        path: disk.to_owned(),
        source,
    })?;
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            s(&backing),
            s(out),
        ],
        "qemu-img create (overlay)",
    )?;
    let len = std::fs::metadata(esp)
        .map_err(|source| TamperError::Io {
            path: esp.to_owned(),
            source,
        })?
        .len();
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -s {} {esp_offset} {len}", s(esp)),
            s(out),
        ],
        "qemu-io write (the ESP)",
    )
}
