//! VMware user data from the OVF environment on a CD-ROM: vSphere's vApp option "OVF
//! environment transport: ISO image" attaches a CD-ROM holding `ovf-env.xml`, whose
//! `PropertySection` carries the vApp properties. The user data is the property `user-data`,
//! base64-encoded, optionally gzip-compressed before encoding (as Bottlerocket reads it; set it
//! with `govc vm.change -vm NAME -vapp.property user-data=...` or in the OVA's descriptor).
//!
//! This path needs neither the VMware backdoor nor VMware Tools, so it also works where the
//! backdoor does not exist (aarch64, or a QEMU harness that builds the ISO itself).
//!
//! CD-ROM drives (`/sys/class/block/sr*`) and any block device holding an iso9660 file system
//! labelled `OVF ENV` are mounted read-only (iso9660; the kernel loads `isofs`, `sr_mod` and
//! the SATA/SCSI driver on demand, modules the variants keep) on a folder under `/run`; the
//! first that has `ovf-env.xml` wins. The drive may appear a moment after boot-config starts
//! (udev loads the controller's driver), so [`find_and_read`] waits up to a bound for a CD-ROM
//! drive to show up; once one exists and none holds an OVF environment, it stops waiting.

use crate::configdrive::{self, FsType, Mounter};
use base64::Engine as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File names of the OVF environment on the ISO: as written (Rock Ridge, Joliet), and as
/// Linux shows a plain iso9660 name (`OVF_ENV.XML;1`: lower case, `-` is not allowed).
pub const FILE_NAMES: [&str; 3] = ["ovf-env.xml", "OVF-ENV.XML", "ovf_env.xml"];
/// vSphere's volume label of the ISO transport.
pub const VOLUME_LABEL: &str = "OVF ENV";
/// The property carrying the user data.
pub const USER_DATA_PROPERTY: &str = "user-data";
/// Where the CD-ROM is mounted while it is read.
pub const MOUNT_POINT: &str = "/run/boot-config/ovf-env";
/// How long to wait for a CD-ROM drive to appear at first boot.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// How long to wait, at most, for the block device of a CD-ROM the SCSI layer already
/// reports: udev loads `sr_mod` for it, which on a slow first boot (TCG, two guests on two
/// cores, Secure Boot) came 20 s after the drive was seen, past [`DEFAULT_WAIT`].
pub const PENDING_DRIVE_WAIT: Duration = Duration::from_secs(120);
/// The OVF environment namespace (DSP0243), used for the elements and the `oe:` attributes.
const OE_NS: &str = "http://schemas.dmtf.org/ovf/environment/1";
/// Decompressed user data larger than this is refused.
const MAX_DECODED: u64 = 16 * 1024 * 1024;
const POLL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum OvfEnvError {
    #[error("{file} is not well-formed XML")]
    Xml {
        file: String,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{file}: the root element is <{found}>, not an OVF <Environment> ({OE_NS})")]
    NotEnvironment { file: String, found: String },
    #[error("{file}: property {USER_DATA_PROPERTY} is not valid base64")]
    Base64 {
        file: String,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{file}: property {USER_DATA_PROPERTY} is gzip data that cannot be decompressed")]
    Gzip {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: property {USER_DATA_PROPERTY} decompresses to more than {MAX_DECODED} bytes")]
    TooLarge { file: String },
    #[error("cannot create the mount point {0}")]
    MountPoint(PathBuf, #[source] std::io::Error),
    #[error("cannot read {file} on {device}")]
    Read {
        device: PathBuf,
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// User data read from an OVF environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub device: PathBuf,
    pub file: &'static str,
    /// `None` when the environment has no (or an empty) `user-data` property.
    pub user_data: Option<Vec<u8>>,
}

/// The `user-data` property of an `ovf-env.xml` document, decoded; `file` names the document in
/// errors. Only the environment's own `PropertySection` counts, not those of other `Entity`s
/// of a vApp.
pub fn user_data_from_xml(xml: &str, file: &str) -> Result<Option<Vec<u8>>, OvfEnvError> {
    let doc = roxmltree::Document::parse(xml).map_err(|source| OvfEnvError::Xml {
        file: file.to_string(),
        source,
    })?;
    let root = doc.root_element();
    if root.tag_name().name() != "Environment" || root.tag_name().namespace() != Some(OE_NS) {
        return Err(OvfEnvError::NotEnvironment {
            file: file.to_string(),
            found: root.tag_name().name().to_string(),
        });
    }
    let attr = |n: roxmltree::Node<'_, '_>, name: &str| {
        n.attribute((OE_NS, name))
            .or_else(|| n.attribute(name))
            .map(str::to_string)
    };
    let value = root
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "PropertySection")
        .flat_map(|s| s.children())
        .filter(|n| n.is_element() && n.tag_name().name() == "Property")
        .filter(|p| attr(*p, "key").as_deref() == Some(USER_DATA_PROPERTY))
        .filter_map(|p| attr(p, "value"))
        .next_back();
    let Some(value) = value else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Ok(None);
    }
    decode(&value, file).map(Some)
}

/// base64, then gunzip when the result is gzip data.
fn decode(value: &str, file: &str) -> Result<Vec<u8>, OvfEnvError> {
    let clean: Vec<u8> = value.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
        .map_err(|source| OvfEnvError::Base64 {
            file: file.to_string(),
            source,
        })?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes);
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes.as_slice())
        .take(MAX_DECODED + 1)
        .read_to_end(&mut out)
        .map_err(|source| OvfEnvError::Gzip {
            file: file.to_string(),
            source,
        })?;
    if out.len() as u64 > MAX_DECODED {
        return Err(OvfEnvError::TooLarge {
            file: file.to_string(),
        });
    }
    Ok(out)
}

/// Candidate devices under the host root: every CD-ROM drive (`sr*`), then any other block
/// device whose iso9660 label is `OVF ENV`. The second value says whether a CD-ROM drive
/// exists at all.
fn candidates(root: &Path) -> (Vec<PathBuf>, bool) {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/class/block"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let drives: Vec<PathBuf> = names
        .iter()
        .filter(|n| n.starts_with("sr"))
        .map(|n| root.join("dev").join(n))
        .collect();
    let any_drive = !drives.is_empty();
    let mut out = drives;
    for name in names
        .iter()
        .filter(|n| !n.starts_with("sr") && !n.starts_with("loop") && !n.starts_with("ram"))
    {
        let device = root.join("dev").join(name);
        let Ok(mut f) = std::fs::File::open(&device) else {
            continue;
        };
        if let Some((FsType::Iso9660, label)) = configdrive::read_label(&mut f) {
            if label == VOLUME_LABEL {
                out.push(device);
            }
        }
    }
    (out, any_drive)
}

/// Mounts `device` (iso9660) on `mount_point` and reads its `ovf-env.xml`. `Ok(None)` when the
/// device cannot be mounted (an empty drive, not iso9660) or holds no OVF environment.
fn read_device(
    device: &Path,
    mounter: &dyn Mounter,
    mount_point: &Path,
) -> Result<Option<Found>, OvfEnvError> {
    if let Err(e) = mounter.mount(device, FsType::Iso9660, mount_point) {
        tracing::debug!(device = %device.display(), "not an iso9660 medium: {e}");
        return Ok(None);
    }
    let mut result = Ok(None);
    for file in FILE_NAMES {
        match std::fs::read(mount_point.join(file)) {
            Ok(bytes) => {
                let label = format!("{} on {}", file, device.display());
                let text = String::from_utf8_lossy(&bytes);
                result = user_data_from_xml(&text, &label).map(|user_data| {
                    Some(Found {
                        device: device.to_owned(),
                        file,
                        user_data,
                    })
                });
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                result = Err(OvfEnvError::Read {
                    device: device.to_owned(),
                    file: file.to_string(),
                    source,
                });
                break;
            }
        }
    }
    if let Err(e) = mounter.unmount(mount_point) {
        tracing::warn!(mount_point = %mount_point.display(), "cannot unmount the OVF environment CD-ROM: {e}");
    }
    result
}

/// Looks for an OVF environment on the CD-ROMs under `root`, waiting up to `wait` for a
/// CD-ROM drive to appear. `Ok(None)` when there is none.
pub fn find_and_read(
    root: &Path,
    mounter: &dyn Mounter,
    mount_point: &Path,
    wait: Duration,
) -> Result<Option<Found>, OvfEnvError> {
    std::fs::create_dir_all(mount_point)
        .map_err(|e| OvfEnvError::MountPoint(mount_point.to_owned(), e))?;
    let start = Instant::now();
    loop {
        let (devices, any_drive) = candidates(root);
        for device in &devices {
            if let Some(found) = read_device(device, mounter, mount_point)? {
                return Ok(Some(found));
            }
        }
        if any_drive {
            return Ok(None);
        }
        let waited = start.elapsed();
        let pending = waited < PENDING_DRIVE_WAIT && cdrom_without_block_device(root);
        if waited >= wait && !pending {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Whether the SCSI layer reports a CD-ROM (`type` 5) that has no block device yet (its
/// driver, `sr_mod`, not loaded or not bound yet).
fn cdrom_without_block_device(root: &Path) -> bool {
    let Ok(devices) = std::fs::read_dir(root.join("sys/bus/scsi/devices")) else {
        return false;
    };
    devices.filter_map(|e| e.ok()).any(|device| {
        let path = device.path();
        std::fs::read_to_string(path.join("type")).is_ok_and(|t| t.trim() == "5")
            && !path.join("block").exists()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::io::Write;

    #[test]
    fn a_cdrom_the_scsi_layer_reports_without_its_block_device_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(!cdrom_without_block_device(root), "no SCSI bus at all");
        let disk = root.join("sys/bus/scsi/devices/0:0:0:0");
        std::fs::create_dir_all(&disk).unwrap();
        std::fs::write(disk.join("type"), "0\n").unwrap();
        assert!(!cdrom_without_block_device(root), "a disk is not a CD-ROM");
        let cdrom = root.join("sys/bus/scsi/devices/2:0:0:0");
        std::fs::create_dir_all(&cdrom).unwrap();
        std::fs::write(cdrom.join("type"), "5\n").unwrap();
        assert!(cdrom_without_block_device(root), "sr_mod not bound yet");
        std::fs::create_dir_all(cdrom.join("block/sr0")).unwrap();
        assert!(!cdrom_without_block_device(root), "sr0 is there");
    }

    const TOML: &str = "[settings.kubernetes]\ncluster-name = \"eksa\"\n";

    /// What vSphere writes (trimmed): the environment of this VM, its platform section, its
    /// properties, and an Entity for a sibling VM of the vApp.
    fn env(properties: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Environment
     xmlns="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
     xmlns:oe="http://schemas.dmtf.org/ovf/environment/1"
     xmlns:ve="http://www.vmware.com/schema/ovfenv"
     oe:id=""
     ve:vCenterId="vm-1234">
   <PlatformSection>
      <Kind>VMware ESXi</Kind>
      <Version>8.0.2</Version>
      <Vendor>VMware, Inc.</Vendor>
      <Locale>en</Locale>
   </PlatformSection>
   <PropertySection>
{properties}
   </PropertySection>
   <Entity oe:id="other-vm">
      <PropertySection>
         <Property oe:key="user-data" oe:value="bm90IG1pbmU="/>
      </PropertySection>
   </Entity>
</Environment>
"#
        )
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn reads_the_user_data_property() {
        let xml = env(&format!(
            "         <Property oe:key=\"hostname\" oe:value=\"node-1\"/>\n         <Property oe:key=\"user-data\" oe:value=\"{}\"/>",
            b64(TOML.as_bytes())
        ));
        let got = user_data_from_xml(&xml, "ovf-env.xml").unwrap().unwrap();
        assert_eq!(got, TOML.as_bytes());
    }

    #[test]
    fn gzip_user_data_is_decompressed() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(TOML.as_bytes()).unwrap();
        let gz = e.finish().unwrap();
        let xml = env(&format!(
            "<Property oe:key=\"user-data\" oe:value=\"{}\"/>",
            b64(&gz)
        ));
        assert_eq!(
            user_data_from_xml(&xml, "f").unwrap().unwrap(),
            TOML.as_bytes()
        );
        let big = vec![0u8; (MAX_DECODED + 1) as usize];
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&big).unwrap();
        let xml = env(&format!(
            "<Property oe:key=\"user-data\" oe:value=\"{}\"/>",
            b64(&e.finish().unwrap())
        ));
        assert!(matches!(
            user_data_from_xml(&xml, "f"),
            Err(OvfEnvError::TooLarge { .. })
        ));
    }

    #[test]
    fn no_or_empty_property_is_no_user_data() {
        // Only a sibling entity has user-data: not ours.
        let xml = env("<Property oe:key=\"hostname\" oe:value=\"node-1\"/>");
        assert_eq!(user_data_from_xml(&xml, "f").unwrap(), None);
        let xml = env("<Property oe:key=\"user-data\" oe:value=\"  \"/>");
        assert_eq!(user_data_from_xml(&xml, "f").unwrap(), None);
    }

    #[test]
    fn bad_documents_name_the_file_and_property() {
        let e = user_data_from_xml("<Environment", "ovf-env.xml on /dev/sr0").unwrap_err();
        assert!(
            e.to_string().contains("ovf-env.xml on /dev/sr0") && e.to_string().contains("XML"),
            "{e}"
        );
        let e = user_data_from_xml(
            "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"/>",
            "ovf-env.xml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("<Envelope>"), "{e}");
        let xml = env("<Property oe:key=\"user-data\" oe:value=\"not base64 !!\"/>");
        let e = user_data_from_xml(&xml, "ovf-env.xml").unwrap_err();
        assert!(
            e.to_string()
                .contains("ovf-env.xml: property user-data is not valid base64"),
            "{e}"
        );
        let xml = env(&format!(
            "<Property oe:key=\"user-data\" oe:value=\"{}\"/>",
            b64(&[0x1f, 0x8b, 0, 1, 2])
        ));
        let e = user_data_from_xml(&xml, "ovf-env.xml").unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }

    /// "Mounts" a device by copying the folder named after it, if there is one.
    struct FakeMounter {
        media: PathBuf,
        calls: RefCell<Vec<String>>,
    }

    impl Mounter for FakeMounter {
        fn mount(&self, device: &Path, fs: FsType, target: &Path) -> std::io::Result<()> {
            let name = device.file_name().unwrap().to_string_lossy().into_owned();
            self.calls
                .borrow_mut()
                .push(format!("mount {name} {}", fs.name()));
            let from = self.media.join(&name);
            if !from.is_dir() {
                return Err(std::io::Error::from_raw_os_error(123)); // ENOMEDIUM
            }
            for e in std::fs::read_dir(from)? {
                let e = e?;
                std::fs::copy(e.path(), target.join(e.file_name()))?;
            }
            Ok(())
        }

        fn unmount(&self, target: &Path) -> std::io::Result<()> {
            self.calls.borrow_mut().push("unmount".into());
            std::fs::remove_dir_all(target)?;
            std::fs::create_dir(target)
        }
    }

    #[test]
    fn finds_the_cdrom_holding_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let media = dir.path().join("media");
        let mp = dir.path().join("mnt");
        for dev in ["sr0", "sr1", "vda"] {
            std::fs::create_dir_all(root.join("sys/class/block").join(dev)).unwrap();
        }
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev/vda"), vec![0u8; 40 * 1024]).unwrap();
        // sr0 is an empty drive; sr1 has the environment.
        std::fs::create_dir_all(media.join("sr1")).unwrap();
        let xml = env(&format!(
            "<Property oe:key=\"user-data\" oe:value=\"{}\"/>",
            b64(TOML.as_bytes())
        ));
        std::fs::write(media.join("sr1/ovf-env.xml"), xml).unwrap();
        let mounter = FakeMounter {
            media,
            calls: RefCell::new(vec![]),
        };
        let found = find_and_read(&root, &mounter, &mp, Duration::from_secs(30))
            .unwrap()
            .unwrap();
        assert_eq!(found.device, root.join("dev/sr1"));
        assert_eq!(found.file, "ovf-env.xml");
        assert_eq!(found.user_data.unwrap(), TOML.as_bytes());
        assert_eq!(
            *mounter.calls.borrow(),
            ["mount sr0 iso9660", "mount sr1 iso9660", "unmount"]
        );
    }

    #[test]
    fn a_drive_without_an_environment_ends_the_search_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sys/class/block/sr0")).unwrap();
        let mounter = FakeMounter {
            media: dir.path().join("media"),
            calls: RefCell::new(vec![]),
        };
        let t = Instant::now();
        let got = find_and_read(
            &root,
            &mounter,
            &dir.path().join("mnt"),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(got, None);
        assert!(t.elapsed() < Duration::from_secs(5));
        // No drive at all: waits the bound, then gives up.
        let empty = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let got = find_and_read(
            empty.path(),
            &mounter,
            &dir.path().join("mnt"),
            Duration::from_millis(600),
        )
        .unwrap();
        assert_eq!(got, None);
        assert!(t.elapsed() >= Duration::from_millis(600));
    }

    #[test]
    fn a_bad_environment_is_an_error_naming_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sys/class/block/sr0")).unwrap();
        let media = dir.path().join("media");
        std::fs::create_dir_all(media.join("sr0")).unwrap();
        std::fs::write(media.join("sr0/ovf-env.xml"), "<Environment").unwrap();
        let mounter = FakeMounter {
            media,
            calls: RefCell::new(vec![]),
        };
        let e =
            find_and_read(&root, &mounter, &dir.path().join("mnt"), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("ovf-env.xml on "), "{e}");
        assert!(e.to_string().contains("sr0"), "{e}");
        // Unmounted after the failed read.
        assert_eq!(mounter.calls.borrow().last().unwrap(), "unmount");
    }
}
