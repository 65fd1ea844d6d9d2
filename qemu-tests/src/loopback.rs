//! A TCP server on the host loopback for the servers the guests reach through QEMU's user
//! network (the IMDS emulator, the update repository): one thread accepts, one thread serves
//! each connection; it stops accepting when dropped.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug)]
pub struct LoopbackServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl LoopbackServer {
    /// Listens on `127.0.0.1` (a free port) and hands every connection to `serve`.
    pub fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let (serve, stopped) = (Arc::new(serve), Arc::clone(&stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let serve = Arc::clone(&serve);
                std::thread::spawn(move || serve(conn));
            }
        });
        Ok(LoopbackServer { port, stop })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Locks a server's state; a panicked connection thread must not take the state with it.
pub(crate) fn lock<T>(state: &Mutex<T>) -> MutexGuard<'_, T> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
