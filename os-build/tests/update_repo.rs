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
use updater::download::Patience;
use updater::repo::RepoSource;
use updater::state::UpdateState;
use updater::{Config, SlotPartitions};

mod common;

const OS_BUILD: &str = env!("CARGO_BIN_EXE_os-build");
const SLOT_SIZE: usize = 4 << 20;

/// What the server does to the answers for one file (matched by the end of its path).
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Sends the body at about this many bytes per second.
    Trickle { bytes_per_sec: usize },
    /// The first answer stops after this many body bytes and the connection is closed.
    CutOnce { after: usize },
    /// The first answer sends this many body bytes, then nothing for `secs`, then closes.
    StallOnce { after: usize, secs: u64 },
}

/// One request the server answered.
#[derive(Debug, Clone)]
struct Served {
    path: String,
    /// The first byte asked for with `Range: bytes=N-`.
    range_from: Option<usize>,
}

#[derive(Debug, Default)]
struct ServerState {
    root: PathBuf,
    faults: Vec<(String, Fault)>,
    /// Faults that act once and have acted.
    spent: Vec<String>,
    log: Vec<Served>,
}

/// A small static file server: GET only, one request per connection, one thread per
/// connection, `Range: bytes=N-` answered with 206, faults injected per file.
struct Server {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    state: Arc<std::sync::Mutex<ServerState>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(std::sync::Mutex::new(ServerState {
            root: root.to_owned(),
            ..ServerState::default()
        }));
        let (flag, shared) = (stop.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve(stream, &shared);
                    });
                }
            }
        });
        Server {
            addr,
            stop,
            state,
            thread: Some(thread),
        }
    }

    fn url(&self, dir: &str) -> url::Url {
        format!("http://{}/{dir}/", self.addr).parse().unwrap()
    }

    /// Serves `root` from now on.
    fn serve_from(&self, root: &Path) {
        self.state.lock().unwrap().root = root.to_owned();
    }

    fn fault(&self, path_suffix: &str, fault: Fault) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((path_suffix.to_owned(), fault));
    }

    fn log(&self) -> Vec<Served> {
        self.state.lock().unwrap().log.clone()
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

fn serve(mut stream: TcpStream, state: &std::sync::Mutex<ServerState>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut range_from: Option<usize> = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range_from = value
                    .trim()
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse().ok());
            }
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let rel = path.trim_start_matches('/').to_owned();
    let (body, fault) = {
        let mut st = state.lock().unwrap();
        let body = if rel.contains("..") {
            None
        } else {
            std::fs::read(st.root.join(&rel)).ok()
        };
        let fault = st
            .faults
            .iter()
            .find(|(suffix, _)| path.ends_with(suffix.as_str()))
            .map(|(suffix, f)| (suffix.clone(), *f));
        // A once-only fault acts on the first answer for its file.
        let fault = match fault {
            Some((suffix, f @ (Fault::CutOnce { .. } | Fault::StallOnce { .. }))) => {
                if st.spent.contains(&suffix) {
                    None
                } else {
                    st.spent.push(suffix);
                    Some(f)
                }
            }
            other => other.map(|(_, f)| f),
        };
        st.log.push(Served {
            path: path.clone(),
            range_from,
        });
        (body, fault)
    };
    let Some(body) = body else {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return stream.flush();
    };
    let from = range_from.unwrap_or(0).min(body.len());
    let part = &body[from..];
    if range_from.is_some() {
        write!(
            stream,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
            part.len(),
            body.len().saturating_sub(1),
            body.len()
        )?;
    } else {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            part.len()
        )?;
    }
    match fault {
        None => stream.write_all(part)?,
        Some(Fault::Trickle { bytes_per_sec }) => {
            let chunk = 1024;
            for piece in part.chunks(chunk) {
                stream.write_all(piece)?;
                stream.flush()?;
                std::thread::sleep(std::time::Duration::from_secs_f64(
                    piece.len() as f64 / bytes_per_sec as f64,
                ));
            }
        }
        Some(Fault::CutOnce { after }) => {
            stream.write_all(&part[..after.min(part.len())])?;
            stream.flush()?;
            return stream.shutdown(std::net::Shutdown::Both);
        }
        Some(Fault::StallOnce { after, secs }) => {
            stream.write_all(&part[..after.min(part.len())])?;
            stream.flush()?;
            std::thread::sleep(std::time::Duration::from_secs(secs));
            return stream.shutdown(std::net::Shutdown::Both);
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
    for slot in ['a', 'b'] {
        // A PE with the slot's command line (the updater checks it), padded so the UKIs of
        // different versions differ and compress like real ones; unsigned (repo add
        // --allow-unsigned, as a development repository).
        let mut uki = common::tiny_uki(slot, &params.root_hash_hex());
        uki.extend(format!("fake UKI {version}").repeat(500).as_bytes());
        std::fs::write(out.join(format!("uki-{slot}.efi")), uki).unwrap();
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
    /// Download timeouts and retries of the host.
    patience: Patience,
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
            "--allow-unsigned".into(),
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
            // Quick to give up: the refusal tests do not wait for retries.
            patience: Patience {
                connect_timeout: std::time::Duration::from_secs(2),
                idle_timeout: std::time::Duration::from_secs(5),
                tries: 2,
                first_backoff: std::time::Duration::from_millis(10),
                max_backoff: std::time::Duration::from_millis(50),
            },
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
                patience: self.patience.clone(),
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
            partitions: SlotPartitions::at(host.join("root-b"), host.join("verity-b")),
            esp: host.join("esp"),
            trust: updater::uki::Trust {
                efivars: host.join("efivars"),
                image_db: host.join("db.esl"),
            },
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
        "--allow-unsigned",
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
            "--allow-unsigned",
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
            "--allow-unsigned",
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
        "--allow-unsigned",
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
        let mut a = vec![
            "repo",
            "add",
            "--allow-unsigned",
            "--repo",
            p(&repo),
            "--build",
            p(&v1),
        ];
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

/// Makes the manifest of `build` name `root_hash`; with `ukis`, its UKIs too (manifest
/// artifacts updated).
fn set_root_hash(build: &Path, root_hash: &str, ukis: bool) {
    let mpath = build.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m["root_hash"] = root_hash.into();
    if ukis {
        for slot in ['a', 'b'] {
            let file = format!("uki-{slot}.efi");
            std::fs::write(build.join(&file), common::tiny_uki(slot, root_hash)).unwrap();
            m["artifacts"][&file] =
                serde_json::to_value(artifact(&build.join(&file)).unwrap()).unwrap();
        }
    }
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn uki_naming_another_root_is_refused_before_anything_is_written() {
    // Issue 21.3: the manifest's verity root hash (what the slot will be checked against)
    // and the UKI's command line disagree: the update is refused before the ESP or the slot
    // changes.
    let fx = Fixture::new(&[]);
    let v3 = fake_build(fx.dir.path(), "3.0.0", 64);
    set_root_hash(&v3, &"ab".repeat(32), false);
    let (tk, s, t) = (fx.key("targets"), fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "add",
        "--allow-unsigned",
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
    rt.block_on(updater::check(&cfg)).unwrap();
    let err = rt.block_on(updater::apply(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(
        chain.contains("qemu-test-x86_64-3.0.0-uki-b.efi.zst names verity root hash")
            && chain.contains(&"ab".repeat(32)),
        "{chain}"
    );
    fx.slot_untouched();
}

#[test]
fn verity_mismatch_after_write_is_caught_and_nothing_activated() {
    // A signed build whose manifest names a root hash its root image does not have (a bad
    // build, or a corrupted write): the slot is written, the read-back verity check refuses
    // it, the state does not become staged and no UKI is installed.
    let fx = Fixture::new(&[]);
    let v3 = fake_build(fx.dir.path(), "3.0.0", 64);
    // The UKIs name the same wrong hash (else the UKI check refuses the update first).
    set_root_hash(&v3, &"ab".repeat(32), true);
    let (tk, s, t) = (fx.key("targets"), fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "add",
        "--allow-unsigned",
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

// ---------------------------------------------------------------------------------------------
// Attacks and bad days (issue 21): each test fails on the updater before its fix.

fn copy_repo(from: &Path, to: &Path) {
    for dir in ["metadata", "targets"] {
        copy_dir(&from.join(dir), &to.join(dir));
    }
}

impl Fixture {
    fn keygen(&self, name: &str) -> String {
        os_build(&["repo", "keygen", "--out", p(&self.keys.join(name))]);
        self.key(name)
    }

    fn refresh(&self, snapshot: &str, timestamp: &str) {
        os_build(&[
            "repo",
            "refresh",
            "--repo",
            p(&self.repo),
            "--key",
            snapshot,
            "--key",
            timestamp,
        ]);
    }
}

/// A root rotation revoked every key (they leaked). The attacker keeps a copy of the
/// repository as it was, publishes a malicious 3.0.0 in it signed with the revoked keys and
/// serves it without `2.root.json`. A host that starts from the image's root (1) every run
/// finds no newer root, trusts the revoked keys again and takes 3.0.0.
#[test]
fn a_withheld_root_rotation_does_not_bring_back_revoked_keys() {
    let fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    rt.block_on(updater::check(&cfg)).unwrap();
    let attacker = fx.dir.path().join("attacker");
    copy_repo(&fx.repo, &attacker);

    let (root, root2) = (fx.key("root"), fx.keygen("root2"));
    let (t2, s2, ts2) = (
        fx.keygen("targets2"),
        fx.keygen("snapshot2"),
        fx.keygen("timestamp2"),
    );
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
        &t2,
        "--snapshot-key",
        &s2,
        "--timestamp-key",
        &ts2,
    ]);
    os_build(&[
        "repo",
        "add",
        "--allow-unsigned",
        "--repo",
        p(&fx.repo),
        "--key",
        &t2,
        "--key",
        &s2,
        "--key",
        &ts2,
    ]);
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(
        status.state,
        UpdateState::Available,
        "the rotation is followed"
    );

    let evil = fake_build(fx.dir.path(), "3.0.0", 64);
    let (t, s, ts) = (fx.key("targets"), fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "add",
        "--allow-unsigned",
        "--repo",
        p(&attacker),
        "--key",
        &t,
        "--key",
        &s,
        "--key",
        &ts,
        "--build",
        p(&evil),
    ]);
    assert!(!attacker.join("metadata/2.root.json").exists());
    fx.server.serve_from(&attacker);
    let result = rt
        .block_on(updater::check(&cfg))
        .and_then(|_| rt.block_on(updater::apply(&cfg)));
    let err = result.expect_err("metadata signed with revoked keys was accepted");
    let chain = updater::error_chain(&err);
    assert!(chain.contains("bad signature"), "{chain}");
    fx.slot_untouched();
    // The host keeps the newest root it verified.
    let kept: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cfg.source.datastore.join(updater::trust::NEWEST_ROOT)).unwrap(),
    )
    .unwrap();
    assert_eq!(kept["signed"]["version"], 2);
}

/// After a rotation of the snapshot and timestamp keys, a host that starts from the image's
/// root crosses the rotation at every load and so forgets the versions it saw (TUF 5.3.11):
/// older, validly signed metadata could be replayed. Also with tough's own copy of the
/// timestamp cut by a power failure, the kept versions refuse the replay.
#[test]
fn replayed_metadata_after_a_timestamp_key_rotation_is_refused() {
    let fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    rt.block_on(updater::check(&cfg)).unwrap();
    let (root, t) = (fx.key("root"), fx.key("targets"));
    let (s2, ts2) = (fx.keygen("snapshot2"), fx.keygen("timestamp2"));
    os_build(&[
        "repo",
        "rotate-root",
        "--repo",
        p(&fx.repo),
        "--old-key",
        &root,
        "--snapshot-key",
        &s2,
        "--timestamp-key",
        &ts2,
    ]);
    os_build(&[
        "repo",
        "add",
        "--repo",
        p(&fx.repo),
        "--key",
        &t,
        "--key",
        &s2,
        "--key",
        &ts2,
    ]);
    rt.block_on(updater::check(&cfg)).unwrap();
    let older = fx.dir.path().join("older-metadata");
    copy_dir(&fx.repo.join("metadata"), &older);
    fx.refresh(&s2, &ts2);
    rt.block_on(updater::check(&cfg)).unwrap();

    // Replay the older snapshot and timestamp (signed with the current keys, not expired).
    let replay = fx.dir.path().join("replay");
    copy_repo(&fx.repo, &replay);
    std::fs::remove_dir_all(replay.join("metadata")).unwrap();
    copy_dir(&older, &replay.join("metadata"));
    fx.server.serve_from(&replay);
    let err = rt.block_on(updater::check(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(chain.contains("metadata version rolled back"), "{chain}");

    // tough's own copies cut to nothing by a power failure: the kept versions still refuse.
    for name in ["timestamp.json", "snapshot.json"] {
        std::fs::write(cfg.source.datastore.join(name), b"").unwrap();
    }
    let err = rt.block_on(updater::check(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(chain.contains("metadata version rolled back"), "{chain}");
    assert!(chain.contains("but this host verified version"), "{chain}");
}

/// Signs a repository whose manifest (and targets metadata) is `manifest`, plus the extra
/// targets `(name, file)` under any name, with the fixture's targets, snapshot and timestamp
/// keys: what a targets-key holder can publish, bypassing `os-build repo`'s checks.
fn publish_raw(fx: &Fixture, manifest: &serde_json::Value, extra: &[(&str, &Path)]) {
    use tough::editor::RepositoryEditor;
    use tough::key_source::{KeySource, LocalKeySource};
    use tough::schema::{Signed, Target, Targets};
    use tough::TargetName;
    let rt = rt();
    rt.block_on(async {
        let meta = fx.repo.join("metadata");
        let latest_targets = std::fs::read_dir(&meta)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".targets.json"))
            .max_by_key(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .split('.')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            })
            .unwrap();
        let targets: Signed<Targets> =
            serde_json::from_slice(&std::fs::read(&latest_targets).unwrap()).unwrap();
        let mut editor = RepositoryEditor::new(meta.join("1.root.json"))
            .await
            .unwrap();
        editor.targets(targets).unwrap();
        let work = fx.dir.path().join("raw-work");
        std::fs::create_dir_all(&work).unwrap();
        let mpath = work.join("manifest.json");
        std::fs::write(&mpath, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
        let mut all: Vec<(&str, &Path)> = vec![("manifest.json", &mpath)];
        all.extend_from_slice(extra);
        for (name, file) in all {
            let target = Target::from_path(file).await.unwrap();
            let sha = hex::encode(target.hashes.sha256.as_ref());
            let tn = TargetName::new(name).unwrap();
            let dest = fx
                .repo
                .join("targets")
                .join(format!("{sha}.{}", tn.resolved()));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(file, &dest).unwrap();
            editor.add_target(tn, target).unwrap();
        }
        let in_a_day = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        let v = std::num::NonZeroU64::new(1000).unwrap();
        editor
            .targets_version(v)
            .unwrap()
            .targets_expires(in_a_day)
            .unwrap()
            .snapshot_version(v)
            .snapshot_expires(in_a_day)
            .timestamp_version(v)
            .timestamp_expires(in_a_day);
        let keys: Vec<Box<dyn KeySource>> = ["targets", "snapshot", "timestamp"]
            .iter()
            .map(|r| {
                Box::new(LocalKeySource {
                    path: fx.keys.join(format!("{r}.pk8")),
                }) as Box<dyn KeySource>
            })
            .collect();
        let signed = editor.sign(&keys).await.unwrap();
        signed.write(&meta).await.unwrap();
    });
}

/// A targets-key holder names a target `../../private/datastore/live/settings.json`: the
/// updater stored each target under its name in the staging folder, so the download landed
/// on the settings datastore.
#[test]
fn a_target_name_with_a_path_is_refused() {
    let fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    let evil_name = "../../private/datastore/live/settings.json";
    let payload = fx.dir.path().join("payload");
    std::fs::write(
        &payload,
        zstd::encode_all(&b"{\"motd\": \"owned\"}"[..], 3).unwrap(),
    )
    .unwrap();
    // The manifest that offers 1.0.0 and 2.0.0 (init signed an empty one too).
    let mut manifest: serde_json::Value = std::fs::read_dir(fx.repo.join("targets"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .map(|p| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap())
        .find(|m| m["updates"].as_array().is_some_and(|u| u.len() == 2))
        .unwrap();
    let v2 = manifest["updates"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|u| u["version"] == "2.0.0")
        .unwrap();
    v2["slots"]["b"]["uki"]["target"] = evil_name.into();
    publish_raw(&fx, &manifest, &[(evil_name, &payload)]);

    let result = rt
        .block_on(updater::check(&cfg))
        .and_then(|_| rt.block_on(updater::prepare(&cfg)));
    let err = result.expect_err("a target name with a path was accepted");
    let chain = updater::error_chain(&err);
    assert!(chain.contains("not a plain file name"), "{chain}");
    assert!(chain.contains(evil_name), "{chain}");
    assert!(
        !fx.host().join("private/datastore").exists(),
        "a download landed outside the staging folder"
    );
    fx.slot_untouched();
}

/// 2.0.0 raises the floor to 2.0.0 (`os-build repo add --rollback-floor`): the signed manifest
/// carries it into the chosen update; once 2.0.0 has booted healthy (the health gate raises
/// the floor: health.rs tests run the gate), 1.0.0 is refused even with allow-downgrade, and
/// a rollback by hand to its UKI is refused.
#[test]
fn the_rollback_floor_holds_after_the_update_that_raises_it() {
    let fx = Fixture::new(&[]);
    let (t, s, ts) = (fx.key("targets"), fx.key("snapshot"), fx.key("timestamp"));
    os_build(&[
        "repo",
        "add",
        "--allow-unsigned",
        "--repo",
        p(&fx.repo),
        "--key",
        &t,
        "--key",
        &s,
        "--key",
        &ts,
        "--build",
        p(&fx.v2),
        "--replace",
        "--rollback-floor",
        "2.0.0",
    ]);
    let rt = rt();
    let mut cfg = fx.config();
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    let chosen = status.chosen.unwrap();
    assert_eq!(chosen.rollback_floor, Some(semver::Version::new(2, 0, 0)));
    rt.block_on(updater::apply(&cfg)).unwrap();
    // 2.0.0 boots healthy from slot b: the gate marks its UKI good and raises the floor.
    let esp_linux = fx.host().join("esp/EFI/Linux");
    std::fs::rename(
        esp_linux.join("berth-2.0.0+3.efi"),
        esp_linux.join("berth-2.0.0.efi"),
    )
    .unwrap();
    let two = semver::Version::new(2, 0, 0);
    updater::state::Floor::raise(&cfg.state_dir, &two, &two).unwrap();
    let mut status = updater::status(&cfg.state_dir).unwrap();
    status.state = UpdateState::Idle;
    status.chosen = None;
    status.store(&cfg.state_dir).unwrap();

    cfg.running = two.clone();
    cfg.slot = Slot::A;
    cfg.version_lock = VersionLock::Exact(semver::Version::new(1, 0, 0));
    cfg.allow_downgrade = true;
    let err = rt.block_on(updater::check(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(
        chain.contains("below this host's rollback floor 2.0.0"),
        "{chain}"
    );
    // The running 1.0.0 UKI of slot a is still on the ESP: going back to it is refused.
    let err = updater::rollback(&cfg.state_dir, &cfg.esp, &two).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(
        chain.contains("below this host's rollback floor 2.0.0"),
        "{chain}"
    );
    assert!(esp_linux.join("berth-2.0.0.efi").exists());
    assert!(esp_linux.join("berth-1.0.0.efi").exists());
    let status = updater::status(&cfg.state_dir).unwrap();
    assert_eq!(status.rollback_floor.unwrap().version, two);
    // A release cannot name a floor above its own version.
    let v3 = fake_build(fx.dir.path(), "3.0.0", 16);
    let out = Command::new(OS_BUILD)
        .args([
            "repo",
            "add",
            "--allow-unsigned",
            "--repo",
            p(&fx.repo),
            "--key",
            &t,
            "--key",
            &s,
            "--key",
            &ts,
        ])
        .args(["--build", p(&v3), "--rollback-floor", "3.1.0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("above its own version"));
}

/// The root image trickled so that it takes about 35 s: longer than the 30 s a request could
/// take in total, though bytes never stop coming.
#[test]
fn a_slow_download_that_takes_longer_than_30_seconds_finishes() {
    let mut fx = Fixture::new(&[]);
    fx.patience = Patience::default();
    let root = fx.target_file("qemu-test-x86_64-2.0.0-root.erofs.zst");
    let len = std::fs::metadata(&root).unwrap().len() as usize;
    fx.server.fault(
        "-2.0.0-root.erofs.zst",
        Fault::Trickle {
            bytes_per_sec: len / 35,
        },
    );
    let rt = rt();
    let cfg = fx.config();
    rt.block_on(updater::check(&cfg)).unwrap();
    let started = std::time::Instant::now();
    let status = rt.block_on(updater::apply(&cfg)).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(status.state, UpdateState::Ready);
    assert!(secs > 30.0, "the trickle took only {secs:.1} s");
    println!("{len} bytes trickled, apply took {secs:.1} s");
}

/// The root image's first answer is cut after 100 000 bytes, the verity image's stalls after
/// 2 000 bytes for longer than the idle timeout: each download asks for the rest
/// (`Range: bytes=N-`) and the update goes through, checked by length and sha256.
#[test]
fn cut_and_stalled_downloads_resume_where_they_stopped() {
    let mut fx = Fixture::new(&[]);
    fx.patience.idle_timeout = std::time::Duration::from_secs(1);
    fx.patience.tries = 3;
    fx.server
        .fault("-2.0.0-root.erofs.zst", Fault::CutOnce { after: 100_000 });
    fx.server.fault(
        "-2.0.0-verity.img.zst",
        Fault::StallOnce {
            after: 2_000,
            secs: 4,
        },
    );
    let rt = rt();
    let cfg = fx.config();
    rt.block_on(updater::check(&cfg)).unwrap();
    let status = rt.block_on(updater::apply(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Ready);
    let log = fx.server.log();
    let asked = |suffix: &str| -> Vec<Option<usize>> {
        log.iter()
            .filter(|s| s.path.ends_with(suffix))
            .map(|s| s.range_from)
            .collect()
    };
    assert_eq!(asked("-2.0.0-root.erofs.zst"), [None, Some(100_000)]);
    assert_eq!(asked("-2.0.0-verity.img.zst"), [None, Some(2_000)]);
    let root = std::fs::read(fx.host().join("root-b")).unwrap();
    let want = std::fs::read(fx.v2.join("root.erofs")).unwrap();
    assert_eq!(&root[..want.len()], &want[..]);
}

/// Run by `a_check_under_a_clock_far_ahead_does_not_block_later_checks` in a child process
/// under libfaketime; not on its own.
#[test]
#[ignore = "a step of another test, run in a child process"]
fn clock_far_ahead_child() {
    let Ok(spec) = std::env::var("BERTH_TEST_CLOCK_CHILD") else {
        panic!("run by a_check_under_a_clock_far_ahead_does_not_block_later_checks")
    };
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let s = |k: &str| spec[k].as_str().unwrap().to_owned();
    assert!(
        jiff::Timestamp::now().as_second() > 4_000_000_000,
        "the clock is not faked"
    );
    let state_dir = PathBuf::from(s("state_dir"));
    let cfg = Config {
        source: RepoSource {
            metadata_url: s("metadata_url").parse().unwrap(),
            targets_url: s("targets_url").parse().unwrap(),
            trusted_root: s("trusted_root").into(),
            datastore: updater::repo::datastore_dir(&state_dir),
            patience: Patience::default(),
        },
        state_dir: state_dir.clone(),
        staging_dir: state_dir.join("staging"),
        variant: "qemu-test".into(),
        arch: "x86_64".into(),
        running: semver::Version::new(1, 0, 0),
        version_lock: VersionLock::Latest,
        allow_downgrade: false,
        ignore_waves: false,
        seed: 100,
        slot: Slot::B,
        partitions: SlotPartitions::at("/nonexistent".into(), "/nonexistent".into()),
        esp: "/nonexistent".into(),
        trust: updater::uki::Trust {
            efivars: "/nonexistent".into(),
            image_db: "/nonexistent".into(),
        },
    };
    let err = rt().block_on(updater::check(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(chain.contains("metadata expired"), "{chain}");
}

/// A check with the clock far ahead (a bad RTC before NTP) recorded that time, and every
/// check after it failed ("System time stepped backward") with no way out. Now the time is
/// kept only when the check verified, and `reset-clock` clears a time that was kept.
#[test]
fn a_check_under_a_clock_far_ahead_does_not_block_later_checks() {
    let fx = Fixture::new(&[]);
    let rt = rt();
    let cfg = fx.config();
    let faketime = Path::new("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1");
    assert!(
        faketime.exists(),
        "{} is missing: run scripts/host-deps.sh",
        faketime.display()
    );
    let spec = serde_json::json!({
        "metadata_url": fx.server.url("metadata").to_string(),
        "targets_url": fx.server.url("targets").to_string(),
        "trusted_root": p(&cfg.source.trusted_root),
        "state_dir": p(&cfg.state_dir),
    });
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "clock_far_ahead_child",
            "--ignored",
            "--nocapture",
        ])
        .env("BERTH_TEST_CLOCK_CHILD", spec.to_string())
        .env("LD_PRELOAD", faketime)
        .env("FAKETIME", "@2099-01-01 00:00:00")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the check under the clock of 2099:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = rt.block_on(updater::check(&cfg)).unwrap();
    assert_eq!(status.state, UpdateState::Available);
    let known = updater::trust::known_time(&cfg.source.datastore).unwrap();
    assert!(known.as_second() < 4_000_000_000, "kept {known}");

    // A time a verified check kept while the clock ran a day ahead: refused, named, reset.
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    std::fs::write(
        cfg.source.datastore.join(updater::trust::KNOWN_TIME),
        serde_json::to_vec(&ahead).unwrap(),
    )
    .unwrap();
    let err = rt.block_on(updater::check(&cfg)).unwrap_err();
    let chain = updater::error_chain(&err);
    assert!(chain.contains("apiclient update reset-clock"), "{chain}");
    assert_eq!(updater::reset_clock(&cfg.state_dir).unwrap(), Some(ahead));
    rt.block_on(updater::check(&cfg)).unwrap();
}
