//! dm-verity hash tree, computed here (sha256, format version 1) and written in the layout
//! `veritysetup` reads: a 4096-byte block holding the superblock, then the tree levels from
//! the top (one block) down to the level that hashes the data blocks.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const BLOCK_SIZE: u64 = boot_contract::cmdline::VERITY_BLOCK_SIZE;
const DIGEST_SIZE: usize = 32;
const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / DIGEST_SIZE as u64;
/// The tree starts after the superblock block, where early-init looks for it by default.
pub const HASH_START_BLOCK: u64 = boot_contract::cmdline::DEFAULT_HASH_START;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("cannot read data image {path}")]
    ReadData {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data image {path} is {size} bytes, not a multiple of {BLOCK_SIZE}")]
    Unaligned { path: PathBuf, size: u64 },
    #[error("data image {path} is empty")]
    Empty { path: PathBuf },
    #[error("salt is {0} bytes, at most 256 fit the superblock")]
    SaltTooLong(usize),
    #[error("cannot write hash tree {path}")]
    WriteHash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the kernel needs to open the device, and what goes on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    pub root_hash: [u8; DIGEST_SIZE],
    pub salt: Vec<u8>,
    pub data_blocks: u64,
    /// Size of the hash file: superblock block + tree.
    pub hash_bytes: u64,
}

impl VerityParams {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }
}

/// Computes the hash tree of `data` and writes superblock + tree to `hash_out`.
pub fn format(
    data: &Path,
    hash_out: &Path,
    salt: &[u8],
    uuid: Uuid,
) -> Result<VerityParams, VerityError> {
    if salt.len() > 256 {
        return Err(VerityError::SaltTooLong(salt.len()));
    }
    let read_err = |source| VerityError::ReadData {
        path: data.to_owned(),
        source,
    };
    let mut file = File::open(data).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size == 0 {
        return Err(VerityError::Empty {
            path: data.to_owned(),
        });
    }
    if size % BLOCK_SIZE != 0 {
        return Err(VerityError::Unaligned {
            path: data.to_owned(),
            size,
        });
    }
    let data_blocks = size / BLOCK_SIZE;
    let salted = Sha256::new_with_prefix(salt);

    // Level 0: one digest per data block, hashed in parallel chunks.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut level0 = Vec::with_capacity(padded_len(data_blocks));
    let mut chunk = vec![0u8; 8 << 20];
    loop {
        let filled = read_full(&mut file, &mut chunk).map_err(read_err)?;
        if filled == 0 {
            break;
        }
        hash_blocks_parallel(&salted, &chunk[..filled], &mut level0);
    }
    pad_to_block(&mut level0);
    let mut top = level0;
    let mut blocks_at_level = data_blocks;
    // dm-verity's level count: the smallest n with (data_blocks - 1) >> (7 * n) == 0.
    while blocks_at_level > 1 {
        let next_blocks = blocks_at_level.div_ceil(HASHES_PER_BLOCK);
        if next_blocks == 1 {
            levels.push(top);
            break;
        }
        let mut next = Vec::with_capacity(padded_len(next_blocks));
        hash_blocks_parallel(&salted, &top, &mut next);
        pad_to_block(&mut next);
        levels.push(std::mem::replace(&mut top, next));
        blocks_at_level = next_blocks;
    }
    let root_hash: [u8; DIGEST_SIZE] = match levels.last() {
        Some(top_block) => salted.clone().chain_update(top_block).finalize().into(),
        None => {
            // A single data block: the root hash is that block's digest.
            let mut block = vec![0u8; BLOCK_SIZE as usize];
            let mut f = File::open(data).map_err(read_err)?;
            f.read_exact(&mut block).map_err(read_err)?;
            salted.clone().chain_update(&block).finalize().into()
        }
    };

    let write_err = |source| VerityError::WriteHash {
        path: hash_out.to_owned(),
        source,
    };
    let mut out = BufWriter::new(File::create(hash_out).map_err(write_err)?);
    out.write_all(&superblock(data_blocks, salt, uuid))
        .map_err(write_err)?;
    let mut hash_bytes = BLOCK_SIZE;
    for level in levels.iter().rev() {
        out.write_all(level).map_err(write_err)?;
        hash_bytes += level.len() as u64;
    }
    out.into_inner()
        .map_err(|e| write_err(e.into_error()))?
        .sync_all()
        .map_err(write_err)?;
    Ok(VerityParams {
        root_hash,
        salt: salt.to_vec(),
        data_blocks,
        hash_bytes,
    })
}

fn padded_len(blocks: u64) -> usize {
    (blocks.div_ceil(HASHES_PER_BLOCK) * BLOCK_SIZE) as usize
}

fn pad_to_block(level: &mut Vec<u8>) {
    let len = level.len().next_multiple_of(BLOCK_SIZE as usize);
    level.resize(len, 0);
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Appends sha256(salt || block) for each 4096-byte block of `input` to `out`, using every
/// core: the bottom level is most of the work and its blocks are independent.
fn hash_blocks_parallel(salted: &Sha256, input: &[u8], out: &mut Vec<u8>) {
    let blocks = input.len() / BLOCK_SIZE as usize;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(blocks.max(1));
    let per_thread = blocks.div_ceil(threads);
    let start = out.len();
    out.resize(start + blocks * DIGEST_SIZE, 0);
    let digests = &mut out[start..];
    std::thread::scope(|scope| {
        for (in_part, out_part) in input
            .chunks(per_thread * BLOCK_SIZE as usize)
            .zip(digests.chunks_mut(per_thread * DIGEST_SIZE))
        {
            scope.spawn(move || {
                for (block, digest) in in_part
                    .chunks(BLOCK_SIZE as usize)
                    .zip(out_part.chunks_mut(DIGEST_SIZE))
                {
                    digest.copy_from_slice(&salted.clone().chain_update(block).finalize());
                }
            });
        }
    });
}

/// The on-disk superblock `veritysetup format` writes (struct verity_sb, little endian),
/// padded to a whole hash block.
fn superblock(data_blocks: u64, salt: &[u8], uuid: Uuid) -> Vec<u8> {
    let mut sb = Vec::with_capacity(BLOCK_SIZE as usize);
    sb.extend_from_slice(b"verity\0\0");
    sb.extend_from_slice(&1u32.to_le_bytes()); // version
    sb.extend_from_slice(&1u32.to_le_bytes()); // hash_type: salt first, digests padded
    sb.extend_from_slice(uuid.as_bytes());
    let mut algorithm = [0u8; 32];
    algorithm[..6].copy_from_slice(b"sha256");
    sb.extend_from_slice(&algorithm);
    sb.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes()); // data_block_size
    sb.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes()); // hash_block_size
    sb.extend_from_slice(&data_blocks.to_le_bytes());
    sb.extend_from_slice(&(salt.len() as u16).to_le_bytes());
    sb.extend_from_slice(&[0u8; 6]);
    let mut salt_field = [0u8; 256];
    salt_field[..salt.len()].copy_from_slice(salt);
    sb.extend_from_slice(&salt_field);
    sb.resize(BLOCK_SIZE as usize, 0);
    sb
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn data_file(dir: &Path, blocks: u64) -> PathBuf {
        let path = dir.join("data.img");
        // Deterministic but not repetitive content, so a wrong block order changes the hash.
        let mut bytes = Vec::with_capacity((blocks * BLOCK_SIZE) as usize);
        let mut x: u32 = 0x1234_5678;
        while bytes.len() < (blocks * BLOCK_SIZE) as usize {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn veritysetup_verify(data: &Path, hash: &Path, root: &str) -> bool {
        let status = Command::new("veritysetup")
            .args(["verify", "--hash-offset=0"])
            .arg(data)
            .arg(hash)
            .arg(root)
            .status()
            .expect("veritysetup is needed by this test: run scripts/host-deps.sh");
        status.success()
    }

    #[test]
    fn veritysetup_accepts_tree_of_several_levels() {
        let dir = tempfile::tempdir().unwrap();
        // 128 * 130 blocks: three levels, the bottom one not a whole block.
        let data = data_file(dir.path(), 128 * 130 + 7);
        let hash = dir.path().join("hash.img");
        let salt = [7u8; 32];
        let params = format(&data, &hash, &salt, Uuid::from_u128(1)).unwrap();
        assert_eq!(params.data_blocks, 128 * 130 + 7);
        assert!(veritysetup_verify(&data, &hash, &params.root_hash_hex()));
    }

    #[test]
    fn veritysetup_rejects_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_file(dir.path(), 300);
        let hash = dir.path().join("hash.img");
        let params = format(&data, &hash, b"salt", Uuid::from_u128(2)).unwrap();
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[4096 * 200 + 17] ^= 1;
        std::fs::write(&data, bytes).unwrap();
        assert!(!veritysetup_verify(&data, &hash, &params.root_hash_hex()));
    }

    #[test]
    fn matches_veritysetup_format_root_hash() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_file(dir.path(), 1000);
        let theirs = dir.path().join("theirs.img");
        let salt = "00112233445566778899aabbccddeeff";
        let out = Command::new("veritysetup")
            .args(["format", "--salt", salt, "--uuid"])
            .arg(Uuid::from_u128(3).to_string())
            .arg(&data)
            .arg(&theirs)
            .output()
            .expect("veritysetup is needed by this test: run scripts/host-deps.sh");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let their_root = text
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap()
            .trim()
            .to_owned();
        let ours = dir.path().join("ours.img");
        let params = format(
            &data,
            &ours,
            &hex::decode(salt).unwrap(),
            Uuid::from_u128(3),
        )
        .unwrap();
        assert_eq!(params.root_hash_hex(), their_root);
        // Same superblock and tree, byte for byte.
        assert_eq!(
            std::fs::read(&ours).unwrap(),
            std::fs::read(&theirs).unwrap()
        );
    }

    #[test]
    fn single_block_and_bad_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_file(dir.path(), 1);
        let hash = dir.path().join("h");
        let params = format(&data, &hash, b"", Uuid::nil()).unwrap();
        assert_eq!(params.hash_bytes, BLOCK_SIZE);
        std::fs::write(&data, [0u8; 100]).unwrap();
        assert!(matches!(
            format(&data, &hash, b"", Uuid::nil()),
            Err(VerityError::Unaligned { .. })
        ));
        assert!(matches!(
            format(&data, &hash, &[0u8; 300], Uuid::nil()),
            Err(VerityError::SaltTooLong(300))
        ));
    }
}
