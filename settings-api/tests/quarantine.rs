//! A live datastore that cannot be used (cut to half a JSON document, or holding values the
//! model refuses) used to make apiserver exit at every start. It is kept aside in quarantine,
//! the server starts from the defaults, /os says so, and boot-config's user data marker is
//! moved aside so that user data is applied again.

// Test helpers: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fixture, Server};
use serde_json::Value;

/// Starts apiserver with the test defaults and a user data marker, sets a value, and then
/// restarts it over live settings replaced by `live`.
fn restart_over(live: &[u8]) -> (Server, tempfile::TempDir) {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("user-data.json");
    std::fs::write(&marker, br#"{"outcome": "applied"}"#).unwrap();
    let defaults = fixture("defaults");
    let mut s = Server::start(&[
        "--defaults-dir",
        defaults.to_str().unwrap(),
        "--user-data-status",
        marker.to_str().unwrap(),
    ]);
    s.ok(&["set", "motd=set before the damage"]);
    s.kill();
    std::fs::write(s.datastore.join("live/settings.json"), live).unwrap();
    s.kill_and_restart();
    (s, marker_dir)
}

fn quarantines(s: &Server) -> Vec<Value> {
    let (code, body) = s.http("GET", "/os", None);
    assert_eq!(code, 200);
    let os: Value = serde_json::from_str(&body).unwrap();
    os["datastore_quarantine"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_cut_live_datastore_is_quarantined_and_the_server_starts_from_defaults() {
    let damaged = br#"{"motd": "set before the da"#;
    let (mut s, marker_dir) = restart_over(damaged);
    assert_eq!(s.get(&[])["settings"]["motd"], "Berth default motd");
    let q = quarantines(&s);
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0]["reason"].as_str().unwrap().contains("not valid JSON"),
        "{q:?}"
    );
    let kept = std::path::PathBuf::from(q[0]["file"].as_str().unwrap());
    assert_eq!(
        std::fs::read(&kept).unwrap(),
        damaged,
        "the file is kept as it was"
    );
    let marker = marker_dir.path().join("user-data.json");
    assert!(!marker.exists(), "boot-config must apply user data again");
    assert!(marker_dir
        .path()
        .join("user-data.json.before-quarantine")
        .exists());
    // Settings work again, and a restart neither quarantines again nor forgets.
    s.ok(&["set", "motd=after"]);
    s.kill_and_restart();
    assert_eq!(s.get(&[])["settings"]["motd"], "after");
    assert_eq!(quarantines(&s).len(), 1);
}

#[test]
fn live_settings_the_model_refuses_are_quarantined() {
    let (s, _marker) = restart_over(br#"{"motd": 5, "kubernetes": {"max-pods": "many"}}"#);
    assert_eq!(s.get(&[])["settings"]["kubernetes"]["max-pods"], 110);
    let q = quarantines(&s);
    assert_eq!(q.len(), 1);
    assert!(
        q[0]["reason"]
            .as_str()
            .unwrap()
            .contains("refused by the model"),
        "{q:?}"
    );
}
