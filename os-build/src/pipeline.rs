//! `os-build build`: runs the stages in order and writes the image folder
//! `<out>/<variant>/<arch>/` (disk.raw, disk.qcow2, root.erofs, verity.img, uki-{a,b}.efi,
//! initramfs.cpio, manifest.json, mmdebstrap.log).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use boot_contract::{Cmdline, Partition, Slot, Verity};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::arch::Arch;
use crate::cli::BuildArgs;
use crate::manifest::{self, Manifest};
use crate::progress::Progress;
use crate::variant::{ImageFormat, Variant};
use crate::{
    artifacts, binaries, disk, erofs, esp, hosttools, initramfs, lockfile, ova, programs,
    rootcache, rootfs, secureboot, selinux, uki, variant, verity,
};

/// Timestamps inside the image (files, EROFS, cpio) unless SOURCE_DATE_EPOCH says otherwise.
const DEFAULT_EPOCH: u64 = 1_735_689_600; // 2025-01-01

/// Variant default settings in the image (`NN-<name>.toml`, merged in order by apiserver).
pub const DEFAULTS_DIR: &str = "/usr/share/berth/defaults";
/// The trusted TUF root of the update repository in the image (`--update-root`).
pub const UPDATE_ROOT_FILE: &str = "/usr/share/berth/updates/root.json";
/// Service metadata in the image.
pub const METADATA_FILE: &str = "/usr/share/berth/metadata.toml";

/// Where a finished build is.
#[derive(Debug)]
pub struct Built {
    pub dir: PathBuf,
    pub root_hash: String,
}

/// The workspace root: `explicit`, or the nearest parent of the current folder holding
/// `variants/` and `Cargo.toml`.
pub fn find_workspace(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    let cwd = std::env::current_dir().context("cannot read the current folder")?;
    cwd.ancestors()
        .find(|d| d.join("variants").is_dir() && d.join("Cargo.toml").is_file())
        .map(Path::to_owned)
        .context("not inside the Berth workspace (no variants/ folder above the current one); pass --workspace")
}

pub fn build(args: &BuildArgs) -> Result<Built> {
    let workspace = find_workspace(args.workspace.as_deref())?;
    let arch = args.arch;
    let mut progress = Progress::new(13, args.plain);

    progress.step("checking host tools and the variant");
    hosttools::check(hosttools::BUILD_TOOLS)?;
    if Arch::host() != Some(arch) {
        hosttools::check(hosttools::CROSS_TOOLS)?;
    }
    if !nix_is_root() {
        bail!("os-build build must run as root (mmdebstrap --mode=root, device nodes in the root)");
    }
    let variant = variant::load(&workspace.join("variants"), &args.variant, arch)?;
    if variant.selinux.is_some() {
        hosttools::check(hosttools::SELINUX_TOOLS)?;
    }
    progress.add_steps(
        variant
            .formats
            .iter()
            .filter(|f| matches!(f, ImageFormat::Ova | ImageFormat::RawGz))
            .count(),
    );
    validate_version(&args.version)?;
    // Keys are checked before anything is written: a bad key leaves build/ as it was.
    let signing = secureboot::for_build(
        args.secure_boot_keys.as_deref(),
        args.allow_unsigned,
        &variant.name,
        variant.production,
    )?;
    let identity = format!("{}/{}/{}", variant.name, arch, args.version);
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_EPOCH);
    let out = workspace
        .join(&args.out)
        .join(&variant.name)
        .join(arch.name());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let work = out.join("work");

    progress.step("external artifacts");
    let external = artifacts::prepare(
        &variant.artifacts,
        arch,
        &args.artifacts_dir,
        &artifacts::Curl,
        args.allow_missing_artifacts,
    )?;

    progress.step(&format!("building Berth programs for {arch}"));
    let mut wanted: Vec<&programs::Program> = vec![&programs::EARLY_INIT];
    for name in &variant.programs {
        wanted.push(programs::find(name).expect("variant::load checked program names"));
    }
    let bin_dir = binaries::build(&workspace, arch, &wanted)?;

    progress.step(&format!(
        "assembling the Debian root ({} packages asked)",
        variant.packages.len()
    ));
    let root = work.join("root");
    let cache = args.cache_dir.join(arch.debian());
    let origin = rootcache::assemble(
        args.root_cache.as_deref(),
        &rootfs::MmdebstrapRun {
            arch,
            variant: &variant,
            mirror: &args.mirror,
            cache: &cache,
            target: &root,
            log: &out.join("mmdebstrap.log"),
            source_date_epoch: epoch,
        },
    )?;
    tracing::info!(?origin, "Debian root");

    progress.step("checking the package lock");
    let lock_path = workspace
        .join("variants")
        .join(&variant.name)
        .join(format!("{}.lock", arch.name()));
    let lock = lockfile::from_root(&root, &cache, rootfs::SUITE, arch.debian())?;
    if args.locked {
        let expected = lockfile::read(&lock_path)?;
        lockfile::check(&lock_path, &expected, &lock)?;
    } else {
        lockfile::write(&lock_path, &lock)?;
    }
    let lock_sha = hex::encode(Sha256::digest(
        std::fs::read(&lock_path)
            .with_context(|| format!("cannot read {}", lock_path.display()))?,
    ));

    progress.step("configuring and pruning the root");
    let (kernel_release, kernel_path) = rootfs::kernel_release(&root)?;
    let kernel = std::fs::read(&kernel_path)
        .with_context(|| format!("cannot read {}", kernel_path.display()))?;
    let efi_dir = root.join("usr/lib/systemd/boot/efi");
    let suffix = arch.efi_suffix();
    let systemd_boot = read(&efi_dir.join(format!("systemd-boot{suffix}.efi")))?;
    let stub_path = efi_dir.join(format!("linux{suffix}.efi.stub"));
    let stub = read(&stub_path)?;
    configure(
        &root,
        &variant,
        &workspace,
        &bin_dir,
        &args.version,
        args.update_root.as_deref(),
    )?;
    if let Some(image) = &variant.pause_image {
        crate::pause::install(&root, &workspace, arch, image, epoch)?;
    }
    let mut prune = variant.prune.clone();
    prune.extend(["boot/*".to_owned(), "usr/lib/systemd/boot".to_owned()]);
    let modules_root = format!("usr/lib/modules/{kernel_release}/kernel");
    prune.extend(
        variant
            .prune_modules
            .iter()
            .map(|m| format!("{modules_root}/{m}")),
    );
    rootfs::prune(&root, &prune)?;
    // After pruning (its patterns are for Debian's files), before the production check.
    let external_artifacts = external.install(&root)?;
    if let Some(keys) = &signing {
        // What the updater checks a new UKI against when Secure Boot is off.
        rootfs::write_file(&root, secureboot::IMAGE_DB, &keys.db_esl, 0o644)?;
    }
    rootfs::depmod(&root, &kernel_release)?;
    if variant.production {
        rootfs::check_production(&root)?;
    }
    let file_contexts = match &variant.selinux {
        Some(policy) => {
            selinux::install(&root, policy)?;
            Some(selinux::file_contexts_path(&root))
        }
        None => None,
    };

    progress.step("initramfs");
    let initrd_path = out.join("initramfs.cpio");
    let initrd_config = initramfs::build(
        &initramfs::InitramfsInput {
            root: &root,
            kernel_version: &kernel_release,
            modules: &variant.initramfs_modules,
            early_init: &bin_dir.join(programs::EARLY_INIT.name),
            triplet: arch.triplet(),
            mtime: epoch as u32,
        },
        &initrd_path,
    )?;
    tracing::info!(modules = initrd_config.modules.len(), "initramfs written");

    progress.step("EROFS root image");
    let root_img = out.join("root.erofs");
    let uuid = |what: &str| {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("berth:{identity}:{what}").as_bytes(),
        )
    };
    erofs::build(
        &root,
        &root_img,
        uuid("erofs"),
        epoch,
        file_contexts.as_deref(),
    )?;

    progress.step("dm-verity hash tree");
    let verity_img = out.join("verity.img");
    let salt = Sha256::digest(format!("berth-verity-salt:{identity}"));
    let params = verity::format(&root_img, &verity_img, &salt, uuid("verity"))?;

    progress.step("unified kernel images (slot a, slot b)");
    let initrd = read(&initrd_path)?;
    let mut cmdlines = BTreeMap::new();
    for slot in Slot::ALL {
        let cmdline = cmdline(&variant, slot, &params);
        let osrel = uki::os_release(&args.version, &variant.name, slot);
        let image = uki::assemble(
            &stub,
            stub_path.clone(),
            &[
                uki::Section {
                    name: ".osrel",
                    data: osrel.as_bytes(),
                },
                uki::Section {
                    name: ".cmdline",
                    data: cmdline.as_bytes(),
                },
                uki::Section {
                    name: ".uname",
                    data: kernel_release.as_bytes(),
                },
                uki::Section {
                    name: ".initrd",
                    data: &initrd,
                },
                uki::Section {
                    name: ".linux",
                    data: &kernel,
                },
            ],
        )?;
        let image = match &signing {
            Some(keys) => secureboot::sign(keys, &image, arch, &format!("uki-{slot}"), &out)?,
            None => image,
        };
        let path = out.join(format!("uki-{slot}.efi"));
        std::fs::write(&path, image).with_context(|| format!("cannot write {}", path.display()))?;
        cmdlines.insert(slot, cmdline);
    }

    progress.step("EFI system partition");
    let esp_img = out.join("esp.img");
    let uki_a = read(&out.join("uki-a.efi"))?;
    let systemd_boot = match &signing {
        Some(keys) => secureboot::sign(keys, &systemd_boot, arch, "systemd-boot", &out)?,
        None => systemd_boot,
    };
    esp::build(
        &esp_img,
        variant.partitions.esp_mib,
        &esp::EspContent {
            arch,
            systemd_boot: &systemd_boot,
            files: vec![(esp::initial_uki_path(&args.version), &uki_a)],
        },
    )?;

    progress.step("GPT disk image");
    let layout = disk::layout(arch, &variant.partitions, &identity);
    // Disks are written under a temporary name and renamed: a VM still running on the
    // previous build (qcow2 overlays point at these files) keeps its old inode.
    let raw = out.join("disk.raw");
    let raw_tmp = out.join("disk.raw.tmp");
    disk::write_raw(
        &raw_tmp,
        &layout,
        &[
            (Partition::Esp, &esp_img),
            (Partition::Root(Slot::A), &root_img),
            (Partition::Verity(Slot::A), &verity_img),
        ],
    )?;
    if variant.formats.contains(&ImageFormat::Qcow2) {
        let qcow2_tmp = out.join("disk.qcow2.tmp");
        qcow2(&raw_tmp, &qcow2_tmp)?;
        rename(&qcow2_tmp, &out.join("disk.qcow2"))?;
    }
    rename(&raw_tmp, &raw)?;
    if variant.formats.contains(&ImageFormat::RawGz) {
        progress.step("gzip-compressed raw disk");
        let tmp = out.join("disk.raw.gz.tmp");
        ova::write_raw_gz(&raw, &tmp)?;
        rename(&tmp, &out.join("disk.raw.gz"))?;
    }
    if variant.formats.contains(&ImageFormat::Ova) {
        progress.step("OVA (OVF descriptor, manifest, streamOptimized VMDK)");
        let name = format!("berth-{}-{}-{}", variant.name, arch, args.version);
        let tmp = out.join("disk.ova.tmp");
        ova::write_ova(
            &raw,
            &ova::Appliance {
                name: &name,
                description: &variant.description,
                version: &args.version,
                arch,
                cpus: 2,
                memory_mib: 4096,
            },
            &work,
            &tmp,
        )?;
        rename(&tmp, &out.join("disk.ova"))?;
    }

    match &signing {
        Some(keys) => secureboot::write_firmware_files(keys, arch, &out)?,
        None => secureboot::remove_firmware_files(&out)?,
    }

    progress.step("manifest");
    let mut artifacts = BTreeMap::new();
    let mut files = vec![
        "root.erofs",
        "verity.img",
        "uki-a.efi",
        "uki-b.efi",
        "initramfs.cpio",
        "esp.img",
        "disk.raw",
    ];
    if variant.formats.contains(&ImageFormat::Qcow2) {
        files.push("disk.qcow2");
    }
    if variant.formats.contains(&ImageFormat::RawGz) {
        files.push("disk.raw.gz");
    }
    if variant.formats.contains(&ImageFormat::Ova) {
        files.push("disk.ova");
    }
    if signing.is_some() {
        files.extend(secureboot::OUTPUT_FILES);
    }
    for name in files {
        let path = out.join(name);
        artifacts.insert(
            name.to_owned(),
            manifest::artifact(&path).with_context(|| format!("cannot hash {}", path.display()))?,
        );
    }
    let manifest = Manifest {
        version: args.version.clone(),
        variant: variant.name.clone(),
        arch: arch.name().to_owned(),
        production: variant.production,
        kernel_release,
        root_hash: params.root_hash_hex(),
        verity_salt: hex::encode(&params.salt),
        verity_data_blocks: params.data_blocks,
        cmdline: cmdlines,
        layout,
        packages_lock_sha256: lock_sha,
        artifacts,
        external_artifacts,
        secure_boot: if signing.is_some() {
            secureboot::State::Signed
        } else {
            secureboot::State::Unsigned
        },
        secure_boot_db: signing.as_ref().map(|k| k.db_cert.clone()),
    };
    let manifest_path = out.join("manifest.json");
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)? + "\n",
    )
    .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    std::fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    progress.finish(&format!(
        "built {} {} {} -> {} (root hash {})",
        variant.name,
        arch,
        args.version,
        out.display(),
        manifest.root_hash
    ));
    Ok(Built {
        dir: out,
        root_hash: manifest.root_hash,
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn nix_is_root() -> bool {
    // /proc/self/status "Uid:" real uid; avoids unsafe geteuid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Versions go into file names on the ESP and into os-release: keep them simple.
fn validate_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && version.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        bail!("--version `{version}`: use digits, letters, `.`, `-` or `_`, starting with a digit (e.g. 1.2.0)");
    }
    Ok(())
}

/// The kernel command line of a slot's UKI (docs/boot.md): the boot contract's parameters,
/// then the variant's.
pub fn cmdline(variant: &Variant, slot: Slot, params: &verity::VerityParams) -> String {
    let contract = Cmdline {
        slot,
        verity: Verity {
            root_hash: params.root_hash_hex(),
            salt: (!params.salt.is_empty()).then(|| hex::encode(&params.salt)),
            data_blocks: params.data_blocks,
            hash_start: verity::HASH_START_BLOCK,
        },
    };
    let mut args = vec![contract.to_string()];
    args.extend(variant.cmdline.iter().cloned());
    args.join(" ")
}

/// Berth's identity, programs, units and the variant's files, into the root.
fn configure(
    root: &Path,
    variant: &Variant,
    workspace: &Path,
    bin_dir: &Path,
    version: &str,
    update_root: Option<&Path>,
) -> Result<()> {
    let os_release = format!(
        "NAME=Berth\nID=berth\nID_LIKE=debian\nPRETTY_NAME=\"Berth {version} ({})\"\n\
         VERSION_ID={version}\nVARIANT_ID={}\nIMAGE_ID=berth-{}\nIMAGE_VERSION={version}\n\
         HOME_URL=\"https://github.com/berth-os/berth\"\n",
        variant.name, variant.name, variant.name
    );
    rootfs::write_file(root, "/usr/lib/os-release", os_release.as_bytes(), 0o644)?;
    rootfs::symlink(root, "/etc/os-release", "../usr/lib/os-release")?;
    // early-init writes the machine's persistent id here every boot.
    rootfs::write_file(root, "/etc/machine-id", b"", 0o444)?;
    // /boot: where the ESP is mounted for the updater and the health gate (boot.mount).
    for dir in ["private", "local", "opt", "boot"] {
        std::fs::create_dir_all(root.join(dir))
            .with_context(|| format!("cannot create /{dir} in the root"))?;
    }
    for name in &variant.programs {
        let program = programs::find(name).expect("variant::load checked program names");
        let data = read(&bin_dir.join(program.name))?;
        rootfs::write_file(root, program.install_path, &data, 0o755)?;
        let units = program.units.iter().map(|u| (u, 0o644));
        for (unit, mode) in units.chain(program.private_units.iter().map(|u| (u, 0o600))) {
            let data = read(&workspace.join(unit))?;
            let file = Path::new(unit)
                .file_name()
                .expect("unit paths name a file")
                .to_string_lossy();
            rootfs::write_file(
                root,
                &format!("/usr/lib/systemd/system/{file}"),
                &data,
                mode,
            )?;
        }
        for (source, dest) in program.data {
            rootfs::write_file(root, dest, &read(&workspace.join(source))?, 0o644)?;
        }
    }
    // Variant defaults, in merge order: apiserver reads them in lexical order.
    for (i, path) in variant.settings.iter().enumerate() {
        let file = path
            .file_name()
            .with_context(|| format!("settings fragment {} names no file", path.display()))?
            .to_string_lossy();
        let dest = format!("{DEFAULTS_DIR}/{:02}-{file}", i + 1);
        rootfs::write_file(root, &dest, &read(path)?, 0o644)?;
    }
    if let Some(path) = &variant.metadata {
        rootfs::write_file(root, METADATA_FILE, &read(path)?, 0o644)?;
    }
    if let Some(path) = update_root {
        // The TUF root the updater trusts; it must parse as a root before it ships.
        let bytes = read(path)?;
        let doc: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("--update-root {} is not JSON", path.display()))?;
        if doc.pointer("/signed/_type").and_then(|t| t.as_str()) != Some("root") {
            bail!(
                "--update-root {} is not a TUF root.json (signed._type is not \"root\")",
                path.display()
            );
        }
        rootfs::write_file(root, UPDATE_ROOT_FILE, &bytes, 0o644)?;
    }
    for (path, content) in &variant.files {
        rootfs::write_file(root, path, content.as_bytes(), 0o644)?;
    }
    for unit in &variant.systemd_enable {
        rootfs::enable_unit(root, unit)?;
    }
    for unit in &variant.systemd_mask {
        rootfs::mask_unit(root, unit)?;
    }
    rootfs::symlink(
        root,
        "/etc/systemd/system/default.target",
        &format!("/usr/lib/systemd/system/{}", variant.default_target),
    )?;
    Ok(())
}

fn qcow2(raw: &Path, out: &Path) -> Result<()> {
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out)
        .status()
        .context("cannot run qemu-img")?;
    if !status.success() {
        bail!("qemu-img convert to {} failed ({status})", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        validate_version("1.2.0").unwrap();
        validate_version("2.0.0-rc1").unwrap();
        assert!(validate_version("v1").is_err());
        assert!(validate_version("1/2").is_err());
        assert!(validate_version("").is_err());
    }

    #[test]
    fn cmdline_matches_golden() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let variant = variant::load(&workspace.join("variants"), "qemu", Arch::X86_64).unwrap();
        let params = verity::VerityParams {
            root_hash: [0xab; 32],
            salt: vec![1, 2],
            data_blocks: 1000,
            hash_bytes: 4096 * 10,
        };
        let got = cmdline(&variant, Slot::B, &params) + "\n";
        let golden = workspace.join("os-build/tests/fixtures/cmdline-qemu-x86_64.txt");
        if std::env::var_os("BERTH_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        assert_eq!(
            got,
            std::fs::read_to_string(golden).unwrap(),
            "run with BERTH_BLESS=1 to update"
        );
    }
}
