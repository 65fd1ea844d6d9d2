//! What a staged UKI says about itself, checked before it goes on the ESP: its `.cmdline`
//! must name the slot it is installed for and the verity root hash of what was written there
//! (docs/boot.md), and its signature must be one the firmware will accept
//! ([`crate::secureboot`]). A UKI for the other slot, or for another root, would boot into a
//! slot that cannot mount, or into a root nobody verified.

use std::io::Read;
use std::path::{Path, PathBuf};

use object::read::pe::PeFile64;

use crate::manifest::{Image, VerityInfo};
use crate::secureboot::{self, SignatureError};
use boot_contract::Slot;

#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("cannot read the staged UKI {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the staged UKI {path} has no .cmdline section")]
    NoCmdline { path: PathBuf },
    #[error("the staged UKI {path} is for slot {found}, not the slot it would be installed for ({want})")]
    WrongSlot {
        path: PathBuf,
        found: String,
        want: Slot,
    },
    #[error("the staged UKI {path} names verity root hash {found}, not the one written to the slot ({want})")]
    WrongRootHash {
        path: PathBuf,
        found: String,
        want: String,
    },
    #[error("the staged UKI {path} is refused: {reason} (checked against {against})")]
    Signature {
        path: PathBuf,
        reason: SignatureError,
        against: &'static str,
    },
    #[error("the staged UKI {path} is not what the manifest lists (sha256 {got}, size {size})")]
    Hash {
        path: PathBuf,
        got: String,
        size: u64,
    },
    #[error(transparent)]
    Trust(#[from] secureboot::SecureBootError),
}

/// Bytes of the PE section `name` of `image`.
pub fn section<'a>(image: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let pe = PeFile64::parse(image).ok()?;
    let table = pe.section_table();
    table.iter().find_map(|s| {
        let raw = s.raw_name();
        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        if &raw[..end] != name.as_bytes() {
            return None;
        }
        let start = s.pointer_to_raw_data.get(object::LittleEndian) as usize;
        // The virtual size is the content; the raw size is padded to the file alignment.
        let len = s.virtual_size.get(object::LittleEndian) as usize;
        image.get(start..start.checked_add(len)?)
    })
}

/// The value of `key=` on a kernel command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Refuses a UKI whose command line names another slot or another verity root hash.
pub fn check_cmdline(
    path: &Path,
    image: &[u8],
    slot: Slot,
    verity: &VerityInfo,
) -> Result<(), UkiError> {
    let cmdline = section(image, ".cmdline").ok_or_else(|| UkiError::NoCmdline {
        path: path.to_owned(),
    })?;
    let cmdline = String::from_utf8_lossy(cmdline);
    let cmdline = cmdline.trim_end_matches(['\0', '\n']);
    let found = cmdline_value(cmdline, "berth.slot").unwrap_or("none");
    if found != slot.to_string() {
        return Err(UkiError::WrongSlot {
            path: path.to_owned(),
            found: found.to_owned(),
            want: slot,
        });
    }
    let root = cmdline_value(cmdline, "berth.verity.root").unwrap_or("none");
    if !root.eq_ignore_ascii_case(&verity.root_hash) {
        return Err(UkiError::WrongRootHash {
            path: path.to_owned(),
            found: root.to_owned(),
            want: verity.root_hash.clone(),
        });
    }
    Ok(())
}

/// Where the updater finds what the firmware trusts.
#[derive(Debug, Clone)]
pub struct Trust {
    /// efivarfs (`/sys/firmware/efi/efivars`).
    pub efivars: PathBuf,
    /// The db certificates the running image ships (`/usr/share/berth/secure-boot/db.esl`).
    pub image_db: PathBuf,
}

/// Decompresses a staged UKI (zstd, as the repository serves it) into memory and checks it
/// is the one the manifest lists.
pub fn read_staged(path: &Path, image: &Image) -> Result<Vec<u8>, UkiError> {
    let read = |source| UkiError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut out = Vec::with_capacity(usize::try_from(image.size).unwrap_or(0));
    zstd::stream::read::Decoder::new(file)
        .map_err(read)?
        .take(image.size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(read)?;
    let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&out));
    if got != image.sha256 || out.len() as u64 != image.size {
        return Err(UkiError::Hash {
            path: path.to_owned(),
            got,
            size: out.len() as u64,
        });
    }
    Ok(out)
}

/// Checks a staged UKI before anything of it reaches the ESP: command line (slot, root hash)
/// and Secure Boot signature. Returns the signer's subject, or `None` when the running image
/// is an unsigned development build with Secure Boot off (nothing to check against).
pub fn check_staged(
    path: &Path,
    uki: &[u8],
    arch: &str,
    slot: Slot,
    verity: &VerityInfo,
    trust: &Trust,
) -> Result<Option<String>, UkiError> {
    check_cmdline(path, uki, slot, verity)?;
    let Some((db, dbx, against)) = secureboot::trusted_db(&trust.efivars, &trust.image_db)? else {
        tracing::warn!(
            uki = %path.display(),
            "unsigned development image with Secure Boot off: the new UKI's signature is not checked"
        );
        return Ok(None);
    };
    let signer =
        secureboot::verify(uki, arch, &db, &dbx).map_err(|reason| UkiError::Signature {
            path: path.to_owned(),
            reason,
            against,
        })?;
    tracing::info!(uki = %path.display(), signer = %signer.subject, against, "UKI signature trusted");
    Ok(Some(signer.subject))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_values_are_whole_words() {
        let c = "berth.slot=b berth.verity.root=ab berth.verity.root-x=cd";
        assert_eq!(cmdline_value(c, "berth.slot"), Some("b"));
        assert_eq!(cmdline_value(c, "berth.verity.root"), Some("ab"));
        assert_eq!(cmdline_value(c, "berth.verity"), None);
    }
}
