//! Writing the inactive slot: decompress a staged (already verified) image onto a partition,
//! read back what was written and check its sha256, recompute the dm-verity root hash of the
//! root image, and install the slot's UKI on the ESP with boot counting (`+3`).
//!
//! Partitions are paths: block devices on a host (`/dev/disk/by-partlabel/root-b`), plain
//! files in tests.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use boot_contract::{uki, UkiName};
use semver::Version;
use sha2::{Digest, Sha256};

use crate::manifest::{Image, VerityInfo};

const CHUNK: usize = 1 << 20;
const VERITY_BLOCK: usize = boot_contract::cmdline::VERITY_BLOCK_SIZE as usize;

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not enough space: {what} needs {need} bytes but {path} holds {have}")]
    NoSpace {
        what: String,
        path: PathBuf,
        need: u64,
        have: u64,
    },
    #[error("cannot decompress {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read back {path}")]
    ReadBack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {path} holds {got} bytes after decompression, the manifest says {want}")]
    Size {
        what: String,
        path: PathBuf,
        got: u64,
        want: u64,
    },
    #[error("{what}: sha256 of {path} is {got}, the manifest says {want}")]
    Hash {
        what: String,
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("verity: root hash of {path} is {got}, the manifest says {want}")]
    VerityRoot {
        path: PathBuf,
        got: String,
        want: String,
    },
    #[error("the {0} thread of a slot write panicked")]
    Thread(&'static str),
    #[error("verity parameters in the manifest are invalid: {0}")]
    VerityParams(String),
    #[error("cannot update the ESP at {path}")]
    Esp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Size of a partition or file: the end of a block device, the length of a file.
pub fn capacity(path: &Path) -> Result<u64, SlotError> {
    let mut f = File::open(path).map_err(|e| SlotError::Open {
        path: path.to_owned(),
        source: e,
    })?;
    f.seek(SeekFrom::End(0)).map_err(|e| SlotError::Open {
        path: path.to_owned(),
        source: e,
    })
}

/// Refuses, before anything is written, an image larger than its partition.
pub fn check_space(what: &str, image: &Image, dest: &Path) -> Result<(), SlotError> {
    let have = capacity(dest)?;
    if image.size > have {
        return Err(SlotError::NoSpace {
            what: what.to_owned(),
            path: dest.to_owned(),
            need: image.size,
            have,
        });
    }
    Ok(())
}

/// Timing of one slot write.
#[derive(Debug, Clone, Copy)]
pub struct WriteStats {
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Decompresses `staged` onto `dest` from offset 0 (the partition is not truncated) and
/// syncs; checks the decompressed length. One thread decompresses, the caller's thread
/// writes. Follow with [`verify_image`] for the sha256.
pub fn write_image(
    what: &str,
    staged: &Path,
    image: &Image,
    dest: &Path,
) -> Result<WriteStats, SlotError> {
    let started = Instant::now();
    let input = File::open(staged).map_err(|e| SlotError::Open {
        path: staged.to_owned(),
        source: e,
    })?;
    let mut out = OpenOptions::new()
        .write(true)
        .open(dest)
        .map_err(|e| SlotError::Open {
            path: dest.to_owned(),
            source: e,
        })?;
    // Two stages on their own threads: decompress -> write. The sha256 is checked on what
    // was written, read back, by `verify_image` (a hash of the stream in flight would only
    // repeat that check and cost a core).
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    // Written buffers go back to the decompressor: fresh 1 MiB buffers would cost a page
    // fault per 4 KiB.
    let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
    let staged_path = staged.to_owned();
    let decoder = std::thread::spawn(move || -> Result<(), SlotError> {
        let derr = |e| SlotError::Decompress {
            path: staged_path.clone(),
            source: e,
        };
        let mut dec =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(CHUNK, input))
                .map_err(derr)?;
        loop {
            let mut buf = back_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
            buf.resize(CHUNK, 0);
            let mut filled = 0;
            while filled < CHUNK {
                match dec.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(derr(e)),
                }
            }
            if filled == 0 {
                return Ok(());
            }
            buf.truncate(filled);
            if tx.send(buf).is_err() {
                // The writer stopped; it reports why.
                return Ok(());
            }
        }
    });
    let mut written: u64 = 0;
    let werr = |e| SlotError::Write {
        path: dest.to_owned(),
        source: e,
    };
    let mut write_result = Ok(());
    for buf in rx {
        if written + buf.len() as u64 > image.size {
            write_result = Err(SlotError::Size {
                what: what.to_owned(),
                path: staged.to_owned(),
                got: written + buf.len() as u64,
                want: image.size,
            });
            break;
        }
        if let Err(e) = out.write_all(&buf) {
            write_result = Err(werr(e));
            break;
        }
        written += buf.len() as u64;
        let _ = back_tx.send(buf);
    }
    let decode_result = decoder
        .join()
        .unwrap_or(Err(SlotError::Thread("decompressor")));
    write_result?;
    decode_result?;
    out.sync_all().map_err(werr)?;
    if written != image.size {
        return Err(SlotError::Size {
            what: what.to_owned(),
            path: staged.to_owned(),
            got: written,
            want: image.size,
        });
    }
    Ok(WriteStats {
        bytes: written,
        elapsed: started.elapsed(),
    })
}

/// Reads back the first `image.size` bytes of `dest` and checks their sha256.
pub fn verify_image(what: &str, image: &Image, dest: &Path) -> Result<(), SlotError> {
    let rerr = |e| SlotError::ReadBack {
        path: dest.to_owned(),
        source: e,
    };
    let file = File::open(dest).map_err(rerr)?;
    let mut hasher = Sha256::new();
    let copied = std::io::copy(
        &mut BufReader::with_capacity(CHUNK, file).take(image.size),
        &mut hasher,
    )
    .map_err(rerr)?;
    if copied != image.size {
        return Err(SlotError::Size {
            what: what.to_owned(),
            path: dest.to_owned(),
            got: copied,
            want: image.size,
        });
    }
    let got = hex::encode(hasher.finalize());
    if got != image.sha256 {
        return Err(SlotError::Hash {
            what: what.to_owned(),
            path: dest.to_owned(),
            got,
            want: image.sha256.clone(),
        });
    }
    Ok(())
}

/// Recomputes the dm-verity (format 1, sha256, 4096-byte blocks) root hash of the first
/// `data_blocks` blocks of `root` and compares it with the manifest. This is the hash the
/// slot's UKI puts on the kernel command line, so a match means the slot will mount.
pub fn verify_verity(verity: &VerityInfo, root: &Path) -> Result<(), SlotError> {
    let salt = hex::decode(&verity.salt)
        .map_err(|e| SlotError::VerityParams(format!("salt {:?}: {e}", verity.salt)))?;
    if verity.data_blocks == 0 {
        return Err(SlotError::VerityParams("data_blocks is 0".into()));
    }
    let rerr = |e| SlotError::ReadBack {
        path: root.to_owned(),
        source: e,
    };
    let salted = Sha256::new_with_prefix(&salt);
    let mut reader = BufReader::with_capacity(CHUNK, File::open(root).map_err(rerr)?);
    let mut level: Vec<u8> = Vec::with_capacity(verity.data_blocks as usize * 32);
    let mut block = vec![0u8; VERITY_BLOCK];
    for _ in 0..verity.data_blocks {
        reader.read_exact(&mut block).map_err(rerr)?;
        level.extend_from_slice(&salted.clone().chain_update(&block).finalize());
    }
    let got = if verity.data_blocks == 1 {
        hex::encode(&level)
    } else {
        // Hash levels up until one block remains; its hash is the root.
        loop {
            pad(&mut level);
            if level.len() == VERITY_BLOCK {
                break hex::encode(salted.clone().chain_update(&level).finalize());
            }
            let mut next = Vec::with_capacity(level.len() / VERITY_BLOCK * 32);
            for chunk in level.chunks(VERITY_BLOCK) {
                next.extend_from_slice(&salted.clone().chain_update(chunk).finalize());
            }
            level = next;
        }
    };
    if got != verity.root_hash {
        return Err(SlotError::VerityRoot {
            path: root.to_owned(),
            got,
            want: verity.root_hash.clone(),
        });
    }
    Ok(())
}

fn pad(level: &mut Vec<u8>) {
    let rem = level.len() % VERITY_BLOCK;
    if rem != 0 {
        level.resize(level.len() + VERITY_BLOCK - rem, 0);
    }
}

/// File name of a freshly installed UKI: `berth-<version>+3.efi`.
pub fn uki_name(version: &Version) -> String {
    UkiName::fresh(version).to_string()
}

/// The version in a Berth UKI file name (`berth-<version>[+left[-done]].efi`).
pub fn uki_version(file_name: &str) -> Option<Version> {
    Version::parse(&UkiName::parse(file_name)?.version).ok()
}

/// Installs the slot's UKI on the ESP as `EFI/Linux/berth-<version>+3.efi`: decompressed to a
/// temporary name, checked, synced, renamed. Removes the UKIs of versions other than the
/// running one first (they belonged to the slot being replaced). Returns the file name.
pub fn install_uki(
    esp: &Path,
    staged: &Path,
    image: &Image,
    version: &Version,
    running: &Version,
) -> Result<String, SlotError> {
    let dir = esp.join(uki::DIR);
    let eerr = |e| SlotError::Esp {
        path: dir.clone(),
        source: e,
    };
    std::fs::create_dir_all(&dir).map_err(eerr)?;
    remove_ukis(esp, |v| v != running)?;
    let name = uki_name(version);
    let tmp = dir.join(format!(".{name}.tmp"));
    File::create(&tmp)
        .map_err(|e| SlotError::Esp {
            path: tmp.clone(),
            source: e,
        })?
        .set_len(0)
        .map_err(eerr)?;
    let result =
        write_image("uki", staged, image, &tmp).and_then(|_| verify_image("uki", image, &tmp));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    std::fs::rename(&tmp, dir.join(&name)).map_err(eerr)?;
    File::open(&dir).and_then(|d| d.sync_all()).map_err(eerr)?;
    Ok(name)
}

/// Removes the Berth UKIs whose version matches `pred`; returns their names.
pub fn remove_ukis(esp: &Path, pred: impl Fn(&Version) -> bool) -> Result<Vec<String>, SlotError> {
    let dir = esp.join(uki::DIR);
    let eerr = |e| SlotError::Esp {
        path: dir.clone(),
        source: e,
    };
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(eerr(e)),
    };
    for entry in entries {
        let entry = entry.map_err(eerr)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(v) = uki_version(&name) {
            if pred(&v) {
                std::fs::remove_file(entry.path()).map_err(eerr)?;
                removed.push(name);
            }
        }
    }
    if !removed.is_empty() {
        File::open(&dir).and_then(|d| d.sync_all()).map_err(eerr)?;
    }
    Ok(removed)
}

/// For a rollback by hand: gives the newest UKI of a version other than `running` its good
/// name (no boot counter) and marks the running version's UKIs bad (`+0`), so systemd-boot
/// boots the other one next. Returns the other UKI's new name, `None` when there is none (and
/// then changes nothing).
pub fn prefer_other_uki(esp: &Path, running: &Version) -> Result<Option<String>, SlotError> {
    let dir = esp.join(uki::DIR);
    let eerr = |e| SlotError::Esp {
        path: dir.clone(),
        source: e,
    };
    let mut ukis: Vec<(Version, String)> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|name| uki_version(&name).map(|v| (v, name)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(eerr(e)),
    };
    ukis.sort();
    let Some((version, other)) = ukis.iter().rev().find(|(v, _)| v != running).cloned() else {
        return Ok(None);
    };
    let good = UkiName::good(&version).to_string();
    if other != good {
        std::fs::rename(dir.join(&other), dir.join(&good)).map_err(eerr)?;
    }
    for (v, name) in &ukis {
        if v == running {
            let bad = UkiName::bad(v).to_string();
            if name != &bad {
                std::fs::rename(dir.join(name), dir.join(&bad)).map_err(eerr)?;
            }
        }
    }
    File::open(&dir).and_then(|d| d.sync_all()).map_err(eerr)?;
    Ok(Some(good))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_prefers_the_other_uki() {
        let esp = tempfile::tempdir().unwrap();
        let dir = esp.path().join(uki::DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let running = Version::new(2, 0, 0);
        assert_eq!(prefer_other_uki(esp.path(), &running).unwrap(), None);
        std::fs::write(dir.join("berth-2.0.0.efi"), "v2").unwrap();
        assert_eq!(prefer_other_uki(esp.path(), &running).unwrap(), None);
        assert!(
            dir.join("berth-2.0.0.efi").exists(),
            "nothing changes without another UKI"
        );
        std::fs::write(dir.join("berth-1.0.0+0-3.efi"), "v1").unwrap();
        assert_eq!(
            prefer_other_uki(esp.path(), &running).unwrap().as_deref(),
            Some("berth-1.0.0.efi")
        );
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["berth-1.0.0.efi", "berth-2.0.0+0.efi"]);
    }

    #[test]
    fn uki_names() {
        let v = Version::parse("1.2.3").unwrap();
        assert_eq!(uki_name(&v), "berth-1.2.3+3.efi");
        assert_eq!(uki_version("berth-1.2.3+3.efi"), Some(v.clone()));
        assert_eq!(uki_version("berth-1.2.3+1-2.efi"), Some(v.clone()));
        assert_eq!(uki_version("berth-1.2.3.efi"), Some(v));
        assert_eq!(
            uki_version("berth-1.2.3+build5.efi"),
            Some(Version::parse("1.2.3+build5").unwrap())
        );
        assert_eq!(uki_version("systemd-bootx64.efi"), None);
    }

    fn compress(bytes: &[u8], dir: &Path, name: &str) -> (PathBuf, Image) {
        let path = dir.join(name);
        std::fs::write(&path, zstd::encode_all(bytes, 3).unwrap()).unwrap();
        (
            path,
            Image {
                target: name.into(),
                compression: crate::manifest::Compression::Zstd,
                size: bytes.len() as u64,
                sha256: hex::encode(Sha256::digest(bytes)),
            },
        )
    }

    #[test]
    fn write_then_verify_and_refuse_wrong_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 7 % 251) as u8).collect();
        let (staged, image) = compress(&data, dir.path(), "img.zst");
        let dest = dir.path().join("part");
        std::fs::write(&dest, vec![0xAA; 4 * CHUNK]).unwrap();
        check_space("root", &image, &dest).unwrap();
        let stats = write_image("root", &staged, &image, &dest).unwrap();
        assert_eq!(stats.bytes, data.len() as u64);
        verify_image("root", &image, &dest).unwrap();
        let after = std::fs::read(&dest).unwrap();
        assert_eq!(&after[..data.len()], &data[..]);
        assert!(
            after[data.len()..].iter().all(|b| *b == 0xAA),
            "not truncated"
        );
        let mut wrong = image.clone();
        wrong.sha256 = "00".repeat(32);
        assert!(matches!(
            verify_image("root", &wrong, &dest),
            Err(SlotError::Hash { .. })
        ));
        let small = dir.path().join("small");
        std::fs::write(&small, vec![0; 10]).unwrap();
        let err = check_space("root", &image, &small).unwrap_err();
        assert!(err.to_string().contains("not enough space"), "{err}");
    }

    /// Known answer from `veritysetup format --data-block-size 4096 --hash-block-size 4096
    /// --salt 00ff --uuid … data hash` over 300 blocks, block i filled with byte i % 256.
    #[test]
    fn verity_root_hash_matches_veritysetup() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300 * VERITY_BLOCK)
            .map(|i| (i / VERITY_BLOCK % 256) as u8)
            .collect();
        let root = dir.path().join("root");
        std::fs::write(&root, &data).unwrap();
        let want = include_str!("../tests/fixtures/verity-300-00ff.roothash")
            .trim()
            .to_owned();
        let info = VerityInfo {
            root_hash: want,
            salt: "00ff".into(),
            data_blocks: 300,
        };
        verify_verity(&info, &root).unwrap();
        let mut bad = data.clone();
        bad[5 * VERITY_BLOCK] ^= 1;
        std::fs::write(&root, &bad).unwrap();
        assert!(matches!(
            verify_verity(&info, &root),
            Err(SlotError::VerityRoot { .. })
        ));
    }

    proptest::proptest! {
        /// Every version's UKI name gives the version back, with or without boot counters.
        #[test]
        fn uki_names_round_trip(major in 0u64..100, minor in 0u64..100, patch in 0u64..100, pre in proptest::option::of("[a-z][a-z0-9]{0,5}"), left in 0u32..10, done in proptest::option::of(0u32..10)) {
            let mut v = Version::new(major, minor, patch);
            if let Some(pre) = pre {
                v.pre = semver::Prerelease::new(&pre).unwrap();
            }
            proptest::prop_assert_eq!(uki_version(&uki_name(&v)), Some(v.clone()));
            let counted = match done {
                Some(d) => format!("berth-{v}+{left}-{d}.efi"),
                None => format!("berth-{v}+{left}.efi"),
            };
            proptest::prop_assert_eq!(uki_version(&counted), Some(v));
        }
    }
}
