//! Secure Boot with Berth's own keys (docs/secure-boot.md).
//!
//! - `os-build secure-boot keygen`: PK, KEK and db key pairs with X.509 certificates
//!   (`openssl`), their EFI signature lists and the signed updates that enrol them
//!   (`PK.auth` signed by PK, `KEK.auth` by PK, `db.auth` by KEK; efitools), made once so a
//!   build needs only the db private key.
//! - `os-build build --secure-boot-keys DIR`: signs systemd-boot and each UKI with the db key
//!   (Debian's `sbsign`: the tool distributions sign their boot loaders with), checks each
//!   signature the way firmware will (`updater::secureboot`), ships the db list in the image
//!   for the updater, and writes the firmware variable stores beside the disk
//!   (`virt-fw-vars` of python3-virt-firmware): `uefi-vars.fd` for QEMU (OVMF / AAVMF with the
//!   keys enrolled and Secure Boot on) and `uefi-vars.aws` for `aws ec2 register-image
//!   --uefi-data`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::arch::Arch;

/// The files of a key folder made by `keygen`.
pub const KEY_FILES: &[&str] = &[
    "PK.key",
    "PK.crt",
    "PK.esl",
    "PK.auth",
    "KEK.key",
    "KEK.crt",
    "KEK.esl",
    "KEK.auth",
    "db.key",
    "db.crt",
    "db.esl",
    "db.auth",
    "owner.guid",
];
/// What a build needs of them: the db key pair, the certificates to enrol, the signed
/// enrolment updates and the signature owner. PK.key and KEK.key can stay offline.
const BUILD_FILES: &[&str] = &[
    "db.key",
    "db.crt",
    "db.esl",
    "PK.crt",
    "KEK.crt",
    "PK.auth",
    "KEK.auth",
    "db.auth",
    "owner.guid",
];
/// Files the build writes beside the disk when it signs.
pub const OUTPUT_FILES: &[&str] = &[
    "uefi-vars.fd",
    "uefi-vars.aws",
    "PK.auth",
    "KEK.auth",
    "db.auth",
];
/// The db certificates inside the image: what the updater trusts when Secure Boot is off.
pub const IMAGE_DB: &str = "/usr/share/berth/secure-boot/db.esl";

/// (tool, Debian package) for keygen.
pub const KEYGEN_TOOLS: &[(&str, &str)] = &[
    ("openssl", "openssl"),
    ("cert-to-efi-sig-list", "efitools"),
    ("sign-efi-sig-list", "efitools"),
];
/// (tool, Debian package) for a signed build.
pub const SIGN_TOOLS: &[(&str, &str)] = &[
    ("openssl", "openssl"),
    ("sbsign", "sbsigntool"),
    ("virt-fw-vars", "python3-virt-firmware (bookworm-backports)"),
];

/// `secure_boot` in manifest.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Signed,
    Unsigned,
}

/// The certificate that signed a build, in manifest.json.
#[derive(Debug, Clone, Serialize)]
pub struct DbCert {
    pub subject: String,
    /// sha256 of the DER certificate.
    pub sha256: String,
    pub not_after: String,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?} ({what})", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// keygen

/// Makes PK, KEK and db in `out` (created if needed). Refuses if any key file exists; writes
/// everything in a scratch folder first, so a failure leaves `out` as it was.
pub fn keygen(out: &Path, common_name: &str, days: u32) -> Result<()> {
    crate::hosttools::check(KEYGEN_TOOLS)?;
    for name in KEY_FILES {
        let path = out.join(name);
        ensure!(
            !path.exists(),
            "{} exists; refusing to overwrite Secure Boot keys (choose another --out)",
            path.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(".keygen-")
        .tempdir_in(out)
        .with_context(|| format!("cannot create a scratch folder in {}", out.display()))?;
    let tmp = scratch.path();
    let guid = uuid::Uuid::new_v4().to_string();
    for name in ["PK", "KEK", "db"] {
        let key = tmp.join(format!("{name}.key"));
        // The private key file exists with mode 0600 before openssl writes into it.
        std::fs::File::create(&key)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .with_context(|| format!("cannot create {}", key.display()))?;
        run(
            Command::new("openssl")
                .args([
                    "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                ])
                .args(["-days", &days.to_string()])
                .args(["-subj", &format!("/CN={common_name} {name}/")])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(tmp.join(format!("{name}.crt"))),
            &format!("openssl req ({name} key and certificate)"),
        )?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", key.display()))?;
        run(
            Command::new("cert-to-efi-sig-list")
                .args(["-g", &guid])
                .arg(tmp.join(format!("{name}.crt")))
                .arg(tmp.join(format!("{name}.esl"))),
            &format!("cert-to-efi-sig-list ({name})"),
        )?;
    }
    // PK and KEK updates are signed by PK, db updates by KEK (UEFI 2.x, 8.2.2).
    for (var, signer) in [("PK", "PK"), ("KEK", "PK"), ("db", "KEK")] {
        run(
            Command::new("sign-efi-sig-list")
                .args(["-g", &guid])
                .arg("-k")
                .arg(tmp.join(format!("{signer}.key")))
                .arg("-c")
                .arg(tmp.join(format!("{signer}.crt")))
                .arg(var)
                .arg(tmp.join(format!("{var}.esl")))
                .arg(tmp.join(format!("{var}.auth"))),
            &format!("sign-efi-sig-list ({var}.auth signed by {signer})"),
        )?;
    }
    std::fs::write(tmp.join("owner.guid"), format!("{guid}\n"))?;
    for name in KEY_FILES {
        std::fs::rename(tmp.join(name), out.join(name))
            .with_context(|| format!("cannot move {name} into {}", out.display()))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// keys for a build

/// The checked key folder of a signed build.
#[derive(Debug, Clone)]
pub struct BuildKeys {
    pub dir: PathBuf,
    pub guid: String,
    pub db_cert: DbCert,
    /// The db list (DER certificates) the firmware variables and the image get.
    pub db_esl: Vec<u8>,
}

impl BuildKeys {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Checks a key folder before anything is built: every file there and readable, the db key
/// matching the db certificate, no certificate expired. Errors name the file.
pub fn load(dir: &Path) -> Result<BuildKeys> {
    crate::hosttools::check(SIGN_TOOLS)?;
    ensure!(
        dir.is_dir(),
        "--secure-boot-keys {}: no such folder (make one with `os-build secure-boot keygen --out {}`)",
        dir.display(),
        dir.display()
    );
    for name in BUILD_FILES {
        let path = dir.join(name);
        std::fs::File::open(&path).with_context(|| {
            format!(
                "Secure Boot key file {} is missing or unreadable ({} holds what `os-build secure-boot keygen` makes)",
                path.display(),
                dir.display()
            )
        })?;
    }
    for cert in ["PK.crt", "KEK.crt", "db.crt"] {
        let path = dir.join(cert);
        let end = run(
            Command::new("openssl")
                .args(["x509", "-noout", "-enddate", "-in"])
                .arg(&path),
            &format!("reading the certificate {}", path.display()),
        )?;
        let expired = !Command::new("openssl")
            .args(["x509", "-noout", "-checkend", "0", "-in"])
            .arg(&path)
            .output()
            .with_context(|| format!("cannot check the expiry of {}", path.display()))?
            .status
            .success();
        ensure!(
            !expired,
            "the certificate {} has expired ({}); make new keys and enrol them",
            path.display(),
            end.trim()
        );
    }
    let cert_pub = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(dir.join("db.crt")),
        &format!("reading {}", dir.join("db.crt").display()),
    )?;
    let key_pub = run(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.join("db.key")),
        &format!("reading the private key {}", dir.join("db.key").display()),
    )?;
    ensure!(
        cert_pub == key_pub,
        "the private key {} does not match the certificate {}",
        dir.join("db.key").display(),
        dir.join("db.crt").display()
    );
    let der = cert_der(&dir.join("db.crt"))?;
    let subject = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(dir.join("db.crt")),
        "reading the db certificate's subject",
    )?;
    let not_after = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-in"])
            .arg(dir.join("db.crt")),
        "reading the db certificate's expiry",
    )?;
    let guid = std::fs::read_to_string(dir.join("owner.guid"))?
        .trim()
        .to_owned();
    uuid::Uuid::parse_str(&guid)
        .with_context(|| format!("{} does not hold a GUID", dir.join("owner.guid").display()))?;
    let db_esl_path = dir.join("db.esl");
    let db_esl = std::fs::read(&db_esl_path)?;
    let db = updater::secureboot::SignatureDb::from_esl(&db_esl).map_err(|reason| {
        anyhow::anyhow!(
            "{} is not an EFI signature list: {reason}",
            db_esl_path.display()
        )
    })?;
    ensure!(
        db.certs.contains(&der),
        "{} does not list the db certificate {}",
        db_esl_path.display(),
        dir.join("db.crt").display()
    );
    Ok(BuildKeys {
        dir: dir.to_owned(),
        guid,
        db_cert: DbCert {
            subject: subject.trim().trim_start_matches("subject=").to_owned(),
            sha256: hex::encode(Sha256::digest(&der)),
            not_after: not_after.trim().trim_start_matches("notAfter=").to_owned(),
        },
        db_esl,
    })
}

/// The DER bytes of a PEM certificate.
pub fn cert_der(pem: &Path) -> Result<Vec<u8>> {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pem)
        .output()
        .context("cannot run openssl")?;
    ensure!(
        out.status.success(),
        "{} is not a PEM certificate: {}",
        pem.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

// ---------------------------------------------------------------------------------------------
// signing

/// Signs the PE image `data` with the db key and returns the signed bytes, checked with the
/// updater's verifier against the folder's db list.
pub fn sign(
    keys: &BuildKeys,
    data: &[u8],
    arch: Arch,
    what: &str,
    scratch: &Path,
) -> Result<Vec<u8>> {
    let input = scratch.join(format!("{what}.unsigned"));
    let output = scratch.join(format!("{what}.signed"));
    std::fs::write(&input, data).with_context(|| format!("cannot write {}", input.display()))?;
    run(
        Command::new("sbsign")
            .arg("--key")
            .arg(keys.path("db.key"))
            .arg("--cert")
            .arg(keys.path("db.crt"))
            .arg("--output")
            .arg(&output)
            .arg(&input),
        &format!("sbsign {what}"),
    )?;
    let signed =
        std::fs::read(&output).with_context(|| format!("cannot read {}", output.display()))?;
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let db = updater::secureboot::SignatureDb::from_esl(&keys.db_esl)
        .map_err(|e| anyhow::anyhow!("db.esl: {e}"))?;
    updater::secureboot::verify(&signed, arch.name(), &db, &Default::default())
        .map_err(|reason| anyhow::anyhow!("signed {what} does not verify: {reason}"))?;
    Ok(signed)
}

// ---------------------------------------------------------------------------------------------
// firmware variables

/// The firmware variable store Berth's keys are enrolled into, for `arch` (Debian's ovmf /
/// qemu-efi-aarch64). x86_64: OVMF's empty store. aarch64: Debian ships `AAVMF_VARS.fd` as
/// 64 MiB of zeroes (the firmware formats it at first boot), which virt-fw-vars cannot read,
/// so the store with Microsoft's keys is the template and [`TEMPLATE_KEYS`] are deleted
/// from it first: only Berth's keys are enrolled.
pub fn vars_template(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "/usr/share/OVMF/OVMF_VARS_4M.fd",
        Arch::Aarch64 => "/usr/share/AAVMF/AAVMF_VARS.ms.fd",
    }
}

/// The Secure Boot variables a template may carry, deleted before Berth's are set.
pub const TEMPLATE_KEYS: [&str; 4] = ["PK", "KEK", "db", "dbx"];

/// Writes `uefi-vars.fd` (the QEMU firmware's store: PK, KEK, db enrolled, Secure Boot on),
/// `uefi-vars.aws` (the same variables as EC2's `--uefi-data` blob) and copies the signed
/// enrolment updates `PK.auth`, `KEK.auth`, `db.auth` into `out`.
pub fn write_firmware_files(keys: &BuildKeys, arch: Arch, out: &Path) -> Result<()> {
    let template = vars_template(arch);
    ensure!(
        Path::new(template).is_file(),
        "firmware variable template {template} is missing: run `sudo scripts/host-deps.sh`"
    );
    let fd_tmp = out.join("uefi-vars.fd.tmp");
    let aws_tmp = out.join("uefi-vars.aws.tmp");
    let mut cmd = Command::new("virt-fw-vars");
    cmd.args(["--input", template]);
    if arch == Arch::Aarch64 {
        for var in TEMPLATE_KEYS {
            cmd.args(["--delete", var]);
        }
    }
    cmd.arg("--output")
        .arg(&fd_tmp)
        .arg("--output-aws")
        .arg(&aws_tmp)
        .args(["--set-pk", &keys.guid])
        .arg(keys.path("PK.crt"))
        .args(["--add-kek", &keys.guid])
        .arg(keys.path("KEK.crt"));
    // Every certificate of the db list (the current one and, after a rotation, those it
    // replaces), as PEM files for virt-fw-vars.
    let db = updater::secureboot::SignatureDb::from_esl(&keys.db_esl)
        .map_err(|e| anyhow::anyhow!("db.esl: {e}"))?;
    let scratch = tempfile::tempdir_in(out)?;
    for (i, der) in db.certs.iter().enumerate() {
        let pem = scratch.path().join(format!("db-{i}.crt"));
        run(
            Command::new("openssl")
                .args(["x509", "-inform", "DER", "-out"])
                .arg(&pem)
                .arg("-in")
                .arg(write_tmp(scratch.path(), &format!("db-{i}.der"), der)?),
            "converting a db certificate to PEM",
        )?;
        cmd.args(["--add-db", &keys.guid]).arg(pem);
    }
    cmd.arg("--secure-boot");
    if let Err(e) = run(&mut cmd, "virt-fw-vars (enrolling PK, KEK and db)") {
        let _ = std::fs::remove_file(&fd_tmp);
        let _ = std::fs::remove_file(&aws_tmp);
        return Err(e);
    }
    std::fs::rename(&fd_tmp, out.join("uefi-vars.fd"))?;
    std::fs::rename(&aws_tmp, out.join("uefi-vars.aws"))?;
    for name in ["PK.auth", "KEK.auth", "db.auth"] {
        std::fs::copy(keys.path(name), out.join(name)).with_context(|| {
            format!(
                "cannot copy {} into {}",
                keys.path(name).display(),
                out.display()
            )
        })?;
    }
    Ok(())
}

fn write_tmp(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Removes what a previous signed build left beside the disk, so an unsigned build does not
/// keep a stale `uefi-vars.fd` that would boot it with Secure Boot on.
pub fn remove_firmware_files(out: &Path) -> Result<()> {
    for name in OUTPUT_FILES {
        match std::fs::remove_file(out.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot remove {}", out.join(name).display()))
            }
        }
    }
    Ok(())
}

/// The signing keys of a build, or `None` for an unsigned build: refused for a production
/// variant unless `allow_unsigned`, and announced loudly otherwise.
pub fn for_build(
    keys: Option<&Path>,
    allow_unsigned: bool,
    variant: &str,
    production: bool,
) -> Result<Option<BuildKeys>> {
    if let Some(dir) = keys {
        return load(dir).map(Some);
    }
    ensure!(
        !production || allow_unsigned,
        "{variant} is a production variant: sign it with --secure-boot-keys DIR (make keys with \
         `os-build secure-boot keygen --out DIR`), or pass --allow-unsigned to build an image \
         that cannot boot with Secure Boot on"
    );
    let banner = "UNSIGNED BUILD: systemd-boot and the UKIs are not signed; this image cannot \
                  boot with Secure Boot on, and manifest.json says \"secure_boot\": \"unsigned\"";
    tracing::warn!("{banner}");
    eprintln!("os-build: WARNING: {banner}");
    Ok(None)
}
