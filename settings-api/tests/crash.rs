//! Crash safety: kill -9 the server at random moments during a loop of commits; after each
//! restart the live state must be exactly one of the committed states, never a mix.
//!
//! `BERTH_CRASH_ITERATIONS` sets the number of kills (default 200).

mod common;

use common::{try_http, Server};
use rand::Rng;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The state committed by commit number `n`: several keys in several files' worth of JSON,
/// all derived from `n`, so a mix of two commits is detectable.
fn state(n: u64) -> Value {
    let labels: serde_json::Map<String, Value> = (0..40)
        .map(|i| (format!("example.com/label-{i}"), json!(format!("v{n}"))))
        .collect();
    json!({
        "motd": format!("commit {n}"),
        "kubernetes": {"max-pods": n + 1, "node-labels": labels},
        "updates": {"seed": n % 2048},
    })
}

/// Which commit `live` is, or a panic describing the mix.
fn which(live: &Value) -> Option<u64> {
    if live == &json!({}) {
        return None;
    }
    let motd = live["motd"].as_str().expect("motd present");
    let n: u64 = motd
        .strip_prefix("commit ")
        .and_then(|s| s.parse().ok())
        .expect("motd is 'commit N'");
    assert_eq!(live, &state(n), "live state is a mix of commits");
    Some(n)
}

#[test]
fn kill_9_during_commits_leaves_old_or_new_state() {
    let iterations: u64 = std::env::var("BERTH_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut server = Server::start(&[]);
    let next = Arc::new(AtomicU64::new(0));
    let mut rng = rand::thread_rng();
    let mut last_acked: Option<u64> = None;
    let mut max_attempted: Option<u64> = None;
    let mut kills_mid_commit = 0;

    for _ in 0..iterations {
        let socket = server.socket.clone();
        let counter = Arc::clone(&next);
        // Commit as fast as possible until the server dies. Returns the last acknowledged commit
        // and the last one attempted.
        let writer = std::thread::spawn(move || {
            let mut acked = None;
            let mut attempted = None;
            loop {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let tx = format!("crash-{n}");
                let body = state(n).to_string();
                match try_http(&socket, "PATCH", &format!("/settings?tx={tx}"), &body) {
                    Ok((204, _)) => {}
                    Ok((code, body)) => panic!("PATCH failed with {code}: {body}"),
                    Err(_) => return (acked, attempted),
                }
                attempted = Some(n);
                match try_http(&socket, "POST", &format!("/tx/commit?tx={tx}"), "") {
                    Ok((200, _)) => acked = Some(n),
                    Ok((code, body)) => panic!("commit failed with {code}: {body}"),
                    Err(_) => return (acked, attempted),
                }
            }
        });
        std::thread::sleep(Duration::from_micros(rng.gen_range(500..25_000)));
        server.kill();
        let (acked, attempted) = writer.join().expect("writer thread");
        if attempted != acked {
            kills_mid_commit += 1;
        }
        last_acked = acked.or(last_acked);
        max_attempted = attempted.or(max_attempted);

        server.kill_and_restart();
        let (code, body) =
            try_http(&server.socket, "GET", "/settings", "").expect("GET after restart");
        assert_eq!(code, 200);
        let live: Value = serde_json::from_str(&body).expect("live is JSON");
        let found = which(&live);
        // Durable: every acknowledged commit survives. Atomic: nothing newer than attempted.
        if let Some(acked) = last_acked {
            let found = found.expect("an acknowledged commit was lost");
            assert!(
                found >= acked,
                "acknowledged commit {acked} lost; live is {found}"
            );
        }
        if let (Some(found), Some(attempted)) = (found, max_attempted) {
            assert!(found <= attempted, "live {found} was never attempted");
        }
        // Uncommitted transactions may be left pending; clean them so the next round starts fresh.
        if let Ok((200, list)) = try_http(&server.socket, "GET", "/tx/list", "") {
            for tx in serde_json::from_str::<Vec<String>>(&list).unwrap_or_default() {
                let _ = try_http(&server.socket, "DELETE", &format!("/tx?tx={tx}"), "");
            }
        }
    }
    eprintln!(
        "{iterations} kills, {kills_mid_commit} between PATCH and the commit's answer, {} commits",
        next.load(Ordering::SeqCst)
    );
    assert!(last_acked.is_some(), "no commit ever succeeded");
}
