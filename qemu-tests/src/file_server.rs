//! A static HTTP/1.1 file server on the host loopback, for the update scenarios: it serves an
//! `os-build repo` folder to the guest (through QEMU's user network, `guestfwd` + the
//! `tcp-relay` program), records what was asked, and can switch to another folder (a tampered
//! copy) or refuse every request (an unreachable repository) while the guest runs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::loopback::{lock, LoopbackServer};

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

#[derive(Debug)]
struct State {
    root: Option<PathBuf>,
    log: Vec<Served>,
}

/// A running server; stops accepting when dropped.
#[derive(Debug)]
pub struct FileServer {
    server: LoopbackServer,
    state: Arc<Mutex<State>>,
}

impl FileServer {
    /// Serves `root` on `127.0.0.1` (a free port).
    pub fn start(root: impl Into<PathBuf>) -> std::io::Result<FileServer> {
        let state = Arc::new(Mutex::new(State {
            root: Some(root.into()),
            log: Vec::new(),
        }));
        let st = Arc::clone(&state);
        let server = LoopbackServer::start(move |conn| {
            let _ = serve(conn, &st);
        })?;
        Ok(FileServer { server, state })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Serves `root` from now on; `None` answers every request with 503.
    pub fn set_root(&self, root: Option<PathBuf>) {
        lock(&self.state).root = root;
    }

    /// Every request so far, in order.
    pub fn served(&self) -> Vec<Served> {
        lock(&self.state).log.clone()
    }

    /// The QEMU `-netdev user` option that makes `guest_ip:80` reach this server through
    /// `relay` (one relay process per guest connection).
    pub fn guestfwd(&self, relay: &Path, guest_ip: &str) -> String {
        format!(
            "guestfwd=tcp:{guest_ip}:80-cmd:{} 127.0.0.1 {}",
            relay.display(),
            self.server.port()
        )
    }
}

/// The file under `root` that a request path names; `None` for anything that climbs out.
fn resolve(root: &Path, request: &str) -> Option<PathBuf> {
    let path = request.split(['?', '#']).next()?;
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(root.join(rel))
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let (method, path) = (method.to_owned(), path.to_owned());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let root = lock(state).root.clone();
    let file = match (&root, method.as_str()) {
        (Some(root), "GET") => resolve(root, &path).and_then(|p| std::fs::File::open(p).ok()),
        _ => None,
    };
    let mut conn = conn;
    let (status, bytes) = match file {
        Some(mut file) if file.metadata().is_ok_and(|m| m.is_file()) => {
            let len = file.metadata()?.len();
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            std::io::copy(&mut file, &mut conn)?;
            (200, len)
        }
        _ => {
            let (status, reason) = if root.is_none() {
                (503, "Service Unavailable")
            } else {
                (404, "Not Found")
            };
            write!(
                conn,
                "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            (status, 0)
        }
    };
    conn.flush()?;
    lock(state).log.push(Served {
        path,
        status,
        bytes,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn get(port: u16, path: &str) -> String {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn serves_files_refuses_escapes_and_switches_roots() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/metadata")).unwrap();
        std::fs::write(dir.path().join("a/metadata/1.root.json"), "{}").unwrap();
        std::fs::write(dir.path().join("secret"), "no").unwrap();
        let server = FileServer::start(dir.path().join("a")).unwrap();
        let ok = get(server.port(), "/metadata/1.root.json");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n\r\n{}"), "{ok}");
        assert!(get(server.port(), "/../secret").starts_with("HTTP/1.1 404"));
        assert!(get(server.port(), "/metadata").starts_with("HTTP/1.1 404"));
        server.set_root(None);
        assert!(get(server.port(), "/metadata/1.root.json").starts_with("HTTP/1.1 503"));
        let statuses: Vec<u16> = server.served().iter().map(|s| s.status).collect();
        assert_eq!(statuses, [200, 404, 404, 503]);
    }
}
