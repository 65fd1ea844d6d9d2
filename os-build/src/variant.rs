//! The variant format: `variants/<name>/variant.toml` plus the shared fragments it includes,
//! merged into one typed [`Variant`].
//!
//! Every file is parsed on its own first (unknown keys are errors), so an error names the
//! file and the key. Fragments merge in include order, the variant file last: lists are
//! appended (duplicates dropped), scalars and maps of the later file win.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::Arch;

#[derive(Debug, thiserror::Error)]
pub enum VariantError {
    #[error("variant `{name}` not found: no {path}")]
    NotFound { name: String, path: PathBuf },
    #[error("cannot read variant file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid variant file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("variant file {path}: include cycle through {include}")]
    IncludeCycle { path: PathBuf, include: PathBuf },
    #[error("variant `{variant}`: key `{key}` is required (in {path} or a fragment it includes)")]
    Missing {
        variant: String,
        path: PathBuf,
        key: &'static str,
    },
    #[error("variant `{variant}`: key `{key}`: {reason}")]
    Invalid {
        variant: String,
        key: String,
        reason: String,
    },
}

/// One TOML file: a variant or a shared fragment. Every field is optional here.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Fragment {
    description: Option<String>,
    /// Files merged in before this one, relative to this file.
    #[serde(default)]
    include: Vec<PathBuf>,
    /// Production variants ship no shell, interpreter or package manager.
    production: Option<bool>,
    /// Test images (`qemu-test`) may hold test-only programs such as berth-api-bridge.
    test: Option<bool>,
    #[serde(default)]
    packages: Vec<String>,
    kernel: Option<KernelFragment>,
    partitions: Option<PartitionsFragment>,
    #[serde(default)]
    formats: Vec<ImageFormat>,
    /// Berth programs installed into the image (see `programs.rs`).
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    prune: Vec<String>,
    systemd: Option<SystemdFragment>,
    /// Settings default fragments (TOML), relative to this file.
    #[serde(default)]
    settings: Vec<PathBuf>,
    /// Service metadata (setting prefixes -> services -> configuration files), relative to
    /// this file; the last fragment that sets it wins.
    metadata: Option<PathBuf>,
    /// Files written into the root: path in the image -> content.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// External artifacts: binaries Debian does not ship (see `artifacts.rs`).
    #[serde(default)]
    artifacts: Vec<ArtifactFragment>,
    /// The SELinux policy (see `selinux.rs`); absent: the image has none.
    selinux: Option<SelinuxFragment>,
    /// The pod sandbox image os-build builds into the root (see `pause.rs`).
    pause_image: Option<PauseImage>,
}

/// `[pause-image]`: the image reference containerd knows the pause image by, and where in
/// the root its OCI archive goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PauseImage {
    pub name: String,
    pub path: String,
}

/// `[selinux]`: the CIL sources of the policy and its contexts files, relative to the
/// fragment that names them, and the mode the image boots in.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SelinuxFragment {
    mode: Option<SelinuxMode>,
    #[serde(default)]
    policy: Vec<PathBuf>,
    file_contexts: Option<PathBuf>,
    lxc_contexts: Option<PathBuf>,
}

/// The mode `/etc/selinux/config` sets (`SELINUX=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelinuxMode {
    Enforcing,
    Permissive,
}

/// The image's SELinux policy, after merging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selinux {
    pub mode: SelinuxMode,
    /// CIL files, compiled together by secilc.
    pub policy: Vec<PathBuf>,
    /// Labels of the image's files (mkfs.erofs) and of the paths systemd labels at boot.
    pub file_contexts: PathBuf,
    /// The contexts containerd gives containers (`contexts/lxc_contexts`).
    pub lxc_contexts: Option<PathBuf>,
}

/// `[[artifacts]]`: a binary from outside Debian, pinned by URL and sha256 per architecture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ArtifactFragment {
    name: String,
    /// Absolute path in the image.
    path: String,
    /// File mode (TOML integer, e.g. `0o755`).
    mode: u32,
    #[serde(default, rename = "x86_64")]
    x86_64: Option<ArtifactSource>,
    #[serde(default)]
    aarch64: Option<ArtifactSource>,
}

/// Where one architecture's build of an artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactSource {
    pub url: String,
    /// Lowercase hex sha256. Absent when nobody has verified one yet: such an artifact is
    /// never installed (os-build installs no unhashed binary) and counts as missing.
    pub sha256: Option<String>,
}

/// An external artifact of the variant, for the architecture being built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Artifact {
    pub name: String,
    pub path: String,
    pub mode: u32,
    /// None when the variant lists no source for this architecture.
    pub source: Option<ArtifactSource>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KernelFragment {
    /// Debian package; `{arch}` is replaced by Debian's architecture name.
    package: Option<String>,
    /// Modules loaded by early-init (their dependencies are added).
    #[serde(default)]
    initramfs_modules: Vec<String>,
    /// Module paths (under `kernel/`) removed from the root, glob patterns.
    #[serde(default)]
    prune_modules: Vec<String>,
    #[serde(default)]
    cmdline: Vec<String>,
    /// Extra command line per architecture (`x86_64`, `aarch64`).
    #[serde(default)]
    cmdline_arch: BTreeMap<Arch, Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PartitionsFragment {
    esp_mib: Option<u64>,
    root_mib: Option<u64>,
    verity_mib: Option<u64>,
    private_mib: Option<u64>,
    data_mib: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SystemdFragment {
    #[serde(default)]
    enable: Vec<String>,
    #[serde(default)]
    mask: Vec<String>,
    default_target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageFormat {
    /// `disk.raw` (always written: the other formats are made from it).
    Raw,
    /// `disk.qcow2`.
    Qcow2,
    /// `disk.ova`: OVF descriptor + manifest + streamOptimized VMDK, for vSphere.
    Ova,
    /// `disk.raw.gz`: the raw disk, gzip-compressed, for bare metal.
    #[serde(rename = "raw.gz")]
    RawGz,
}

/// A variant after merging: everything os-build needs, all present.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub name: String,
    pub description: String,
    pub production: bool,
    pub packages: Vec<String>,
    pub kernel_package: String,
    pub initramfs_modules: Vec<String>,
    pub prune_modules: Vec<String>,
    pub cmdline: Vec<String>,
    pub partitions: Partitions,
    pub formats: Vec<ImageFormat>,
    pub programs: Vec<String>,
    pub prune: Vec<String>,
    pub systemd_enable: Vec<String>,
    pub systemd_mask: Vec<String>,
    pub default_target: String,
    pub settings: Vec<PathBuf>,
    pub metadata: Option<PathBuf>,
    pub files: BTreeMap<String, String>,
    /// External artifacts for this architecture, in listing order.
    pub artifacts: Vec<Artifact>,
    /// The SELinux policy, if the variant has one.
    pub selinux: Option<Selinux>,
    /// The pod sandbox image to build, on Kubernetes variants.
    pub pause_image: Option<PauseImage>,
    /// Every file merged, in order; the variant file last.
    pub sources: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Partitions {
    pub esp_mib: u64,
    pub root_mib: u64,
    pub verity_mib: u64,
    pub private_mib: u64,
    pub data_mib: u64,
}

/// Loads `variants_dir/<name>/variant.toml` for `arch`.
pub fn load(variants_dir: &Path, name: &str, arch: Arch) -> Result<Variant, VariantError> {
    let path = variants_dir.join(name).join("variant.toml");
    if !path.is_file() {
        return Err(VariantError::NotFound {
            name: name.to_owned(),
            path,
        });
    }
    let mut files = Vec::new();
    collect(&path, &mut Vec::new(), &mut files)?;
    let mut merged = Fragment::default();
    let mut cmdline_arch: Vec<String> = Vec::new();
    let mut sources = Vec::new();
    for (file, fragment) in files {
        if let Some(kernel) = &fragment.kernel {
            if let Some(extra) = kernel.cmdline_arch.get(&arch) {
                append(&mut cmdline_arch, extra);
            }
        }
        merge(&mut merged, fragment);
        sources.push(file);
    }
    resolve(name, &path, merged, cmdline_arch, arch, sources)
}

/// Parses `path` and, depth first, the files it includes; `stack` detects cycles.
fn collect(
    path: &Path,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<(PathBuf, Fragment)>,
) -> Result<(), VariantError> {
    let text = std::fs::read_to_string(path).map_err(|source| VariantError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut fragment: Fragment = toml::from_str(&text).map_err(|err| VariantError::Parse {
        path: path.to_owned(),
        message: one_line(&err),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fragment.settings = fragment.settings.iter().map(|p| dir.join(p)).collect();
    fragment.metadata = fragment.metadata.as_ref().map(|p| dir.join(p));
    if let Some(se) = &mut fragment.selinux {
        se.policy = se.policy.iter().map(|p| dir.join(p)).collect();
        se.file_contexts = se.file_contexts.as_ref().map(|p| dir.join(p));
        se.lxc_contexts = se.lxc_contexts.as_ref().map(|p| dir.join(p));
    }
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    stack.push(canonical);
    for include in std::mem::take(&mut fragment.include) {
        let included = dir.join(&include);
        let key = included
            .canonicalize()
            .map_err(|source| VariantError::Read {
                path: included.clone(),
                source,
            })?;
        if stack.contains(&key) {
            return Err(VariantError::IncludeCycle {
                path: path.to_owned(),
                include,
            });
        }
        // A fragment included twice (diamond) is merged once.
        if out
            .iter()
            .any(|(p, _)| p.canonicalize().ok().as_ref() == Some(&key))
        {
            continue;
        }
        collect(&included, stack, out)?;
    }
    stack.pop();
    out.push((path.to_owned(), fragment));
    Ok(())
}

/// toml's messages span several lines with a source excerpt; keep the key and position.
fn one_line(err: &toml::de::Error) -> String {
    let message = err.message().trim().to_owned();
    match err.span() {
        Some(span) => format!("{message} (at byte {})", span.start),
        None => message,
    }
}

fn append<T: Clone + PartialEq>(into: &mut Vec<T>, items: &[T]) {
    for item in items {
        if !into.contains(item) {
            into.push(item.clone());
        }
    }
}

fn merge(into: &mut Fragment, from: Fragment) {
    if from.description.is_some() {
        into.description = from.description;
    }
    if from.production.is_some() {
        into.production = from.production;
    }
    if from.test.is_some() {
        into.test = from.test;
    }
    append(&mut into.packages, &from.packages);
    append(&mut into.formats, &from.formats);
    append(&mut into.programs, &from.programs);
    append(&mut into.prune, &from.prune);
    append(&mut into.settings, &from.settings);
    if from.metadata.is_some() {
        into.metadata = from.metadata;
    }
    into.files.extend(from.files);
    // A later fragment listing an artifact of the same name replaces it (a variant pins a
    // different version than the shared fragment).
    for artifact in from.artifacts {
        match into.artifacts.iter_mut().find(|a| a.name == artifact.name) {
            Some(slot) => *slot = artifact,
            None => into.artifacts.push(artifact),
        }
    }
    if let Some(kernel) = from.kernel {
        let k = into.kernel.get_or_insert_with(KernelFragment::default);
        if kernel.package.is_some() {
            k.package = kernel.package;
        }
        append(&mut k.initramfs_modules, &kernel.initramfs_modules);
        append(&mut k.prune_modules, &kernel.prune_modules);
        append(&mut k.cmdline, &kernel.cmdline);
    }
    if let Some(parts) = from.partitions {
        let p = into
            .partitions
            .get_or_insert_with(PartitionsFragment::default);
        p.esp_mib = parts.esp_mib.or(p.esp_mib);
        p.root_mib = parts.root_mib.or(p.root_mib);
        p.verity_mib = parts.verity_mib.or(p.verity_mib);
        p.private_mib = parts.private_mib.or(p.private_mib);
        p.data_mib = parts.data_mib.or(p.data_mib);
    }
    if from.pause_image.is_some() {
        into.pause_image = from.pause_image;
    }
    if let Some(se) = from.selinux {
        let s = into.selinux.get_or_insert_with(SelinuxFragment::default);
        if se.mode.is_some() {
            s.mode = se.mode;
        }
        append(&mut s.policy, &se.policy);
        if se.file_contexts.is_some() {
            s.file_contexts = se.file_contexts;
        }
        if se.lxc_contexts.is_some() {
            s.lxc_contexts = se.lxc_contexts;
        }
    }
    if let Some(systemd) = from.systemd {
        let s = into.systemd.get_or_insert_with(SystemdFragment::default);
        append(&mut s.enable, &systemd.enable);
        append(&mut s.mask, &systemd.mask);
        if systemd.default_target.is_some() {
            s.default_target = systemd.default_target;
        }
    }
}

fn resolve(
    name: &str,
    path: &Path,
    merged: Fragment,
    cmdline_arch: Vec<String>,
    arch: Arch,
    sources: Vec<PathBuf>,
) -> Result<Variant, VariantError> {
    let missing = |key| VariantError::Missing {
        variant: name.to_owned(),
        path: path.to_owned(),
        key,
    };
    let invalid = |key: &str, reason: String| VariantError::Invalid {
        variant: name.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let kernel = merged.kernel.ok_or_else(|| missing("kernel"))?;
    let parts = merged.partitions.ok_or_else(|| missing("partitions"))?;
    let partitions = Partitions {
        esp_mib: parts.esp_mib.ok_or_else(|| missing("partitions.esp-mib"))?,
        root_mib: parts
            .root_mib
            .ok_or_else(|| missing("partitions.root-mib"))?,
        verity_mib: parts
            .verity_mib
            .ok_or_else(|| missing("partitions.verity-mib"))?,
        private_mib: parts
            .private_mib
            .ok_or_else(|| missing("partitions.private-mib"))?,
        data_mib: parts
            .data_mib
            .ok_or_else(|| missing("partitions.data-mib"))?,
    };
    // FAT32 needs at least 65525 clusters; with 512-byte clusters that is 33 MiB.
    if partitions.esp_mib < 40 {
        return Err(invalid(
            "partitions.esp-mib",
            format!(
                "{} MiB is too small for FAT32, use 40 or more",
                partitions.esp_mib
            ),
        ));
    }
    for (key, mib) in [
        ("partitions.root-mib", partitions.root_mib),
        ("partitions.verity-mib", partitions.verity_mib),
        ("partitions.private-mib", partitions.private_mib),
        ("partitions.data-mib", partitions.data_mib),
    ] {
        if mib == 0 {
            return Err(invalid(key, "must be at least 1".into()));
        }
    }
    let kernel_package = kernel
        .package
        .ok_or_else(|| missing("kernel.package"))?
        .replace("{arch}", arch.debian());
    if merged.formats.is_empty() {
        return Err(missing("formats"));
    }
    let mut cmdline = kernel.cmdline;
    append(&mut cmdline, &cmdline_arch);
    for arg in &cmdline {
        if boot_contract::cmdline::is_reserved(arg) {
            return Err(invalid(
                "kernel.cmdline",
                format!("`{arg}`: berth.* arguments are set by os-build per slot"),
            ));
        }
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            return Err(invalid(
                "kernel.cmdline",
                format!("`{arg}`: one argument per list item, without spaces"),
            ));
        }
    }
    for file in merged.files.keys() {
        if !file.starts_with('/') || file.contains("..") {
            return Err(invalid(
                &format!("files.\"{file}\""),
                "must be an absolute path inside the image, without `..`".into(),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for program in &merged.programs {
        if !seen.insert(program) {
            continue;
        }
        let found = crate::programs::find(program);
        if found.is_some_and(|p| p.test_only) && merged.test != Some(true) {
            return Err(invalid(
                "programs",
                format!("`{program}` is for test images only; set `test = true` in a test variant"),
            ));
        }
        if found.is_none() {
            return Err(invalid(
                "programs",
                format!(
                    "unknown program `{program}`; known: {}",
                    crate::programs::names().join(", ")
                ),
            ));
        }
    }
    let artifacts = resolve_artifacts(&merged.artifacts, arch, &invalid)?;
    let selinux = match merged.selinux {
        None => None,
        Some(se) => {
            if se.policy.is_empty() {
                return Err(missing("selinux.policy"));
            }
            Some(Selinux {
                mode: se.mode.ok_or_else(|| missing("selinux.mode"))?,
                policy: se.policy,
                file_contexts: se
                    .file_contexts
                    .ok_or_else(|| missing("selinux.file-contexts"))?,
                lxc_contexts: se.lxc_contexts,
            })
        }
    };
    if let Some(image) = &merged.pause_image {
        if !image.path.starts_with('/') || image.path.contains("..") || image.path.ends_with('/') {
            return Err(invalid(
                "pause-image.path",
                "must be an absolute file path inside the image, without `..`".into(),
            ));
        }
        let tagged = image
            .name
            .rsplit_once(':')
            .is_some_and(|(repo, tag)| !repo.is_empty() && !tag.is_empty() && !tag.contains('/'));
        if !tagged {
            return Err(invalid(
                "pause-image.name",
                format!("`{}` must be <repository>:<tag>", image.name),
            ));
        }
    }
    let systemd = merged.systemd.unwrap_or_default();
    Ok(Variant {
        name: name.to_owned(),
        description: merged.description.unwrap_or_default(),
        production: merged.production.ok_or_else(|| missing("production"))?,
        packages: merged.packages,
        kernel_package,
        initramfs_modules: kernel.initramfs_modules,
        prune_modules: kernel.prune_modules,
        cmdline,
        partitions,
        formats: merged.formats,
        programs: merged.programs,
        prune: merged.prune,
        systemd_enable: systemd.enable,
        systemd_mask: systemd.mask,
        default_target: systemd
            .default_target
            .unwrap_or_else(|| "multi-user.target".into()),
        settings: merged.settings,
        metadata: merged.metadata,
        files: merged.files,
        artifacts,
        selinux,
        pause_image: merged.pause_image,
        sources,
    })
}

fn resolve_artifacts(
    listed: &[ArtifactFragment],
    arch: Arch,
    invalid: &dyn Fn(&str, String) -> VariantError,
) -> Result<Vec<Artifact>, VariantError> {
    let mut out = Vec::new();
    for a in listed {
        let key = |field: &str| format!("artifacts.{}.{field}", a.name);
        if a.name.is_empty()
            || !a
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(invalid(
                "artifacts.name",
                format!("`{}`: use letters, digits, `-`, `_` or `.`", a.name),
            ));
        }
        if !a.path.starts_with('/') || a.path.contains("..") || a.path.ends_with('/') {
            return Err(invalid(
                &key("path"),
                "must be an absolute file path inside the image, without `..`".into(),
            ));
        }
        if a.mode > 0o7777 {
            return Err(invalid(
                &key("mode"),
                format!("{:o} is not a file mode", a.mode),
            ));
        }
        let source = match arch {
            Arch::X86_64 => a.x86_64.clone(),
            Arch::Aarch64 => a.aarch64.clone(),
        };
        if let Some(src) = &source {
            if !(src.url.starts_with("https://") || src.url.starts_with("http://")) {
                return Err(invalid(
                    &key(&format!("{arch}.url")),
                    format!("`{}` is not an http(s) URL", src.url),
                ));
            }
            if let Some(sha) = &src.sha256 {
                if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(invalid(
                        &key(&format!("{arch}.sha256")),
                        format!("`{sha}` is not 64 lowercase hex digits"),
                    ));
                }
            }
        }
        out.push(Artifact {
            name: a.name.clone(),
            path: a.path.clone(),
            mode: a.mode,
            source,
        });
    }
    Ok(out)
}

/// Names of the variants under `variants_dir` (folders holding a `variant.toml`).
pub fn list(variants_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(variants_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("variant.toml").is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, text: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    const BASE: &str = r#"
        packages = ["systemd", "udev"]
        formats = ["raw"]
        [kernel]
        package = "linux-image-{arch}"
        initramfs-modules = ["virtio_blk"]
        cmdline = ["panic=10"]
        cmdline-arch.x86_64 = ["console=ttyS0"]
        cmdline-arch.aarch64 = ["console=ttyAMA0"]
        [partitions]
        esp-mib = 64
        root-mib = 512
        verity-mib = 8
        private-mib = 16
        data-mib = 64
    "#;

    #[test]
    fn merges_fragments_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "shared/base.toml", BASE);
        write(
            dir.path(),
            "v/variant.toml",
            r#"
            include = ["../shared/base.toml"]
            production = true
            packages = ["chrony", "systemd"]
            formats = ["qcow2"]
            [partitions]
            root-mib = 600
            "#,
        );
        let v = load(dir.path(), "v", Arch::Aarch64).unwrap();
        assert_eq!(v.packages, ["systemd", "udev", "chrony"]);
        assert_eq!(v.formats, [ImageFormat::Raw, ImageFormat::Qcow2]);
        assert_eq!(v.kernel_package, "linux-image-arm64");
        assert_eq!(v.cmdline, ["panic=10", "console=ttyAMA0"]);
        assert_eq!(v.partitions.root_mib, 600);
        assert_eq!(v.partitions.esp_mib, 64);
        assert_eq!(v.sources.len(), 2);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "shared/base.toml",
            &format!("{BASE}\nsize = 3\n"),
        );
        write(
            dir.path(),
            "v/variant.toml",
            "include = [\"../shared/base.toml\"]\nproduction = true\n",
        );
        let err = load(dir.path(), "v", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("shared/base.toml"), "{err}");
        assert!(err.contains("size"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "v/variant.toml",
            &format!("{BASE}\nproduction = \"yes\"\n"),
        );
        let err = load(dir.path(), "v", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("v/variant.toml"), "{err}");
        assert!(err.contains("production") || err.contains("bool"), "{err}");
    }

    #[test]
    fn missing_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "v/variant.toml", BASE);
        let err = load(dir.path(), "v", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("`production`"), "{err}");
    }

    #[test]
    fn berth_cmdline_is_reserved() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "v/variant.toml",
            &BASE.replace("panic=10", "berth.slot=b"),
        );
        std::fs::write(
            dir.path().join("v/variant.toml"),
            format!(
                "production = false\n{}",
                BASE.replace("panic=10", "berth.slot=b")
            ),
        )
        .unwrap();
        let err = load(dir.path(), "v", Arch::X86_64).unwrap_err().to_string();
        assert!(err.contains("kernel.cmdline"), "{err}");
    }

    #[test]
    fn include_cycle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "include = [\"v/variant.toml\"]\n");
        write(dir.path(), "v/variant.toml", "include = [\"../a.toml\"]\n");
        let err = load(dir.path(), "v", Arch::X86_64).unwrap_err();
        assert!(matches!(err, VariantError::IncludeCycle { .. }), "{err}");
    }

    #[test]
    fn missing_variant_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), "nope", Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn repository_variants_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../variants");
        let names = list(&dir);
        assert!(names.contains(&"qemu".to_owned()), "{names:?}");
        for name in names {
            for arch in Arch::ALL {
                let v = load(&dir, &name, arch).unwrap_or_else(|e| panic!("{name}/{arch}: {e}"));
                assert!(!v.packages.is_empty());
            }
        }
    }

    #[test]
    fn every_kubernetes_variant_ships_a_pause_image() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../variants");
        for name in list(&dir) {
            let v = load(&dir, &name, Arch::X86_64).unwrap();
            // Kubernetes variants are the ones with containerd but no docker.
            let kubernetes = v.packages.iter().any(|p| p == "containerd")
                && !v.packages.iter().any(|p| p == "docker.io");
            assert_eq!(v.pause_image.is_some(), kubernetes, "{name}");
        }
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "shared/base.toml", BASE);
        for (image, key) in [
            (
                "name = \"pause\"\npath = \"/usr/share/p.tar\"",
                "pause-image.name",
            ),
            (
                "name = \"p:1\"\npath = \"usr/share/p.tar\"",
                "pause-image.path",
            ),
        ] {
            write(
                tmp.path(),
                "v/variant.toml",
                &format!("include = [\"../shared/base.toml\"]\n[pause-image]\n{image}\n"),
            );
            let e = load(tmp.path(), "v", Arch::X86_64).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn test_only_programs_stay_out_of_shipped_variants() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../variants");
        for name in list(&dir) {
            let v = load(&dir, &name, Arch::X86_64).unwrap();
            let has_bridge = v.programs.iter().any(|p| p == "berth-api-bridge");
            // Test images are named `*-test` (qemu-test, aws-k8s-1.33-test).
            assert_eq!(
                has_bridge,
                name.ends_with("-test"),
                "{name}: {:?}",
                v.programs
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "shared/base.toml", BASE);
        write(
            tmp.path(),
            "v/variant.toml",
            "include = [\"../shared/base.toml\"]\nproduction = true\nprograms = [\"berth-api-bridge\"]\n",
        );
        let err = load(tmp.path(), "v", Arch::X86_64).unwrap_err();
        assert!(err.to_string().contains("test images only"), "{err}");
    }

    #[test]
    fn artifacts_merge_by_name_and_resolve_per_arch() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        write(
            dir.path(),
            "shared/base.toml",
            &format!(
                r#"{BASE}
                [[artifacts]]
                name = "kubelet"
                path = "/usr/bin/kubelet"
                mode = 0o755
                x86_64 = {{ url = "https://dl.example/old", sha256 = "{sha}" }}
                "#
            ),
        );
        write(
            dir.path(),
            "v/variant.toml",
            &format!(
                r#"include = ["../shared/base.toml"]
                production = true
                [[artifacts]]
                name = "kubelet"
                path = "/usr/bin/kubelet"
                mode = 0o755
                x86_64 = {{ url = "https://dl.example/new", sha256 = "{sha}" }}
                aarch64 = {{ url = "https://dl.example/arm" }}
                "#
            ),
        );
        let v = load(dir.path(), "v", Arch::X86_64).unwrap();
        assert_eq!(v.artifacts.len(), 1, "{:?}", v.artifacts);
        let source = v.artifacts[0].source.as_ref().unwrap();
        assert_eq!(source.url, "https://dl.example/new");
        assert_eq!(v.artifacts[0].mode, 0o755);
        let arm = load(dir.path(), "v", Arch::Aarch64).unwrap();
        assert_eq!(arm.artifacts[0].source.as_ref().unwrap().sha256, None);
    }

    #[test]
    fn bad_artifact_entries_name_the_key() {
        let cases = [
            ("path = \"usr/bin/k\"", "artifacts.k.path"),
            (
                "path = \"/usr/bin/k\"\nx86_64 = { url = \"ftp://x\" }",
                "artifacts.k.x86_64.url",
            ),
            (
                "path = \"/usr/bin/k\"\nx86_64 = { url = \"https://x\", sha256 = \"ABC\" }",
                "artifacts.k.x86_64.sha256",
            ),
        ];
        for (body, key) in cases {
            let dir = tempfile::tempdir().unwrap();
            write(
                dir.path(),
                "v/variant.toml",
                &format!(
                    "production = true\n{BASE}\n[[artifacts]]\nname = \"k\"\nmode = 0o755\n{body}\n"
                ),
            );
            let err = load(dir.path(), "v", Arch::X86_64).unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    /// boot-config mounts config drives (vfat, iso9660) and the OVF environment CD-ROM
    /// (docs/boot-config.md): the kernel loads these and the CD-ROM drivers on demand, so no
    /// variant that runs boot-config may prune them.
    #[test]
    fn config_drive_modules_are_kept() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../variants");
        let needed = [
            "fs/fat",
            "fs/isofs",
            "fs/nls",
            "drivers/cdrom",
            "drivers/scsi",
            "drivers/ata",
        ];
        for name in list(&dir) {
            for arch in Arch::ALL {
                let v = load(&dir, &name, arch).unwrap();
                if !v.programs.iter().any(|p| p == "boot-config") {
                    continue;
                }
                for m in &v.prune_modules {
                    let m = m.trim_end_matches('/');
                    for n in needed {
                        assert!(
                            !(n == m || n.starts_with(&format!("{m}/")) || m.starts_with(n)),
                            "{name}/{arch}: prune-modules entry {m:?} removes {n}, needed for config drives"
                        );
                    }
                }
            }
        }
    }
}
