//! Secure Boot on the host (docs/secure-boot.md): `os-build secure-boot keygen`, the key
//! checks of a signed build (each bad input names its file), signing with sbsign and the
//! updater's Authenticode verification of what sbsign wrote, and the staged-UKI checks of the
//! updater (command line against the manifest, signature against the firmware's db or the
//! image's list). Needs the host tools of scripts/host-deps.sh (openssl, efitools,
//! sbsigntool, python3-cryptography via python3-virt-firmware).

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use boot_contract::Slot;
use os_build::arch::Arch;
use os_build::secureboot;
use updater::manifest::{Compression, Image, VerityInfo};
use updater::secureboot::{verify, SignatureDb, SignatureError};
use updater::uki::{check_staged, Trust, UkiError};

mod common;
use common::{tiny_pe, tiny_uki};

const OS_BUILD: &str = env!("CARGO_BIN_EXE_os-build");
const ROOT_HASH: &str = "ab00000000000000000000000000000000000000000000000000000000000cd";

fn keygen(dir: &Path) -> PathBuf {
    let keys = dir.join("keys");
    let out = Command::new(OS_BUILD)
        .args(["secure-boot", "keygen", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    keys
}

fn db_of(keys: &Path) -> SignatureDb {
    SignatureDb::from_esl(&std::fs::read(keys.join("db.esl")).unwrap()).unwrap()
}

#[test]
fn keygen_writes_private_keys_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    for name in secureboot::KEY_FILES {
        assert!(keys.join(name).is_file(), "{name} missing");
    }
    for key in ["PK.key", "KEK.key", "db.key"] {
        let mode = std::fs::metadata(keys.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let before = std::fs::read(keys.join("db.key")).unwrap();
    let out = Command::new(OS_BUILD)
        .args(["secure-boot", "keygen", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PK.key exists"));
    assert_eq!(std::fs::read(keys.join("db.key")).unwrap(), before);
    // No scratch folder is left behind.
    let left: Vec<_> = std::fs::read_dir(&keys).unwrap().collect();
    assert_eq!(left.len(), secureboot::KEY_FILES.len());
}

#[test]
fn bad_keys_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let loaded = secureboot::load(&keys).unwrap();
    assert_eq!(loaded.db_cert.subject, "CN=Berth db");
    assert_eq!(loaded.db_cert.sha256.len(), 64);

    let copy = |name: &str| -> PathBuf {
        let to = dir.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in secureboot::KEY_FILES {
            std::fs::copy(keys.join(f), to.join(f)).unwrap();
        }
        to
    };
    let missing = copy("missing");
    std::fs::remove_file(missing.join("db.key")).unwrap();
    let err = format!("{:#}", secureboot::load(&missing).unwrap_err());
    assert!(
        err.contains(&format!("{}", missing.join("db.key").display())),
        "{err}"
    );

    let mismatch = copy("mismatch");
    std::fs::copy(keys.join("KEK.key"), mismatch.join("db.key")).unwrap();
    let err = format!("{:#}", secureboot::load(&mismatch).unwrap_err());
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(err.contains("db.key"), "{err}");

    let expired = copy("expired");
    // An expired certificate for the db key (python3-cryptography, from python3-virt-firmware).
    let script = r#"
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
key = serialization.load_pem_private_key(open(sys.argv[1], 'rb').read(), None)
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'Berth db')])
now = datetime.datetime(2020, 1, 1)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256()))
open(sys.argv[2], 'wb').write(cert.public_bytes(serialization.Encoding.PEM))
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(expired.join("db.key"))
        .arg(expired.join("db.crt"))
        .status()
        .unwrap();
    assert!(status.success());
    let err = format!("{:#}", secureboot::load(&expired).unwrap_err());
    assert!(err.contains("has expired"), "{err}");
    assert!(err.contains("db.crt"), "{err}");

    let none = dir.path().join("none");
    let err = format!("{:#}", secureboot::load(&none).unwrap_err());
    assert!(err.contains("secure-boot keygen"), "{err}");
}

#[test]
fn signatures_verify_as_firmware_would() {
    let dir = tempfile::tempdir().unwrap();
    let keys = secureboot::load(&keygen(dir.path())).unwrap();
    let other = db_of(&keygen(&dir.path().join("other")));
    let db = db_of(&keys.dir);
    let none = SignatureDb::default();
    let uki = tiny_uki('a', ROOT_HASH);

    assert_eq!(
        verify(&uki, "x86_64", &db, &none),
        Err(SignatureError::Unsigned)
    );
    let signed = secureboot::sign(&keys, &uki, Arch::X86_64, "uki", dir.path()).unwrap();
    let signer = verify(&signed, "x86_64", &db, &none).unwrap();
    assert_eq!(signer.subject, "CN=Berth db");
    assert_eq!(signer.db_cert_sha256, keys.db_cert.sha256);
    // Another key's db does not trust it.
    assert_eq!(
        verify(&signed, "x86_64", &other, &none),
        Err(SignatureError::Untrusted {
            subject: "CN=Berth db".into()
        })
    );
    // One byte of the command line changed after signing.
    let mut changed = signed.clone();
    let at = changed
        .windows(11)
        .position(|w| w == b"berth.slot=")
        .unwrap();
    changed[at + 11] = b'b';
    assert_eq!(
        verify(&changed, "x86_64", &db, &none),
        Err(SignatureError::DigestMismatch)
    );
    // The wrong architecture, and a revoked digest.
    assert!(matches!(
        verify(&signed, "aarch64", &db, &none),
        Err(SignatureError::WrongMachine { .. })
    ));
    let aarch64 = secureboot::sign(&keys, &tiny_pe(0xaa64), Arch::Aarch64, "a64", dir.path());
    assert!(aarch64.is_ok(), "{aarch64:?}");
    let err = secureboot::sign(&keys, &tiny_pe(0xaa64), Arch::X86_64, "a64", dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not x86_64"), "{err}");
}

fn staged(dir: &Path, name: &str, uki: &[u8]) -> (PathBuf, Image) {
    let path = dir.join(name);
    std::fs::write(&path, zstd::encode_all(uki, 3).unwrap()).unwrap();
    let image = Image {
        target: name.into(),
        compression: Compression::Zstd,
        size: uki.len() as u64,
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(uki)),
    };
    (path, image)
}

#[test]
fn the_updater_checks_a_staged_uki_before_the_esp() {
    let dir = tempfile::tempdir().unwrap();
    let keys = secureboot::load(&keygen(dir.path())).unwrap();
    let foreign = secureboot::load(&keygen(&dir.path().join("foreign"))).unwrap();
    let verity = VerityInfo {
        root_hash: ROOT_HASH.into(),
        salt: String::new(),
        data_blocks: 1,
    };
    // A host with Secure Boot on and Berth's db enrolled.
    let efivars = dir.path().join("efivars");
    std::fs::create_dir_all(&efivars).unwrap();
    std::fs::write(
        efivars.join("SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
        [6, 0, 0, 0, 1],
    )
    .unwrap();
    let mut db_var = vec![0x27, 0, 0, 0];
    db_var.extend(&keys.db_esl);
    std::fs::write(
        efivars.join("db-d719b2cb-3d3a-4596-a3bc-dad00e67656f"),
        db_var,
    )
    .unwrap();
    let trust = Trust {
        efivars: efivars.clone(),
        image_db: dir.path().join("no-image-db.esl"),
    };
    let check = |uki: &[u8], slot: Slot, trust: &Trust| {
        let (path, image) = staged(dir.path(), "uki.zst", uki);
        let bytes = updater::uki::read_staged(&path, &image).unwrap();
        check_staged(&path, &bytes, "x86_64", slot, &verity, trust)
    };
    let good = secureboot::sign(
        &keys,
        &tiny_uki('b', ROOT_HASH),
        Arch::X86_64,
        "g",
        dir.path(),
    )
    .unwrap();
    assert_eq!(
        check(&good, Slot::B, &trust).unwrap().as_deref(),
        Some("CN=Berth db")
    );
    // 21.3: a UKI for the other slot, or naming another root hash, is refused.
    let err = check(&good, Slot::A, &trust).unwrap_err();
    assert!(matches!(err, UkiError::WrongSlot { .. }), "{err}");
    let other_root = ROOT_HASH.replace("ab", "ff");
    let wrong_root = secureboot::sign(
        &keys,
        &tiny_uki('b', &other_root),
        Arch::X86_64,
        "r",
        dir.path(),
    )
    .unwrap();
    let err = check(&wrong_root, Slot::B, &trust).unwrap_err().to_string();
    assert!(
        err.contains(&other_root) && err.contains("uki.zst"),
        "{err}"
    );
    // Tamper 3 on the host: signed by a foreign key, or unsigned.
    let rogue = secureboot::sign(
        &foreign,
        &tiny_uki('b', ROOT_HASH),
        Arch::X86_64,
        "f",
        dir.path(),
    )
    .unwrap();
    let err = check(&rogue, Slot::B, &trust).unwrap_err().to_string();
    assert!(
        err.contains("uki.zst")
            && err.contains("not in the trusted db")
            && err.contains("the firmware's db"),
        "{err}"
    );
    let err = check(&tiny_uki('b', ROOT_HASH), Slot::B, &trust)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsigned"), "{err}");
    // Secure Boot off: the image's own list decides; an unsigned image checks nothing more.
    std::fs::write(
        efivars.join("SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
        [6, 0, 0, 0, 0],
    )
    .unwrap();
    let image_db = dir.path().join("image-db.esl");
    std::fs::write(&image_db, &keys.db_esl).unwrap();
    let off = Trust {
        efivars,
        image_db: image_db.clone(),
    };
    assert!(check(&good, Slot::B, &off).is_ok());
    let err = check(&rogue, Slot::B, &off).unwrap_err().to_string();
    assert!(err.contains("the certificates the image ships"), "{err}");
    std::fs::remove_file(&image_db).unwrap();
    assert_eq!(check(&rogue, Slot::B, &off).unwrap(), None);
    // A staged file that is not what the manifest lists.
    let (path, mut image) = staged(dir.path(), "uki.zst", &good);
    image.sha256 = "00".repeat(32);
    let err = updater::uki::read_staged(&path, &image).unwrap_err();
    assert!(matches!(err, UkiError::Hash { .. }), "{err}");
}

/// The variable stores a signed build writes, for both architectures: Secure Boot on and
/// Berth's certificate the only one in PK, KEK and db (Debian's AAVMF template carries
/// Microsoft's keys, which must not stay; its plain AAVMF_VARS.fd is zeroes).
#[test]
fn firmware_stores_hold_only_berths_keys_on_both_arches() {
    let dir = tempfile::tempdir().unwrap();
    let keys = secureboot::load(&keygen(dir.path())).unwrap();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let out = dir.path().join(arch.name());
        std::fs::create_dir_all(&out).unwrap();
        secureboot::write_firmware_files(&keys, arch, &out).unwrap();
        let printed = Command::new("virt-fw-vars")
            .arg("--input")
            .arg(out.join("uefi-vars.fd"))
            .arg("--print")
            .arg("--verbose")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&printed.stdout).to_string()
            + &String::from_utf8_lossy(&printed.stderr);
        assert!(printed.status.success(), "{arch}: {text}");
        assert!(text.contains("SecureBootEnable"), "{arch}: {text}");
        assert!(text.contains("CN=Berth db"), "{arch}: no db cert\n{text}");
        assert!(
            !text.contains("Microsoft"),
            "{arch}: Microsoft keys left\n{text}"
        );
        for file in ["uefi-vars.aws", "PK.auth", "KEK.auth", "db.auth"] {
            assert!(out.join(file).is_file(), "{arch}: {file}");
        }
    }
}
