//! Unified kernel images: systemd's EFI stub with the kernel, initramfs, command line and
//! os-release appended as PE sections (what `ukify` does), written without host tools so
//! the same code builds x86_64 and aarch64 UKIs.

use std::path::PathBuf;

use boot_contract::Slot;

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write UKI {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("EFI stub {path} is not a PE image: {reason}")]
    BadStub { path: PathBuf, reason: &'static str },
    #[error("EFI stub {path} has no room for {needed} more section headers")]
    NoRoom { path: PathBuf, needed: usize },
}

/// One section to append: name (at most 8 bytes) and content.
#[derive(Debug)]
pub struct Section<'a> {
    pub name: &'static str,
    pub data: &'a [u8],
}

const SECTION_HEADER_SIZE: usize = 40;
/// IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ
const DATA_READ: u32 = 0x0000_0040 | 0x4000_0000;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Returns the stub with `sections` appended, in order, after its own sections.
pub fn assemble(
    stub: &[u8],
    stub_path: PathBuf,
    sections: &[Section<'_>],
) -> Result<Vec<u8>, UkiError> {
    let bad = |reason| UkiError::BadStub {
        path: stub_path.clone(),
        reason,
    };
    if stub.get(0..2) != Some(b"MZ") {
        return Err(bad("no MZ header"));
    }
    let pe = u32_at(stub, 0x3c).ok_or(bad("truncated DOS header"))? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(bad("no PE signature"));
    }
    let coff = pe + 4;
    let n_sections = u16_at(stub, coff + 2).ok_or(bad("truncated COFF header"))? as usize;
    let opt_size = u16_at(stub, coff + 16).ok_or(bad("truncated COFF header"))? as usize;
    let opt = coff + 20;
    let magic = u16_at(stub, opt).ok_or(bad("truncated optional header"))?;
    if magic != 0x20b && magic != 0x10b {
        return Err(bad("unknown optional header magic"));
    }
    // SectionAlignment, FileAlignment, SizeOfImage, SizeOfHeaders sit at the same offsets
    // in PE32 and PE32+.
    let section_align = u64::from(u32_at(stub, opt + 32).ok_or(bad("truncated optional header"))?);
    let file_align = u64::from(u32_at(stub, opt + 36).ok_or(bad("truncated optional header"))?);
    let size_of_headers = u32_at(stub, opt + 60).ok_or(bad("truncated optional header"))? as usize;
    if section_align == 0 || file_align == 0 {
        return Err(bad("zero alignment"));
    }
    let table = opt + opt_size;
    let table_end = table + n_sections * SECTION_HEADER_SIZE;
    if table_end + sections.len() * SECTION_HEADER_SIZE > size_of_headers {
        return Err(UkiError::NoRoom {
            path: stub_path,
            needed: sections.len(),
        });
    }
    let mut next_va = 0u64;
    let mut raw_end = size_of_headers as u64;
    for i in 0..n_sections {
        let h = table + i * SECTION_HEADER_SIZE;
        let vsize = u64::from(u32_at(stub, h + 8).ok_or(bad("truncated section table"))?);
        let va = u64::from(u32_at(stub, h + 12).ok_or(bad("truncated section table"))?);
        let raw_size = u64::from(u32_at(stub, h + 16).ok_or(bad("truncated section table"))?);
        let raw_ptr = u64::from(u32_at(stub, h + 20).ok_or(bad("truncated section table"))?);
        next_va = next_va.max(align(va + vsize.max(raw_size), section_align));
        raw_end = raw_end.max(raw_ptr + raw_size);
    }

    let mut out = stub.to_vec();
    out.truncate(raw_end as usize);
    let mut header_at = table_end;
    for section in sections {
        let raw_ptr = align(out.len() as u64, file_align);
        out.resize(raw_ptr as usize, 0);
        out.extend_from_slice(section.data);
        let raw_size = align(section.data.len() as u64, file_align);
        out.resize((raw_ptr + raw_size) as usize, 0);

        let mut name = [0u8; 8];
        name[..section.name.len()].copy_from_slice(section.name.as_bytes());
        let h = header_at;
        out[h..h + SECTION_HEADER_SIZE].fill(0);
        out[h..h + 8].copy_from_slice(&name);
        put_u32(&mut out, h + 8, section.data.len() as u32);
        put_u32(&mut out, h + 12, next_va as u32);
        put_u32(&mut out, h + 16, raw_size as u32);
        put_u32(&mut out, h + 20, raw_ptr as u32);
        put_u32(&mut out, h + 36, DATA_READ);
        header_at += SECTION_HEADER_SIZE;
        next_va = align(next_va + section.data.len() as u64, section_align);
    }
    put_u16(&mut out, coff + 2, (n_sections + sections.len()) as u16);
    put_u32(&mut out, opt + 56, next_va as u32); // SizeOfImage
    put_u32(&mut out, opt + 64, 0); // CheckSum: not used by UEFI
    Ok(out)
}

/// The `.osrel` content: systemd-boot shows and sorts UKIs by these fields.
pub fn os_release(version: &str, variant: &str, slot: Slot) -> String {
    format!(
        "NAME=Berth\nID=berth\nPRETTY_NAME=\"Berth {version} ({variant}, slot {slot})\"\n\
         VERSION_ID={version}\nIMAGE_ID=berth-{variant}\nIMAGE_VERSION={version}\n\
         VARIANT_ID={variant}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ with one section and room for more headers.
    fn tiny_stub() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        put_u32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        put_u16(&mut b, coff, 0x8664);
        put_u16(&mut b, coff + 2, 1);
        put_u16(&mut b, coff + 16, 240);
        let opt = coff + 20;
        put_u16(&mut b, opt, 0x20b);
        put_u32(&mut b, opt + 32, 0x1000);
        put_u32(&mut b, opt + 36, 0x200);
        put_u32(&mut b, opt + 56, 0x2000);
        put_u32(&mut b, opt + 60, 0x400);
        let h = opt + 240;
        b[h..h + 5].copy_from_slice(b".text");
        put_u32(&mut b, h + 8, 0x10);
        put_u32(&mut b, h + 12, 0x1000);
        put_u32(&mut b, h + 16, 0x200);
        put_u32(&mut b, h + 20, 0x400);
        b.resize(0x600, 0xcc);
        b
    }

    #[test]
    fn appended_sections_are_found_by_goblin() {
        let out = assemble(
            &tiny_stub(),
            "stub".into(),
            &[
                Section {
                    name: ".osrel",
                    data: b"ID=berth\n",
                },
                Section {
                    name: ".cmdline",
                    data: b"berth.slot=a",
                },
                Section {
                    name: ".linux",
                    data: &[0xaa; 5000],
                },
            ],
        )
        .unwrap();
        let pe = goblin::pe::PE::parse(&out).unwrap();
        let names: Vec<String> = pe
            .sections
            .iter()
            .map(|s| {
                String::from_utf8_lossy(&s.name)
                    .trim_end_matches('\0')
                    .to_owned()
            })
            .collect();
        assert_eq!(names, [".text", ".osrel", ".cmdline", ".linux"]);
        let cmdline = &pe.sections[2];
        let start = cmdline.pointer_to_raw_data as usize;
        assert_eq!(&out[start..start + 12], b"berth.slot=a");
        // Virtual ranges are increasing and do not overlap.
        for w in pe.sections.windows(2) {
            assert!(
                w[0].virtual_address + w[0].virtual_size.max(w[0].size_of_raw_data)
                    <= w[1].virtual_address
            );
        }
        let size_of_image = pe
            .header
            .optional_header
            .unwrap()
            .windows_fields
            .size_of_image;
        let last = pe.sections.last().unwrap();
        assert!(size_of_image >= last.virtual_address + last.virtual_size);
    }

    #[test]
    fn stub_without_room_is_refused() {
        let many: Vec<Section<'_>> = (0..20)
            .map(|_| Section {
                name: ".x",
                data: b"x",
            })
            .collect();
        let err = assemble(&tiny_stub(), "stub".into(), &many).unwrap_err();
        assert!(matches!(err, UkiError::NoRoom { .. }));
        assert!(assemble(b"not a pe", "s".into(), &[]).is_err());
    }
}
