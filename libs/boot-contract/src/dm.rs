//! The device-mapper ioctl interface (`<linux/dm-ioctl.h>`, version 4): the `struct
//! dm_ioctl` header and `struct dm_target_spec`, encoded to and decoded from the bytes of an
//! ioctl buffer, and the ioctl request numbers. `early-init` creates the verity device with
//! these; `berth-probe` reads its status. The callers issue the ioctl itself.

use std::fmt;

/// `sizeof(struct dm_ioctl)` on every Linux architecture.
pub const HEADER_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const TARGET_SPEC_SIZE: usize = 40;
pub const NAME_LEN: usize = 128;
pub const UUID_LEN: usize = 129;
pub const TARGET_TYPE_LEN: usize = 16;
/// Interface version this crate speaks.
pub const VERSION: [u32; 3] = [4, 0, 0];

/// `flags` bits.
pub mod flags {
    pub const READONLY: u32 = 1 << 0;
    pub const SUSPEND: u32 = 1 << 1;
    pub const STATUS_TABLE: u32 = 1 << 4;
    /// The kernel's answer did not fit in the buffer.
    pub const BUFFER_FULL: u32 = 1 << 8;
}

/// The ioctl commands Berth uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    DevCreate = 3,
    DevSuspend = 6,
    TableLoad = 9,
    TableStatus = 12,
}

impl Command {
    /// The request number: `_IOWR(0xfd, cmd, struct dm_ioctl)`.
    pub const fn request(self) -> u32 {
        // dir (read|write) << 30 | size << 16 | type << 8 | nr
        (3 << 30) | ((HEADER_SIZE as u32) << 16) | (0xfd << 8) | self as u32
    }
}

/// A name, uuid or target type that does not fit its field or holds a NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub value: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device-mapper {} {:?} is too long or contains NUL",
            self.field, self.value
        )
    }
}

impl std::error::Error for FieldError {}

fn set_str<const N: usize>(field: &'static str, value: &str) -> Result<[u8; N], FieldError> {
    if value.len() >= N || value.as_bytes().contains(&0) {
        return Err(FieldError {
            field,
            value: value.to_owned(),
        });
    }
    let mut out = [0u8; N];
    out[..value.len()].copy_from_slice(value.as_bytes());
    Ok(out)
}

fn get_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(v)
}

/// `struct dm_ioctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: [u32; 3],
    /// Size of the whole buffer, header included.
    pub data_size: u32,
    /// Offset of the payload from the start of the buffer.
    pub data_start: u32,
    pub target_count: u32,
    pub open_count: i32,
    pub flags: u32,
    pub event_nr: u32,
    /// `dev_t` of the device, kernel encoding (see [`split_dev`]).
    pub dev: u64,
    pub name: [u8; NAME_LEN],
    pub uuid: [u8; UUID_LEN],
}

impl Header {
    /// A request about device `name` in a buffer of `data_size` bytes, payload right after
    /// the header.
    pub fn new(name: &str, data_size: usize) -> Result<Header, FieldError> {
        let data_size = u32::try_from(data_size).map_err(|_| FieldError {
            field: "buffer size",
            value: data_size.to_string(),
        })?;
        Ok(Header {
            version: VERSION,
            data_size,
            data_start: HEADER_SIZE as u32,
            target_count: 0,
            open_count: 0,
            flags: 0,
            event_nr: 0,
            dev: 0,
            name: set_str("name", name)?,
            uuid: [0; UUID_LEN],
        })
    }

    pub fn set_uuid(&mut self, uuid: &str) -> Result<(), FieldError> {
        self.uuid = set_str("uuid", uuid)?;
        Ok(())
    }

    pub fn name(&self) -> String {
        get_str(&self.name)
    }

    /// Writes the header into the first [`HEADER_SIZE`] bytes of `buf`.
    ///
    /// Panics when `buf` is shorter: callers size their buffers from [`HEADER_SIZE`].
    pub fn encode(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_SIZE];
        for (i, v) in self.version.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
        }
        b[12..16].copy_from_slice(&self.data_size.to_ne_bytes());
        b[16..20].copy_from_slice(&self.data_start.to_ne_bytes());
        b[20..24].copy_from_slice(&self.target_count.to_ne_bytes());
        b[24..28].copy_from_slice(&self.open_count.to_ne_bytes());
        b[28..32].copy_from_slice(&self.flags.to_ne_bytes());
        b[32..36].copy_from_slice(&self.event_nr.to_ne_bytes());
        b[36..40].fill(0); // padding
        b[40..48].copy_from_slice(&self.dev.to_ne_bytes());
        b[48..48 + NAME_LEN].copy_from_slice(&self.name);
        b[176..176 + UUID_LEN].copy_from_slice(&self.uuid);
        b[305..HEADER_SIZE].fill(0); // data[7]
    }

    /// Reads a header from the start of `buf`; `None` when `buf` is shorter than a header.
    pub fn decode(buf: &[u8]) -> Option<Header> {
        let b = buf.get(..HEADER_SIZE)?;
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&b[48..48 + NAME_LEN]);
        let mut uuid = [0u8; UUID_LEN];
        uuid.copy_from_slice(&b[176..176 + UUID_LEN]);
        Some(Header {
            version: [u32_at(b, 0), u32_at(b, 4), u32_at(b, 8)],
            data_size: u32_at(b, 12),
            data_start: u32_at(b, 16),
            target_count: u32_at(b, 20),
            open_count: u32_at(b, 24) as i32,
            flags: u32_at(b, 28),
            event_nr: u32_at(b, 32),
            dev: u64_at(b, 40),
            name,
            uuid,
        })
    }
}

/// `struct dm_target_spec`; in a buffer it is followed by the NUL-terminated parameter (or,
/// in an answer, status) string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub sector_start: u64,
    pub length: u64,
    pub status: i32,
    /// Offset of the next spec from the start of this one (table load), or from the payload
    /// start (answers).
    pub next: u32,
    pub target_type: [u8; TARGET_TYPE_LEN],
}

impl TargetSpec {
    pub fn new(
        sector_start: u64,
        length: u64,
        target_type: &str,
        next: u32,
    ) -> Result<TargetSpec, FieldError> {
        Ok(TargetSpec {
            sector_start,
            length,
            status: 0,
            next,
            target_type: set_str("target type", target_type)?,
        })
    }

    pub fn target_type(&self) -> String {
        get_str(&self.target_type)
    }

    /// Writes the spec into the first [`TARGET_SPEC_SIZE`] bytes of `buf` (panics when
    /// shorter).
    pub fn encode(&self, buf: &mut [u8]) {
        let b = &mut buf[..TARGET_SPEC_SIZE];
        b[0..8].copy_from_slice(&self.sector_start.to_ne_bytes());
        b[8..16].copy_from_slice(&self.length.to_ne_bytes());
        b[16..20].copy_from_slice(&self.status.to_ne_bytes());
        b[20..24].copy_from_slice(&self.next.to_ne_bytes());
        b[24..40].copy_from_slice(&self.target_type);
    }

    /// Reads a spec from the start of `buf`; `None` when `buf` is too short.
    pub fn decode(buf: &[u8]) -> Option<TargetSpec> {
        let b = buf.get(..TARGET_SPEC_SIZE)?;
        let mut target_type = [0u8; TARGET_TYPE_LEN];
        target_type.copy_from_slice(&b[24..40]);
        Some(TargetSpec {
            sector_start: u64_at(b, 0),
            length: u64_at(b, 8),
            status: u32_at(b, 16) as i32,
            next: u32_at(b, 20),
            target_type,
        })
    }
}

/// The C string at the start of `buf` (a target's parameters or status).
pub fn c_string(buf: &[u8]) -> String {
    get_str(buf)
}

/// Splits a kernel `dev_t` as returned in `dm_ioctl.dev` (new_encode_dev) into major:minor.
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(Command::DevCreate.request(), 0xc138_fd03);
        assert_eq!(Command::DevSuspend.request(), 0xc138_fd06);
        assert_eq!(Command::TableLoad.request(), 0xc138_fd09);
        assert_eq!(Command::TableStatus.request(), 0xc138_fd0c);
    }

    #[test]
    fn header_encode_then_decode_round_trips_at_the_kernel_offsets() {
        let mut h = Header::new("root", 4096).expect("valid");
        h.set_uuid("BERTH-VERITY-root").expect("valid");
        h.target_count = 1;
        h.flags = flags::READONLY | flags::BUFFER_FULL;
        h.dev = 0xfd00;
        h.open_count = -1;
        let mut buf = vec![0xaa; HEADER_SIZE + 8];
        h.encode(&mut buf);
        assert_eq!(Header::decode(&buf), Some(h.clone()));
        assert_eq!(h.name(), "root");
        // Offsets of struct dm_ioctl: version, data_size, data_start, name, uuid.
        assert_eq!(buf[0..4], 4u32.to_ne_bytes());
        assert_eq!(buf[12..16], 4096u32.to_ne_bytes());
        assert_eq!(buf[16..20], 312u32.to_ne_bytes());
        assert_eq!(&buf[48..53], b"root\0");
        assert_eq!(&buf[176..181], b"BERTH");
        assert_eq!(buf[HEADER_SIZE], 0xaa, "nothing written past the header");
        assert_eq!(Header::decode(&buf[..HEADER_SIZE - 1]), None);
    }

    #[test]
    fn target_spec_round_trips() {
        let spec = TargetSpec::new(0, 2048, "verity", 48).expect("valid");
        let mut buf = [0u8; TARGET_SPEC_SIZE];
        spec.encode(&mut buf);
        assert_eq!(&buf[24..30], b"verity");
        assert_eq!(TargetSpec::decode(&buf), Some(spec.clone()));
        assert_eq!(spec.target_type(), "verity");
    }

    #[test]
    fn fields_that_do_not_fit_are_refused() {
        assert!(Header::new(&"x".repeat(NAME_LEN), 312).is_err());
        assert!(Header::new("a\0b", 312).is_err());
        assert!(TargetSpec::new(0, 1, "a-very-long-target", 0).is_err());
        let err = Header::new(&"x".repeat(200), 312).unwrap_err().to_string();
        assert!(err.starts_with("device-mapper name"), "{err}");
    }

    #[test]
    fn dev_t_split_follows_new_encode_dev() {
        assert_eq!(split_dev(0xfd00), (253, 0));
        let dev = (300 & 0xff) | (253 << 8) | ((300u64 & !0xff) << 12);
        assert_eq!(split_dev(dev), (253, 300));
    }
}
