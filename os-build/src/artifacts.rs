//! External artifacts (DESIGN.md, "Base system"): binaries Debian does not ship (kubelet,
//! ecr-credential-provider, aws-iam-authenticator, ...), pinned by the variant with a URL and
//! a sha256 per architecture.
//!
//! Each is taken from the local cache (`<cache>/<arch>/<name>`) or downloaded into it, and
//! installed only when its sha256 matches. One that cannot be had stops the build with a
//! message naming it, the expected hash and how to provide it, unless the build allows
//! missing artifacts: then the image records what is missing in [`MISSING_FILE`] (served by
//! the settings API at `/os`) and the manifest does too.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::rootfs;
use crate::variant::Artifact;

/// What an image built with missing artifacts says is missing (JSON list of [`Missing`]).
pub const MISSING_FILE: &str = "/usr/share/berth/missing-artifacts.json";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error("{count} external artifact(s) missing:\n{details}")]
    Missing { count: usize, details: String },
    #[error("cannot read artifact {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot store artifact {name} in the cache at {path}")]
    Cache {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install artifact {name} at {path}")]
    Install {
        name: String,
        path: String,
        #[source]
        source: rootfs::RootfsError,
    },
    #[error("artifact {path} changed after it was verified (sha256 now {sha256})")]
    Changed { path: PathBuf, sha256: String },
}

/// An artifact the image does not have, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    pub name: String,
    /// Where it would be in the image.
    pub path: String,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub reason: String,
}

/// An artifact the image has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    pub name: String,
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// The outcome for every artifact of the variant (goes into manifest.json).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub installed: Vec<Installed>,
    pub missing: Vec<Missing>,
}

/// Artifacts checked and ready to install: the verified cache file of each present one.
#[derive(Debug, Default)]
pub struct Prepared {
    ready: Vec<(Artifact, PathBuf, String, u64)>,
    missing: Vec<Missing>,
}

/// Downloads a URL to a file (a trait so tests run without a network).
pub trait Fetch {
    /// Writes the body of `url` to `dest`; the error says why it failed.
    fn fetch(&self, url: &str, dest: &Path) -> Result<(), String>;
}

/// Downloads with the host's `curl`, as os-build runs its other host tools (mmdebstrap,
/// qemu-img): TLS, redirects (GitHub releases) and proxies come for free.
pub struct Curl;

impl Fetch for Curl {
    fn fetch(&self, url: &str, dest: &Path) -> Result<(), String> {
        let out = Command::new("curl")
            .args([
                "--fail",
                "--silent",
                "--show-error",
                "--location",
                "--connect-timeout",
                "20",
                "--max-time",
                "900",
                "--output",
            ])
            .arg(dest)
            .arg(url)
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        // curl prefixes its own messages with `curl:`.
        Err(stderr.trim().to_string())
    }
}

/// Where the cache keeps `name` for `arch`.
pub fn cache_path(cache_dir: &Path, arch: Arch, name: &str) -> PathBuf {
    cache_dir.join(arch.name()).join(name)
}

fn sha256_file(path: &Path) -> Result<(String, u64), ArtifactsError> {
    let read = |source| ArtifactsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Finds, downloads and verifies every artifact before anything is built, so a missing one
/// stops the build at once. With `allow_missing`, missing ones are recorded instead.
pub fn prepare(
    artifacts: &[Artifact],
    arch: Arch,
    cache_dir: &Path,
    fetch: &dyn Fetch,
    allow_missing: bool,
) -> Result<Prepared, ArtifactsError> {
    let mut prepared = Prepared::default();
    for artifact in artifacts {
        let cache = cache_path(cache_dir, arch, &artifact.name);
        match find(artifact, arch, &cache, fetch)? {
            Ok((sha256, size)) => {
                tracing::info!(name = %artifact.name, path = %cache.display(), "external artifact verified");
                prepared.ready.push((artifact.clone(), cache, sha256, size));
            }
            Err(reason) => {
                let source = artifact.source.as_ref();
                prepared.missing.push(Missing {
                    name: artifact.name.clone(),
                    path: artifact.path.clone(),
                    url: source.map(|s| s.url.clone()),
                    sha256: source.and_then(|s| s.sha256.clone()),
                    reason,
                });
            }
        }
    }
    if !prepared.missing.is_empty() && !allow_missing {
        let details = prepared
            .missing
            .iter()
            .map(|m| match &m.sha256 {
                Some(sha256) => format!(
                    "  `{}` ({arch}): {}; expected sha256 {sha256}. Put the file at {} or pass \
                     --allow-missing-artifacts to build an image without it",
                    m.name,
                    m.reason,
                    cache_path(cache_dir, arch, &m.name).display(),
                ),
                // Without a pinned hash a cached file would not be installed either.
                None => format!(
                    "  `{}` ({arch}): {}. Pass --allow-missing-artifacts to build an image \
                     without it",
                    m.name, m.reason
                ),
            })
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ArtifactsError::Missing {
            count: prepared.missing.len(),
            details,
        });
    }
    for m in &prepared.missing {
        tracing::warn!(name = %m.name, reason = %m.reason, "external artifact missing; the image will say so");
    }
    Ok(prepared)
}

/// The verified cache file of one artifact (its sha256 and size), or why there is none.
fn find(
    artifact: &Artifact,
    arch: Arch,
    cache: &Path,
    fetch: &dyn Fetch,
) -> Result<Result<(String, u64), String>, ArtifactsError> {
    let Some(source) = &artifact.source else {
        return Ok(Err(format!("the variant lists no URL for {arch}")));
    };
    let Some(expected) = &source.sha256 else {
        // Never install a binary nobody pinned: the variant must carry a checked hash.
        return Ok(Err(
            "the variant has no verified sha256 for it; add one after checking upstream's checksum"
                .into(),
        ));
    };
    if cache.is_file() {
        let (got, size) = sha256_file(cache)?;
        if &got != expected {
            return Ok(Err(format!(
                "{} has sha256 {got}, not the expected one",
                cache.display()
            )));
        }
        return Ok(Ok((got, size)));
    }
    let cache_err = |source| ArtifactsError::Cache {
        name: artifact.name.clone(),
        path: cache.to_owned(),
        source,
    };
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).map_err(cache_err)?;
    }
    // Downloaded under a temporary name: an interrupted download never looks cached.
    let tmp = cache.with_extension("download");
    tracing::info!(name = %artifact.name, url = %source.url, "downloading external artifact");
    if let Err(why) = fetch.fetch(&source.url, &tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Ok(Err(format!("download of {} failed: {why}", source.url)));
    }
    let (got, size) = sha256_file(&tmp)?;
    if &got != expected {
        let _ = std::fs::remove_file(&tmp);
        return Ok(Err(format!(
            "the download of {} has sha256 {got}, not the expected one",
            source.url
        )));
    }
    std::fs::rename(&tmp, cache).map_err(cache_err)?;
    Ok(Ok((got, size)))
}

impl Prepared {
    /// Copies the verified artifacts into the root and, when some are missing, writes
    /// [`MISSING_FILE`]; returns the report for the manifest.
    pub fn install(&self, root: &Path) -> Result<Report, ArtifactsError> {
        let mut report = Report {
            installed: Vec::new(),
            missing: self.missing.clone(),
        };
        for (artifact, cache, sha256, size) in &self.ready {
            let install_err = |source| ArtifactsError::Install {
                name: artifact.name.clone(),
                path: artifact.path.clone(),
                source,
            };
            let data = std::fs::read(cache).map_err(|source| ArtifactsError::Read {
                path: cache.clone(),
                source,
            })?;
            // Hashed again as written: the cache could change between prepare and install.
            let got = hex::encode(Sha256::digest(&data));
            if &got != sha256 {
                return Err(ArtifactsError::Changed {
                    path: cache.clone(),
                    sha256: got,
                });
            }
            rootfs::write_file(root, &artifact.path, &data, artifact.mode).map_err(install_err)?;
            report.installed.push(Installed {
                name: artifact.name.clone(),
                path: artifact.path.clone(),
                sha256: sha256.clone(),
                size: *size,
            });
        }
        if !report.missing.is_empty() {
            let json = serde_json::to_string_pretty(&report.missing)
                .expect("a list of plain structs serializes")
                + "\n";
            rootfs::write_file(root, MISSING_FILE, json.as_bytes(), 0o644).map_err(|source| {
                ArtifactsError::Install {
                    name: "missing-artifacts record".into(),
                    path: MISSING_FILE.into(),
                    source,
                }
            })?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant::ArtifactSource;
    use std::cell::RefCell;
    use std::os::unix::fs::PermissionsExt;

    /// Serves fixed bodies by URL and records what was asked.
    #[derive(Default)]
    struct FakeFetch {
        bodies: Vec<(&'static str, &'static [u8])>,
        asked: RefCell<Vec<String>>,
    }

    impl Fetch for FakeFetch {
        fn fetch(&self, url: &str, dest: &Path) -> Result<(), String> {
            self.asked.borrow_mut().push(url.to_owned());
            match self.bodies.iter().find(|(u, _)| *u == url) {
                Some((_, body)) => std::fs::write(dest, body).map_err(|e| e.to_string()),
                None => Err("Could not resolve host".into()),
            }
        }
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn artifact(name: &str, url: &str, sha256: Option<String>) -> Artifact {
        Artifact {
            name: name.into(),
            path: format!("/usr/bin/{name}"),
            mode: 0o755,
            source: Some(ArtifactSource {
                url: url.into(),
                sha256,
            }),
        }
    }

    #[test]
    fn cached_file_with_the_right_hash_is_installed_without_download() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let body = b"kubelet binary";
        let path = cache_path(&cache, Arch::X86_64, "kubelet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
        let fetch = FakeFetch::default();
        let a = artifact("kubelet", "https://dl.example/kubelet", Some(sha(body)));
        let prepared = prepare(&[a], Arch::X86_64, &cache, &fetch, false).unwrap();
        assert!(fetch.asked.borrow().is_empty());
        let root = dir.path().join("root");
        let report = prepared.install(&root).unwrap();
        assert_eq!(report.installed.len(), 1);
        assert!(report.missing.is_empty());
        let installed = root.join("usr/bin/kubelet");
        assert_eq!(std::fs::read(&installed).unwrap(), body);
        let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!root.join(MISSING_FILE.trim_start_matches('/')).exists());
    }

    #[test]
    fn download_lands_in_the_cache_and_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let body: &'static [u8] = b"authenticator";
        let fetch = FakeFetch {
            bodies: vec![("https://dl.example/a", body)],
            ..Default::default()
        };
        let a = artifact(
            "aws-iam-authenticator",
            "https://dl.example/a",
            Some(sha(body)),
        );
        let prepared = prepare(&[a], Arch::Aarch64, &cache, &fetch, false).unwrap();
        assert_eq!(
            std::fs::read(cache.join("aarch64/aws-iam-authenticator")).unwrap(),
            body
        );
        let report = prepared.install(&dir.path().join("root")).unwrap();
        assert_eq!(report.installed[0].sha256, sha(body));
        assert_eq!(report.installed[0].size, body.len() as u64);
    }

    #[test]
    fn failed_download_names_the_artifact_hash_and_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let expected = sha(b"x");
        let a = artifact(
            "kubelet",
            "https://dl.k8s.io/kubelet",
            Some(expected.clone()),
        );
        let err = prepare(&[a], Arch::X86_64, &cache, &FakeFetch::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`kubelet` (x86_64)"), "{err}");
        assert!(err.contains(&expected), "{err}");
        assert!(
            err.contains("download of https://dl.k8s.io/kubelet failed"),
            "{err}"
        );
        assert!(
            err.contains(&cache.join("x86_64/kubelet").display().to_string()),
            "{err}"
        );
        assert!(err.contains("--allow-missing-artifacts"), "{err}");
        assert!(!cache.join("x86_64/kubelet").exists());
        assert!(!cache.join("x86_64/kubelet.download").exists());
    }

    #[test]
    fn wrong_hash_in_the_cache_or_download_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let path = cache_path(&cache, Arch::X86_64, "kubelet");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"tampered").unwrap();
        let a = artifact("kubelet", "https://dl.example/k", Some(sha(b"genuine")));
        let err = prepare(&[a], Arch::X86_64, &cache, &FakeFetch::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&sha(b"tampered")), "{err}");
        assert!(err.contains(&sha(b"genuine")), "{err}");

        let fetch = FakeFetch {
            bodies: vec![("https://dl.example/e", b"evil")],
            ..Default::default()
        };
        let b = artifact("ecr", "https://dl.example/e", Some(sha(b"good")));
        let err = prepare(&[b], Arch::X86_64, &cache, &fetch, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the download of https://dl.example/e has sha256"),
            "{err}"
        );
        assert!(
            !cache.join("x86_64/ecr").exists(),
            "a bad download is not cached"
        );
    }

    #[test]
    fn unhashed_artifact_is_never_fetched_or_installed() {
        let dir = tempfile::tempdir().unwrap();
        let fetch = FakeFetch {
            bodies: vec![("https://dl.example/n", b"n")],
            ..Default::default()
        };
        let a = artifact("n", "https://dl.example/n", None);
        let err = prepare(&[a], Arch::X86_64, dir.path(), &fetch, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no verified sha256"), "{err}");
        assert!(
            !err.contains("Put the file at"),
            "a cached file would not help: {err}"
        );
        assert!(fetch.asked.borrow().is_empty());
    }

    #[test]
    fn allowed_missing_artifacts_are_recorded_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let body: &'static [u8] = b"present";
        let fetch = FakeFetch {
            bodies: vec![("https://dl.example/p", body)],
            ..Default::default()
        };
        let mut no_arch = artifact("arm-only", "https://dl.example/x", None);
        no_arch.source = None;
        let list = [
            artifact("present", "https://dl.example/p", Some(sha(body))),
            artifact("kubelet", "https://dl.example/k", Some(sha(b"k"))),
            no_arch,
        ];
        let prepared = prepare(&list, Arch::X86_64, &cache, &fetch, true).unwrap();
        let root = dir.path().join("root");
        let report = prepared.install(&root).unwrap();
        assert_eq!(report.installed.len(), 1);
        let names: Vec<_> = report.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["kubelet", "arm-only"]);
        let text =
            std::fs::read_to_string(root.join(MISSING_FILE.trim_start_matches('/'))).unwrap();
        let recorded: Vec<Missing> = serde_json::from_str(&text).unwrap();
        assert_eq!(recorded, report.missing);
        assert_eq!(recorded[0].path, "/usr/bin/kubelet");
        assert_eq!(recorded[0].sha256.as_deref(), Some(sha(b"k").as_str()));
        assert!(
            recorded[1].reason.contains("no URL for x86_64"),
            "{:?}",
            recorded[1]
        );
        assert!(!root.join("usr/bin/kubelet").exists());
    }
}
