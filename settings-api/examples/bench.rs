//! Benchmark of the settings API, each figure next to a reference measured in the same run:
//!
//! 1. `apiclient set k=v` round trip (PATCH + commit, with fsync) p50/p99, and the same
//!    exchange from an in-process client, against one fsync'd file write on the same disk;
//! 2. `GET /settings` requests/s with 16 concurrent keep-alive clients, against a trivial hyper
//!    server answering the same body on the same kind of socket;
//! 3. resident memory of the idle server.
//!
//! Run: `cargo run --release -p settings-api --example bench -- [--dir /var/tmp] [--rounds 200]`.
//! The binaries are taken from the same target directory (build them with `cargo build --release
//! -p settings-api` first).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const LOAD_SECONDS: u64 = 2;
const LOAD_RUNS: usize = 3;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--trivial-server") {
        let socket = args.get(2).context("--trivial-server SOCKET BODYFILE")?;
        let body = std::fs::read(args.get(3).context("--trivial-server SOCKET BODYFILE")?)?;
        return trivial_server(Path::new(socket), Bytes::from(body));
    }
    let mut dir = PathBuf::from("/var/tmp");
    let mut rounds = 200usize;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = PathBuf::from(it.next().context("--dir DIR")?),
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locating the target directory")?
        .to_path_buf();
    let apiserver = bin_dir.join("apiserver");
    let apiclient = bin_dir.join("apiclient");
    for b in [&apiserver, &apiclient] {
        if !b.exists() {
            bail!(
                "{} not found; run cargo build --release -p settings-api",
                b.display()
            );
        }
    }
    let work = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in(&dir)?;
    let socket = work.path().join("api.sock");
    let mut server = Command::new(&apiserver)
        .arg("--socket-path")
        .arg(&socket)
        .arg("--datastore-path")
        .arg(work.path().join("datastore"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting apiserver")?;
    wait_for(&socket)?;
    std::thread::sleep(Duration::from_millis(300));
    let idle_rss = rss_kib(server.id())?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // A realistic live document, from the user-data fixture.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/user-data.toml");
    run(
        &apiclient,
        &socket,
        &["apply", "-f", fixture.to_str().unwrap_or_default()],
    )?;

    // 1. Round trips, interleaved with the references so that disk and CPU contention from
    //    anything else on the machine hits all of them alike.
    let probe = work.path().join("fsync-probe");
    let replace_target = work.path().join("replace-probe");
    let (mut fsync_t, mut replace_t, mut cli_t, mut noop_t, mut lib_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        let t = Instant::now();
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(format!("{{\"motd\": \"round {i}\"}}").as_bytes())?;
        f.sync_all()?;
        fsync_t.push(t.elapsed());

        // The minimal crash-safe replace a commit must do: write, fsync, rename, fsync dir.
        let t = Instant::now();
        settings_api::datastore::write_atomic(
            &replace_target,
            format!("{{\"motd\": \"round {i}\"}}").as_bytes(),
            true,
        )?;
        replace_t.push(t.elapsed());

        let t = Instant::now();
        run(&apiclient, &socket, &["set", &format!("motd=round {i}")])?;
        cli_t.push(t.elapsed());

        let t = Instant::now();
        run(&apiclient, &socket, &["raw", "-u", "/os"])?;
        noop_t.push(t.elapsed());

        let t = Instant::now();
        rt.block_on(async {
            let tx = format!("bench-{i}");
            let body = format!(r#"{{"motd": "lib {i}"}}"#).into_bytes();
            settings_api::client::call(&socket, "PATCH", &format!("/settings?tx={tx}"), Some(body))
                .await?;
            settings_api::client::call(&socket, "POST", &format!("/tx/commit?tx={tx}"), None)
                .await?;
            anyhow::Ok(())
        })?;
        lib_t.push(t.elapsed());
    }

    // 2. Throughput against a trivial server with the same body, alternating runs.
    let body = rt.block_on(settings_api::client::call(
        &socket,
        "GET",
        "/settings",
        None,
    ))?;
    let body_file = work.path().join("body.json");
    std::fs::write(&body_file, &body)?;
    let trivial_socket = work.path().join("trivial.sock");
    let mut trivial = Command::new(&exe)
        .arg("--trivial-server")
        .arg(&trivial_socket)
        .arg(&body_file)
        .spawn()
        .context("starting the trivial server")?;
    wait_for(&trivial_socket)?;
    let (mut api_rps, mut trivial_rps) = (Vec::new(), Vec::new());
    for _ in 0..LOAD_RUNS {
        api_rps.push(rt.block_on(load(&socket))?);
        trivial_rps.push(rt.block_on(load(&trivial_socket))?);
    }
    let busy_rss = rss_kib(server.id())?;
    let trivial_rss = rss_kib(trivial.id())?;
    kill(&mut trivial);
    kill(&mut server);
    let api_rps = median(&mut api_rps);
    let trivial_rps = median(&mut trivial_rps);

    let (fs50, fs99) = pct(&mut fsync_t);
    let (r50, r99) = pct(&mut replace_t);
    let (c50, c99) = pct(&mut cli_t);
    let (n50, n99) = pct(&mut noop_t);
    let (l50, l99) = pct(&mut lib_t);
    println!(
        "settings-api benchmark: {rounds} interleaved rounds; {CLIENTS} clients, median of {LOAD_RUNS} alternating {LOAD_SECONDS} s runs; disk under {}",
        dir.display()
    );
    println!("| measure | p50 / p99 or rate | reference, same run | ratio |");
    println!("|---|---|---|---|");
    let row = |what: &str, a: (Duration, Duration), rname: &str, r: (Duration, Duration)| {
        println!(
            "| {what} | {} / {} ms | {rname}: {} / {} ms | {:.1}x / {:.1}x |",
            ms(a.0),
            ms(a.1),
            ms(r.0),
            ms(r.1),
            ratio(a.0, r.0),
            ratio(a.1, r.1)
        );
    };
    row(
        "`apiclient set k=v` (process + PATCH + commit_and_apply)",
        (c50, c99),
        "one fsync'd file write",
        (fs50, fs99),
    );
    row(
        "in-process PATCH + commit",
        (l50, l99),
        "one fsync'd file write",
        (fs50, fs99),
    );
    row(
        "in-process PATCH + commit",
        (l50, l99),
        "write + fsync + rename + fsync dir",
        (r50, r99),
    );
    row(
        "`apiclient raw -u /os` (process + one GET, no write)",
        (n50, n99),
        "one fsync'd file write",
        (fs50, fs99),
    );
    println!(
        "| GET /settings ({} bytes), {CLIENTS} keep-alive clients | {api_rps:.0} req/s | trivial hyper server, same body: {trivial_rps:.0} req/s | {:.0}% |",
        body.len(),
        100.0 * api_rps / trivial_rps
    );
    println!(
        "| apiserver RSS idle / after load | {:.1} / {:.1} MiB | trivial server after load: {:.1} MiB | goal: idle < 10 MiB |",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0,
        trivial_rss as f64 / 1024.0
    );
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn pct(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.50), at(0.99))
}

fn run(apiclient: &Path, socket: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new(apiclient)
        .arg("--socket-path")
        .arg(socket)
        .args(args)
        .stdout(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "apiclient {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn wait_for(socket: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{} did not come up", socket.display())
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS not found")
}

/// `CLIENTS` keep-alive connections issuing `GET /settings` for `LOAD_SECONDS`; returns req/s.
async fn load(socket: &Path) -> Result<f64> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let count = Arc::clone(&count);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = hyper::Request::get("/settings")
                    .header(hyper::header::HOST, "localhost")
                    .body(Full::new(Bytes::new()))?;
                let resp = sender.send_request(req).await?;
                if !resp.status().is_success() {
                    bail!("GET /settings returned {}", resp.status());
                }
                resp.into_body().collect().await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(LOAD_SECONDS)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    for t in tasks {
        t.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// The reference: hyper over a Unix socket answering a fixed body, same runtime shape as
/// apiserver (2 worker threads).
fn trivial_server(socket: &Path, body: Bytes) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::UnixListener::bind(socket)?;
        loop {
            let (stream, _) = listener.accept().await?;
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut resp = hyper::Response::new(Full::new(body));
                        resp.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
