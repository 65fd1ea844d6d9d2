//! The real `apiclient` against a guest's settings API, through `berth-api-bridge` (guest TCP
//! 8080, test images only) and a QEMU `hostfwd`: a host thread forwards a Unix socket to the
//! forwarded port, so `apiclient --socket-path <socket>` works unchanged.

use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The guest port berth-api-bridge listens on.
pub const GUEST_API_PORT: u16 = 8080;

/// Builds the real apiclient into this workspace's target folder and returns its path.
/// `target_tmpdir` is the calling test's `CARGO_TARGET_TMPDIR`.
pub fn build(target_tmpdir: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "settings-api",
            "--bin",
            "apiclient",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .status()
        .context("cannot run cargo build for apiclient")?;
    if !status.success() {
        bail!("cargo build -p settings-api --bin apiclient failed ({status})");
    }
    let target = target_tmpdir
        .parent()
        .context("CARGO_TARGET_TMPDIR has a parent")?;
    Ok(target.join("debug/apiclient"))
}

/// A free TCP port on the host loopback (QEMU binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Forwards every connection on a host Unix socket to `127.0.0.1:port` (QEMU's hostfwd).
pub fn forward_unix_to_tcp(socket: &Path, port: u16) -> Result<()> {
    let listener =
        UnixListener::bind(socket).with_context(|| format!("cannot bind {}", socket.display()))?;
    std::thread::spawn(move || {
        for unix in listener.incoming().flatten() {
            std::thread::spawn(move || {
                if let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) {
                    copy_both_ways(unix, tcp);
                }
            });
        }
    });
    Ok(())
}

fn copy_both_ways(unix: UnixStream, tcp: TcpStream) {
    let (Ok(mut unix_r), Ok(mut tcp_w)) = (unix.try_clone(), tcp.try_clone()) else {
        return;
    };
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut unix_r, &mut tcp_w);
        let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut tcp_r, mut unix_w) = (tcp, unix);
    let _ = std::io::copy(&mut tcp_r, &mut unix_w);
    let _ = unix_w.shutdown(std::net::Shutdown::Write);
    let _ = down.join();
}

/// apiclient bound to one guest.
#[derive(Debug, Clone)]
pub struct Api {
    pub apiclient: PathBuf,
    pub socket: PathBuf,
}

impl Api {
    /// Runs apiclient with `args` and prints the command and its output.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(&self.apiclient)
            .arg("--socket-path")
            .arg(&self.socket)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.apiclient.display()))?;
        println!(
            "  $ apiclient {}\n    exit {:?}\n    stdout: {}\n    stderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// `apiclient get <prefix>` as JSON.
    pub fn get(&self, prefix: &str) -> Result<serde_json::Value> {
        let out = self.run(&["get", prefix])?;
        if !out.status.success() {
            bail!("apiclient get {prefix} failed");
        }
        serde_json::from_slice(&out.stdout).context("apiclient get printed no JSON")
    }

    /// Waits until the API answers through the bridge (the bridge starts after the API).
    pub fn wait_ready(&self, deadline: Duration) -> Result<()> {
        let start = std::time::Instant::now();
        loop {
            let out = Command::new(&self.apiclient)
                .arg("--socket-path")
                .arg(&self.socket)
                .args(["get", "motd"])
                .output()?;
            if out.status.success() {
                return Ok(());
            }
            if start.elapsed() > deadline {
                bail!(
                    "the API did not answer through the bridge within {deadline:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
