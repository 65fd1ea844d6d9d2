//! The one device-mapper ioctl berth-probe needs: DM_TABLE_STATUS, to tell the target type
//! (and verity's status letter) of the device behind `/`.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use boot_contract::dm::{self, Command, Header, TargetSpec, TARGET_SPEC_SIZE};

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

/// Parses the answer buffer of DM_TABLE_STATUS.
fn parse_answer(buf: &[u8]) -> io::Result<TargetStatus> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "short device-mapper answer");
    let header = Header::decode(buf).ok_or_else(bad)?;
    if header.target_count == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "device has no table",
        ));
    }
    let data_start = header.data_start as usize;
    let spec = TargetSpec::decode(buf.get(data_start..).ok_or_else(bad)?).ok_or_else(bad)?;
    let status = dm::c_string(buf.get(data_start + TARGET_SPEC_SIZE..).ok_or_else(bad)?);
    Ok(TargetStatus {
        target_type: spec.target_type(),
        status,
    })
}

impl DeviceMapper for Control<'_> {
    fn table_status(&self, name: &str) -> io::Result<TargetStatus> {
        let file = File::open(self.path)?;
        let mut words = vec![0u64; 16 * 1024 / 8];
        let len = words.len() * 8;
        Header::new(name, len)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            .encode(as_bytes(&mut words));
        // SAFETY: `words` is an 8-byte aligned, writable buffer of `len` bytes that starts
        // with a dm_ioctl header whose data_size is `len`; the kernel stays inside it.
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                Command::TableStatus.request() as libc::c_ulong as _,
                words.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = as_bytes(&mut words);
        let answer = Header::decode(bytes).ok_or_else(|| io::Error::other("short answer"))?;
        if answer.flags & dm::flags::BUFFER_FULL != 0 {
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
