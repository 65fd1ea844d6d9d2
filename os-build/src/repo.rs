//! `os-build repo`: the signed update repository (TUF, written with `tough`'s editor) that
//! holds the Berth update manifest and the compressed per-slot images of builds.
//!
//! Layout (consistent snapshots):
//! ```text
//! <repo>/metadata/<N>.root.json        every root version (clients walk them in order)
//! <repo>/metadata/<N>.targets.json     <N>.snapshot.json, timestamp.json
//! <repo>/targets/<sha256>.<name>       manifest.json and <variant>-<arch>-<version>-<image>.zst
//! ```
//! See docs/updates.md.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tough::editor::signed::{PathExists, SignedRole};
use tough::editor::RepositoryEditor;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role, RoleKeys, RoleType, Root, Signed, Snapshot, Targets,
    Timestamp,
};
use updater::manifest::{
    Compression, Image, Images, Manifest, Migration, SlotImages, Update, VerityInfo,
    MANIFEST_TARGET,
};

use crate::cli::{
    AddArgs, ExpiryArgs, InitArgs, KeygenArgs, RefreshArgs, RepoCommand, RotateRootArgs,
};

const SPEC_VERSION: &str = "1.0.0";

pub fn run(cmd: &RepoCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cmd {
        RepoCommand::Keygen(args) => keygen(args),
        RepoCommand::Init(args) => rt.block_on(init(args)),
        RepoCommand::Add(args) => rt.block_on(add(args)),
        RepoCommand::RotateRoot(args) => rt.block_on(rotate_root(args)),
        RepoCommand::Refresh(args) => rt.block_on(refresh(args)),
    }
}

/// Parses `30d`, `12h`, `90m`, `45s` (a number and one unit).
pub fn parse_duration(text: &str) -> Result<jiff::SignedDuration, String> {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 7d, 12h, 30m or 45s"))?;
    let secs = match unit {
        "d" => n * 86_400,
        "h" => n * 3_600,
        "m" => n * 60,
        "s" => n,
        _ => {
            return Err(format!(
                "{text:?} is not a duration like 7d, 12h, 30m or 45s"
            ))
        }
    };
    Ok(jiff::SignedDuration::from_secs(secs))
}

fn expires_in(d: jiff::SignedDuration) -> jiff::Timestamp {
    // TUF timestamps have second precision.
    let t = jiff::Timestamp::now() + d;
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

// ---------------------------------------------------------------------------------------------
// keygen

fn keygen(args: &KeygenArgs) -> Result<()> {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let private = args.out.with_extension("pk8");
    let public = args.out.with_extension("pub.json");
    for path in [&private, &public] {
        ensure!(
            !path.exists(),
            "{} exists; refusing to overwrite a key",
            path.display()
        );
    }
    if let Some(dir) = private.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .context("cannot generate an ed25519 key")?;
    let pair =
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).context("generated key does not parse")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .with_context(|| format!("cannot create {}", private.display()))?;
    f.write_all(pkcs8.as_ref())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", private.display()))?;
    let key = serde_json::json!({
        "keytype": "ed25519",
        "scheme": "ed25519",
        "keyval": { "public": hex::encode(pair.public_key().as_ref()) },
    });
    std::fs::write(&public, serde_json::to_string_pretty(&key)? + "\n")
        .with_context(|| format!("cannot write {}", public.display()))?;
    println!("{}", private.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// keys and roots

fn key_sources(paths: &[PathBuf]) -> Result<Vec<Box<dyn KeySource>>> {
    paths
        .iter()
        .map(|p| {
            ensure!(p.is_file(), "key file {} does not exist", p.display());
            Ok(Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>)
        })
        .collect()
}

/// The TUF public keys (by key id) of private key files.
async fn public_keys(paths: &[PathBuf]) -> Result<Vec<(Decoded<Hex>, tough::schema::key::Key)>> {
    let mut keys = Vec::new();
    for path in paths {
        let source = LocalKeySource { path: path.clone() };
        let sign = source
            .as_sign()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "key file {} is not an ed25519/ecdsa/rsa pkcs8 key",
                    path.display()
                )
            })?;
        let key = sign.tuf_key();
        let id = key
            .key_id()
            .with_context(|| format!("cannot compute the key id of {}", path.display()))?;
        keys.push((id, key));
    }
    Ok(keys)
}

fn metadata_dir(repo: &Path) -> PathBuf {
    repo.join("metadata")
}

fn targets_dir(repo: &Path) -> PathBuf {
    repo.join("targets")
}

/// The newest `<N>.root.json` in the repository and its N.
fn latest_root(repo: &Path) -> Result<(PathBuf, u64)> {
    let dir = metadata_dir(repo);
    let mut best: Option<(PathBuf, u64)> = None;
    for entry in std::fs::read_dir(&dir)
        .with_context(|| format!("{} is not a repository (no metadata/)", repo.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_suffix(".root.json")
            .and_then(|n| n.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(_, b)| n > *b) {
                best = Some((entry.path(), n));
            }
        }
    }
    best.with_context(|| format!("{} holds no <N>.root.json", dir.display()))
}

fn read_root(path: &Path) -> Result<Signed<Root>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a TUF root", path.display()))
}

/// Role keys and thresholds given on the command line.
struct RoleSpec {
    role: RoleType,
    keys: Vec<PathBuf>,
    threshold: u64,
}

async fn set_role(root: &mut Root, spec: &RoleSpec) -> Result<()> {
    let keys = public_keys(&spec.keys).await?;
    ensure!(
        spec.threshold >= 1 && spec.threshold as usize <= keys.len(),
        "{:?} threshold {} needs at least that many keys ({} given)",
        spec.role,
        spec.threshold,
        keys.len()
    );
    let mut ids = Vec::new();
    for (id, key) in keys {
        root.keys.insert(id.clone(), key);
        ids.push(id);
    }
    root.roles.insert(
        spec.role,
        RoleKeys {
            keyids: ids,
            threshold: NonZeroU64::new(spec.threshold).context("threshold is 0")?,
            _extra: HashMap::new(),
        },
    );
    // Drop keys no role uses any more.
    let used: Vec<Decoded<Hex>> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
    root.keys.retain(|id, _| used.contains(id));
    Ok(())
}

fn count_signatures(signed: &Signed<Root>, by: &Root) -> usize {
    let ids = by
        .roles
        .get(&RoleType::Root)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    signed
        .signatures
        .iter()
        .filter(|s| ids.contains(&s.keyid))
        .count()
}

fn root_threshold(root: &Root) -> u64 {
    root.roles
        .get(&RoleType::Root)
        .map_or(1, |r| r.threshold.get())
}

// ---------------------------------------------------------------------------------------------
// init

async fn init(args: &InitArgs) -> Result<()> {
    let meta = metadata_dir(&args.repo);
    ensure!(
        !meta.exists(),
        "{} exists; `repo init` makes a new repository (use `repo add` to extend one)",
        meta.display()
    );
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expires_in(args.root_expires),
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for spec in [
        RoleSpec {
            role: RoleType::Root,
            keys: args.root_key.clone(),
            threshold: args.root_threshold,
        },
        RoleSpec {
            role: RoleType::Targets,
            keys: args.targets_key.clone(),
            threshold: args.targets_threshold,
        },
        RoleSpec {
            role: RoleType::Snapshot,
            keys: args.snapshot_key.clone(),
            threshold: args.snapshot_threshold,
        },
        RoleSpec {
            role: RoleType::Timestamp,
            keys: args.timestamp_key.clone(),
            threshold: args.timestamp_threshold,
        },
    ] {
        set_role(&mut root, &spec).await?;
    }
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let keys = key_sources(&args.root_key)?;
    let signed = SignedRole::new(root.clone(), &KeyHolder::Root(root.clone()), &keys, &rng)
        .await
        .context("cannot sign root.json")?;
    ensure!(
        count_signatures(signed.signed(), &root) as u64 >= root_threshold(&root),
        "the root keys given do not meet the root threshold"
    );
    std::fs::create_dir_all(&meta).with_context(|| format!("cannot create {}", meta.display()))?;
    std::fs::create_dir_all(targets_dir(&args.repo))?;
    signed
        .write(&meta, true)
        .await
        .context("cannot write 1.root.json")?;
    // The first targets, snapshot and timestamp: an empty manifest.
    let mut all_keys = args.targets_key.clone();
    all_keys.extend(args.snapshot_key.iter().cloned());
    all_keys.extend(args.timestamp_key.iter().cloned());
    if let Err(err) = publish(&args.repo, &all_keys, &args.expiry, &[], |_m| Ok(())).await {
        // No half-made repository: a second `init` would refuse it.
        let _ = std::fs::remove_dir_all(&meta);
        let _ = std::fs::remove_dir_all(args.repo.join(".work"));
        return Err(err);
    }
    println!("{}", meta.join("1.root.json").display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// add

/// The fields of os-build's build manifest.json that the repository needs.
#[derive(Debug, Deserialize)]
struct BuildManifest {
    version: String,
    variant: String,
    arch: String,
    root_hash: String,
    verity_salt: String,
    verity_data_blocks: u64,
    artifacts: HashMap<String, crate::manifest::Artifact>,
    /// `signed` or `unsigned`; builds from before Secure Boot have none (unsigned).
    #[serde(default)]
    secure_boot: Option<String>,
}

/// Refuses a build whose UKIs a host trusting the `--secure-boot-db` certificates would not
/// boot (or, with `--allow-unsigned`, lets an unsigned build through).
fn check_signatures(build: &Path, bm: &BuildManifest, args: &AddArgs) -> Result<()> {
    use updater::secureboot::{verify, SignatureDb};
    if bm.secure_boot.as_deref() != Some("signed") {
        ensure!(
            args.allow_unsigned,
            "{} is an unsigned build (manifest.json says \"secure_boot\": {}); hosts with Secure \
             Boot on would refuse its UKIs. Sign it (os-build build --secure-boot-keys), or pass \
             --allow-unsigned for a development repository",
            build.display(),
            bm.secure_boot
                .as_deref()
                .map_or("nothing".to_owned(), |s| format!("{s:?}"))
        );
        tracing::warn!(build = %build.display(), "adding an unsigned build (--allow-unsigned)");
        return Ok(());
    }
    ensure!(
        !args.secure_boot_db.is_empty(),
        "{} is signed: pass the certificate of the db key the repository's hosts trust with \
         --secure-boot-db (e.g. the keys folder's db.crt), so repo add can check its UKIs",
        build.display()
    );
    let mut certs = Vec::new();
    for pem in &args.secure_boot_db {
        certs.push(crate::secureboot::cert_der(pem)?);
    }
    let db = SignatureDb::from_certs(certs);
    for file in ["uki-a.efi", "uki-b.efi"] {
        let path = build.join(file);
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        match verify(&bytes, &bm.arch, &db, &SignatureDb::default()) {
            Ok(signer) => {
                tracing::info!(uki = %path.display(), signer = %signer.subject, "UKI signature checked")
            }
            Err(reason) => anyhow::bail!(
                "{} is refused: {reason}; hosts trusting {} would not boot it",
                path.display(),
                args.secure_boot_db
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(())
}

/// Compresses `src` into `dest` (zstd, streaming) and returns the size and sha256 of `src`.
fn compress(src: &Path, dest: &Path, level: i32) -> Result<(u64, String)> {
    let input = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    let out = BufWriter::new(
        File::create(dest).with_context(|| format!("cannot create {}", dest.display()))?,
    );
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", src.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", dest.display()))?;
        size += n as u64;
    }
    let out = enc
        .finish()
        .with_context(|| format!("cannot write {}", dest.display()))?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot write {}", dest.display()))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Compresses a build's slot images into `work` and returns its manifest entry.
fn stage_build(build: &Path, work: &Path, args: &AddArgs, existing: &Manifest) -> Result<Update> {
    let mpath = build.join("manifest.json");
    let bm: BuildManifest = serde_json::from_slice(&std::fs::read(&mpath).with_context(|| {
        format!(
            "cannot read {} (is {} an os-build output?)",
            mpath.display(),
            build.display()
        )
    })?)
    .with_context(|| format!("{} is not an os-build manifest", mpath.display()))?;
    let version = semver::Version::parse(&bm.version).with_context(|| {
        format!(
            "{}: version {:?} is not semver",
            mpath.display(),
            bm.version
        )
    })?;
    ensure!(
        args.replace
            || !existing
                .updates
                .iter()
                .any(|u| u.variant == bm.variant && u.arch == bm.arch && u.version == version),
        "the repository already offers {} {} {}; pass --replace to publish {} in its place",
        bm.variant,
        bm.arch,
        version,
        build.display()
    );
    let prefix = format!("{}-{}-{}", bm.variant, bm.arch, bm.version);
    let image = |file: &str| -> Result<Image> {
        let artifact = bm
            .artifacts
            .get(file)
            .with_context(|| format!("{} lists no artifact {file}", mpath.display()))?;
        let target = format!("{prefix}-{file}.zst");
        tracing::info!(build = %build.display(), file, "compressing");
        let (size, sha256) = compress(&build.join(file), &work.join(&target), args.zstd_level)?;
        ensure!(
            size == artifact.size && sha256 == artifact.sha256,
            "{} does not match {} (sha256 {sha256}, size {size}); rebuild it",
            build.join(file).display(),
            mpath.display()
        );
        Ok(Image {
            target,
            compression: Compression::Zstd,
            size,
            sha256,
        })
    };
    check_signatures(build, &bm, args)?;
    let root = image("root.erofs")?;
    let verity = image("verity.img")?;
    let uki_a = image("uki-a.efi")?;
    let uki_b = image("uki-b.efi")?;
    let now = jiff::Timestamp::now();
    let waves = args
        .wave
        .iter()
        .map(|w| {
            (
                w.seed,
                jiff::Timestamp::from_second((now + w.after).as_second()).unwrap_or(now),
            )
        })
        .collect();
    Ok(Update {
        variant: bm.variant,
        arch: bm.arch,
        max_version: args.max_version.clone().unwrap_or_else(|| version.clone()),
        rollback_floor: args.rollback_floor.clone(),
        version,
        waves,
        verity: VerityInfo {
            root_hash: bm.root_hash,
            salt: if bm.verity_salt == "-" {
                String::new()
            } else {
                bm.verity_salt
            },
            data_blocks: bm.verity_data_blocks,
        },
        slots: SlotImages {
            a: Images {
                root: root.clone(),
                verity: verity.clone(),
                uki: uki_a,
            },
            b: Images {
                root,
                verity,
                uki: uki_b,
            },
        },
    })
}

async fn add(args: &AddArgs) -> Result<()> {
    let work = args.repo.join(".work");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("cannot clear {}", work.display()))?;
    }
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let existing = if metadata_dir(&args.repo).join("timestamp.json").exists() {
        read_manifest(&args.repo, &read_local(&args.repo)?.targets.signed)?
    } else {
        Manifest::default()
    };
    let mut updates = Vec::new();
    for build in &args.build {
        match stage_build(build, &work, args, &existing) {
            Ok(update) => updates.push(update),
            Err(err) => {
                let _ = std::fs::remove_dir_all(&work);
                return Err(err);
            }
        }
    }
    let result = publish(&args.repo, &args.key, &args.expiry, &updates, |m| {
        if let Some(max) = &args.max_version {
            // Lowering or raising the ceiling applies to every version of the builds' variants.
            for u in &mut m.updates {
                if updates
                    .iter()
                    .any(|n| n.variant == u.variant && n.arch == u.arch)
                {
                    u.max_version = max.clone();
                }
            }
        }
        for mig in &args.migration {
            match m
                .migrations
                .iter_mut()
                .find(|x| x.from == mig.from && x.to == mig.to)
            {
                Some(existing) => existing.names = mig.names.clone(),
                None => m.migrations.push(mig.clone()),
            }
        }
        Ok(())
    })
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The newest `<N>.<role>.json` in the metadata folder.
fn latest_role<T: serde::de::DeserializeOwned>(repo: &Path, role: &str) -> Result<Signed<T>> {
    let dir = metadata_dir(repo);
    let suffix = format!(".{role}.json");
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir)
        .with_context(|| format!("{} is not a repository (no metadata/)", repo.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_suffix(&suffix)
            .and_then(|n| n.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, entry.path()));
            }
        }
    }
    let (_, path) = best.with_context(|| format!("{} holds no <N>{suffix}", dir.display()))?;
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not TUF {role} metadata", path.display()))
}

/// The repository as its owner has it on disk (read directly rather than through a TUF
/// client: after a key rotation the old roles no longer verify until they are re-signed).
struct Local {
    targets: Signed<Targets>,
    snapshot: Signed<Snapshot>,
    timestamp: Signed<Timestamp>,
}

fn read_local(repo: &Path) -> Result<Local> {
    let ts_path = metadata_dir(repo).join("timestamp.json");
    let timestamp: Signed<Timestamp> = serde_json::from_slice(
        &std::fs::read(&ts_path).with_context(|| format!("cannot read {}", ts_path.display()))?,
    )
    .with_context(|| format!("{} is not TUF timestamp metadata", ts_path.display()))?;
    Ok(Local {
        targets: latest_role(repo, "targets")?,
        snapshot: latest_role(repo, "snapshot")?,
        timestamp,
    })
}

/// The manifest target of the repository on disk, its hash checked against targets.json.
fn read_manifest(repo: &Path, targets: &Targets) -> Result<Manifest> {
    let name = tough::TargetName::new(MANIFEST_TARGET)?;
    let Some(target) = targets.targets.get(&name) else {
        return Ok(Manifest::default());
    };
    let sha = hex::encode(target.hashes.sha256.as_ref());
    let path = targets_dir(repo).join(format!("{sha}.{MANIFEST_TARGET}"));
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    ensure!(
        hex::encode(Sha256::digest(&bytes)) == sha,
        "{} does not match its hash in targets.json",
        path.display()
    );
    Manifest::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid manifest", path.display()))
}

/// Adds `updates` to the manifest (then lets `edit` change it), adds the staged images in
/// `<repo>/.work/`, signs targets, snapshot and timestamp with new versions and expiries, and
/// writes targets first and metadata last (timestamp.json at the very end), so a client never
/// sees metadata naming a missing target.
async fn publish(
    repo: &Path,
    keys: &[PathBuf],
    expiry: &ExpiryArgs,
    updates: &[Update],
    edit: impl FnOnce(&mut Manifest) -> Result<()>,
) -> Result<()> {
    let meta = metadata_dir(repo);
    let first = !meta.join("timestamp.json").exists();
    let (root_path, _) = latest_root(repo)?;
    let mut editor = RepositoryEditor::new(&root_path).await?;
    let (mut manifest, versions) = if first {
        (Manifest::default(), (0, 0, 0))
    } else {
        let local = read_local(repo)?;
        let manifest = read_manifest(repo, &local.targets.signed)?;
        let versions = (
            local.targets.signed.version.get(),
            local.snapshot.signed.version.get(),
            local.timestamp.signed.version.get(),
        );
        editor.targets(local.targets)?;
        (manifest, versions)
    };
    for u in updates {
        manifest.upsert(u.clone());
    }
    edit(&mut manifest)?;
    manifest
        .validate()
        .context("the new manifest is not valid")?;
    let work = repo.join(".work");
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join(MANIFEST_TARGET),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(&work)? {
        paths.push(entry?.path());
    }
    paths.sort();
    editor
        .add_target_paths(paths)
        .await
        .context("cannot add the targets")?;
    let bump = |v: u64| NonZeroU64::new(v + 1).unwrap_or(NonZeroU64::MIN);
    editor
        .targets_version(bump(versions.0))?
        .targets_expires(expires_in(expiry.targets_expires))?
        .snapshot_version(bump(versions.1))
        .snapshot_expires(expires_in(expiry.snapshot_expires))
        .timestamp_version(bump(versions.2))
        .timestamp_expires(expires_in(expiry.timestamp_expires));
    let signed = editor.sign(&key_sources(keys)?).await.context(
        "cannot sign targets, snapshot and timestamp (are the right keys given with --key?)",
    )?;
    signed
        .copy_targets(&work, targets_dir(repo), PathExists::Skip)
        .await
        .context("cannot copy the targets into the repository")?;
    write_metadata(&signed, &meta).await?;
    println!(
        "{}: targets v{}, snapshot v{}, timestamp v{}; {} update(s) in the manifest",
        repo.display(),
        versions.0 + 1,
        versions.1 + 1,
        versions.2 + 1,
        manifest.updates.len()
    );
    Ok(())
}

/// Writes the signed metadata next to `meta` and renames each file into place, targets and
/// snapshot before timestamp.json, so a reader sees whole files, old or new.
async fn write_metadata(
    signed: &tough::editor::signed::SignedRepository,
    meta: &Path,
) -> Result<()> {
    let fresh = meta.with_file_name(".metadata.new");
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh)
            .with_context(|| format!("cannot clear {}", fresh.display()))?;
    }
    std::fs::create_dir_all(&fresh)?;
    signed
        .write(&fresh)
        .await
        .with_context(|| format!("cannot write metadata to {}", fresh.display()))?;
    let mut names: Vec<String> = std::fs::read_dir(&fresh)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    // timestamp.json last: it is what clients read first.
    names.sort_by_key(|n| (n == "timestamp.json", n.clone()));
    for name in names {
        let from = fresh.join(&name);
        File::open(&from).and_then(|f| f.sync_all())?;
        std::fs::rename(&from, meta.join(&name))
            .with_context(|| format!("cannot move {name} into {}", meta.display()))?;
    }
    File::open(meta).and_then(|d| d.sync_all())?;
    std::fs::remove_dir_all(&fresh)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// rotate-root

async fn rotate_root(args: &RotateRootArgs) -> Result<()> {
    let (old_path, n) = latest_root(&args.repo)?;
    let old = read_root(&old_path)?.signed;
    let mut new = old.clone();
    new.version = NonZeroU64::new(n + 1).context("root version overflow")?;
    new.expires = expires_in(args.root_expires);
    for (role, keys, threshold) in [
        (RoleType::Root, &args.root_key, args.root_threshold),
        (RoleType::Targets, &args.targets_key, args.targets_threshold),
        (
            RoleType::Snapshot,
            &args.snapshot_key,
            args.snapshot_threshold,
        ),
        (
            RoleType::Timestamp,
            &args.timestamp_key,
            args.timestamp_threshold,
        ),
    ] {
        if !keys.is_empty() {
            set_role(
                &mut new,
                &RoleSpec {
                    role,
                    keys: keys.clone(),
                    threshold,
                },
            )
            .await?;
        }
    }
    let old_ids = old
        .roles
        .get(&RoleType::Root)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    let known = public_keys(&args.old_key)
        .await?
        .into_iter()
        .filter(|(id, _)| old_ids.contains(id))
        .count() as u64;
    ensure!(
        known >= root_threshold(&old),
        "the --old-key files do not meet the old root's threshold ({} of them are root keys of {}, {} needed); clients would refuse the new root",
        known,
        old_path.display(),
        root_threshold(&old)
    );
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let new_keys: Vec<PathBuf> = if args.root_key.is_empty() {
        args.old_key.clone()
    } else {
        args.root_key.clone()
    };
    let by_new = SignedRole::new(
        new.clone(),
        &KeyHolder::Root(new.clone()),
        &key_sources(&new_keys)?,
        &rng,
    )
    .await
    .context("cannot sign the new root with its own root keys")?;
    let by_old = SignedRole::new(
        new.clone(),
        &KeyHolder::Root(old.clone()),
        &key_sources(&args.old_key)?,
        &rng,
    )
    .await
    .context("cannot sign the new root with the old root keys")?;
    let signed = by_new.add_old_signatures(by_old.signed().signatures.clone())?;
    ensure!(
        count_signatures(signed.signed(), &old) as u64 >= root_threshold(&old),
        "the --old-key files do not meet the old root's threshold ({}); clients would refuse the new root",
        root_threshold(&old)
    );
    ensure!(
        count_signatures(signed.signed(), &new) as u64 >= root_threshold(&new),
        "the new root keys do not meet the new root threshold ({})",
        root_threshold(&new)
    );
    signed
        .write(metadata_dir(&args.repo), true)
        .await
        .context("cannot write the new root")?;
    println!(
        "{}",
        metadata_dir(&args.repo)
            .join(format!("{}.root.json", n + 1))
            .display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// refresh

async fn refresh(args: &RefreshArgs) -> Result<()> {
    let local = read_local(&args.repo)?;
    let (root_path, _) = latest_root(&args.repo)?;
    let root = read_root(&root_path)?.signed;
    let consistent = root.consistent_snapshot;
    let keys = key_sources(&args.key)?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let old_snapshot = &local.snapshot.signed;
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.into(),
        NonZeroU64::new(old_snapshot.version.get() + 1).context("snapshot version overflow")?,
        expires_in(args.snapshot_expires),
    );
    snapshot.meta = old_snapshot.meta.clone();
    let signed_snapshot = SignedRole::new(snapshot, &KeyHolder::Root(root.clone()), &keys, &rng)
        .await
        .context("cannot sign snapshot.json (is the snapshot key given with --key?)")?;
    let old_ts = &local.timestamp.signed;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.into(),
        NonZeroU64::new(old_ts.version.get() + 1).context("timestamp version overflow")?,
        expires_in(args.timestamp_expires),
    );
    timestamp.meta.insert(
        "snapshot.json".into(),
        Metafile {
            length: Some(*signed_snapshot.length()),
            hashes: Some(Hashes {
                sha256: signed_snapshot.sha256().to_vec().into(),
                _extra: HashMap::new(),
            }),
            version: signed_snapshot.signed().signed.version(),
            _extra: HashMap::new(),
        },
    );
    let signed_timestamp = SignedRole::new(timestamp, &KeyHolder::Root(root), &keys, &rng)
        .await
        .context("cannot sign timestamp.json (is the timestamp key given with --key?)")?;
    let meta = metadata_dir(&args.repo);
    signed_snapshot
        .write(&meta, consistent)
        .await
        .context("cannot write the snapshot")?;
    signed_timestamp
        .write(&meta, consistent)
        .await
        .context("cannot write the timestamp")?;
    println!(
        "{}: snapshot v{}, timestamp v{}",
        args.repo.display(),
        signed_snapshot.signed().signed.version,
        signed_timestamp.signed().signed.version
    );
    Ok(())
}

/// `--wave SEED=DELAY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveArg {
    pub seed: u32,
    pub after: jiff::SignedDuration,
}

impl std::str::FromStr for WaveArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (seed, after) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not SEED=DELAY (e.g. 512=4h)"))?;
        let seed: u32 = seed
            .parse()
            .map_err(|_| format!("wave seed {seed:?} is not a number"))?;
        if seed > updater::manifest::MAX_SEED {
            return Err(format!(
                "wave seed {seed} is above {}",
                updater::manifest::MAX_SEED
            ));
        }
        Ok(WaveArg {
            seed,
            after: parse_duration(after)?,
        })
    }
}

/// `--migration FROM:TO:NAME[,NAME…]`.
pub fn parse_migration(s: &str) -> Result<Migration, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(from), Some(to), Some(names)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{s:?} is not FROM:TO:NAME[,NAME...]"));
    };
    let v = |x: &str| semver::Version::parse(x).map_err(|e| format!("{x:?} is not a version: {e}"));
    let names: Vec<String> = names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err(format!("{s:?} names no migration"));
    }
    Ok(Migration {
        from: v(from)?,
        to: v(to)?,
        names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 7 * 86_400);
        assert_eq!(parse_duration("90m").unwrap().as_secs(), 5_400);
        assert!(parse_duration("7 days").is_err());
        assert!(parse_duration("d").is_err());
    }

    #[test]
    fn waves_and_migrations() {
        let w: WaveArg = "512=4h".parse().unwrap();
        assert_eq!(w.seed, 512);
        assert_eq!(w.after.as_secs(), 4 * 3600);
        assert!("3000=1h".parse::<WaveArg>().is_err());
        assert!("512".parse::<WaveArg>().is_err());
        let m = parse_migration("1.0.0:1.1.0:add-motd,rename-ntp").unwrap();
        assert_eq!(m.names, ["add-motd", "rename-ntp"]);
        assert!(parse_migration("1.0.0:1.1.0:").is_err());
        assert!(parse_migration("1.0:1.1.0:x").is_err());
    }
}
