//! VMware guestinfo user data: `guestinfo.userdata`, encoded as `guestinfo.userdata.encoding`
//! says (none, `base64`/`b64`, `gzip+base64`/`gz+b64`), the keys Bottlerocket and cloud-init
//! read. Set them with `govc vm.change -e guestinfo.userdata=...` or in the VMX file.
//!
//! The values are read through the VMware backdoor (the `vmw_backdoor` crate, an x86 I/O port
//! VMware's hypervisor intercepts). Touching that port anywhere else faults, so the backdoor is
//! only used when the DMI system vendor is `VMware, Inc.` and on x86_64.

use base64::Engine as _;
use std::io::Read;
use std::path::Path;

pub const USER_DATA_KEY: &str = "guestinfo.userdata";
pub const ENCODING_KEY: &str = "guestinfo.userdata.encoding";
const SYS_VENDOR: &str = "sys/class/dmi/id/sys_vendor";
const VMWARE_VENDOR: &str = "VMware, Inc.";
/// Decompressed user data larger than this is refused (a gzip bomb would fill memory).
const MAX_DECODED: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum VmwareError {
    #[error("unknown {ENCODING_KEY} {0:?} (expected base64, b64, gzip+base64 or gz+b64)")]
    UnknownEncoding(String),
    #[error("{USER_DATA_KEY} is not valid base64")]
    Base64(#[source] base64::DecodeError),
    #[error("{USER_DATA_KEY} is not valid gzip")]
    Gzip(#[source] std::io::Error),
    #[error("{USER_DATA_KEY} decompresses to more than {MAX_DECODED} bytes")]
    TooLarge,
    #[error("not running on VMware (DMI system vendor is not {VMWARE_VENDOR:?}); the backdoor is not touched")]
    NotVmware,
    #[error("guestinfo is read through the VMware backdoor, which exists on x86_64 only")]
    Unsupported,
    #[error("cannot read {key} through the VMware backdoor: {reason}")]
    Backdoor { key: String, reason: String },
}

/// Decodes `guestinfo.userdata` as its encoding key says.
pub fn decode(value: &[u8], encoding: Option<&str>) -> Result<Vec<u8>, VmwareError> {
    let encoding = encoding.map(str::trim).unwrap_or_default();
    let b64 = |v: &[u8]| {
        // Line breaks are common in pasted base64; padding is sometimes left off.
        let clean: Vec<u8> = v
            .iter()
            .copied()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(&clean)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&clean))
            .map_err(VmwareError::Base64)
    };
    match encoding.to_ascii_lowercase().as_str() {
        "" => Ok(value.to_vec()),
        "base64" | "b64" => b64(value),
        "gzip+base64" | "gz+b64" => {
            let compressed = b64(value)?;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(compressed.as_slice())
                .take(MAX_DECODED + 1)
                .read_to_end(&mut out)
                .map_err(VmwareError::Gzip)?;
            if out.len() as u64 > MAX_DECODED {
                return Err(VmwareError::TooLarge);
            }
            Ok(out)
        }
        other => Err(VmwareError::UnknownEncoding(other.to_string())),
    }
}

/// Reads and decodes the user data from guestinfo; `None` when `guestinfo.userdata` is unset
/// or empty.
pub fn read_user_data(root: &Path) -> Result<Option<Vec<u8>>, VmwareError> {
    let vendor = std::fs::read_to_string(root.join(SYS_VENDOR)).unwrap_or_default();
    if vendor.trim() != VMWARE_VENDOR {
        return Err(VmwareError::NotVmware);
    }
    let Some(value) = backdoor::guestinfo(USER_DATA_KEY)? else {
        return Ok(None);
    };
    if value.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let encoding =
        backdoor::guestinfo(ENCODING_KEY)?.map(|e| String::from_utf8_lossy(&e).into_owned());
    decode(&value, encoding.as_deref()).map(Some)
}

#[cfg(target_arch = "x86_64")]
mod backdoor {
    use super::VmwareError;

    /// One guestinfo value; `None` when the key is unset.
    pub(super) fn guestinfo(key: &str) -> Result<Option<Vec<u8>>, VmwareError> {
        let fail = |e: vmw_backdoor::VmwError| VmwareError::Backdoor {
            key: key.to_string(),
            reason: e.to_string(),
        };
        // VMware lets user mode reach the port; iopl (CAP_SYS_RAWIO, not under lockdown) is
        // the fallback.
        let mut guard = vmw_backdoor::probe_backdoor()
            .or_else(|_| vmw_backdoor::probe_backdoor_privileged())
            .map_err(fail)?;
        let mut chan = guard.open_enhanced_chan().map_err(fail)?;
        let value = chan.get_guestinfo(key.as_bytes()).map_err(fail)?;
        let _ = chan.close();
        Ok(value)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod backdoor {
    use super::VmwareError;

    pub(super) fn guestinfo(_key: &str) -> Result<Option<Vec<u8>>, VmwareError> {
        Err(VmwareError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TOML: &str = "[settings]\nmotd = \"from guestinfo\"\n";

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_every_encoding() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(TOML);
        let gz = base64::engine::general_purpose::STANDARD.encode(gzip(TOML.as_bytes()));
        assert_eq!(decode(TOML.as_bytes(), None).unwrap(), TOML.as_bytes());
        assert_eq!(decode(TOML.as_bytes(), Some("")).unwrap(), TOML.as_bytes());
        for enc in ["base64", "b64", "BASE64", " base64\n"] {
            assert_eq!(decode(b64.as_bytes(), Some(enc)).unwrap(), TOML.as_bytes());
        }
        for enc in ["gzip+base64", "gz+b64"] {
            assert_eq!(decode(gz.as_bytes(), Some(enc)).unwrap(), TOML.as_bytes());
        }
        // Wrapped lines and missing padding, as pasted into a VMX file.
        let wrapped: String = b64
            .trim_end_matches('=')
            .as_bytes()
            .chunks(10)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(
            decode(wrapped.as_bytes(), Some("base64")).unwrap(),
            TOML.as_bytes()
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = decode(b"x", Some("rot13")).unwrap_err();
        assert!(e.to_string().contains("rot13"), "{e}");
        let e = decode(b"not base64 !!", Some("base64")).unwrap_err();
        assert!(e.to_string().contains("guestinfo.userdata"), "{e}");
        let not_gzip = base64::engine::general_purpose::STANDARD.encode(TOML);
        let e = decode(not_gzip.as_bytes(), Some("gzip+base64")).unwrap_err();
        assert!(e.to_string().contains("gzip"), "{e}");
    }

    #[test]
    fn gzip_bombs_are_refused() {
        let big = vec![0u8; (MAX_DECODED + 10) as usize];
        let gz = base64::engine::general_purpose::STANDARD.encode(gzip(&big));
        assert!(matches!(
            decode(gz.as_bytes(), Some("gz+b64")),
            Err(VmwareError::TooLarge)
        ));
    }

    #[test]
    fn the_backdoor_is_not_touched_off_vmware() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_user_data(dir.path()),
            Err(VmwareError::NotVmware)
        ));
        std::fs::create_dir_all(dir.path().join("sys/class/dmi/id")).unwrap();
        std::fs::write(dir.path().join(SYS_VENDOR), "QEMU\n").unwrap();
        assert!(matches!(
            read_user_data(dir.path()),
            Err(VmwareError::NotVmware)
        ));
    }
}
