//! Drives a guest's settings API from the host with the real `apiclient`.
//!
//! The `qemu-test` variant runs `berth-api-bridge`, which forwards guest TCP port
//! [`GUEST_API_PORT`] to `/run/api.sock`. The VM is booted with a QEMU user-network
//! `hostfwd` from a free host port to it ([`Api::hostfwd`]), and a host thread forwards a Unix
//! socket to that port, so `apiclient --socket-path <host socket>` talks to the guest.

use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The guest port berth-api-bridge listens on.
pub const GUEST_API_PORT: u16 = 8080;

/// The real apiclient binary, built on demand into the workspace's debug target folder.
///
/// `target_tmpdir` is the test's `CARGO_TARGET_TMPDIR` (its parent is the target folder).
pub fn build_apiclient(target_tmpdir: &Path) -> Result<PathBuf> {
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

/// The host end of a guest's API: apiclient and the forwarded socket.
pub struct Api {
    pub apiclient: PathBuf,
    pub socket: PathBuf,
    port: u16,
}

impl Api {
    /// Picks a free host port and forwards a new Unix socket `socket` to it.
    pub fn forward(apiclient: PathBuf, socket: PathBuf) -> Result<Api> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot bind {}", socket.display()))?;
        std::thread::spawn(move || {
            for unix in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    if let Ok(tcp) = TcpStream::connect(("127.0.0.1", port)) {
                        copy_both_ways(unix, tcp);
                    }
                });
            }
        });
        Ok(Api {
            apiclient,
            socket,
            port,
        })
    }

    /// The `hostfwd` rule for [`crate::VmBuilder::net_user`].
    pub fn hostfwd(&self) -> String {
        format!("tcp:127.0.0.1:{}-:{GUEST_API_PORT}", self.port)
    }

    /// Runs apiclient and prints the command, exit code and output (stdout up to `print_max`
    /// bytes).
    pub fn run_printing(&self, args: &[&str], print_max: usize) -> Result<Output> {
        let out = Command::new(&self.apiclient)
            .arg("--socket-path")
            .arg(&self.socket)
            .args(args)
            .output()
            .with_context(|| format!("cannot run {}", self.apiclient.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let shown = match stdout.char_indices().nth(print_max) {
            Some((i, _)) => format!("{}... ({} bytes)", &stdout[..i], stdout.len()),
            None => stdout.trim().to_string(),
        };
        println!(
            "  $ apiclient {}\n    exit {:?}\n    stdout: {}\n    stderr: {}",
            args.join(" "),
            out.status.code(),
            shown,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(out)
    }

    /// Runs apiclient, printing everything.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        self.run_printing(args, usize::MAX)
    }

    /// Runs apiclient and returns its stdout (printed only as a byte count: the caller prints
    /// what it wants); fails when apiclient fails.
    pub fn stdout(&self, args: &[&str]) -> Result<String> {
        let out = self.run_printing(args, 0)?;
        if !out.status.success() {
            bail!(
                "apiclient {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8(out.stdout).context("apiclient printed non-UTF-8")
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
        let start = Instant::now();
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
