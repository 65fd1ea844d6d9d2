//! The boot sequence against a recording fake host on a temp dir.

use std::convert::Infallible;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::boot::Boot;
use crate::devices::tests::{fake_disk, layout};
use crate::host::{Host, MountSpec};
use crate::storage::Grown;
use crate::sys::DmTarget;

const ROOT_HASH: &str = "4c6f1a0b3c9d2e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

struct FakeHost {
    root: PathBuf,
    ops: Vec<String>,
    /// Operation (first word of its record) that fails.
    fail: Option<&'static str>,
}

impl FakeHost {
    fn rel(&self, p: &Path) -> String {
        format!("/{}", p.strip_prefix(&self.root).unwrap_or(p).display())
    }
}

impl Host for FakeHost {
    fn mount(&mut self, s: &MountSpec) -> io::Result<()> {
        let t = self.rel(&s.target);
        self.ops
            .push(format!("mount {} {} {t}", s.fstype, s.source));
        Ok(())
    }
    fn move_mount(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (self.rel(from), self.rel(to));
        self.ops.push(format!("move {f} {t}"));
        Ok(())
    }
    fn bind_mount(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let (f, t) = (self.rel(from), self.rel(to));
        self.ops.push(format!("bind {f} {t}"));
        Ok(())
    }
    fn console(&mut self) -> io::Result<()> {
        self.ops.push("console".into());
        Ok(())
    }
    fn load_module(&mut self, path: &Path) -> io::Result<bool> {
        let p = self.rel(path);
        self.ops.push(format!("module {p}"));
        match self.fail {
            Some("module-enodev") if p.ends_with("dm-mod.ko.xz") => {
                Err(io::Error::from_raw_os_error(libc::ENODEV))
            }
            Some("module-enoexec") if p.ends_with("dm-mod.ko.xz") => {
                Err(io::Error::from_raw_os_error(libc::ENOEXEC))
            }
            _ => Ok(true),
        }
    }
    fn create_dm(&mut self, name: &str, uuid: &str, t: &DmTarget) -> anyhow::Result<String> {
        self.ops.push(format!(
            "dm {name} {uuid} {} {} {} {}",
            t.start_sector, t.sectors, t.target_type, t.params
        ));
        Ok(format!("/dev/mapper/{name}"))
    }
    fn mkfs_ext4(&mut self, dev: &Path, label: &str) -> anyhow::Result<()> {
        let d = self.rel(dev);
        self.ops.push(format!("mkfs {d} {label}"));
        if self.fail == Some("mkfs") {
            anyhow::bail!("mke2fs exited with 1");
        }
        // An ext4 superblock: 4096-byte blocks, 100 blocks.
        let mut img = vec![0u8; 2048];
        img[1024 + 56] = 0x53;
        img[1024 + 57] = 0xEF;
        img[1024 + 24] = 2;
        img[1024 + 4] = 100;
        fs::write(dev, img)?;
        Ok(())
    }
    fn fsck_ext4(&mut self, dev: &Path, backup: Option<(u64, u64)>) -> anyhow::Result<i32> {
        let d = self.rel(dev);
        match backup {
            Some((bs, sb)) => self.ops.push(format!("fsck {d} -b {sb} -B {bs}")),
            None => self.ops.push(format!("fsck {d}")),
        }
        // The real e2fsck, on the file that stands in for the partition.
        crate::host::e2fsck(Path::new("e2fsck"), dev, backup)
    }
    fn randomize_guids(&mut self, disk: &Path) -> anyhow::Result<()> {
        let d = self.rel(disk);
        self.ops.push(format!("guids {d}"));
        Ok(())
    }
    fn grow_partition(&mut self, disk: &Path, name: &str) -> anyhow::Result<Option<Grown>> {
        let d = self.rel(disk);
        self.ops.push(format!("grow {d} {name}"));
        if self.fail == Some("grow") {
            anyhow::bail!("partition data is not the last partition");
        }
        Ok(None)
    }
    fn resize_ext4(&mut self, mountpoint: &Path, blocks: u64) -> io::Result<()> {
        let m = self.rel(mountpoint);
        self.ops.push(format!("resize {m} {blocks}"));
        Ok(())
    }
    fn switch_root(&mut self, new_root: &Path) -> anyhow::Result<Infallible> {
        let r = self.rel(new_root);
        self.ops.push(format!("switch_root {r}"));
        anyhow::bail!("exec is not possible in a test")
    }
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, text).expect("write");
}

fn fixture(root: &Path) {
    fake_disk(root, "vda", 254, &layout());
    let sizes = [(2, 8 * 2048), (6, 2048), (7, 8000)]; // sectors
    for (n, sectors) in sizes {
        write(
            root,
            &format!("sys/devices/virtual/block/vda/vda{n}/size"),
            &format!("{sectors}\n"),
        );
    }
    write(
        root,
        "etc/berth/initrd.json",
        r#"{"kernel_version": "6.12.0-test", "modules": ["/usr/lib/modules/6.12.0-test/dm-mod.ko.xz", "/usr/lib/modules/6.12.0-test/dm-verity.ko.xz"]}"#,
    );
    write(
        root,
        "proc/cmdline",
        &format!(
            "console=ttyS0 berth.slot=a berth.verity.root={ROOT_HASH} berth.verity.salt=abcd \
             berth.verity.data-blocks=1024 berth.verity.hash-start=1\n"
        ),
    );
    write(root, "sysroot/etc/hostname", "berth\n");
    write(root, "sysroot/var/lib/berth/seed", "x");
    fs::create_dir_all(root.join("sysroot/opt")).expect("mkdir");
    fs::create_dir_all(root.join("sysroot/private")).expect("mkdir");
    fs::create_dir_all(root.join("sysroot/local")).expect("mkdir");
    // private as os-build leaves it: never formatted.
    fs::write(root.join("dev/vda6"), crate::storage::NEVER_FORMATTED).expect("marker");
}

fn boot(root: &Path) -> (anyhow::Error, Vec<String>) {
    boot_failing(root, None)
}

fn boot_failing(root: &Path, fail: Option<&'static str>) -> (anyhow::Error, Vec<String>) {
    let mut b = Boot {
        root: root.to_path_buf(),
        host: FakeHost {
            root: root.to_path_buf(),
            ops: Vec::new(),
            fail,
        },
        kernel: "6.12.0-test".into(),
        device_timeout: Duration::from_millis(200),
    };
    let err = match b.run() {
        Ok(never) => match never {},
        Err(e) => e,
    };
    (err, b.host.ops)
}

#[test]
fn first_boot_runs_the_steps_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fixture(root);
    let (err, ops) = boot(root);
    assert_eq!(
        format!("{err:#}"),
        "switch root: exec is not possible in a test"
    );
    let expected = [
        "mount devtmpfs devtmpfs /dev".to_string(),
        "console".into(),
        "mount proc proc /proc".into(),
        "mount sysfs sysfs /sys".into(),
        "mount tmpfs tmpfs /run".into(),
        "module /usr/lib/modules/6.12.0-test/dm-mod.ko.xz".into(),
        "module /usr/lib/modules/6.12.0-test/dm-verity.ko.xz".into(),
        format!(
            "dm root BERTH-VERITY-root-a 0 8192 verity 1 254:2 254:3 4096 4096 1024 1 sha256 \
             {ROOT_HASH} abcd 1 restart_on_corruption"
        ),
        "mount erofs /dev/mapper/root /sysroot".into(),
        "mount tmpfs tmpfs /run/berth/etc".into(),
        "move /run/berth/etc /sysroot/etc".into(),
        "guids /dev/vda".into(),
        "mkfs /dev/vda6 private".into(),
        "mount ext4 /dev/vda6 /sysroot/private".into(),
        "grow /dev/vda data".into(),
        "mkfs /dev/vda7 data".into(),
        "mount ext4 /dev/vda7 /sysroot/local".into(),
        // 8000 sectors = 4096000 bytes = 1000 blocks of 4096 > 100
        "resize /sysroot/local 1000".into(),
        "bind /sysroot/local/var /sysroot/var".into(),
        "bind /sysroot/local/opt /sysroot/opt".into(),
        "move /dev /sysroot/dev".into(),
        "move /proc /sysroot/proc".into(),
        "move /sys /sysroot/sys".into(),
        "move /run /sysroot/run".into(),
        "switch_root /sysroot".into(),
    ];
    assert_eq!(ops, expected);

    // boot.mount mounts the ESP of this disk, not whichever disk's by-partlabel/ESP.
    let drop_in = fs::read_to_string(root.join(crate::paths::BOOT_MOUNT_DROP_IN)).expect("drop-in");
    assert!(drop_in.contains("[Mount]\nWhat=/dev/vda1\n"), "{drop_in}");

    // /etc was copied into the staging tmpfs; var seeded from the image; machine id kept.
    assert_eq!(
        fs::read_to_string(root.join("run/berth/etc/hostname")).expect("etc copy"),
        "berth\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("sysroot/local/var/lib/berth/seed")).expect("var seed"),
        "x"
    );
    assert!(root.join("sysroot/local/opt").is_dir());
    let id = fs::read_to_string(root.join("sysroot/private/machine-id")).expect("id");
    assert_eq!(id.trim().len(), 32);
    assert_eq!(
        fs::read_to_string(root.join("sysroot/etc/machine-id")).expect("etc id"),
        id
    );

    // Second boot: file systems exist, nothing is made or seeded again, same machine id.
    fs::write(root.join("sysroot/var/lib/berth/seed"), "changed").expect("write");
    let (_, ops2) = boot(root);
    assert!(!ops2.iter().any(|o| o.starts_with("mkfs")), "{ops2:?}");
    assert!(!ops2.iter().any(|o| o.starts_with("guids")), "{ops2:?}");
    assert_eq!(
        fs::read_to_string(root.join("sysroot/local/var/lib/berth/seed")).expect("var"),
        "x"
    );
    assert_eq!(
        fs::read_to_string(root.join("sysroot/private/machine-id")).expect("id"),
        id
    );
}

#[test]
fn missing_partition_fails_with_one_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fixture(root);
    write(
        root,
        "proc/cmdline",
        &format!("berth.slot=b berth.verity.root={ROOT_HASH} berth.verity.data-blocks=1"),
    );
    // Slot b exists in the layout; remove its verity partition from sysfs.
    fs::remove_file(root.join("sys/class/block/vda5")).expect("rm");
    let (err, ops) = boot(root);
    let line = crate::fatal::fatal_line(&err);
    assert!(
        line.starts_with(
            "early-init: FATAL: find the partitions of slot b: no partition named verity-b appeared"
        ),
        "{line}"
    );
    assert!(!ops.iter().any(|o| o.starts_with("dm ")), "{ops:?}");
}

#[test]
fn bad_command_line_stops_before_devices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fixture(root);
    write(root, "proc/cmdline", "console=ttyS0 berth.slot=a\n");
    let (err, _) = boot(root);
    assert_eq!(
        format!("{err:#}"),
        "check the kernel command line: missing berth.verity.root= on the kernel command line"
    );
}

#[test]
fn verity_range_larger_than_the_partition_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fixture(root);
    write(
        root,
        "proc/cmdline",
        &format!("berth.slot=a berth.verity.root={ROOT_HASH} berth.verity.data-blocks=999999"),
    );
    let (err, ops) = boot(root);
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("set up dm-verity over root-a and verity-a: vda2 holds"),
        "{msg}"
    );
    assert!(!ops.iter().any(|o| o.starts_with("dm ")), "{ops:?}");
}

#[test]
fn a_data_partition_that_cannot_grow_still_boots() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let (err, ops) = boot_failing(dir.path(), Some("grow"));
    assert_eq!(
        format!("{err:#}"),
        "switch root: exec is not possible in a test"
    );
    assert_eq!(ops.last().map(String::as_str), Some("switch_root /sysroot"));
}

#[test]
fn a_failed_mkfs_is_fatal_and_says_which_partition() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let (err, ops) = boot_failing(dir.path(), Some("mkfs"));
    let msg = format!("{err:#}");
    assert!(msg.starts_with("prepare private: make ext4 on "), "{msg}");
    assert!(msg.ends_with("vda6: mke2fs exited with 1"), "{msg}");
    assert!(
        !ops.iter().any(|o| o.contains("/sysroot/private")),
        "{ops:?}"
    );
}

#[test]
fn a_module_without_its_hardware_is_skipped_other_module_errors_are_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    let (err, ops) = boot_failing(dir.path(), Some("module-enodev"));
    assert_eq!(
        format!("{err:#}"),
        "switch root: exec is not possible in a test"
    );
    assert!(
        ops.iter().any(|o| o.ends_with("dm-verity.ko.xz")),
        "{ops:?}"
    );

    let (err, _) = boot_failing(dir.path(), Some("module-enoexec"));
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("load module /usr/lib/modules/6.12.0-test/dm-mod.ko.xz: "),
        "{msg}"
    );
}

#[test]
fn an_image_without_a_mount_point_is_reported_as_such() {
    let dir = tempfile::tempdir().expect("tempdir");
    fixture(dir.path());
    fs::remove_dir(dir.path().join("sysroot/local")).expect("rmdir");
    let (err, _) = boot(dir.path());
    assert_eq!(
        format!("{err:#}"),
        "the root image has no /local directory to mount /dev/vda7 on"
    );
}

/// A real ext4 image of 32 MiB (the size of `private`) with `datastore` holding `content`, made with the host's mke2fs
/// and debugfs.
fn real_private(path: &Path, content: &str) {
    let f = fs::File::create(path).expect("create");
    f.set_len(32 << 20).expect("size");
    drop(f);
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().expect("run e2fsprogs (scripts/host-deps.sh)");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(std::process::Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-L", "private"])
        .arg(path));
    let src = path.with_extension("content");
    fs::write(&src, content).expect("write");
    run(std::process::Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} datastore", src.display()))
        .arg(path));
}

fn debugfs_cat(path: &Path, file: &str) -> String {
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(path)
        .output()
        .expect("debugfs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_damaged_private_is_repaired_with_e2fsck_not_formatted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fixture(root);
    let private = root.join("dev/vda6");
    real_private(&private, "the settings of this host");
    // One flipped byte of the superblock magic: the kernel would not mount it, but the
    // backup superblocks are intact.
    let mut bytes = fs::read(&private).expect("read");
    bytes[1024 + 56] ^= 0xFF;
    fs::write(&private, &bytes).expect("write");
    assert_eq!(crate::storage::read_ext4(&private).expect("read"), None);

    let (err, ops) = boot(root);
    assert_eq!(
        format!("{err:#}"),
        "switch root: exec is not possible in a test"
    );
    assert!(
        !ops.iter().any(|o| o.starts_with("mkfs /dev/vda6")),
        "{ops:?}"
    );
    assert!(!ops.iter().any(|o| o.starts_with("guids")), "{ops:?}");
    assert!(
        ops.iter().any(|o| o.starts_with("fsck /dev/vda6")),
        "{ops:?}"
    );
    assert!(
        ops.iter()
            .any(|o| o == "mount ext4 /dev/vda6 /sysroot/private"),
        "{ops:?}"
    );
    assert!(crate::storage::read_ext4(&private).expect("read").is_some());
    assert_eq!(
        debugfs_cat(&private, "datastore"),
        "the settings of this host"
    );
}

#[test]
fn a_private_e2fsck_cannot_repair_stops_and_is_left_as_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fixture(root);
    let private = root.join("dev/vda6");
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let garbage: Vec<u8> = (0..4 << 20)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    fs::write(&private, &garbage).expect("write");

    let (err, ops) = boot(root);
    assert!(crate::fatal::is_stop(&err), "{err:#}");
    let line = crate::fatal::stop_line(&err);
    assert!(
        line.starts_with("early-init: STOP: prepare private: private (")
            && line.contains("e2fsck -p could not repair it")
            && !line.contains('\n'),
        "{line}"
    );
    assert!(!ops.iter().any(|o| o.starts_with("mkfs")), "{ops:?}");
    assert!(
        !ops.iter().any(|o| o.contains("/sysroot/private")),
        "{ops:?}"
    );
    assert_eq!(
        fs::read(&private).expect("read"),
        garbage,
        "the disk was changed"
    );
}
