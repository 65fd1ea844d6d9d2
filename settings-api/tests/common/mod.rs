//! Shared helpers: run the real `apiserver` on a temp socket and datastore, drive it with the
//! real `apiclient`.
#![allow(dead_code)]
// Test helpers: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const APISERVER: &str = env!("CARGO_BIN_EXE_apiserver");
pub const APICLIENT: &str = env!("CARGO_BIN_EXE_apiclient");

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A running apiserver; killed on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub datastore: PathBuf,
    pub child: Child,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// Starts apiserver with `env` added to its environment.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let datastore = dir.path().join("datastore");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn_with_env(&socket, &datastore, &extra, &env);
        let server = Server {
            dir,
            socket,
            datastore,
            child,
            extra,
            env,
        };
        server.wait_ready();
        server
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!(
            "apiserver did not listen on {} within 10 s",
            self.socket.display()
        );
    }

    /// Kills the server with SIGKILL and starts it again on the same datastore.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.child = spawn_with_env(&self.socket, &self.datastore, &self.extra, &self.env);
        self.wait_ready();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs apiclient with `args`.
    pub fn client(&self, args: &[&str]) -> Output {
        self.client_stdin(args, None)
    }

    pub fn client_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(APICLIENT);
        cmd.arg("--socket-path")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            let mut input = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                input.write_all(text.as_bytes()).unwrap();
            }
        }
        child.wait_with_output().unwrap()
    }

    /// Runs apiclient and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            out.status.success(),
            "apiclient {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs apiclient and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.client(args);
        assert!(
            !out.status.success(),
            "apiclient {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// `apiclient get` parsed as JSON.
    pub fn get(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        serde_json::from_str(&self.ok(&full)).unwrap()
    }

    /// A raw HTTP/1.1 request without apiclient; returns (status, body).
    pub fn http(&self, method: &str, uri: &str, body: Option<&str>) -> (u16, String) {
        http(&self.socket, method, uri, body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn spawn(socket: &Path, datastore: &Path, extra: &[String]) -> Child {
    spawn_with_env(socket, datastore, extra, &[])
}

pub fn spawn_with_env(
    socket: &Path,
    datastore: &Path,
    extra: &[String],
    env: &[(String, String)],
) -> Child {
    Command::new(APISERVER)
        .arg("--socket-path")
        .arg(socket)
        .arg("--datastore-path")
        .arg(datastore)
        .args(extra)
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Minimal blocking HTTP/1.1 client (Connection: close) for tests.
pub fn http(socket: &Path, method: &str, uri: &str, body: Option<&str>) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    let body = body.unwrap_or("");
    // The server may answer (413) and close before a large body is written: ignore that.
    let _ = write!(
        s,
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let resp = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {resp}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Like [`http`], but reports connection failures instead of panicking.
pub fn try_http(
    socket: &Path,
    method: &str,
    uri: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("truncated response: {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
