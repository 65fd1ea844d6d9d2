//! End to end on the host: `os-build repo` builds a signed repository from two fake builds,
//! a small HTTP server on 127.0.0.1 serves it, and the updater library runs against files
//! standing in for the inactive slot's partitions and a folder standing in for the ESP.
//! Each refusal (bad signature, expired or rolled-back metadata, target hash or length
//! mismatch, unreachable repository, no space) must leave those files byte-for-byte as they
//! were.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use boot_contract::Slot;
use os_build::manifest::artifact;
use updater::choose::VersionLock;
use updater::repo::RepoSource;
use updater::state::UpdateState;
use updater::Config;

const OS_BUILD: &str = env!("CARGO_BIN_EXE_os-build");
const SLOT_SIZE: usize = 4 << 20;

/// A tiny static file server: GET only, one request per connection.
struct Server {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let root = root.to_owned();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve(stream, &root);
                }
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, dir: &str) -> url::Url {
        format!("http://{}/{dir}/", self.addr).parse().unwrap()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let rel = path.trim_start_matches('/');
    let file = root.join(rel);
    match (rel.contains(".."), std::fs::read(&file)) {
        (false, Ok(body)) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            stream.write_all(&body)?;
        }
        _ => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
        }
    }
    stream.flush()
}

fn os_build(args: &[&str]) -> String {
    let out = Command::new(OS_BUILD).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "os-build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A fake os-build output: root.erofs (random-ish blocks), its real verity tree, two UKIs, and
/// manifest.json with the fields `os-build repo` reads.
fn fake_build(dir: &Path, version: &str, blocks: usize) -> PathBuf {
    let out = dir.join(format!("build-{version}"));
    std::fs::create_dir_all(&out).unwrap();
    let mut seed: u64 = version.bytes().map(u64::from).sum::<u64>() * 0x9E37_79B9;
    let mut root = vec![0u8; blocks * 4096];
    for (i, b) in root.iter_mut().enumerate() {
        // Half compressible, half noise, like a real image.
        if i % 8192 < 4096 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        } else {
            *b = (i / 4096) as u8;
        }
    }
    std::fs::write(out.join("root.erofs"), &root).unwrap();
    let salt = [0x42u8; 32];
    let params = os_build::verity::format(
        &out.join("root.erofs"),
        &out.join("verity.img"),
        &salt,
        uuid::Uuid::nil(),
    )
    .unwrap();
    for slot in ["a", "b"] {
        std::fs::write(
            out.join(format!("uki-{slot}.efi")),
            format!(
                "MZ fake UKI {version} berth.slot={slot} {}",
                params.root_hash_hex()
            )
            .repeat(500),
        )
        .unwrap();
    }
    let mut artifacts = serde_json::Map::new();
    for f in ["root.erofs", "verity.img", "uki-a.efi", "uki-b.efi"] {
        artifacts.insert(
            f.into(),
            serde_json::to_value(artifact(&out.join(f)).unwrap()).unwrap(),
        );
    }
    let manifest = serde_json::json!({
        "version": version,
        "variant": "qemu-test",
        "arch": "x86_64",
        "root_hash": params.root_hash_hex(),
        "verity_salt": hex::encode(salt),
        "verity_data_blocks": params.data_blocks,
        "artifacts": artifacts,
    });
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    out
}

struct Fixture {
    dir: tempfile::TempDir,
    repo: PathBuf,
    keys: PathBuf,
    v2: PathBuf,
    server: Server,
    /// Length of the root-b stand-in.
    root_len: usize,
}

impl Fixture {
    /// Keys, a repository with 1.0.0 and 2.0.0, the server, and the host's fake disk: slot b's
    /// partitions filled with 0x5A, an ESP holding the running 1.0.0's UKI.
    fn new(extra_add_args: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let keys = dir.path().join("keys");
        for role in ["root", "targets", "snapshot", "timestamp"] {
            os_build(&["repo", "keygen", "--out", p(&keys.join(role))]);
        }
        let pk8 = |r: &str| keys.join(format!("{r}.pk8"));
        os_build(&[
            "repo",
            "init",
            "--repo",
            p(&repo),
            "--root-key",
            p(&pk8("root")),
            "--targets-key",
            p(&pk8("targets")),
            "--snapshot-key",
            p(&pk8("snapshot")),
            "--timestamp-key",
            p(&pk8("timestamp")),
        ]);
        let v1 = fake_build(dir.path(), "1.0.0", 256);
        let v2 = fake_build(dir.path(), "2.0.0", 300);
        let mut args = vec![
            "repo".to_owned(),
            "add".into(),
            "--repo".into(),
            p(&repo).into(),
            "--key".into(),
            p(&pk8("targets")).into(),
            "--key".into(),
            p(&pk8("snapshot")).into(),
            "--key".into(),
            p(&pk8("timestamp")).into(),
            "--build".into(),
            p(&v1).into(),
            "--build".into(),
            p(&v2).into(),
            "--migration".into(),
            "1.0.0:2.0.0:add-motd".into(),
        ];
        args.extend(extra_add_args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        os_build(&argv);

        let host = dir.path().join("host");
        std::fs::create_dir_all(host.join("esp/EFI/Linux")).unwrap();
        std::fs::write(host.join("esp/EFI/Linux/berth-1.0.0.efi"), b"running UKI").unwrap();
        std::fs::write(host.join("root-b"), vec![0x5A; SLOT_SIZE]).unwrap();
        std::fs::write(host.join("verity-b"), vec![0x5A; 1 << 20]).unwrap();
        let server = Server::start(&repo);
        Fixture {
            dir,
            repo,
            keys,
            v2,
            server,
            root_len: SLOT_SIZE,
        }
    }

    fn key(&self, role: &str) -> String {
        p(&self.keys.join(format!("{role}.pk8"))).to_owned()
    }

    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }

    fn config(&self) -> Config {
        let host = self.host();
        Config {
            source: RepoSource {
                metadata_url: self.server.url("metadata"),
                targets_url: self.server.url("targets"),
                trusted_root: self.repo.join("metadata/1.root.json"),
                datastore: host.join("private/updates/tuf"),
            },
            state_dir: host.join("private/updates"),
            staging_dir: host.join("local/updates"),
            variant: "qemu-test".into(),
            arch: "x86_64".into(),
            running: semver::Version::new(1, 0, 0),
            version_lock: VersionLock::Latest,
            allow_downgrade: false,
            ignore_waves: false,
            seed: 100,
            slot: Slot::B,
            root_partition: host.join("root-b"),
            verity_partition: host.join("verity-b"),
            esp: host.join("esp"),
        }
    }

    fn slot_untouched(&self) {
        let root = std::fs::read(self.host().join("root-b")).unwrap();
        assert!(
            root.len() == self.root_len && root.iter().all(|b| *b == 0x5A),
            "root-b was written"
        );
        let verity = std::fs::read(self.host().join("verity-b")).unwrap();
        assert!(verity.iter().all(|b| *b == 0x5A), "verity-b was written");
        let ukis: Vec<_> = std::fs::read_dir(self.host().join("esp/EFI/Linux"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(ukis, ["berth-1.0.0.efi"], "the ESP changed");
    }

    fn target_file(&self, suffix: &str) -> PathBuf {
        std::fs::read_dir(self.repo.join("targets"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("no target ending in {suffix}"))
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs check (must succeed and choose 2.0.0), applies `tamper`, runs prepare (must fail with
/// `want` in the error), and checks that nothing reached the slot.
fn refused(fx: &mut Fixture, tamper: impl FnOnce(&mut Fixture), want: &str) {
    let rt = rt();
    let cfg = fx.config();
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    tamper(fx);
    let err = rt.block_on(updater::prepare(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(chain.contains(want), "wanted {want:?} in: {chain}");
    fx.slot_untouched();
    let status = updater::status(&cfg.state_dir).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    let last = status.most_recent_command.unwrap();
    assert!(!last.ok);
    assert!(last.error.unwrap().contains(want));
}

#[test]
fn update_v1_to_v2_writes_verifies_and_installs_the_slot() {
    let fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    // The UKI of an earlier update of slot b, which used up its tries.
    let stale = fx.host().join("esp/EFI/Linux/berth-0.9.0+0-3.efi");
    std::fs::write(&stale, b"old slot b").unwrap();
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    assert_eq!(
        status.chosen.as_ref().unwrap().version,
        semver::Version::new(2, 0, 0)
    );
    assert_eq!(
        status.available_versions,
        [semver::Version::new(2, 0, 0), semver::Version::new(1, 0, 0)]
    );
    let status = rt.block_on(updater::apply(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Ready);
    assert_eq!(status.uki.as_deref(), Some("berth-2.0.0+3.efi"));

    let root = std::fs::read(fx.host().join("root-b")).unwrap();
    let want = std::fs::read(fx.v2.join("root.erofs")).unwrap();
    assert_eq!(&root[..want.len()], &want[..]);
    assert!(
        root[want.len()..].iter().all(|b| *b == 0x5A),
        "past the image nothing changes"
    );
    let verity = std::fs::read(fx.host().join("verity-b")).unwrap();
    let want = std::fs::read(fx.v2.join("verity.img")).unwrap();
    assert_eq!(&verity[..want.len()], &want[..]);
    assert_eq!(
        std::fs::read(fx.host().join("esp/EFI/Linux/berth-2.0.0+3.efi")).unwrap(),
        std::fs::read(fx.v2.join("uki-b.efi")).unwrap(),
        "slot b gets the UKI whose command line names slot b"
    );
    assert!(
        fx.host().join("esp/EFI/Linux/berth-1.0.0.efi").exists(),
        "the running UKI stays"
    );
    assert!(!stale.exists(), "the replaced slot's old UKI is gone");
    // The same document is on disk for /updates/status.
    assert_eq!(updater::status(&cfg.state_dir).unwrap(), status);

    // Cancel before reboot: the UKI goes, the slot stays staged.
    let status = rt.block_on(updater::deactivate(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Staged);
    assert!(!fx.host().join("esp/EFI/Linux/berth-2.0.0+3.efi").exists());
    // Activate again from staged, without writing the slot a second time.
    let status = rt.block_on(updater::apply(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Ready);
    // And a check in ready is refused with the state named.
    let err = rt.block_on(updater::check(&cfg)).unwrap_err();
    assert!(updater::error_chain(&err).contains("Ready"), "{err}");
}

#[test]
fn bad_signature_is_refused() {
    let mut fx = Fixture::new(&[]);
    refused(
        &mut fx,
        |fx| {
            // Change the signed body of timestamp.json without re-signing it.
            let path = fx.repo.join("metadata/timestamp.json");
            let text = std::fs::read_to_string(&path).unwrap();
            let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
            doc["signed"]["expires"] = "2099-01-01T00:00:00Z".into();
            std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        },
        "bad signature",
    );
}

#[test]
fn expired_metadata_is_refused() {
    let mut fx = Fixture::new(&[]);
    refused(
        &mut fx,
        |fx| {
            let (s, t) = (fx.key("snapshot"), fx.key("timestamp"));
            os_build(&[
                "repo",
                "refresh",
                "--repo",
                p(&fx.repo),
                "--key",
                &s,
                "--key",
                &t,
                "--timestamp-expires",
                "1s",
            ]);
            std::thread::sleep(std::time::Duration::from_millis(2100));
        },
        "metadata expired",
    );
}

#[test]
fn rolled_back_metadata_is_refused() {
    let mut fx = Fixture::new(&[]);
    // Keep today's metadata, publish newer, let the host see the newer one...
    let saved = fx.dir.path().join("saved-metadata");
    copy_dir(&fx.repo.join("metadata"), &saved);
    let (s, t) = (fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "refresh",
        "--repo",
        p(&fx.repo),
        "--key",
        &s,
        "--key",
        &t,
    ]);
    refused(
        &mut fx,
        |fx| {
            // ...then serve the older (validly signed) metadata again.
            std::fs::remove_dir_all(fx.repo.join("metadata")).unwrap();
            copy_dir(&saved, &fx.repo.join("metadata"));
        },
        "metadata version rolled back",
    );
}

#[test]
fn target_hash_mismatch_is_refused() {
    let mut fx = Fixture::new(&[]);
    refused(
        &mut fx,
        |fx| {
            let path = fx.target_file("qemu-test-x86_64-2.0.0-root.erofs.zst");
            let mut bytes = std::fs::read(&path).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xFF;
            std::fs::write(&path, bytes).unwrap();
        },
        "hash mismatch",
    );
}

#[test]
fn target_length_mismatch_is_refused() {
    let mut fx = Fixture::new(&[]);
    refused(
        &mut fx,
        |fx| {
            let path = fx.target_file("qemu-test-x86_64-2.0.0-verity.img.zst");
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            f.write_all(&[0u8; 4096]).unwrap();
        },
        "length mismatch",
    );
}

#[test]
fn unreachable_repository_is_refused() {
    let mut fx = Fixture::new(&[]);
    refused(&mut fx, |fx| fx.server.stop(), "repository unreachable");
}

#[test]
fn partition_too_small_is_refused() {
    let mut fx = Fixture::new(&[]);
    refused(
        &mut fx,
        |fx| {
            // 2.0.0's root is 300 blocks; make root-b hold 200.
            fx.root_len = 200 * 4096;
            std::fs::write(fx.host().join("root-b"), vec![0x5A; fx.root_len]).unwrap();
        },
        "not enough space",
    );
}

#[test]
fn waves_hold_back_late_seeds_unless_ignored() {
    // Seeds up to 1024 may update at once; seeds above wait a day.
    let fx = Fixture::new(&["--wave", "1024=1d"]);
    let rt = rt();
    let mut cfg = fx.config();
    cfg.seed = 1500;
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(
        status.state,
        UpdateState::Idle,
        "seed 1500 waits for its wave"
    );
    assert_eq!(status.available_versions.len(), 2);
    cfg.ignore_waves = true;
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    cfg.ignore_waves = false;
    cfg.seed = 500;
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(
        status.state,
        UpdateState::Available,
        "seed 500 is in the first wave"
    );
    // Downgrade to 1.0.0 is refused without allow_downgrade (running 2.0.0 now).
    cfg.running = semver::Version::new(2, 0, 0);
    cfg.version_lock = VersionLock::Exact(semver::Version::new(1, 0, 0));
    let err = rt.block_on(updater::check(&cfg)).unwrap_err();
    assert!(updater::error_chain(&err).contains("downgrade"), "{err}");
    cfg.allow_downgrade = true;
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(
        status.chosen.unwrap().version,
        semver::Version::new(1, 0, 0)
    );
}

#[test]
fn rotated_root_is_followed_and_unsigned_rotation_refused() {
    let fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    rt.block_on(updater::check(&cfg)).unwrap();
    // New root and targets keys, signed by old and new root keys.
    os_build(&["repo", "keygen", "--out", p(&fx.keys.join("root2"))]);
    os_build(&["repo", "keygen", "--out", p(&fx.keys.join("targets2"))]);
    let (root, root2, targets2) = (fx.key("root"), fx.key("root2"), fx.key("targets2"));
    os_build(&[
        "repo",
        "rotate-root",
        "--repo",
        p(&fx.repo),
        "--old-key",
        &root,
        "--root-key",
        &root2,
        "--targets-key",
        &targets2,
    ]);
    let (s, t) = (fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "add",
        "--repo",
        p(&fx.repo),
        "--key",
        &targets2,
        "--key",
        &s,
        "--key",
        &t,
    ]);
    // The host still ships 1.root.json and follows the chain to 2.root.json.
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    assert!(fx.repo.join("metadata/2.root.json").exists());

    // A third root signed only by a key the trusted root does not know is refused.
    os_build(&["repo", "keygen", "--out", p(&fx.keys.join("rogue"))]);
    let rogue = fx.key("rogue");
    let out = Command::new(OS_BUILD)
        .args([
            "repo",
            "rotate-root",
            "--repo",
            p(&fx.repo),
            "--old-key",
            &rogue,
            "--root-key",
            &rogue,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("old root's threshold"), "{stderr}");
    assert!(!fx.repo.join("metadata/3.root.json").exists());
}

#[test]
fn keygen_writes_private_keys_0600_and_refuses_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    os_build(&["repo", "keygen", "--out", p(&out)]);
    let mode = std::fs::metadata(dir.path().join("k.pk8"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let public: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("k.pub.json")).unwrap()).unwrap();
    assert_eq!(public["keytype"], "ed25519");
    let again = Command::new(OS_BUILD)
        .args(["repo", "keygen", "--out", p(&out)])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
}

#[test]
fn add_refuses_a_build_whose_files_do_not_match_its_manifest() {
    let fx = Fixture::new(&[]);
    let v3 = fake_build(fx.dir.path(), "3.0.0", 64);
    std::fs::write(v3.join("uki-a.efi"), b"changed after the build").unwrap();
    let (tk, s, t) = (fx.key("targets"), fx.key("snapshot"), fx.key("timestamp"));
    let out = Command::new(OS_BUILD)
        .args([
            "repo",
            "add",
            "--repo",
            p(&fx.repo),
            "--key",
            &tk,
            "--key",
            &s,
            "--key",
            &t,
            "--build",
            p(&v3),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uki-a.efi does not match"));
    // Publishing 2.0.0 again is refused unless asked for.
    let out = Command::new(OS_BUILD)
        .args([
            "repo",
            "add",
            "--repo",
            p(&fx.repo),
            "--key",
            &tk,
            "--key",
            &s,
            "--key",
            &t,
            "--build",
            p(&fx.v2),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already offers qemu-test x86_64 2.0.0"));
    os_build(&[
        "repo",
        "add",
        "--repo",
        p(&fx.repo),
        "--key",
        &tk,
        "--key",
        &s,
        "--key",
        &t,
        "--build",
        p(&fx.v2),
        "--replace",
    ]);
    // The repository still offers 1.0.0 and 2.0.0 only.
    let rt = rt();
    let status = rt.block_on(updater::check(&fx.config())).unwrap();
    assert_eq!(status.available_versions.len(), 2);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn thresholds_need_enough_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    for k in ["root", "t1", "t2", "snapshot", "timestamp"] {
        os_build(&["repo", "keygen", "--out", p(&keys.join(k))]);
    }
    let k = |n: &str| p(&keys.join(format!("{n}.pk8"))).to_owned();
    let repo = dir.path().join("repo");
    let base = |threshold: &str| {
        [
            "repo",
            "init",
            "--repo",
            p(&repo),
            "--root-key",
            &k("root"),
            "--targets-key",
            &k("t1"),
            "--targets-key",
            &k("t2"),
            "--snapshot-key",
            &k("snapshot"),
            "--timestamp-key",
            &k("timestamp"),
            "--targets-threshold",
            threshold,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<String>>()
    };
    // Three signatures cannot come from two keys.
    let out = Command::new(OS_BUILD).args(base("3")).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("threshold 3 needs at least that many keys")
    );
    assert!(
        !repo.join("metadata/1.root.json").exists(),
        "nothing written"
    );
    // A snapshot key that is not a key file: refused, nothing is left behind.
    let bogus = dir.path().join("bogus.pk8");
    std::fs::write(&bogus, b"not a key").unwrap();
    let mut argv = base("1");
    argv[11] = p(&bogus).to_owned();
    let out = Command::new(OS_BUILD).args(&argv).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bogus.pk8"),
        "the bad key file is named: {stderr}"
    );
    assert!(
        !repo.join("metadata").exists(),
        "a failed init leaves no metadata"
    );
    // Two of two: init signs with both; add with one targets key is refused.
    let argv = base("2");
    os_build(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let v1 = fake_build(dir.path(), "1.0.0", 16);
    let add = |targets: &[&str]| {
        let mut a = vec!["repo", "add", "--repo", p(&repo), "--build", p(&v1)];
        let (s, t) = (k("snapshot"), k("timestamp"));
        let owned: Vec<String> = targets.iter().map(|n| k(n)).collect();
        for o in &owned {
            a.extend(["--key", o.as_str()]);
        }
        a.extend(["--key", &s, "--key", &t]);
        Command::new(OS_BUILD).args(&a).output().unwrap()
    };
    let out = add(&["t1"]);
    assert!(!out.status.success(), "one of two targets keys must not do");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot sign targets"), "{stderr}");
    let out = add(&["t1", "t2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verity_mismatch_after_write_is_caught_and_nothing_activated() {
    // A signed build whose manifest names a root hash its root image does not have (a bad
    // build, or a corrupted write): the slot is written, the read-back verity check refuses
    // it, the state does not become staged and no UKI is installed.
    let fx = Fixture::new(&[]);
    let v3 = fake_build(fx.dir.path(), "3.0.0", 64);
    let mpath = v3.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["root_hash"] = "ab".repeat(32).into();
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let (tk, s, t) = (fx.key("targets"), fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "add",
        "--repo",
        p(&fx.repo),
        "--key",
        &tk,
        "--key",
        &s,
        "--key",
        &t,
        "--build",
        p(&v3),
    ]);
    let rt = rt();
    let cfg = fx.config();
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(
        status.chosen.unwrap().version,
        semver::Version::new(3, 0, 0)
    );
    let err = rt.block_on(updater::apply(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(chain.contains("verity: root hash of"), "{chain}");
    let status = updater::status(&cfg.state_dir).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    assert!(!status.most_recent_command.unwrap().ok);
    let ukis: Vec<_> = std::fs::read_dir(fx.host().join("esp/EFI/Linux"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(ukis, ["berth-1.0.0.efi"]);
    // Activating without a staged slot is refused.
    let err = rt.block_on(updater::activate(&cfg)).unwrap_err();
    assert!(updater::error_chain(&err).contains("needs staged"), "{err}");
}

#[test]
fn failed_reprepare_before_writing_keeps_the_staged_slot() {
    let mut fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    rt.block_on(updater::check(&cfg)).unwrap();
    let status = rt.block_on(updater::prepare(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Staged);
    let written = std::fs::read(fx.host().join("root-b")).unwrap();
    fx.server.stop();
    let err = rt.block_on(updater::prepare(&cfg)).unwrap_err();
    assert!(updater::error_chain(&err).contains("repository unreachable"));
    let status = updater::status(&cfg.state_dir).unwrap();
    assert_eq!(
        status.state,
        UpdateState::Staged,
        "the verified slot is still staged"
    );
    assert_eq!(std::fs::read(fx.host().join("root-b")).unwrap(), written);
}
