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
// device-mapper (<linux/dm-ioctl.h>)

const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;
const DM_VERSION_MAJOR: u32 = 4;
const DM_READONLY_FLAG: u32 = 1 << 0;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;

const DM_DEV_CREATE_CMD: u8 = 3;
const DM_DEV_SUSPEND_CMD: u8 = 6;
const DM_TABLE_LOAD_CMD: u8 = 9;

/// `struct dm_ioctl`, 312 bytes on every Linux architecture.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; DM_NAME_LEN],
    uuid: [u8; DM_UUID_LEN],
    data: [u8; 7],
}

/// `struct dm_target_spec`, followed by the NUL-terminated parameter string.
#[repr(C)]
#[derive(Clone, Copy)]
struct DmTargetSpec {
    sector_start: u64,
    length: u64,
    status: i32,
    next: u32,
    target_type: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<DmIoctl>() == 312);
const _: () = assert!(std::mem::size_of::<DmTargetSpec>() == 40);

/// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
const fn dm_request(cmd: u8) -> libc::c_ulong {
    // dir (read|write) << 30 | size << 16 | type << 8 | nr
    ((3u64 << 30) | ((312u64) << 16) | (0xfdu64 << 8) | cmd as u64) as libc::c_ulong
}

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

fn copy_str(dst: &mut [u8], src: &str) -> io::Result<()> {
    if src.len() >= dst.len() || src.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("device-mapper string {src:?} too long or contains NUL"),
        ));
    }
    dst[..src.len()].copy_from_slice(src.as_bytes());
    Ok(())
}

fn new_header(name: &str, data_size: usize) -> io::Result<DmIoctl> {
    let mut hdr = DmIoctl {
        version: [DM_VERSION_MAJOR, 0, 0],
        data_size: u32::try_from(data_size).map_err(|_| io::ErrorKind::InvalidInput)?,
        data_start: std::mem::size_of::<DmIoctl>() as u32,
        target_count: 0,
        open_count: 0,
        flags: 0,
        event_nr: 0,
        padding: 0,
        dev: 0,
        name: [0; DM_NAME_LEN],
        uuid: [0; DM_UUID_LEN],
        data: [0; 7],
    };
    copy_str(&mut hdr.name, name)?;
    Ok(hdr)
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
    fn header(&self) -> DmIoctl {
        // SAFETY: the buffer is at least 312 bytes (checked by callers through `new`), 8-byte
        // aligned, and every bit pattern is a valid DmIoctl (integers and byte arrays).
        unsafe { std::ptr::read(self.words.as_ptr().cast::<DmIoctl>()) }
    }
    fn set_header(&mut self, hdr: &DmIoctl) {
        // SAFETY: as in `header`; the write stays inside the buffer.
        unsafe { std::ptr::write(self.words.as_mut_ptr().cast::<DmIoctl>(), *hdr) }
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

    fn ioctl(&self, cmd: u8, buf: &mut IoctlBuf) -> io::Result<DmIoctl> {
        // SAFETY: `buf` is a writable, 8-byte aligned buffer of `data_size` bytes starting
        // with a dm_ioctl header whose data_size matches the buffer; the kernel reads and
        // writes only inside it.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                dm_request(cmd) as _,
                buf.words.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(buf.header())
    }

    /// DM_DEV_CREATE: an empty device `name`; returns its `dev_t` (kernel encoding).
    pub(crate) fn create(&self, name: &str, uuid: &str) -> io::Result<u64> {
        let mut buf = IoctlBuf::new(std::mem::size_of::<DmIoctl>());
        let mut hdr = new_header(name, buf.len())?;
        copy_str(&mut hdr.uuid, uuid)?;
        buf.set_header(&hdr);
        let out = self.ioctl(DM_DEV_CREATE_CMD, &mut buf)?;
        Ok(out.dev)
    }

    /// DM_TABLE_LOAD into the inactive table of `name`.
    pub(crate) fn load(&self, name: &str, targets: &[DmTarget], read_only: bool) -> io::Result<()> {
        let hdr_len = std::mem::size_of::<DmIoctl>();
        let spec_len = std::mem::size_of::<DmTargetSpec>();
        let mut total = hdr_len;
        let mut specs = Vec::new();
        for t in targets {
            // spec + params + NUL, padded to 8 bytes
            let len = (spec_len + t.params.len() + 1).next_multiple_of(8);
            specs.push((total, len));
            total += len;
        }
        let mut buf = IoctlBuf::new(total);
        let mut hdr = new_header(name, buf.len())?;
        hdr.target_count = targets.len() as u32;
        if read_only {
            hdr.flags |= DM_READONLY_FLAG;
        }
        buf.set_header(&hdr);
        let bytes = buf.bytes_mut();
        for (t, (off, len)) in targets.iter().zip(&specs) {
            let mut target_type = [0u8; 16];
            copy_str(&mut target_type, &t.target_type)?;
            if t.params.as_bytes().contains(&0) {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            let spec = DmTargetSpec {
                sector_start: t.start_sector,
                length: t.sectors,
                status: 0,
                next: *len as u32,
                target_type,
            };
            // SAFETY: `off + spec_len <= total` by construction; write_unaligned has no
            // alignment requirement and DmTargetSpec is plain old data.
            unsafe {
                std::ptr::write_unaligned(bytes.as_mut_ptr().add(*off).cast::<DmTargetSpec>(), spec)
            };
            let p = off + spec_len;
            bytes[p..p + t.params.len()].copy_from_slice(t.params.as_bytes());
        }
        self.ioctl(DM_TABLE_LOAD_CMD, &mut buf)?;
        Ok(())
    }

    /// DM_DEV_SUSPEND without the suspend flag: makes the loaded table live.
    pub(crate) fn resume(&self, name: &str) -> io::Result<()> {
        let mut buf = IoctlBuf::new(std::mem::size_of::<DmIoctl>());
        let hdr = new_header(name, buf.len())?;
        buf.set_header(&hdr);
        let out = self.ioctl(DM_DEV_SUSPEND_CMD, &mut buf)?;
        if out.flags & DM_BUFFER_FULL_FLAG != 0 {
            return Err(io::Error::other("device-mapper buffer full"));
        }
        Ok(())
    }
}

/// Splits a kernel `dev_t` as returned in `dm_ioctl.dev` (new_encode_dev) into major:minor.
pub(crate) fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
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
        assert_eq!(dm_request(DM_DEV_CREATE_CMD), 0xc138_fd03);
        assert_eq!(dm_request(DM_TABLE_LOAD_CMD), 0xc138_fd09);
        assert_eq!(EXT4_IOC_RESIZE_FS, 0x4008_6610);
    }

    #[test]
    fn dev_t_split_follows_new_encode_dev() {
        // major 253, minor 0 -> 0xfd00
        assert_eq!(split_dev(0xfd00), (253, 0));
        // major 253, minor 300: (300 & 0xff) | 253 << 8 | (300 & !0xff) << 12
        let dev = (300 & 0xff) | (253 << 8) | ((300u64 & !0xff) << 12);
        assert_eq!(split_dev(dev), (253, 300));
    }
}
