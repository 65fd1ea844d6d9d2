//! The one device-mapper ioctl berth-probe needs: DM_TABLE_STATUS, to tell the target type
//! (and verity's status letter) of the device behind `/`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// What DM_TABLE_STATUS says about the first target of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    /// e.g. `verity`.
    pub target_type: String,
    /// e.g. `V` (verified) or `C` (corruption seen) for verity.
    pub status: String,
}

pub trait DeviceMapper {
    fn table_status(&self, name: &str) -> io::Result<TargetStatus>;
}

/// Talks to the kernel through `/dev/mapper/control`.
#[derive(Debug)]
pub struct Control<'a> {
    pub path: &'a Path,
}

const HDR: usize = 312;
const SPEC: usize = 40;
const DM_TABLE_STATUS: libc::c_ulong =
    (3 << 30) | ((HDR as libc::c_ulong) << 16) | (0xfd << 8) | 12;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Parses the answer buffer of DM_TABLE_STATUS.
fn parse_answer(buf: &[u8]) -> io::Result<TargetStatus> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short device-mapper answer");
    let data_start = u32_at(buf, 16) as usize;
    let target_count = u32_at(buf, 20);
    if target_count == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "device has no table",
        ));
    }
    let spec = buf.get(data_start..data_start + SPEC).ok_or_else(bad)?;
    let target_type = c_str(&spec[24..40]);
    let status = c_str(buf.get(data_start + SPEC..).ok_or_else(bad)?);
    Ok(TargetStatus {
        target_type,
        status,
    })
}

impl DeviceMapper for Control<'_> {
    fn table_status(&self, name: &str) -> io::Result<TargetStatus> {
        let file = File::open(self.path)?;
        if name.len() >= 128 || name.contains('\0') {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let mut words = vec![0u64; 16 * 1024 / 8];
        let len = words.len() * 8;
        {
            let bytes = as_bytes(&mut words);
            bytes[0..4].copy_from_slice(&4u32.to_ne_bytes()); // version 4.0.0
            bytes[12..16].copy_from_slice(&(len as u32).to_ne_bytes()); // data_size
            bytes[16..20].copy_from_slice(&(HDR as u32).to_ne_bytes()); // data_start
            bytes[48..48 + name.len()].copy_from_slice(name.as_bytes()); // name
        }
        // SAFETY: `words` is an 8-byte aligned, writable buffer of `len` bytes that starts
        // with a dm_ioctl header whose data_size is `len`; the kernel stays inside it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), DM_TABLE_STATUS as _, words.as_mut_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = as_bytes(&mut words);
        if u32_at(bytes, 28) & DM_BUFFER_FULL_FLAG != 0 {
            return Err(io::Error::other("device-mapper status larger than 16 KiB"));
        }
        parse_answer(bytes)
    }
}

fn as_bytes(words: &mut [u64]) -> &mut [u8] {
    let len = words.len() * 8;
    // SAFETY: the slice owns `len` initialised bytes; u8 has no alignment or validity
    // requirements, and the result borrows `words` mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        assert_eq!(DM_TABLE_STATUS, 0xc138_fd0c);
    }

    #[test]
    fn parses_a_status_answer() {
        let mut buf = vec![0u8; 512];
        buf[16..20].copy_from_slice(&312u32.to_ne_bytes());
        buf[20..24].copy_from_slice(&1u32.to_ne_bytes());
        buf[312 + 24..312 + 30].copy_from_slice(b"verity");
        buf[352] = b'V';
        assert_eq!(
            parse_answer(&buf).expect("valid"),
            TargetStatus {
                target_type: "verity".into(),
                status: "V".into()
            }
        );
        buf[20] = 0;
        assert!(parse_answer(&buf).is_err());
    }
}
