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

/// The ESP's `EFI/Linux` folder as a UKI install uses it: [`EspDir`] on the mounted ESP; the
/// tests run the same install over a FAT image whose writes can be cut at any point (a power
/// cut during the install).
pub trait UkiDir {
    /// The folder, for messages.
    fn path(&self) -> PathBuf;
    /// Names of the files in the folder (created when missing).
    fn names(&mut self) -> std::io::Result<Vec<String>>;
    /// Creates (or empties) `name` and writes `src` into it; on disk when it returns.
    fn write(&mut self, name: &str, src: &mut dyn Read) -> std::io::Result<u64>;
    /// Reads `name` into `sink`.
    fn read(&mut self, name: &str, sink: &mut dyn Write) -> std::io::Result<u64>;
    fn remove(&mut self, name: &str) -> std::io::Result<()>;
    fn rename(&mut self, from: &str, to: &str) -> std::io::Result<()>;
    /// Puts the folder's entries on disk (FAT has no journal: a rename is on disk only then).
    fn sync(&mut self) -> std::io::Result<()>;
}

/// `EFI/Linux` of the ESP mounted on a folder.
#[derive(Debug)]
pub struct EspDir(pub PathBuf);

impl EspDir {
    pub fn of(esp: &Path) -> EspDir {
        EspDir(esp.join(uki::DIR))
    }
}

impl UkiDir for EspDir {
    fn path(&self) -> PathBuf {
        self.0.clone()
    }
    fn names(&mut self) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(&self.0)?;
        std::fs::read_dir(&self.0)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
    fn write(&mut self, name: &str, src: &mut dyn Read) -> std::io::Result<u64> {
        let mut file = File::create(self.0.join(name))?;
        let n = std::io::copy(src, &mut file)?;
        file.sync_all()?;
        Ok(n)
    }
    fn read(&mut self, name: &str, sink: &mut dyn Write) -> std::io::Result<u64> {
        std::io::copy(
            &mut BufReader::with_capacity(CHUNK, File::open(self.0.join(name))?),
            sink,
        )
    }
    fn remove(&mut self, name: &str) -> std::io::Result<()> {
        std::fs::remove_file(self.0.join(name))
    }
    fn rename(&mut self, from: &str, to: &str) -> std::io::Result<()> {
        std::fs::rename(self.0.join(from), self.0.join(to))
    }
    fn sync(&mut self) -> std::io::Result<()> {
        File::open(&self.0)?.sync_all()
    }
}

/// The temporary name a UKI is written under before it gets its boot-loader name; the boot
/// loader only considers `*.efi`.
fn temporary_name(name: &str) -> String {
    format!(".{name}.tmp")
}

/// Installs the slot's UKI on the ESP as `EFI/Linux/berth-<version>+3.efi`. See
/// [`install_uki_in`].
pub fn install_uki(
    esp: &Path,
    staged: &Path,
    image: &Image,
    version: &Version,
    running: &Version,
) -> Result<String, SlotError> {
    install_uki_in(&mut EspDir::of(esp), staged, image, version, running)
}

/// Installs the slot's UKI in `dir` as `berth-<version>+3.efi`, so that whatever instant the
/// power goes the running version's UKI is untouched and no UKI name holds an incomplete
/// file: UKIs of versions other than the running one (the slot being replaced) and what a cut
/// install left are removed first; the UKI is decompressed to a temporary name, written
/// through, read back and checked against the manifest's size and sha256, renamed, and the
/// folder synced. Returns the file name.
///
/// What a cut leaves: temporary files, and, on FAT, a removed or renamed file's short 8.3
/// entry (`BERTH-~2.EFI`, `BERTH-~1.TMP`) whose long-name entries were already marked free.
/// The boot loader lists such an `.efi` entry as a good UKI, so any `.efi` in the folder that
/// is not a Berth UKI name goes, and any `.tmp` (the folder holds Berth's UKIs only).
pub fn install_uki_in(
    dir: &mut dyn UkiDir,
    staged: &Path,
    image: &Image,
    version: &Version,
    running: &Version,
) -> Result<String, SlotError> {
    let eerr = |dir: &dyn UkiDir, e| SlotError::Esp {
        path: dir.path(),
        source: e,
    };
    let name = uki_name(version);
    let tmp = temporary_name(&name);
    let mut removed = remove_ukis_in(dir, |v| v != running)?;
    for leftover in dir.names().map_err(|e| eerr(dir, e))? {
        let lower = leftover.to_ascii_lowercase();
        let temporary = lower.ends_with(".tmp");
        let stray_entry = lower.ends_with(".efi") && uki_version(&leftover).is_none();
        if temporary || stray_entry {
            dir.remove(&leftover).map_err(|e| eerr(dir, e))?;
            removed.push(leftover);
        }
    }
    if !removed.is_empty() {
        dir.sync().map_err(|e| eerr(dir, e))?;
    }
    let input = File::open(staged).map_err(|e| SlotError::Open {
        path: staged.to_owned(),
        source: e,
    })?;
    let decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(CHUNK, input))
        .map_err(|e| SlotError::Decompress {
            path: staged.to_owned(),
            source: e,
        })?;
    // One byte more than the manifest allows shows a longer image without reading it all.
    let result = dir
        .write(&tmp, &mut decoder.take(image.size + 1))
        .map_err(|e| eerr(dir, e))
        .and_then(|written| check_len("uki", &dir.path().join(&tmp), written, image.size))
        .and_then(|()| {
            let mut hasher = Sha256::new();
            let read = dir.read(&tmp, &mut hasher).map_err(|e| eerr(dir, e))?;
            check_len("uki", &dir.path().join(&tmp), read, image.size)?;
            check_sha("uki", &dir.path().join(&tmp), hasher, &image.sha256)
        });
    if let Err(err) = result {
        let _ = dir.remove(&tmp);
        return Err(err);
    }
    dir.rename(&tmp, &name).map_err(|e| eerr(dir, e))?;
    dir.sync().map_err(|e| eerr(dir, e))?;
    Ok(name)
}

fn check_len(what: &str, path: &Path, got: u64, want: u64) -> Result<(), SlotError> {
    if got == want {
        Ok(())
    } else {
        Err(SlotError::Size {
            what: what.to_owned(),
            path: path.to_owned(),
            got,
            want,
        })
    }
}

fn check_sha(what: &str, path: &Path, hasher: Sha256, want: &str) -> Result<(), SlotError> {
    let got = hex::encode(hasher.finalize());
    if got == want {
        Ok(())
    } else {
        Err(SlotError::Hash {
            what: what.to_owned(),
            path: path.to_owned(),
            got,
            want: want.to_owned(),
        })
    }
}

/// Removes the Berth UKIs whose version matches `pred`; returns their names.
pub fn remove_ukis(esp: &Path, pred: impl Fn(&Version) -> bool) -> Result<Vec<String>, SlotError> {
    let dir = esp.join(uki::DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let removed = remove_ukis_in(&mut EspDir(dir), pred)?;
    Ok(removed)
}

/// [`remove_ukis`] in a [`UkiDir`]; syncs the folder when it removed something.
pub fn remove_ukis_in(
    dir: &mut dyn UkiDir,
    pred: impl Fn(&Version) -> bool,
) -> Result<Vec<String>, SlotError> {
    let eerr = |dir: &dyn UkiDir, e| SlotError::Esp {
        path: dir.path(),
        source: e,
    };
    let mut removed = Vec::new();
    for name in dir.names().map_err(|e| eerr(dir, e))? {
        if uki_version(&name).is_some_and(|v| pred(&v)) {
            dir.remove(&name).map_err(|e| eerr(dir, e))?;
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        dir.sync().map_err(|e| eerr(dir, e))?;
    }
    Ok(removed)
}

/// The newest version of a Berth UKI on the ESP other than `running`, if any.
pub fn newest_other_uki(esp: &Path, running: &Version) -> Result<Option<Version>, SlotError> {
    let dir = esp.join(uki::DIR);
    match std::fs::read_dir(&dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok())
            .filter_map(|e| uki_version(&e.file_name().to_string_lossy()))
            .filter(|v| v != running)
            .max()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SlotError::Esp {
            path: dir,
            source: e,
        }),
    }
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

    /// A power cut at every instant of a UKI install on FAT: the install runs once over a
    /// FAT32 image (the `fatfs` crate, as os-build writes the ESP) whose writes are recorded;
    /// then, for every prefix of those writes (the disk as a cut after that write leaves it),
    /// the image must mount, hold the running version's UKI byte for byte, and let the boot
    /// loader's first choice be a complete UKI; and the install run again on it must finish.
    mod power_cut {
        use std::cell::RefCell;
        use std::collections::HashMap;
        use std::io::{Cursor, Read, Seek, SeekFrom, Write};
        use std::rc::Rc;

        use super::*;

        const SECTOR: u64 = 512;

        /// Every write to a disk: where, and what.
        type WriteLog = Rc<RefCell<Vec<(u64, Vec<u8>)>>>;

        /// A disk in memory: the base image plus the pages written since, so that checking
        /// hundreds of cut points does not copy the whole image each time. Every write is
        /// appended to `log` when there is one.
        struct Disk<'a> {
            base: &'a [u8],
            pages: HashMap<u64, Vec<u8>>,
            pos: u64,
            log: Option<WriteLog>,
        }

        impl<'a> Disk<'a> {
            fn new(base: &'a [u8]) -> Disk<'a> {
                Disk {
                    base,
                    pages: HashMap::new(),
                    pos: 0,
                    log: None,
                }
            }

            fn page(&mut self, n: u64) -> &mut Vec<u8> {
                let base = self.base;
                self.pages.entry(n).or_insert_with(|| {
                    let at = (n * SECTOR) as usize;
                    base[at..at + SECTOR as usize].to_vec()
                })
            }

            fn apply(&mut self, at: u64, bytes: &[u8]) {
                let (pos, log) = (self.pos, self.log.take());
                self.pos = at;
                self.write_all(bytes).unwrap();
                self.pos = pos;
                self.log = log;
            }
        }

        impl Read for Disk<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let len = self.base.len() as u64;
                if self.pos >= len {
                    return Ok(0);
                }
                let n = (buf.len() as u64)
                    .min(SECTOR - self.pos % SECTOR)
                    .min(len - self.pos);
                let (page, off) = (self.pos / SECTOR, (self.pos % SECTOR) as usize);
                let src = match self.pages.get(&page) {
                    Some(p) => &p[off..off + n as usize],
                    None => &self.base[self.pos as usize..(self.pos + n) as usize],
                };
                buf[..n as usize].copy_from_slice(src);
                self.pos += n;
                Ok(n as usize)
            }
        }

        impl Write for Disk<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if let Some(log) = &self.log {
                    log.borrow_mut().push((self.pos, buf.to_vec()));
                }
                let mut done = 0;
                while done < buf.len() {
                    let (page, off) = (self.pos / SECTOR, (self.pos % SECTOR) as usize);
                    let n = (buf.len() - done).min(SECTOR as usize - off);
                    self.page(page)[off..off + n].copy_from_slice(&buf[done..done + n]);
                    self.pos += n as u64;
                    done += n;
                }
                Ok(done)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        impl Seek for Disk<'_> {
            fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
                self.pos = match to {
                    SeekFrom::Start(n) => n,
                    SeekFrom::End(d) => (self.base.len() as i64 + d) as u64,
                    SeekFrom::Current(d) => (self.pos as i64 + d) as u64,
                };
                Ok(self.pos)
            }
        }

        /// `EFI/Linux` of a FAT file system.
        struct FatDir<'f, T: fatfs::ReadWriteSeek>(&'f fatfs::FileSystem<T>);

        impl<'f, T: fatfs::ReadWriteSeek> FatDir<'f, T> {
            fn dir(&self) -> std::io::Result<fatfs::Dir<'f, T>> {
                let root = self.0.root_dir();
                match root.open_dir("EFI/Linux") {
                    Ok(d) => Ok(d),
                    Err(_) => root.create_dir("EFI/Linux"),
                }
            }
        }

        impl<T: fatfs::ReadWriteSeek> UkiDir for FatDir<'_, T> {
            fn path(&self) -> PathBuf {
                PathBuf::from("fat:/EFI/Linux")
            }
            fn names(&mut self) -> std::io::Result<Vec<String>> {
                Ok(self
                    .dir()?
                    .iter()
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .filter(|n| n != "." && n != "..")
                    .collect())
            }
            fn write(&mut self, name: &str, src: &mut dyn Read) -> std::io::Result<u64> {
                let mut file = self.dir()?.create_file(name)?;
                file.truncate()?;
                let n = std::io::copy(src, &mut file)?;
                file.flush()?;
                Ok(n)
            }
            fn read(&mut self, name: &str, sink: &mut dyn Write) -> std::io::Result<u64> {
                std::io::copy(&mut self.dir()?.open_file(name)?, sink)
            }
            fn remove(&mut self, name: &str) -> std::io::Result<()> {
                self.dir()?.remove(name)
            }
            fn rename(&mut self, from: &str, to: &str) -> std::io::Result<()> {
                let dir = self.dir()?;
                dir.rename(from, &dir, to)
            }
            fn sync(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        fn noise(len: usize, mut seed: u64) -> Vec<u8> {
            (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        }

        /// The Berth UKIs of `EFI/Linux` with their contents.
        fn ukis(disk: &mut Disk<'_>) -> BTreeMap<String, Vec<u8>> {
            let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new())
                .expect("the ESP mounts after the cut");
            let mut fat = FatDir(&fs);
            let names = fat.names().unwrap();
            names
                .into_iter()
                .filter(|n| n.to_ascii_lowercase().ends_with(".efi"))
                .map(|n| {
                    let mut bytes = Vec::new();
                    fat.read(&n, &mut bytes).unwrap();
                    (n, bytes)
                })
                .collect()
        }

        /// What systemd-boot boots first: the newest version whose entry is not bad (`+0`).
        fn first_choice(ukis: &BTreeMap<String, Vec<u8>>) -> Option<&String> {
            ukis.keys()
                .filter(|n| crate::health::boot_counter(n).is_none_or(|(left, _)| left != 0))
                .filter_map(|n| uki_version(n).map(|v| (v, n)))
                .max()
                .map(|(_, n)| n)
        }

        use std::collections::BTreeMap;

        #[test]
        fn the_running_uki_survives_a_power_cut_at_every_write_of_the_install() {
            let dir = tempfile::tempdir().unwrap();
            let running = Version::new(1, 0, 0);
            let version = Version::new(2, 0, 0);
            let old_uki = noise(20_000, 1);
            let new_uki = noise(60_000, 2);
            let stale_uki = noise(30_000, 3);
            let (staged, image) = compress(&new_uki, dir.path(), "uki-b.efi.zst");

            // The ESP before: the running UKI, and the UKI of the slot being replaced.
            let mut base = vec![0u8; 40 << 20];
            fatfs::format_volume(
                Cursor::new(&mut base[..]),
                fatfs::FormatVolumeOptions::new()
                    .fat_type(fatfs::FatType::Fat32)
                    .bytes_per_cluster(512),
            )
            .unwrap();
            {
                let fs =
                    fatfs::FileSystem::new(Cursor::new(&mut base[..]), fatfs::FsOptions::new())
                        .unwrap();
                fs.root_dir().create_dir("EFI").unwrap();
                let mut fat = FatDir(&fs);
                for (name, bytes) in [
                    ("berth-1.0.0.efi", &old_uki),
                    ("berth-0.9.0+0-3.efi", &stale_uki),
                ] {
                    fat.write(name, &mut &bytes[..]).unwrap();
                }
                fs.unmount().unwrap();
            }

            // The install once, recording its writes.
            let log = Rc::new(RefCell::new(Vec::new()));
            {
                let mut disk = Disk::new(&base);
                disk.log = Some(log.clone());
                let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
                let mut fat = FatDir(&fs);
                let name = install_uki_in(&mut fat, &staged, &image, &version, &running).unwrap();
                assert_eq!(name, "berth-2.0.0+3.efi");
                // Cut before the unmount: what an unmount would write never happens.
                let end = log.borrow().len();
                log.borrow_mut().truncate(end);
                std::mem::forget(fs);
            }
            let writes = log.borrow().clone();
            assert!(writes.len() > 100, "only {} writes", writes.len());
            println!("{} writes, each a cut point", writes.len());

            let mut on_disk = Disk::new(&base);
            for cut in 0..=writes.len() {
                if cut > 0 {
                    let (at, bytes) = &writes[cut - 1];
                    on_disk.apply(*at, bytes);
                }
                // Read the disk as the cut left it (on a copy: mounting may write).
                let mut view = Disk {
                    base: &base,
                    pages: on_disk.pages.clone(),
                    pos: 0,
                    log: None,
                };
                let found = ukis(&mut view);
                assert_eq!(
                    found.get("berth-1.0.0.efi"),
                    Some(&old_uki),
                    "cut after write {cut}: the running UKI changed or went"
                );
                // Every other entry the boot loader lists is the new UKI, whole, or what is
                // left of the UKI being removed (cut short as its clusters are freed, never
                // over clusters given to the new file).
                for (name, bytes) in &found {
                    let whole_new = bytes == &new_uki;
                    let part_of_stale = stale_uki.starts_with(bytes);
                    assert!(
                        bytes == &old_uki || whole_new || part_of_stale,
                        "cut after write {cut}: {name} holds {} bytes of no UKI",
                        bytes.len()
                    );
                    if uki_version(name).is_some_and(|v| v == version) {
                        assert!(whole_new, "cut after write {cut}: {name} is incomplete");
                    }
                }
                let first = first_choice(&found).expect("a UKI to boot");
                let want = if first == "berth-1.0.0.efi" {
                    &old_uki
                } else {
                    &new_uki
                };
                assert_eq!(
                    &found[first], want,
                    "cut after write {cut}: the boot loader's first choice {first} is incomplete"
                );
                // Power on again: the install runs to the end on what the cut left.
                let mut again = Disk {
                    base: &base,
                    pages: on_disk.pages.clone(),
                    pos: 0,
                    log: None,
                };
                {
                    let fs = fatfs::FileSystem::new(&mut again, fatfs::FsOptions::new()).unwrap();
                    let mut fat = FatDir(&fs);
                    install_uki_in(&mut fat, &staged, &image, &version, &running)
                        .unwrap_or_else(|e| panic!("cut after write {cut}: install again: {e}"));
                    fs.unmount().unwrap();
                }
                again.pos = 0;
                let after = ukis(&mut again);
                again.pos = 0;
                let fs = fatfs::FileSystem::new(&mut again, fatfs::FsOptions::new()).unwrap();
                let mut names = FatDir(&fs).names().unwrap();
                names.sort();
                assert_eq!(
                    names,
                    ["berth-1.0.0.efi", "berth-2.0.0+3.efi"],
                    "cut after write {cut}: the second install left other files"
                );
                assert_eq!(after["berth-2.0.0+3.efi"], new_uki);
            }
        }
    }
}
