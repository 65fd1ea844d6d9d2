//! berth-api-bridge: forwards each TCP connection to the settings API's Unix socket, so the
//! QEMU tests can drive a guest with the real `apiclient` through a QEMU `hostfwd` port.
//!
//! Test images only (the `qemu-test` variant): it opens the API to anyone who reaches the
//! port. os-build refuses it in variants that do not set `test = true`.

use anyhow::{Context, Result};
use clap::Parser;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// TCP to Unix socket forwarder for the settings API (test images only).
#[derive(Debug, Parser)]
#[command(name = "berth-api-bridge", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: String,
    /// The API socket.
    #[arg(long, default_value = "/run/api.sock")]
    socket_path: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-api-bridge: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "berth-api-bridge: forwarding {} to {}",
        args.listen,
        args.socket_path.display()
    );
    for tcp in listener.incoming() {
        let tcp = match tcp {
            Ok(tcp) => tcp,
            Err(e) => {
                eprintln!("berth-api-bridge: accept failed: {e}");
                continue;
            }
        };
        let socket = args.socket_path.clone();
        std::thread::spawn(move || {
            if let Err(e) = forward(tcp, &socket) {
                eprintln!("berth-api-bridge: {e:#}");
            }
        });
    }
    Ok(())
}

/// Copies bytes both ways until each side closes.
fn forward(tcp: TcpStream, socket: &std::path::Path) -> Result<()> {
    let unix = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    let (mut tcp_r, mut unix_w) = (tcp.try_clone()?, unix.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(Shutdown::Write);
    });
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn forwards_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let server = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong").unwrap();
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s2 = sock.clone();
        std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            forward(tcp, &s2).unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"ping").unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"pong");
    }

    #[test]
    fn parses_arguments() {
        let a = Args::try_parse_from(["berth-api-bridge", "--listen", "127.0.0.1:1"]).unwrap();
        assert_eq!(a.listen, "127.0.0.1:1");
        assert_eq!(a.socket_path, PathBuf::from("/run/api.sock"));
    }
}
