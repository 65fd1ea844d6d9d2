//! The pod sandbox ("pause") image of Kubernetes variants (`[pause-image]` in the variant):
//! Berth's own pause program (`os-build/pause/pause.c`), compiled statically for the image's
//! architecture with the host's C compiler (the cross gcc for aarch64), packed as a one-layer
//! OCI image archive (an OCI image layout in a tar, what `ctr images import` takes) and
//! written into the root. At boot `berth-pause-image.service` imports it into containerd's
//! `k8s.io` namespace under its name, and containerd's `sandbox_image` names it, so the first
//! pod of a node never pulls `registry.k8s.io/pause` (nodes without internet egress could not).
//!
//! The archive is reproducible: fixed modes, owners and times (SOURCE_DATE_EPOCH), JSON with
//! sorted keys, and the compiler's output depends on the source only (stripped, no paths).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::arch::Arch;
use crate::variant::PauseImage;

/// The pause program's source, relative to the workspace.
pub const SOURCE: &str = "os-build/pause/pause.c";
/// Where the program sits in the image's single layer (the image's entrypoint).
const ENTRYPOINT: &str = "pause";

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("cannot run the C compiler {compiler} for the pause program")]
    Spawn {
        compiler: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{compiler} failed to build {source_file} ({status}); see its output above")]
    Compile {
        compiler: String,
        source_file: PathBuf,
        status: String,
    },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pause image name '{0}' must be <repository>:<tag>, e.g. localhost/berth/pause:1")]
    Name(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PauseError {
    let path = path.to_owned();
    move |source| PauseError::Io {
        action,
        path,
        source,
    }
}

/// The C compiler for `arch`: the host's own, or Debian's cross compiler.
pub fn compiler(arch: Arch) -> String {
    if Arch::host() == Some(arch) {
        "cc".to_owned()
    } else {
        format!("{}-gcc", arch.triplet())
    }
}

/// Compiles the pause program for `arch` into `out_dir`; returns the binary's path.
pub fn compile(workspace: &Path, arch: Arch, out_dir: &Path) -> Result<PathBuf, PauseError> {
    let source = workspace.join(SOURCE);
    let binary = out_dir.join(ENTRYPOINT);
    let compiler = compiler(arch);
    let status = Command::new(&compiler)
        .args(["-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .map_err(|source| PauseError::Spawn {
            compiler: compiler.clone(),
            source,
        })?;
    if !status.success() {
        return Err(PauseError::Compile {
            compiler,
            source_file: source,
            status: status.to_string(),
        });
    }
    Ok(binary)
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Pretty JSON with a final newline (sorted keys: serde_json's map).
fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(value).expect("a JSON value serializes");
    out.push(b'\n');
    out
}

/// A tar of `entries` (path, mode, contents) with fixed owners and times; directories end
/// with `/` and have no contents.
fn tar(entries: &[(&str, u32, &[u8])], mtime: u64) -> Result<Vec<u8>, std::io::Error> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, contents) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_mode(*mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder.append_data(&mut header, path, std::io::empty())?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(contents.len() as u64);
            builder.append_data(&mut header, path, *contents)?;
        }
    }
    builder.into_inner()
}

/// The OCI image archive holding `program` as `/pause`, named `name`, for `arch`.
pub fn archive(program: &[u8], name: &str, arch: Arch, mtime: u64) -> Result<Vec<u8>, PauseError> {
    let (_, tag) = name
        .rsplit_once(':')
        .filter(|(repo, tag)| !repo.is_empty() && !tag.is_empty() && !tag.contains('/'))
        .ok_or_else(|| PauseError::Name(name.to_owned()))?;
    let in_memory = |e| PauseError::Io {
        action: "pack the pause image",
        path: PathBuf::from(name),
        source: e,
    };
    let layer = tar(&[(ENTRYPOINT, 0o755, program)], mtime).map_err(in_memory)?;
    let config = to_bytes(&json!({
        "architecture": arch.debian(),
        "os": "linux",
        "config": { "Entrypoint": [format!("/{ENTRYPOINT}")] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
    }));
    let manifest = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest(&layer),
            "size": layer.len(),
        }],
    }));
    // ctr names an imported image after io.containerd.image.name (the full reference); other
    // tools read the OCI ref.name (the tag).
    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "platform": { "architecture": arch.debian(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }));
    let layout = to_bytes(&json!({ "imageLayoutVersion": "1.0.0" }));
    let blob = |bytes: &[u8]| format!("blobs/sha256/{}", &digest(bytes)["sha256:".len()..]);
    let (layer_path, config_path, manifest_path) = (blob(&layer), blob(&config), blob(&manifest));
    tar(
        &[
            ("oci-layout", 0o644, &layout),
            ("index.json", 0o644, &index),
            ("blobs/", 0o755, &[]),
            ("blobs/sha256/", 0o755, &[]),
            (&config_path, 0o644, &config),
            (&layer_path, 0o644, &layer),
            (&manifest_path, 0o644, &manifest),
        ],
        mtime,
    )
    .map_err(in_memory)
}

/// Builds the variant's pause image for `arch` and writes it into `root` at its path.
pub fn install(
    root: &Path,
    workspace: &Path,
    arch: Arch,
    image: &PauseImage,
    mtime: u64,
) -> Result<(), anyhow::Error> {
    let work = tempfile::tempdir().map_err(io("create a folder for", Path::new("pause")))?;
    let binary = compile(workspace, arch, work.path())?;
    let program = std::fs::read(&binary).map_err(io("read", &binary))?;
    let bytes = archive(&program, &image.name, arch, mtime)?;
    crate::rootfs::write_file(root, &image.path, &bytes, 0o644)?;
    tracing::info!(
        name = %image.name,
        path = %image.path,
        program_bytes = program.len(),
        archive_bytes = bytes.len(),
        "pause image written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("os-build sits in the workspace")
            .to_owned()
    }

    fn entries(tar_bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        let mut archive = tar::Archive::new(tar_bytes);
        for entry in archive.entries().expect("a tar") {
            let mut entry = entry.expect("an entry");
            let path = entry.path().expect("a path").to_string_lossy().into_owned();
            let mode = entry.header().mode().expect("a mode");
            assert_eq!(entry.header().mtime().expect("a time"), 1_700_000_000);
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).expect("contents");
            out.insert(path, (mode, bytes));
        }
        out
    }

    fn json_of(files: &BTreeMap<String, (u32, Vec<u8>)>, path: &str) -> Value {
        serde_json::from_slice(&files[path].1).expect(path)
    }

    fn blob_json(files: &BTreeMap<String, (u32, Vec<u8>)>, digest: &Value) -> Value {
        let hex = digest
            .as_str()
            .expect("digest")
            .trim_start_matches("sha256:");
        json_of(files, &format!("blobs/sha256/{hex}"))
    }

    #[test]
    fn the_archive_is_an_oci_layout_whose_digests_hold() {
        let program = b"\x7fELF not really";
        let bytes = archive(
            program,
            "localhost/berth/pause:1",
            Arch::Aarch64,
            1_700_000_000,
        )
        .unwrap();
        let files = entries(&bytes);
        for (path, (_, contents)) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(digest(contents), format!("sha256:{hex}"), "{path}");
            }
        }
        let index = json_of(&files, "index.json");
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "localhost/berth/pause:1"
        );
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "1"
        );
        assert_eq!(entry["platform"]["architecture"], "arm64");
        let manifest = blob_json(&files, &entry["digest"]);
        let config = blob_json(&files, &manifest["config"]["digest"]);
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["config"]["Entrypoint"], json!(["/pause"]));
        let layer_digest = &manifest["layers"][0]["digest"];
        assert_eq!(&config["rootfs"]["diff_ids"][0], layer_digest);
        let hex = layer_digest.as_str().unwrap().trim_start_matches("sha256:");
        let layer = entries(&files[&format!("blobs/sha256/{hex}")].1);
        assert_eq!(layer["pause"], (0o755, program.to_vec()));
        assert_eq!(json_of(&files, "oci-layout")["imageLayoutVersion"], "1.0.0");
        // Same inputs, same bytes.
        assert_eq!(
            bytes,
            archive(
                program,
                "localhost/berth/pause:1",
                Arch::Aarch64,
                1_700_000_000
            )
            .unwrap()
        );
    }

    #[test]
    fn a_name_without_a_tag_is_refused() {
        for name in ["localhost/berth/pause", "pause:", "localhost:5000/pause"] {
            let e = archive(b"x", name, Arch::X86_64, 0).unwrap_err();
            assert!(e.to_string().contains("<repository>:<tag>"), "{name}: {e}");
        }
    }

    /// The real program, built as os-build builds it for this host: static, and it waits
    /// until the runtime stops it, then exits 0.
    #[test]
    fn the_pause_program_is_static_and_stops_on_sigterm() {
        let Some(arch) = Arch::host() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let binary = compile(&workspace(), arch, dir.path()).unwrap();
        let elf = std::fs::read(&binary).unwrap();
        let parsed = goblin::elf::Elf::parse(&elf).unwrap();
        assert!(parsed.interpreter.is_none(), "statically linked");
        assert!(parsed.libraries.is_empty(), "no shared libraries");
        let version = Command::new(&binary).arg("-v").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&version.stdout), "berth-pause 1\n");
        let mut child = Command::new(&binary)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "pauses until signalled"
        );
        // SIGTERM through kill(1): os-build has no signal crate, and this is a test.
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{status}");
    }
}
