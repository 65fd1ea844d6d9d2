//! Golden tests: the real binary renders each case under `tests/fixtures/<case>` (settings,
//! facts, optional kubelet version) and its output tree must equal `tests/golden/<case>`
//! byte for byte, modes included (`FILES` lists `mode path`). Error cases under
//! `tests/fixtures/errors/<case>` must fail, say what `error.txt` says, and write nothing.
//!
//! `BERTH_UPDATE_GOLDEN=1 cargo test -p cluster-agent --test golden` rewrites the golden
//! files from the current output; review the diff before committing it. Without it, the
//! tests only compare.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cases(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.join("settings.json").is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

fn render(case: &Path, out: &Path) -> Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-cluster-agent"));
    cmd.arg("render")
        .arg("--settings")
        .arg(case.join("settings.json"))
        .arg("--facts")
        .arg(case.join("facts.json"))
        .arg("--out")
        .arg(out);
    if let Ok(v) = fs::read_to_string(case.join("kubelet-version")) {
        cmd.arg("--kubelet-version").arg(v.trim());
    }
    cmd.output().context("run berth-cluster-agent")
}

/// Every file under `root`: relative path -> (mode, contents).
fn tree(root: &Path) -> Result<BTreeMap<String, (u32, Vec<u8>)>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let mode = fs::metadata(&path)?.permissions().mode() & 0o7777;
            files.insert(rel, (mode, fs::read(&path)?));
        }
    }
    Ok(files)
}

fn listing(files: &BTreeMap<String, (u32, Vec<u8>)>) -> String {
    files
        .iter()
        .map(|(path, (mode, _))| format!("{mode:04o} {path}\n"))
        .collect()
}

fn check_case(case: &Path, update: bool) -> Result<()> {
    let name = case.file_name().context("case name")?.to_string_lossy();
    let out = tempfile::tempdir()?;
    let result = render(case, out.path())?;
    if !result.status.success() {
        bail!(
            "{name}: render failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    let actual = tree(out.path())?;
    if let Some((_, contents)) = actual.get("etc/ecs/ecs.config") {
        check_ecs_names(&name, contents)?;
    }
    let golden_dir = crate_dir().join("tests/golden").join(&*name);
    if update {
        let _ = fs::remove_dir_all(&golden_dir);
        for (path, (_, contents)) in &actual {
            let target = golden_dir.join(path);
            fs::create_dir_all(target.parent().context("parent")?)?;
            fs::write(&target, contents)?;
        }
        fs::write(golden_dir.join("FILES"), listing(&actual))?;
        return Ok(());
    }
    let expected_listing = fs::read_to_string(golden_dir.join("FILES"))
        .with_context(|| format!("{name}: no golden FILES; run with BERTH_UPDATE_GOLDEN=1"))?;
    assert_eq!(
        listing(&actual),
        expected_listing,
        "{name}: files or modes differ"
    );
    for (path, (_, contents)) in &actual {
        let expected = fs::read(golden_dir.join(path))
            .with_context(|| format!("{name}: read golden {path}"))?;
        assert_eq!(
            String::from_utf8_lossy(contents),
            String::from_utf8_lossy(&expected),
            "{name}: {path} differs from its golden file"
        );
    }
    Ok(())
}

/// Every variable the binary wrote to ecs.config is one the targeted ECS agent reads
/// (`data/ecs-agent-environment.txt`): a misspelt name is a setting that silently does nothing.
fn check_ecs_names(case: &str, config: &[u8]) -> Result<()> {
    let list = fs::read_to_string(crate_dir().join("data/ecs-agent-environment.txt"))?;
    let reads: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for line in String::from_utf8_lossy(config).lines() {
        let name = line.split_once('=').map_or(line, |(n, _)| n);
        if !reads.contains(&name) {
            bail!("{case}: ecs.config sets {name}, which the ECS agent does not read");
        }
    }
    Ok(())
}

#[test]
fn rendered_files_match_the_golden_files() -> Result<()> {
    let update = std::env::var_os("BERTH_UPDATE_GOLDEN").is_some();
    let cases = cases(&crate_dir().join("tests/fixtures"))?;
    assert!(
        cases.len() >= 8,
        "expected at least 8 cases, found {}",
        cases.len()
    );
    for case in cases {
        check_case(&case, update)?;
    }
    Ok(())
}

#[test]
fn bad_input_fails_with_the_key_and_writes_nothing() -> Result<()> {
    let cases = cases(&crate_dir().join("tests/fixtures/errors"))?;
    assert!(
        cases.len() >= 10,
        "expected at least 10 cases, found {}",
        cases.len()
    );
    for case in cases {
        let name = case
            .file_name()
            .context("case name")?
            .to_string_lossy()
            .into_owned();
        let want = fs::read_to_string(case.join("error.txt"))?;
        let out = tempfile::tempdir()?;
        let result = render(&case, out.path())?;
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{name}: must fail");
        assert!(
            stderr.contains(want.trim()),
            "{name}: stderr does not say '{}':\n{stderr}",
            want.trim()
        );
        assert!(tree(out.path())?.is_empty(), "{name}: wrote files");
    }
    Ok(())
}
