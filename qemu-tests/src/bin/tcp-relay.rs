//! `tcp-relay HOST PORT`: copies stdin to a TCP connection to HOST:PORT and the answers to
//! stdout. QEMU's user network runs one per guest connection for a `guestfwd=...-cmd:` rule
//! (libslirp hands the guest's connection over as stdin/stdout), which is how a guest reaches
//! a server on the host loopback at an address inside its virtual network (the IMDS emulator,
//! qemu_tests::imds).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port] = args.as_slice() else {
        eprintln!("usage: tcp-relay HOST PORT");
        return ExitCode::from(2);
    };
    let Ok(port) = port.parse::<u16>() else {
        eprintln!("tcp-relay: bad port {port:?}");
        return ExitCode::from(2);
    };
    let tcp = match TcpStream::connect((host.as_str(), port)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcp-relay: cannot connect to {host}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Ok(mut to_server) = tcp.try_clone() else {
        return ExitCode::FAILURE;
    };
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_server.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_server.shutdown(std::net::Shutdown::Write);
    });
    let mut from_server = tcp;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from_server.read(&mut buf) {
        if n == 0
            || stdout
                .write_all(&buf[..n])
                .and_then(|()| stdout.flush())
                .is_err()
        {
            break;
        }
    }
    // The server answered and closed: done, whatever stdin still does.
    ExitCode::SUCCESS
}
