//! `os-build bench-verity`: our hash tree against `veritysetup format` on the same image,
//! in the same run, same disk.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use uuid::Uuid;

use crate::cli::BenchVerityArgs;
use crate::verity;

pub fn verity(args: &BenchVerityArgs) -> Result<()> {
    let size = std::fs::metadata(&args.image)
        .with_context(|| format!("cannot read {}", args.image.display()))?
        .len();
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    let salt = [0x42u8; 32];
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut our_root = String::new();
    let mut their_root = String::new();
    for _ in 0..args.runs.max(1) {
        // Alternate, so page cache state favours neither.
        let t = Instant::now();
        let params = verity::format(&args.image, &dir.path().join("ours"), &salt, Uuid::nil())?;
        ours.push(t.elapsed());
        our_root = params.root_hash_hex();

        let t = Instant::now();
        let out = Command::new("veritysetup")
            .args([
                "format",
                "--uuid",
                &Uuid::nil().to_string(),
                "--salt",
                &hex::encode(salt),
            ])
            .arg(&args.image)
            .arg(dir.path().join("theirs"))
            .output()
            .context("cannot run veritysetup (apt-get install cryptsetup-bin)")?;
        theirs.push(t.elapsed());
        if !out.status.success() {
            bail!(
                "veritysetup format failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        their_root = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap_or_default()
            .trim()
            .to_owned();
    }
    if our_root != their_root {
        bail!("root hashes differ: os-build {our_root}, veritysetup {their_root}");
    }
    let mib = size as f64 / (1 << 20) as f64;
    let row = |name: &str, runs: &mut Vec<Duration>| {
        runs.sort();
        let best = runs[0].as_secs_f64();
        let median = runs[runs.len() / 2].as_secs_f64();
        println!(
            "{name:<22} {best:>8.3} {median:>9.3} {:>10.0}",
            mib / median
        );
        median
    };
    println!(
        "dm-verity hash tree of {} ({mib:.0} MiB), {} runs",
        args.image.display(),
        args.runs
    );
    println!(
        "{:<22} {:>8} {:>9} {:>10}",
        "implementation", "best s", "median s", "MiB/s"
    );
    let a = row("os-build (sha2)", &mut ours);
    let b = row("veritysetup format", &mut theirs);
    println!(
        "os-build / veritysetup throughput: {:.2}x (same root hash {our_root})",
        b / a
    );
    Ok(())
}
