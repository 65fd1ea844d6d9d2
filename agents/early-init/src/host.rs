//! Host effects of early-init behind one trait, so the boot sequence runs against a recording
//! fake in the tests. `RealHost` is the kernel.

use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::mount::MountFlags;

use crate::fatal::say;
use crate::paths;
use crate::storage::{self, Grown};
use crate::sys::{self, DmControl, DmTarget};

/// One mount(2) call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub flags: MountFlags,
    pub data: String,
}

pub trait Host {
    fn mount(&mut self, spec: &MountSpec) -> io::Result<()>;
    fn move_mount(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn bind_mount(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes sure stdin/stdout/stderr are the console (after /dev is mounted).
    fn console(&mut self) -> io::Result<()>;
    /// Loads a module; `Ok(false)` if it was loaded already.
    fn load_module(&mut self, path: &Path) -> io::Result<bool>;
    /// Creates, loads and resumes dm device `name` with one target; returns the path to mount.
    fn create_dm(&mut self, name: &str, uuid: &str, target: &DmTarget) -> anyhow::Result<String>;
    fn mkfs_ext4(&mut self, dev: &Path, label: &str) -> anyhow::Result<()>;
    /// Runs `e2fsck -p` on `dev` (with `-b SUPERBLOCK -B BLOCKSIZE` when `backup` is
    /// `(block size, superblock)`); returns its exit code.
    fn fsck_ext4(&mut self, dev: &Path, backup: Option<(u64, u64)>) -> anyhow::Result<i32>;
    /// Gives `disk` and its partitions new random GUIDs (first boot).
    fn randomize_guids(&mut self, disk: &Path) -> anyhow::Result<()>;
    /// Grows partition `name` (the last one) of `disk` to the end of the disk and tells the
    /// kernel.
    fn grow_partition(&mut self, disk: &Path, name: &str) -> anyhow::Result<Option<Grown>>;
    /// Online-resizes the ext4 file system mounted on `mountpoint` to `blocks` fs blocks.
    fn resize_ext4(&mut self, mountpoint: &Path, blocks: u64) -> io::Result<()>;
    /// Makes `new_root` the root and execs systemd. Returns only on failure.
    fn switch_root(&mut self, new_root: &Path) -> anyhow::Result<Infallible>;
}

/// The real kernel.
#[derive(Debug, Default)]
pub struct RealHost;

const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;

impl Host for RealHost {
    fn mount(&mut self, s: &MountSpec) -> io::Result<()> {
        let data = std::ffi::CString::new(s.data.as_str()).map_err(io::Error::other)?;
        rustix::mount::mount(
            s.source.as_str(),
            &s.target,
            s.fstype.as_str(),
            s.flags,
            Some(data.as_c_str()),
        )?;
        Ok(())
    }

    fn move_mount(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(rustix::mount::mount_move(from, to)?)
    }

    fn bind_mount(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        Ok(rustix::mount::mount_bind(from, to)?)
    }

    fn console(&mut self) -> io::Result<()> {
        use std::os::fd::AsFd;
        if rustix::io::fcntl_getfd(std::io::stderr().as_fd()).is_ok() {
            return Ok(());
        }
        let console = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")?;
        rustix::stdio::dup2_stdin(&console)?;
        rustix::stdio::dup2_stdout(&console)?;
        rustix::stdio::dup2_stderr(&console)?;
        Ok(())
    }

    fn load_module(&mut self, path: &Path) -> io::Result<bool> {
        sys::finit_module(&File::open(path)?)
    }

    fn create_dm(&mut self, name: &str, uuid: &str, target: &DmTarget) -> anyhow::Result<String> {
        let control_path = Path::new("/").join(paths::DM_CONTROL);
        let control = DmControl::open(&control_path)
            .with_context(|| format!("open {}", control_path.display()))?;
        let dev = control.create(name, uuid).context("DM_DEV_CREATE")?;
        control
            .load(name, std::slice::from_ref(target), true)
            .context("DM_TABLE_LOAD")?;
        control.resume(name).context("DM_DEV_SUSPEND (resume)")?;
        let (major, minor) = boot_contract::dm::split_dev(dev);
        let uevent = format!("/sys/dev/block/{major}:{minor}/uevent");
        let text = std::fs::read_to_string(&uevent).with_context(|| format!("read {uevent}"))?;
        let devname = crate::devices::parse_uevent(&text)
            .remove("DEVNAME")
            .with_context(|| format!("no DEVNAME in {uevent}"))?;
        let node = Path::new("/dev").join(&devname);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !node.exists() {
            if Instant::now() > deadline {
                bail!("{} did not appear", node.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // /dev/mapper/<name> as udev would make it; mountinfo then shows a readable name.
        let link = Path::new("/dev/mapper").join(name);
        match std::os::unix::fs::symlink(Path::new("..").join(&devname), &link) {
            Ok(()) => Ok(link.display().to_string()),
            Err(_) => Ok(node.display().to_string()),
        }
    }

    fn mkfs_ext4(&mut self, dev: &Path, label: &str) -> anyhow::Result<()> {
        let out = Command::new(paths::MKE2FS)
            .args(["-t", "ext4", "-q", "-L", label])
            .arg(dev)
            .output()
            .with_context(|| format!("run {}", paths::MKE2FS))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!(
                "{} failed ({}): {}",
                paths::MKE2FS,
                out.status,
                stderr.trim().replace('\n', " ")
            );
        }
        Ok(())
    }

    fn fsck_ext4(&mut self, dev: &Path, backup: Option<(u64, u64)>) -> anyhow::Result<i32> {
        e2fsck(Path::new(paths::E2FSCK), dev, backup)
    }

    fn randomize_guids(&mut self, disk: &Path) -> anyhow::Result<()> {
        storage::randomize_guids(disk, logical_block_size(disk))?;
        Ok(())
    }

    fn grow_partition(&mut self, disk: &Path, name: &str) -> anyhow::Result<Option<Grown>> {
        let Some(grown) = storage::grow_last_partition(disk, name, logical_block_size(disk))?
        else {
            return Ok(None);
        };
        let f = File::open(disk).with_context(|| format!("open {}", disk.display()))?;
        sys::blkpg_resize_partition(&f, grown.partno, grown.start, grown.length)
            .context("tell the kernel the new partition size (BLKPG_RESIZE_PARTITION)")?;
        Ok(Some(grown))
    }

    fn resize_ext4(&mut self, mountpoint: &Path, blocks: u64) -> io::Result<()> {
        sys::ext4_resize(&File::open(mountpoint)?, blocks)
    }

    fn switch_root(&mut self, new_root: &Path) -> anyhow::Result<Infallible> {
        rustix::process::chdir(new_root)
            .with_context(|| format!("chdir {}", new_root.display()))?;
        free_initramfs();
        rustix::mount::mount_move(".", "/").context("move the new root onto /")?;
        rustix::process::chroot(".").context("chroot into the new root")?;
        rustix::process::chdir("/").context("chdir / in the new root")?;
        say("switching root to systemd");
        let err = Command::new(paths::SYSTEMD).exec();
        Err(err).with_context(|| format!("exec {}", paths::SYSTEMD))
    }
}

/// The logical block size of `disk` (`/dev/vda`) as sysfs reports it.
fn logical_block_size(disk: &Path) -> gpt::disk::LogicalBlockSize {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = format!("/sys/class/block/{name}/queue/logical_block_size");
    match std::fs::read_to_string(path).map(|s| s.trim().to_string()) {
        Ok(s) if s == "4096" => gpt::disk::LogicalBlockSize::Lb4096,
        _ => gpt::disk::LogicalBlockSize::Lb512,
    }
}

/// Runs `program -p [-b SB -B BS] dev` (e2fsck in preen mode: fixes what is safe to fix
/// without asking); prints its output on the console; returns its exit code (0 clean,
/// 1 and 2 fixed, 4 and above not fixed).
pub fn e2fsck(program: &Path, dev: &Path, backup: Option<(u64, u64)>) -> anyhow::Result<i32> {
    let mut cmd = Command::new(program);
    cmd.arg("-p");
    if let Some((block_size, superblock)) = backup {
        cmd.args(["-b", &superblock.to_string(), "-B", &block_size.to_string()]);
    }
    let out = cmd
        .arg(dev)
        .output()
        .with_context(|| format!("run {}", program.display()))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter(|l| !l.trim().is_empty())
    {
        say(&format!("e2fsck: {}", line.trim()));
    }
    Ok(out.status.code().unwrap_or(-1))
}

/// Deletes the initramfs contents (it lives in RAM) without crossing into other mounts.
/// Only when `/` really is the initramfs (ramfs/tmpfs). Failures are not fatal.
fn free_initramfs() {
    let Ok(st) = rustix::fs::statfs("/") else {
        return;
    };
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let magic = st.f_type as u64;
    if magic != RAMFS_MAGIC && magic != TMPFS_MAGIC {
        return;
    }
    let Ok(root_meta) = std::fs::symlink_metadata("/") else {
        return;
    };
    remove_children(Path::new("/"), root_meta.dev());
}

fn remove_children(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_children(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
