//! Secure Boot signatures, checked the way UEFI firmware checks them before it starts
//! systemd-boot or a UKI: by the updater before a new UKI goes on the ESP, and by os-build
//! before it publishes one (docs/secure-boot.md).
//!
//! A PE image is trusted when one of its Authenticode signatures is valid (the image's
//! Authenticode sha256 is the signed digest, and the signer's RSA PKCS#1 v1.5 signature over
//! the signed attributes verifies) and the signer's certificate is in the signature database
//! (`db`) or was issued and signed by a certificate there, and the image's digest is not
//! revoked in `dbx`. These are the rules of edk2's DxeImageVerificationLib, without
//! timestamps and with chains of at most one issuer.
//!
//! Signature databases are EFI_SIGNATURE_LISTs (ESL): the content of the `db` / `dbx` EFI
//! variables after their 4 attribute bytes, and of the `db.esl` an image ships.
//! The EFI variable reader here is small on purpose: it moves to the boot-contract crate.

use std::path::{Path, PathBuf};

use authenticode::{authenticode_digest, AttributeCertificateIterator, AuthenticodeSignature};
use cms::cert::x509::der::{Decode, Encode};
use cms::signed_data::SignerIdentifier;
use object::read::pe::{PeFile32, PeFile64};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

/// EFI_GLOBAL_VARIABLE: `SecureBoot`, `SetupMode`, `PK`, `KEK`.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// EFI_IMAGE_SECURITY_DATABASE_GUID: `db`, `dbx`.
pub const EFI_IMAGE_SECURITY_DATABASE: &str = "d719b2cb-3d3a-4596-a3bc-dad00e67656f";
/// Where efivarfs is mounted on a host.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// The db certificates an image ships (an ESL), trusted when Secure Boot is off.
pub const IMAGE_DB: &str = "/usr/share/berth/secure-boot/db.esl";

/// EFI_CERT_X509_GUID a5c059a1-94e4-4aa7-87b5-ab155c2bf072, as stored (mixed endian).
const CERT_X509: [u8; 16] = [
    0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72,
];
/// EFI_CERT_SHA256_GUID c1c41626-504c-4092-aca9-41f936934328.
const CERT_SHA256: [u8; 16] = [
    0x26, 0x16, 0xc4, 0xc1, 0x4c, 0x50, 0x92, 0x40, 0xac, 0xa9, 0x41, 0xf9, 0x36, 0x93, 0x43, 0x28,
];
/// EFI_SIGNATURE_LIST header: type GUID, list size, header size, signature size.
const ESL_HEADER: usize = 28;
/// Each EFI_SIGNATURE_DATA starts with its owner's GUID.
const OWNER_LEN: usize = 16;
/// rsaEncryption, the only public key algorithm UEFI Authenticode uses.
const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
/// id-sha256.
const SHA256_OID: &str = "2.16.840.1.101.3.4.2.1";
/// PKCS#9 messageDigest attribute.
const MESSAGE_DIGEST: &str = "1.2.840.113549.1.9.4";

#[derive(Debug, thiserror::Error)]
pub enum SecureBootError {
    #[error("{path} is not an EFI signature list: {reason}")]
    BadSignatureList { path: PathBuf, reason: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why an image is not trusted. Messages name the reason; callers add the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("not a PE image ({0})")]
    NotPe(String),
    #[error("a {got} image, not {want}")]
    WrongMachine { got: String, want: String },
    #[error("no Authenticode signature (unsigned)")]
    Unsigned,
    #[error("the signature does not parse ({0})")]
    Malformed(String),
    #[error("the image was changed after signing (Authenticode digest mismatch)")]
    DigestMismatch,
    #[error("the signature does not verify with the signer's certificate")]
    BadSignature,
    #[error("signed by {subject}, which is not in the trusted db")]
    Untrusted { subject: String },
    #[error("the image's digest is revoked in dbx")]
    Revoked,
    #[error("the trusted db is empty")]
    EmptyDb,
}

/// Certificates and hashes of a signature database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureDb {
    /// DER X.509 certificates.
    pub certs: Vec<Vec<u8>>,
    /// sha256 image digests.
    pub hashes: Vec<[u8; 32]>,
}

impl SignatureDb {
    /// Parses EFI_SIGNATURE_LISTs; entries of other types (sha1, rsa2048) are skipped.
    pub fn from_esl(bytes: &[u8]) -> Result<Self, String> {
        let mut db = SignatureDb::default();
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.len() < ESL_HEADER {
                return Err(format!("{} trailing bytes", rest.len()));
            }
            let u32_at = |off: usize| {
                u32::from_le_bytes([rest[off], rest[off + 1], rest[off + 2], rest[off + 3]])
                    as usize
            };
            let (list_size, header_size, sig_size) = (u32_at(16), u32_at(20), u32_at(24));
            if list_size < ESL_HEADER + header_size || list_size > rest.len() {
                return Err(format!("list size {list_size} out of bounds"));
            }
            if sig_size <= OWNER_LEN || (list_size - ESL_HEADER - header_size) % sig_size != 0 {
                return Err(format!(
                    "signature size {sig_size} does not divide the list"
                ));
            }
            let kind = &rest[..16];
            let entries = &rest[ESL_HEADER + header_size..list_size];
            for entry in entries.chunks(sig_size) {
                let data = &entry[OWNER_LEN..];
                if kind == CERT_X509 {
                    db.certs.push(data.to_vec());
                } else if kind == CERT_SHA256 && data.len() == 32 {
                    let mut hash = [0u8; 32];
                    hash.copy_from_slice(data);
                    db.hashes.push(hash);
                }
            }
            rest = &rest[list_size..];
        }
        Ok(db)
    }

    /// Reads an ESL file (an image's `db.esl`).
    pub fn read_esl(path: &Path) -> Result<Self, SecureBootError> {
        let bytes = std::fs::read(path).map_err(|source| SecureBootError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_esl(&bytes).map_err(|reason| SecureBootError::BadSignatureList {
            path: path.to_owned(),
            reason,
        })
    }

    /// Reads an authenticated EFI variable holding ESLs (`db`, `dbx`) from efivarfs: 4 bytes
    /// of attributes, then the lists. A missing variable is an empty database.
    pub fn read_efivar(efivars: &Path, name: &str) -> Result<Self, SecureBootError> {
        let path = efivars.join(format!("{name}-{EFI_IMAGE_SECURITY_DATABASE}"));
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_esl(bytes.get(4..).unwrap_or_default()).map_err(|reason| {
                SecureBootError::BadSignatureList {
                    path: path.clone(),
                    reason,
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SignatureDb::default()),
            Err(source) => Err(SecureBootError::Read { path, source }),
        }
    }

    /// Builds a database of DER certificates (tests, os-build).
    pub fn from_certs(certs: Vec<Vec<u8>>) -> Self {
        SignatureDb {
            certs,
            hashes: Vec::new(),
        }
    }
}

/// The firmware's Secure Boot state, from the `SecureBoot` EFI variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareState {
    /// UEFI with `SecureBoot` = 1: the firmware enforces signatures.
    Enforcing,
    /// UEFI with `SecureBoot` = 0 (setup mode, or turned off).
    Off,
    /// No EFI variables (not booted by UEFI, or efivarfs not mounted).
    NoUefi,
}

/// Reads `SecureBoot-<EFI_GLOBAL_VARIABLE>` under `efivars`.
pub fn firmware_state(efivars: &Path) -> FirmwareState {
    if !efivars.is_dir() {
        return FirmwareState::NoUefi;
    }
    let path = efivars.join(format!("SecureBoot-{EFI_GLOBAL_VARIABLE}"));
    match std::fs::read(path) {
        Ok(bytes) if bytes.get(4) == Some(&1) => FirmwareState::Enforcing,
        _ => FirmwareState::Off,
    }
}

/// Who signed a trusted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The signer certificate's subject.
    pub subject: String,
    /// sha256 of the trusted db certificate (the signer's own, or its issuer's), hex.
    pub db_cert_sha256: String,
}

/// PE machine types of the architectures Berth builds.
pub fn machine_name(arch: &str) -> Option<u16> {
    match arch {
        "x86_64" => Some(0x8664),
        "aarch64" => Some(0xaa64),
        _ => None,
    }
}

fn machine_label(machine: u16) -> String {
    match machine {
        0x8664 => "x86_64".into(),
        0xaa64 => "aarch64".into(),
        0x014c => "i386".into(),
        other => format!("machine {other:#06x}"),
    }
}

/// The PE machine type of `image`.
pub fn pe_machine(image: &[u8]) -> Result<u16, SignatureError> {
    let pe = image
        .get(0x3c..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .filter(|_| image.starts_with(b"MZ"))
        .ok_or_else(|| SignatureError::NotPe("no MZ header".into()))?;
    match image.get(pe..pe + 6) {
        Some(h) if &h[..4] == b"PE\0\0" => Ok(u16::from_le_bytes([h[4], h[5]])),
        _ => Err(SignatureError::NotPe("no PE header".into())),
    }
}

/// Checks that `image` is a PE for `arch` whose signature a firmware holding `db` and `dbx`
/// would accept; returns who signed it.
pub fn verify(
    image: &[u8],
    arch: &str,
    db: &SignatureDb,
    dbx: &SignatureDb,
) -> Result<Signer, SignatureError> {
    let machine = pe_machine(image)?;
    if let Some(want) = machine_name(arch) {
        if machine != want {
            return Err(SignatureError::WrongMachine {
                got: machine_label(machine),
                want: arch.to_owned(),
            });
        }
    }
    if db.certs.is_empty() {
        return Err(SignatureError::EmptyDb);
    }
    let not_pe = |e: object::read::Error| SignatureError::NotPe(e.to_string());
    // UKIs and systemd-boot are PE32+; accept PE32 for completeness.
    let pe64;
    let pe32;
    let pe: &dyn authenticode::PeTrait = if machine == 0x014c {
        pe32 = PeFile32::parse(image).map_err(not_pe)?;
        &pe32
    } else {
        pe64 = PeFile64::parse(image).map_err(not_pe)?;
        &pe64
    };
    let mut hasher = Sha256::new();
    authenticode_digest(pe, &mut hasher)
        .map_err(|_| SignatureError::NotPe("section table out of bounds".into()))?;
    let digest: [u8; 32] = hasher.finalize().into();
    if dbx.hashes.contains(&digest) {
        return Err(SignatureError::Revoked);
    }
    let certs = match AttributeCertificateIterator::new(pe) {
        Ok(Some(iter)) => iter,
        Ok(None) => return Err(SignatureError::Unsigned),
        Err(e) => return Err(SignatureError::Malformed(e.to_string())),
    };
    let mut last = SignatureError::Unsigned;
    for attr in certs {
        let attr = attr.map_err(|e| SignatureError::Malformed(e.to_string()))?;
        let signature = match attr.get_authenticode_signature() {
            Ok(s) => s,
            Err(e) => {
                last = SignatureError::Malformed(e.to_string());
                continue;
            }
        };
        match verify_one(&signature, &digest, db, dbx) {
            Ok(signer) => return Ok(signer),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn verify_one(
    signature: &AuthenticodeSignature,
    digest: &[u8; 32],
    db: &SignatureDb,
    dbx: &SignatureDb,
) -> Result<Signer, SignatureError> {
    let malformed = |what: &str| SignatureError::Malformed(what.to_owned());
    if signature.digest_algorithm().oid.to_string() != SHA256_OID {
        return Err(malformed("the image digest is not sha256"));
    }
    if signature.digest() != digest {
        return Err(SignatureError::DigestMismatch);
    }
    let signer_info = signature.signer_info();
    let content = signature
        .encapsulated_content()
        .ok_or_else(|| malformed("no signed content"))?;
    // The messageDigest attribute covers the SpcIndirectDataContent (its content octets).
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or_else(|| malformed("no signed attributes"))?;
    let message_digest = attrs
        .iter()
        .find(|a| a.oid.to_string() == MESSAGE_DIGEST)
        .and_then(|a| a.values.get(0))
        .and_then(|v| v.decode_as::<der::asn1::OctetString>().ok())
        .ok_or_else(|| malformed("no messageDigest attribute"))?;
    if message_digest.as_bytes() != Sha256::digest(content).as_slice() {
        return Err(SignatureError::BadSignature);
    }
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer_info.sid else {
        return Err(malformed("the signer is named by key id"));
    };
    let signer = signature
        .certificates()
        .find(|c| {
            c.tbs_certificate.issuer == sid.issuer
                && c.tbs_certificate.serial_number == sid.serial_number
        })
        .ok_or_else(|| malformed("the signer's certificate is not in the signature"))?;
    let signed = attrs
        .to_der()
        .map_err(|_| malformed("signed attributes do not encode"))?;
    rsa_sha256_verify(signer, &signed, signer_info.signature.as_bytes())
        .map_err(|()| SignatureError::BadSignature)?;
    let subject = signer.tbs_certificate.subject.to_string();
    let signer_der = signer
        .to_der()
        .map_err(|_| malformed("the signer's certificate does not encode"))?;
    let revoked = |der: &[u8]| dbx.certs.iter().any(|c| c == der);
    if revoked(&signer_der) {
        return Err(SignatureError::Revoked);
    }
    for trusted in &db.certs {
        let hex_sha = hex::encode(Sha256::digest(trusted));
        if trusted == &signer_der {
            return Ok(Signer {
                subject,
                db_cert_sha256: hex_sha,
            });
        }
        // One issuer up: the db certificate signed the signer's certificate.
        let Ok(issuer) = Certificate::from_der(trusted) else {
            continue;
        };
        if issuer.tbs_certificate.subject == signer.tbs_certificate.issuer && !revoked(trusted) {
            let Ok(tbs) = signer.tbs_certificate.to_der() else {
                continue;
            };
            if signer.signature_algorithm.oid.to_string() == "1.2.840.113549.1.1.11"
                && rsa_sha256_verify(&issuer, &tbs, signer.signature.raw_bytes()).is_ok()
            {
                return Ok(Signer {
                    subject,
                    db_cert_sha256: hex_sha,
                });
            }
        }
    }
    Err(SignatureError::Untrusted { subject })
}

/// RSA PKCS#1 v1.5 with sha256, `signature` over `message`, with the key of `cert`.
fn rsa_sha256_verify(cert: &Certificate, message: &[u8], signature: &[u8]) -> Result<(), ()> {
    use aws_lc_rs::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    let spki = &cert.tbs_certificate.subject_public_key_info;
    if spki.algorithm.oid.to_string() != RSA_ENCRYPTION {
        return Err(());
    }
    let key = spki.subject_public_key.raw_bytes();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
        .verify(message, signature)
        .map_err(|_| ())
}

/// The database the updater checks a new UKI against: the firmware's `db` (minus `dbx`)
/// when it enforces Secure Boot; otherwise the certificates the running image ships, or
/// `None` when it ships none (an unsigned development image, which checks nothing).
pub fn trusted_db(
    efivars: &Path,
    image_db: &Path,
) -> Result<Option<(SignatureDb, SignatureDb, &'static str)>, SecureBootError> {
    if firmware_state(efivars) == FirmwareState::Enforcing {
        let db = SignatureDb::read_efivar(efivars, "db")?;
        let dbx = SignatureDb::read_efivar(efivars, "dbx")?;
        return Ok(Some((db, dbx, "the firmware's db")));
    }
    if image_db.is_file() {
        return Ok(Some((
            SignatureDb::read_esl(image_db)?,
            SignatureDb::default(),
            "the certificates the image ships",
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esl(kind: [u8; 16], entries: &[&[u8]]) -> Vec<u8> {
        let size = OWNER_LEN + entries[0].len();
        let mut out = kind.to_vec();
        out.extend_from_slice(&((ESL_HEADER + size * entries.len()) as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(size as u32).to_le_bytes());
        for e in entries {
            out.extend_from_slice(&[7u8; OWNER_LEN]);
            out.extend_from_slice(e);
        }
        out
    }

    #[test]
    fn signature_lists_parse_certs_and_hashes() {
        let mut bytes = esl(CERT_X509, &[b"cert-one", b"cert-two"]);
        bytes.extend(esl(CERT_SHA256, &[&[9u8; 32]]));
        let db = SignatureDb::from_esl(&bytes).unwrap();
        assert_eq!(db.certs, [b"cert-one".to_vec(), b"cert-two".to_vec()]);
        assert_eq!(db.hashes, [[9u8; 32]]);
        // Truncated or inconsistent lists are refused, not half-read.
        assert!(SignatureDb::from_esl(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = esl(CERT_X509, &[b"abc"]);
        bad[24] = 5;
        assert!(SignatureDb::from_esl(&bad).is_err());
        assert_eq!(SignatureDb::from_esl(&[]).unwrap(), SignatureDb::default());
    }

    #[test]
    fn efivars_give_the_firmware_state_and_db() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path();
        assert_eq!(firmware_state(&vars.join("none")), FirmwareState::NoUefi);
        assert_eq!(firmware_state(vars), FirmwareState::Off);
        let sb = vars.join(format!("SecureBoot-{EFI_GLOBAL_VARIABLE}"));
        std::fs::write(&sb, [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(firmware_state(vars), FirmwareState::Enforcing);
        let mut var = vec![0x27, 0, 0, 0];
        var.extend(esl(CERT_X509, &[b"db-cert"]));
        std::fs::write(vars.join(format!("db-{EFI_IMAGE_SECURITY_DATABASE}")), var).unwrap();
        let (db, dbx, from) = trusted_db(vars, Path::new("/nonexistent"))
            .unwrap()
            .unwrap();
        assert_eq!(db.certs, [b"db-cert".to_vec()]);
        assert_eq!(dbx, SignatureDb::default());
        assert_eq!(from, "the firmware's db");
        // Secure Boot off: the image's list, or nothing for an unsigned image.
        std::fs::write(&sb, [6, 0, 0, 0, 0]).unwrap();
        assert!(trusted_db(vars, Path::new("/nonexistent"))
            .unwrap()
            .is_none());
        let image_db = dir.path().join("db.esl");
        std::fs::write(&image_db, esl(CERT_X509, &[b"shipped"])).unwrap();
        let (db, _, from) = trusted_db(vars, &image_db).unwrap().unwrap();
        assert_eq!(db.certs, [b"shipped".to_vec()]);
        assert_eq!(from, "the certificates the image ships");
    }

    #[test]
    fn non_pe_and_wrong_machine_are_refused() {
        let db = SignatureDb::from_certs(vec![b"x".to_vec()]);
        let none = SignatureDb::default();
        assert!(matches!(
            verify(b"not a pe", "x86_64", &db, &none),
            Err(SignatureError::NotPe(_))
        ));
        let mut pe = vec![0u8; 0x200];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x84..0x86].copy_from_slice(&0xaa64u16.to_le_bytes());
        assert_eq!(
            verify(&pe, "x86_64", &db, &none),
            Err(SignatureError::WrongMachine {
                got: "aarch64".into(),
                want: "x86_64".into()
            })
        );
    }
}
