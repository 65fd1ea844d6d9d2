//! Benchmark: writing a slot (zstd decompress + sha256 + write + fsync, what `prepare` does)
//! against a raw sequential write of the same bytes to the same file (1 MiB writes + fsync),
//! in the same run, interleaved. Also times the read-back verification.
//!
//! ```text
//! cargo run --release -p updater --example bench_slot_write -- [IMAGE] [--runs N] [--dir DIR]
//! ```
//! IMAGE defaults to build/qemu-test/x86_64/root.erofs when it exists, else 256 MiB of
//! generated, half-compressible data. DIR (where the stand-in partition goes) defaults to the
//! system temporary folder; put it on the disk you care about.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use updater::manifest::{Compression, Image};

fn main() -> Result<()> {
    let mut image: Option<PathBuf> = None;
    let mut runs = 3usize;
    let mut dir = std::env::temp_dir();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().context("--runs needs a number")?.parse()?,
            "--dir" => dir = args.next().context("--dir needs a folder")?.into(),
            other => image = Some(other.into()),
        }
    }
    let default = PathBuf::from("build/qemu-test/x86_64/root.erofs");
    let (label, data) = match image.or_else(|| default.exists().then_some(default)) {
        Some(path) => (
            path.display().to_string(),
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None => ("generated 256 MiB".to_owned(), generated(256 << 20)),
    };
    let work =
        tempfile::tempdir_in(&dir).with_context(|| format!("cannot use {}", dir.display()))?;
    let staged = work.path().join("image.zst");
    let started = Instant::now();
    std::fs::write(&staged, zstd::encode_all(&data[..], 6)?)?;
    let compress_time = started.elapsed();
    let compressed = std::fs::metadata(&staged)?.len();
    let meta = Image {
        target: "image.zst".into(),
        compression: Compression::Zstd,
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(&data)),
    };
    let part = work.path().join("partition");
    std::fs::write(&part, vec![0u8; data.len()])?;

    let mut raw = Vec::new();
    let mut slot = Vec::new();
    let mut verify = Vec::new();
    for _ in 0..runs {
        raw.push(raw_write(&part, &data)?);
        let stats = updater::slot::write_image("root", &staged, &meta, &part)?;
        slot.push(stats.elapsed);
        let t = Instant::now();
        updater::slot::verify_image("root", &meta, &part)?;
        verify.push(t.elapsed());
    }
    let mib = data.len() as f64 / f64::from(1 << 20);
    let row = |name: &str, times: &mut Vec<Duration>| {
        times.sort();
        let best = times[0].as_secs_f64();
        let median = times[times.len() / 2].as_secs_f64();
        println!(
            "| {name:<37} | {best:>8.3} | {median:>8.3} | {:>9.0} |",
            mib / median
        );
        median
    };
    println!("image: {label}, {mib:.1} MiB, zstd -6 -> {:.1} MiB in {:.2} s; partition file in {}; {runs} runs",
        compressed as f64 / f64::from(1 << 20),
        compress_time.as_secs_f64(),
        dir.display());
    println!(
        "| {:<37} | {:>8} | {:>8} | {:>9} |",
        "what", "best s", "median s", "MiB/s"
    );
    println!("|{:-<39}|{:-<10}|{:-<10}|{:-<11}|", "", "", "", "");
    let raw_median = row("raw sequential write + fsync", &mut raw);
    let slot_median = row("slot write (zstd+write+fsync)", &mut slot);
    row("read-back sha256 verify (after write)", &mut verify);
    println!(
        "slot write / raw write throughput ratio (median): {:.2}",
        raw_median / slot_median
    );
    Ok(())
}

fn raw_write(path: &std::path::Path, data: &[u8]) -> Result<Duration> {
    let started = Instant::now();
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk)?;
    }
    f.sync_all()?;
    Ok(started.elapsed())
}

/// Alternating 4 KiB blocks of noise and of a repeated byte.
fn generated(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            } else {
                (i / 4096) as u8
            }
        })
        .collect()
}
