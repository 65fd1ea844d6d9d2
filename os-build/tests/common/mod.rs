//! Helpers shared by the host tests: tiny PE images shaped like UKIs.

#![allow(dead_code, clippy::unwrap_used)]

/// A minimal PE32+ EFI application for `machine` with room for more section headers.
pub fn tiny_pe(machine: u16) -> Vec<u8> {
    let mut b = vec![0u8; 0x600];
    let put16 = |b: &mut [u8], o: usize, v: u16| b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    b[..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, 0x80);
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    let coff = 0x84;
    put16(&mut b, coff, machine);
    put16(&mut b, coff + 2, 1);
    put16(&mut b, coff + 16, 240);
    put16(&mut b, coff + 18, 0x22);
    let opt = coff + 20;
    put16(&mut b, opt, 0x20b);
    put32(&mut b, opt + 16, 0x1000);
    b[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
    put32(&mut b, opt + 32, 0x1000);
    put32(&mut b, opt + 36, 0x200);
    put32(&mut b, opt + 56, 0x2000);
    put32(&mut b, opt + 60, 0x400);
    put16(&mut b, opt + 68, 10);
    put32(&mut b, opt + 108, 16);
    let h = opt + 240;
    b[h..h + 5].copy_from_slice(b".text");
    put32(&mut b, h + 8, 0x10);
    put32(&mut b, h + 12, 0x1000);
    put32(&mut b, h + 16, 0x200);
    put32(&mut b, h + 20, 0x400);
    put32(&mut b, h + 36, 0x6000_0020);
    b[0x400..0x410].fill(0xc3);
    b
}

/// A UKI-shaped PE: the tiny stub with a `.cmdline` for `slot` and `root`.
pub fn tiny_uki(slot: char, root: &str) -> Vec<u8> {
    let cmdline = format!("berth.slot={slot} berth.verity.root={root} console=ttyS0");
    os_build::uki::assemble(
        &tiny_pe(0x8664),
        "tiny".into(),
        &[os_build::uki::Section {
            name: ".cmdline",
            data: cmdline.as_bytes(),
        }],
    )
    .unwrap()
}
