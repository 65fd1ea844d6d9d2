//! The boot sequence of docs/boot.md, step by step, over a [`Host`].

use std::convert::Infallible;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use boot_contract::cmdline::VERITY_BLOCK_SIZE as VERITY_BLOCK;
use boot_contract::{Cmdline, Partition};
use rustix::mount::MountFlags;

use crate::devices::{self, SlotDisk};
use crate::etc_seed::copy_tree;
use crate::fatal::say;
use crate::host::{Host, MountSpec};
use crate::modules::InitrdConfig;
use crate::paths;
use crate::storage;
use crate::sys::DmTarget;

pub struct Boot<H> {
    /// `/` on the machine; a temp dir in tests.
    pub root: PathBuf,
    pub host: H,
    /// Running kernel release (`uname -r`).
    pub kernel: String,
    /// How long to wait for the slot's partitions.
    pub device_timeout: Duration,
}

impl<H: Host> Boot<H> {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> anyhow::Result<()> {
        let spec = MountSpec {
            source: source.to_string(),
            target: self.path(target),
            fstype: fstype.to_string(),
            flags,
            data: data.to_string(),
        };
        if let Some(in_image) = target.strip_prefix("/sysroot/") {
            // The image is read-only: its mount points must be there.
            if !spec.target.is_dir() {
                bail!("the root image has no /{in_image} directory to mount {source} on");
            }
        } else {
            fs::create_dir_all(&spec.target).ok();
        }
        self.host
            .mount(&spec)
            .with_context(|| format!("mount {source} ({fstype}) on {target}"))
    }

    /// Runs every step; returns only on failure.
    pub fn run(&mut self) -> anyhow::Result<Infallible> {
        self.early_mounts()?;
        self.load_modules()?;
        let cmdline = self.cmdline()?;
        say(&format!("slot {}", cmdline.slot));
        let mut boot_disk = self.boot_disk();
        let disk = devices::wait_for_slot(
            &self.root,
            cmdline.slot,
            self.device_timeout,
            &mut boot_disk,
        )
        .with_context(|| format!("find the partitions of slot {}", cmdline.slot))?;
        self.boot_mount(&disk)
            .context("point boot.mount at the ESP of the boot disk")?;
        let root_dev = self.verity(&cmdline, &disk).with_context(|| {
            format!(
                "set up dm-verity over {} and {}",
                Partition::Root(cmdline.slot),
                Partition::Verity(cmdline.slot)
            )
        })?;
        self.mount(&root_dev, paths::SYSROOT, "erofs", MountFlags::RDONLY, "")?;
        self.etc().context("seed /etc")?;
        self.private(&disk)?;
        self.data(&disk)?;
        self.switch_root()
    }

    fn early_mounts(&mut self) -> anyhow::Result<()> {
        let nosuid_nodev = MountFlags::NOSUID | MountFlags::NODEV;
        let nsde = nosuid_nodev | MountFlags::NOEXEC;
        self.mount(
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MountFlags::NOSUID,
            "mode=0755",
        )?;
        self.host.console().context("open /dev/console")?;
        self.mount("proc", "/proc", "proc", nsde, "")?;
        self.mount("sysfs", "/sys", "sysfs", nsde, "")?;
        self.mount("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755")?;
        Ok(())
    }

    fn load_modules(&mut self) -> anyhow::Result<()> {
        let list = self.path(paths::INITRD_JSON);
        let cfg = InitrdConfig::load(&list, &self.kernel)?;
        let mut loaded = 0;
        for m in &cfg.modules {
            let path = self.path(&m.to_string_lossy());
            match self.host.load_module(&path) {
                Ok(true) => loaded += 1,
                Ok(false) => {}
                // A driver for hardware this machine lacks (an accelerated crc32c on an old
                // CPU, say) refuses with ENODEV. Not fatal: if the module was needed, a later
                // step fails and names what is missing.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                    say(&format!(
                        "note: module {} does not apply here: {e}",
                        m.display()
                    ));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("load module {}", m.display()));
                }
            }
        }
        say(&format!("loaded {loaded} of {} modules", cfg.modules.len()));
        Ok(())
    }

    /// Which disk the firmware booted from, if systemd-boot says so. Needs efivarfs (module
    /// `efivarfs` in the initramfs list when it is not built in); without it, or on a machine
    /// without UEFI, the slot's partitions must be on one disk only.
    fn boot_disk(&mut self) -> devices::BootDisk {
        if self.path("/sys/firmware/efi").is_dir() {
            let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
            let target = "/sys/firmware/efi/efivars";
            if let Err(e) = self.mount("efivarfs", target, "efivarfs", flags, "") {
                say(&format!("note: {e:#}; the boot disk is not known"));
            }
        }
        devices::BootDisk::from_efivars(&self.root)
    }

    fn cmdline(&self) -> anyhow::Result<Cmdline> {
        read_cmdline(&self.root)
    }

    fn verity(&mut self, c: &Cmdline, disk: &SlotDisk) -> anyhow::Result<String> {
        let v = &c.verity;
        let data_bytes = v.data_blocks * VERITY_BLOCK;
        let root_size = self.partition_bytes(&disk.root.name)?;
        if root_size < data_bytes {
            bail!(
                "{} holds {root_size} bytes, but the command line covers {data_bytes}",
                disk.root.name
            );
        }
        let params = format!(
            "1 {data} {hash} {bs} {bs} {blocks} {start} sha256 {root} {salt} 1 restart_on_corruption",
            data = disk.root.devno(),
            hash = disk.verity.devno(),
            bs = VERITY_BLOCK,
            blocks = v.data_blocks,
            start = v.hash_start,
            root = v.root_hash,
            salt = v.salt.as_deref().unwrap_or("-"),
        );
        let target = DmTarget {
            start_sector: 0,
            sectors: data_bytes / 512,
            target_type: "verity".into(),
            params,
        };
        let uuid = format!("BERTH-VERITY-root-{}", c.slot);
        let dev = self.host.create_dm(paths::DM_ROOT_NAME, &uuid, &target)?;
        say(&format!(
            "dm-verity device {dev} over {} and {}",
            disk.root.name, disk.verity.name
        ));
        Ok(dev)
    }

    fn partition_bytes(&self, name: &str) -> anyhow::Result<u64> {
        let p = self.path(&format!("/sys/class/block/{name}/size"));
        let text = fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        let sectors: u64 = text
            .trim()
            .parse()
            .with_context(|| format!("bad size in {}", p.display()))?;
        Ok(sectors * 512)
    }

    fn etc(&mut self) -> anyhow::Result<()> {
        let staging = format!("/{}", paths::ETC_STAGING);
        self.mount(
            "tmpfs",
            &staging,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            "mode=0755",
        )?;
        let image_etc = self.path("/sysroot/etc");
        let n = copy_tree(&image_etc, &self.path(&staging))?;
        let target = self.path("/sysroot/etc");
        self.host
            .move_mount(&self.path(&staging), &target)
            .context("move the new /etc onto /sysroot/etc")?;
        say(&format!("/etc: tmpfs with {n} entries from the image"));
        Ok(())
    }

    /// `boot.mount` mounts the ESP of the disk this boot's root comes from (a drop-in in
    /// `/run`), not whichever disk udev's `/dev/disk/by-partlabel/ESP` names last: a second
    /// disk cloned from the image has an ESP of the same name.
    fn boot_mount(&mut self, disk: &SlotDisk) -> anyhow::Result<()> {
        let path = self.path(paths::BOOT_MOUNT_DROP_IN);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let text = format!(
            "# Written by early-init: the ESP of the disk that holds this boot's root (docs/boot.md).\n\
             [Mount]\nWhat=/dev/{}\n",
            disk.esp.name
        );
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// `private`: made on the first boot only (the partition starts with os-build's
    /// never-formatted marker; the disk then gets its own GUIDs first); mounted as it is when
    /// it holds ext4; repaired with `e2fsck -p` when it holds no valid superblock. A
    /// partition e2fsck cannot repair stops the boot ([`crate::fatal::Stop`]): formatting it
    /// would lose the host's settings, and a reboot would not help.
    fn ensure_private(&mut self, disk: &SlotDisk, dev: &Path) -> anyhow::Result<()> {
        if storage::read_ext4(dev)?.is_some() {
            return Ok(());
        }
        if storage::never_formatted(dev)? {
            // Best effort, like growing data: a disk that keeps the image's GUIDs still boots;
            // only a clone attached later could not be told from it.
            let disk_dev = self.path(&format!("/dev/{}", disk.disk));
            match self.host.randomize_guids(&disk_dev) {
                Ok(()) => say(&format!(
                    "first boot: new disk and partition GUIDs on /dev/{}",
                    disk.disk
                )),
                Err(e) => say(&format!(
                    "warning: cannot give /dev/{} its own GUIDs: {e:#}; keeping the image's",
                    disk.disk
                )),
            }
            self.ensure_ext4(dev, Partition::Private.label())?;
            return Ok(());
        }
        say(&format!(
            "private ({}) holds no valid ext4 superblock but was made before: repairing with e2fsck -p",
            dev.display()
        ));
        let mut last = String::new();
        for backup in std::iter::once(None).chain(storage::BACKUP_SUPERBLOCKS.map(Some)) {
            match self.host.fsck_ext4(dev, backup) {
                Ok(code) if code < 4 && storage::read_ext4(dev)?.is_some() => {
                    say(&format!(
                        "private repaired by e2fsck (exit code {code}{})",
                        backup
                            .map(|(bs, sb)| format!(", backup superblock {sb} of {bs}-byte blocks"))
                            .unwrap_or_default()
                    ));
                    return Ok(());
                }
                Ok(code) => last = format!("e2fsck exited with {code}"),
                Err(e) => last = format!("{e:#}"),
            }
        }
        Err(crate::fatal::Stop(format!(
            "private ({}) holds no usable ext4 file system and e2fsck -p could not repair it ({last}); \
             repair it from another machine (e2fsck) or replace the disk (docs/boot.md)",
            dev.display()
        ))
        .into())
    }

    /// Makes an ext4 file system on `dev` unless it has one; true when it made one.
    fn ensure_ext4(&mut self, dev: &Path, label: &str) -> anyhow::Result<bool> {
        if storage::read_ext4(dev)?.is_some() {
            return Ok(false);
        }
        say(&format!(
            "making ext4 file system {label} on {}",
            dev.display()
        ));
        self.host
            .mkfs_ext4(dev, label)
            .with_context(|| format!("make ext4 on {}", dev.display()))?;
        Ok(true)
    }

    fn private(&mut self, disk: &SlotDisk) -> anyhow::Result<()> {
        let dev = Path::new("/dev").join(&disk.private.name);
        self.ensure_private(disk, &self.path(&dev.to_string_lossy()))
            .context("prepare private")?;
        let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        self.mount(
            &dev.to_string_lossy(),
            "/sysroot/private",
            "ext4",
            flags,
            "",
        )?;
        let id = machine_id(
            &self
                .path("/sysroot/private")
                .join(paths::PRIVATE_MACHINE_ID),
        )
        .context("keep the machine id on private")?;
        let etc_id = self.path("/sysroot/etc/machine-id");
        write_file(&etc_id, format!("{id}\n").as_bytes(), 0o444)
            .context("write /sysroot/etc/machine-id")?;
        Ok(())
    }

    fn data(&mut self, disk: &SlotDisk) -> anyhow::Result<()> {
        let dev = Path::new("/dev").join(&disk.data.name);
        let dev_s = dev.to_string_lossy().into_owned();
        let disk_dev = self.path(&format!("/dev/{}", disk.disk));
        // Growing is best effort: a host that cannot grow `data` still boots, with the space
        // it has, rather than rebooting in a loop until both slots are marked bad.
        match self.host.grow_partition(&disk_dev, Partition::Data.label()) {
            Ok(Some(g)) => say(&format!(
                "data partition grown to {} MiB",
                g.length / (1024 * 1024)
            )),
            Ok(None) => {}
            Err(e) => say(&format!(
                "warning: cannot grow the data partition: {e:#}; keeping its size"
            )),
        }
        self.ensure_ext4(&self.path(&dev_s), Partition::Data.label())
            .context("prepare data")?;
        let info = storage::read_ext4(&self.path(&dev_s))?;
        let part_bytes = self.partition_bytes(&disk.data.name)?;
        self.mount(
            &dev_s,
            "/sysroot/local",
            "ext4",
            MountFlags::NOSUID | MountFlags::NODEV,
            "",
        )?;
        if let Some(info) = info {
            let want = part_bytes / info.block_size;
            if want > info.blocks {
                match self.host.resize_ext4(&self.path("/sysroot/local"), want) {
                    Ok(()) => say(&format!("data file system grown to {want} blocks")),
                    Err(e) => say(&format!(
                        "warning: cannot grow the data file system to {want} blocks \
                         (EXT4_IOC_RESIZE_FS): {e}; keeping its size"
                    )),
                }
            }
        }
        for dir in ["var", "opt"] {
            let local = self.path(&format!("/sysroot/local/{dir}"));
            let image = self.path(&format!("/sysroot/{dir}"));
            if !local.exists() {
                seed_dir(&image, &local).with_context(|| format!("seed /local/{dir}"))?;
            }
            self.host
                .bind_mount(&local, &image)
                .with_context(|| format!("bind /sysroot/local/{dir} on /sysroot/{dir}"))?;
        }
        Ok(())
    }

    fn switch_root(&mut self) -> anyhow::Result<Infallible> {
        for dir in ["dev", "proc", "sys", "run"] {
            let from = self.path(dir);
            let to = self.path(&format!("/sysroot/{dir}"));
            self.host
                .move_mount(&from, &to)
                .with_context(|| format!("move /{dir} to /sysroot/{dir}"))?;
        }
        let new_root = self.path(paths::SYSROOT);
        self.host.switch_root(&new_root).context("switch root")
    }
}

/// Copies `image` (if it exists) to a temporary sibling of `local`, then renames it into
/// place, so an interrupted first boot seeds again.
/// The boot contract's parameters of `<root>/proc/cmdline`.
pub fn read_cmdline(root: &Path) -> anyhow::Result<Cmdline> {
    let text = fs::read_to_string(root.join("proc/cmdline")).context("read /proc/cmdline")?;
    Cmdline::parse(&text).context("check the kernel command line")
}

fn seed_dir(image: &Path, local: &Path) -> anyhow::Result<()> {
    let tmp = local.with_extension("seeding");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
    }
    fs::create_dir(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    if image.is_dir() {
        copy_tree(image, &tmp)?;
        let mode = fs::metadata(image)?.permissions();
        fs::set_permissions(&tmp, mode)?;
    }
    fs::rename(&tmp, local).with_context(|| format!("rename to {}", local.display()))?;
    Ok(())
}

fn is_machine_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        && s.bytes().any(|b| b != b'0')
}

/// Reads the machine id at `path`, creating a random one on first boot.
fn machine_id(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = fs::read_to_string(path) {
        let id = text.trim();
        if is_machine_id(id) {
            return Ok(id.to_string());
        }
    }
    let mut bytes = [0u8; 16];
    use std::io::Read;
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("read /dev/urandom")?;
    // A v4 UUID, as systemd-machine-id-setup makes.
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_file(path, format!("{id}\n").as_bytes(), 0o444)
        .with_context(|| format!("write {}", path.display()))?;
    say(&format!("new machine id {id}"));
    Ok(id)
}

/// Writes `path` atomically (temp file, fsync, rename, fsync dir).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
