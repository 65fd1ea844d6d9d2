//! Writer for the "newc" cpio format the kernel unpacks as initramfs.
//! Entries are written with fixed owners (root) and mtime, so the archive is reproducible.

use std::io::{self, Write};

const TRAILER: &str = "TRAILER!!!";

#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    inode: u32,
    written: u64,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            inode: 1,
            written: 0,
            mtime,
        }
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.entry(path, 0o040000 | mode, 0, &[])
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, 0o100000 | mode, 0, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, 0o120777, 0, target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, 0o020000 | mode, (major << 8) | minor, &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 0, &[])?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, rdev: u32, data: &[u8]) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        let (rmajor, rminor) = (rdev >> 8, rdev & 0xff);
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            self.mtime,
            data.len(),
            0, // dev major
            0, // dev minor
            rmajor,
            rminor,
            name.len() + 1,
            0, // checksum (newc has none)
        );
        self.inode += 1;
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..pad])
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn cpio_tool_lists_what_we_wrote() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        w.dir("/etc", 0o755).unwrap();
        w.file("/etc/hello", 0o644, b"hello\n").unwrap();
        w.symlink("/lib", "usr/lib").unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).unwrap();
        // busybox-free check with GNU cpio when present; otherwise parse the headers.
        if let Ok(out) = Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&archive)
            .output()
        {
            let listing = String::from_utf8_lossy(&out.stdout);
            assert!(listing.contains("etc/hello"), "{listing}");
            assert!(listing.contains("lib -> usr/lib"), "{listing}");
            assert!(listing.contains("dev/console"), "{listing}");
        }
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("hello\n"));
        assert!(text.contains(TRAILER));
    }
}
