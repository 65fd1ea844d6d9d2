//! The one place where early-init talks to the kernel without a safe wrapper: finit_module,
//! the device-mapper ioctls, BLKPG and the ext4 online resize ioctl.
//!
//! Everything here is a thin, checked wrapper; the callers never see a raw pointer.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use boot_contract::dm::{self, Command, Header, TargetSpec, HEADER_SIZE, TARGET_SPEC_SIZE};

/// `MODULE_INIT_COMPRESSED_FILE` from `<linux/module.h>`: the kernel decompresses the module.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Loads a kernel module from an open file; `Ok(false)` when it was already loaded.
pub(crate) fn finit_module(file: &File) -> io::Result<bool> {
    let params: &CStr = c"";
    // SAFETY: the fd is valid for the duration of the call, `params` is a NUL-terminated
    // string that outlives the call, and flags is a plain integer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            MODULE_INIT_COMPRESSED_FILE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(err)
    }
}

// ---------------------------------------------------------------------------------------------
// device-mapper (<linux/dm-ioctl.h>; the header and target spec are encoded by boot-contract)

/// One line of a device-mapper table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmTarget {
    pub start_sector: u64,
    pub sectors: u64,
    pub target_type: String,
    pub params: String,
}

/// An open `/dev/mapper/control`.
pub(crate) struct DmControl {
    file: File,
}

fn invalid(e: dm::FieldError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// A buffer of u64 so that the dm_ioctl header at its start is suitably aligned.
struct IoctlBuf {
    words: Vec<u64>,
}

impl IoctlBuf {
    fn new(bytes: usize) -> Self {
        Self {
            words: vec![0u64; bytes.div_ceil(8)],
        }
    }
    fn len(&self) -> usize {
        self.words.len() * 8
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: the Vec owns `len` initialised bytes; u8 has no alignment or validity
        // requirements, and the returned slice borrows `self` mutably.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), len) }
    }
}

impl DmControl {
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Self { file })
    }

    fn ioctl(&self, cmd: Command, buf: &mut IoctlBuf) -> io::Result<Header> {
        // SAFETY: `buf` is a writable, 8-byte aligned buffer of `data_size` bytes starting
        // with a dm_ioctl header whose data_size matches the buffer; the kernel reads and
        // writes only inside it.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                cmd.request() as libc::c_ulong as _,
                buf.words.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Header::decode(buf.bytes_mut()).ok_or_else(|| io::Error::other("short dm_ioctl answer"))
    }

    /// DM_DEV_CREATE: an empty device `name`; returns its `dev_t` (kernel encoding).
    pub(crate) fn create(&self, name: &str, uuid: &str) -> io::Result<u64> {
        let mut buf = IoctlBuf::new(HEADER_SIZE);
        let mut hdr = Header::new(name, buf.len()).map_err(invalid)?;
        hdr.set_uuid(uuid).map_err(invalid)?;
        hdr.encode(buf.bytes_mut());
        let out = self.ioctl(Command::DevCreate, &mut buf)?;
        Ok(out.dev)
    }

    /// DM_TABLE_LOAD into the inactive table of `name`.
    pub(crate) fn load(&self, name: &str, targets: &[DmTarget], read_only: bool) -> io::Result<()> {
        let mut total = HEADER_SIZE;
        let mut specs = Vec::new();
        for t in targets {
            if t.params.as_bytes().contains(&0) {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            // spec + params + NUL, padded to 8 bytes
            let len = (TARGET_SPEC_SIZE + t.params.len() + 1).next_multiple_of(8);
            let spec = TargetSpec::new(t.start_sector, t.sectors, &t.target_type, len as u32)
                .map_err(invalid)?;
            specs.push((total, spec, t.params.as_bytes()));
            total += len;
        }
        let mut buf = IoctlBuf::new(total);
        let mut hdr = Header::new(name, buf.len()).map_err(invalid)?;
        hdr.target_count = targets.len() as u32;
        if read_only {
            hdr.flags |= dm::flags::READONLY;
        }
        let bytes = buf.bytes_mut();
        hdr.encode(bytes);
        for (off, spec, params) in &specs {
            spec.encode(&mut bytes[*off..]);
            let p = off + TARGET_SPEC_SIZE;
            bytes[p..p + params.len()].copy_from_slice(params);
        }
        self.ioctl(Command::TableLoad, &mut buf)?;
        Ok(())
    }

    /// DM_DEV_SUSPEND without the suspend flag: makes the loaded table live.
    pub(crate) fn resume(&self, name: &str) -> io::Result<()> {
        let mut buf = IoctlBuf::new(HEADER_SIZE);
        let hdr = Header::new(name, buf.len()).map_err(invalid)?;
        hdr.encode(buf.bytes_mut());
        let out = self.ioctl(Command::DevSuspend, &mut buf)?;
        if out.flags & dm::flags::BUFFER_FULL != 0 {
            return Err(io::Error::other("device-mapper buffer full"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// block devices

const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// Tells the kernel that partition `pno` of the open disk now spans `start..start+length`
/// (bytes).
pub(crate) fn blkpg_resize_partition(
    disk: &File,
    pno: u32,
    start: u64,
    length: u64,
) -> io::Result<()> {
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| io::ErrorKind::InvalidInput)?,
        length: i64::try_from(length).map_err(|_| io::ErrorKind::InvalidInput)?,
        pno: i32::try_from(pno).map_err(|_| io::ErrorKind::InvalidInput)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: `arg` and the `part` it points to live on this stack frame for the whole call
    // and have the layout of struct blkpg_ioctl_arg / blkpg_partition.
    let rc = unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG as _, &mut arg as *mut BlkpgIoctlArg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `EXT4_IOC_RESIZE_FS` = `_IOW('f', 16, __u64)`.
const EXT4_IOC_RESIZE_FS: libc::c_ulong =
    (1 << 30) | (8 << 16) | ((b'f' as libc::c_ulong) << 8) | 16;

/// Grows the mounted ext4 file system that `dir` belongs to to `blocks` fs blocks.
pub(crate) fn ext4_resize(dir: &File, blocks: u64) -> io::Result<()> {
    let mut n = blocks;
    // SAFETY: the ioctl reads one u64 from the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &mut n as *mut u64) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(EXT4_IOC_RESIZE_FS, 0x4008_6610);
    }
}
