//! The update actions, `/updates/status` and `apiclient update` against the real apiserver
//! and apiclient, with a fake `berth-updater`: a shell script that records its arguments and
//! `BERTH_UPDATES_*` environment and exits with the code a test chose.
// Test helpers: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::Server;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Appends `call <argv>` and the sorted `BERTH_UPDATES_*` variables to calls.log; prints
/// status.json for `status`; sleeps `sleep` seconds if that file exists; exits with the code
/// in `exit-<command>` (0 without), printing the error chain as berth-updater does.
const FAKE_UPDATER: &str = r#"#!/bin/sh
dir=$(dirname "$0")
{
  echo "call $*"
  env | grep '^BERTH_UPDATES_' | sort
} >> "$dir/calls.log"
if [ "$1" = status ]; then
  cat "$dir/status.json"
  exit 0
fi
if [ -f "$dir/sleep" ]; then
  sleep "$(cat "$dir/sleep")"
fi
code=0
if [ -f "$dir/exit-$1" ]; then
  code=$(cat "$dir/exit-$1")
fi
if [ "$code" != 0 ]; then
  echo "2026-11-30T08:00:00Z  INFO updater log line" >&2
  echo "berth-updater: error: $(cat "$dir/message")" >&2
  echo "  caused by: the cause" >&2
fi
exit "$code"
"#;

const STATUS: &str = r#"{
  "state": "ready",
  "running": "1.0.0",
  "available_versions": ["2.0.0", "1.0.0"],
  "chosen": { "variant": "qemu-test", "arch": "x86_64", "version": "2.0.0" },
  "target_slot": "b",
  "uki": "berth-2.0.0+3.efi",
  "most_recent_command": { "command": "activate", "ok": true, "at": "2026-11-22T08:20:00Z" }
}"#;

/// A fake updater in its own folder, and an apiserver that runs it.
struct Fixture {
    fake: tempfile::TempDir,
    state_dir: PathBuf,
    server: Server,
}

impl Fixture {
    fn start() -> Fixture {
        let fake = tempfile::tempdir().unwrap();
        let script = fake.path().join("berth-updater");
        std::fs::write(&script, FAKE_UPDATER).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(fake.path().join("status.json"), STATUS).unwrap();
        let state_dir = fake.path().join("state");
        // apiserver's own environment: a variable the settings own must not win, the
        // updater's other inputs pass through (an image may set them in the unit).
        let server = Server::start_with_env(
            &[
                "--updater-command",
                script.to_str().unwrap(),
                "--updates-state-dir",
                state_dir.to_str().unwrap(),
            ],
            &[
                ("BERTH_UPDATES_SEED", "999"),
                ("BERTH_UPDATES_IGNORE_WAVES", "false"),
                ("BERTH_UPDATES_ESP", "/efi"),
            ],
        );
        Fixture {
            fake,
            state_dir,
            server,
        }
    }

    /// Sets the three required update settings (and ignore-waves).
    fn configure(&self) {
        self.server.ok(&[
            "set",
            "updates.metadata-base-url=http://10.0.2.2:8080/metadata/",
            "updates.targets-base-url=http://10.0.2.2:8080/targets/",
            "updates.seed=42",
            "updates.ignore-waves=true",
        ]);
    }

    /// The fake exits with `code` for `command`, printing `message` as its error.
    fn fail(&self, command: &str, code: i32, message: &str) {
        std::fs::write(
            self.fake.path().join(format!("exit-{command}")),
            code.to_string(),
        )
        .unwrap();
        std::fs::write(self.fake.path().join("message"), message).unwrap();
    }

    /// Every recorded call: its arguments and its BERTH_UPDATES_* environment.
    fn calls(&self) -> Vec<(String, BTreeMap<String, String>)> {
        calls(self.fake.path())
    }

    fn commands(&self) -> Vec<String> {
        self.calls().into_iter().map(|(argv, _)| argv).collect()
    }
}

fn calls(dir: &Path) -> Vec<(String, BTreeMap<String, String>)> {
    let text = std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default();
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    for line in text.lines() {
        if let Some(argv) = line.strip_prefix("call ") {
            out.push((argv.to_string(), BTreeMap::new()));
        } else if let Some((k, v)) = line.split_once('=') {
            out.last_mut()
                .expect("env lines follow a call line")
                .1
                .insert(k.to_string(), v.to_string());
        }
    }
    out
}

fn error_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn actions_run_the_updater_with_the_live_settings() {
    let f = Fixture::start();
    f.configure();
    assert_eq!(
        f.server.http("POST", "/actions/refresh-updates", None),
        (204, String::new())
    );
    let state_dir = f.state_dir.display().to_string();
    let expected: BTreeMap<String, String> = [
        (
            "BERTH_UPDATES_METADATA_URL",
            "http://10.0.2.2:8080/metadata/",
        ),
        ("BERTH_UPDATES_TARGETS_URL", "http://10.0.2.2:8080/targets/"),
        ("BERTH_UPDATES_SEED", "42"),
        ("BERTH_UPDATES_VERSION_LOCK", "latest"),
        ("BERTH_UPDATES_IGNORE_WAVES", "true"),
        ("BERTH_UPDATES_STATE_DIR", state_dir.as_str()),
        ("BERTH_UPDATES_ESP", "/efi"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(f.calls(), [("check".to_string(), expected.clone())]);

    // A changed setting reaches the next command: the live settings are read each time.
    f.server.ok(&["set", "updates.version-lock=v2.0.0"]);
    assert_eq!(
        f.server.http("POST", "/actions/prepare-update", None),
        (204, String::new())
    );
    let mut expected = expected;
    expected.insert("BERTH_UPDATES_VERSION_LOCK".into(), "v2.0.0".into());
    assert_eq!(f.calls()[1], ("prepare".to_string(), expected));
    for (path, command) in [
        ("/actions/activate-update", "activate"),
        ("/actions/deactivate-update", "deactivate"),
    ] {
        assert_eq!(f.server.http("POST", path, None).0, 204, "{path}");
        assert_eq!(f.commands().last().map(String::as_str), Some(command));
    }

    // The status is the updater's document, as it printed it.
    let (code, body) = f.server.http("GET", "/updates/status", None);
    assert_eq!(code, 200, "{body}");
    let expected: Value = serde_json::from_str(STATUS).unwrap();
    assert_eq!(error_of(&body), expected);
    assert_eq!(
        f.commands().last().unwrap(),
        &format!("status --state-dir {state_dir}")
    );
}

#[test]
fn updater_exit_codes_map_to_http_statuses_with_its_error_chain() {
    let f = Fixture::start();
    f.configure();
    for (code, status, message) in [
        (
            2,
            423,
            "another updater command is running (lock /private/updates/lock is held)",
        ),
        (
            3,
            409,
            "cannot Prepare in state Idle (needs available or staged)",
        ),
        (1, 500, "repository unreachable"),
        (7, 500, "something else"),
    ] {
        f.fail("prepare", code, message);
        let (got, body) = f.server.http("POST", "/actions/prepare-update", None);
        assert_eq!(got, status, "exit {code}: {body}");
        assert_eq!(
            error_of(&body)["error"],
            json!(format!("{message}: the cause")),
            "exit {code}"
        );
    }
    // Only the failing command is affected.
    assert_eq!(
        f.server.http("POST", "/actions/activate-update", None).0,
        204
    );
}

#[test]
fn a_missing_setting_is_named_and_nothing_runs() {
    let f = Fixture::start();
    let (code, body) = f.server.http("POST", "/actions/refresh-updates", None);
    assert_eq!(code, 400, "{body}");
    let err = error_of(&body);
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("settings.updates.metadata-base-url is not set"),
        "{body}"
    );
    assert_eq!(err["key"], "settings.updates.metadata-base-url");
    f.server.ok(&[
        "set",
        "updates.metadata-base-url=http://10.0.2.2:8080/metadata/",
        "updates.targets-base-url=http://10.0.2.2:8080/targets/",
    ]);
    let (code, body) = f.server.http("POST", "/actions/prepare-update", None);
    assert_eq!(code, 400, "{body}");
    assert_eq!(error_of(&body)["key"], "settings.updates.seed");
    // apiclient says which step and which setting.
    let err = f.server.fails(&["update", "check"]);
    assert!(
        err.contains("update step 'check' failed") && err.contains("settings.updates.seed"),
        "{err}"
    );
    assert!(f.calls().is_empty(), "the updater ran: {:?}", f.calls());
}

#[test]
fn without_updater_command_every_update_route_answers_501() {
    let s = Server::start(&[]);
    for (method, path) in [
        ("POST", "/actions/refresh-updates"),
        ("POST", "/actions/prepare-update"),
        ("POST", "/actions/activate-update"),
        ("POST", "/actions/deactivate-update"),
        ("GET", "/updates/status"),
    ] {
        let (code, body) = s.http(method, path, None);
        assert_eq!(code, 501, "{path}: {body}");
        assert_eq!(
            error_of(&body)["error"],
            "updates are not configured on this host"
        );
    }
    let err = s.fails(&["update", "check"]);
    assert!(err.contains("updates are not configured"), "{err}");
}

#[test]
fn apiclient_update_apply_and_cancel_run_the_steps_in_order() {
    let f = Fixture::start();
    f.configure();
    let status_call = format!("status --state-dir {}", f.state_dir.display());
    let out = f.server.ok(&["update", "apply", "--check"]);
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed, serde_json::from_str::<Value>(STATUS).unwrap());
    assert_eq!(
        f.commands(),
        ["check", "prepare", "activate", status_call.as_str()]
    );

    let out = f.server.ok(&["update", "check"]);
    assert_eq!(printed, serde_json::from_str::<Value>(&out).unwrap());
    let out = f.server.ok(&["update", "cancel"]);
    assert_eq!(printed, serde_json::from_str::<Value>(&out).unwrap());
    assert_eq!(
        f.commands()[4..],
        [
            "check",
            status_call.as_str(),
            "deactivate",
            status_call.as_str()
        ]
    );

    // A failing step is named, and the steps after it do not run.
    f.fail(
        "prepare",
        3,
        "cannot Prepare in state Idle (needs available or staged)",
    );
    let err = f.server.fails(&["update", "apply", "--reboot"]);
    assert!(
        err.contains("update step 'prepare' failed")
            && err.contains("cannot Prepare in state Idle")
            && err.contains("409"),
        "{err}"
    );
    assert_eq!(f.commands().last().map(String::as_str), Some("prepare"));

    // reset-clock needs no repository settings: only the state folder.
    let before = f.calls().len();
    f.server.ok(&["update", "reset-clock"]);
    let calls = f.calls();
    assert_eq!(calls[before].0, "reset-clock");
    assert_eq!(
        calls[before]
            .1
            .get("BERTH_UPDATES_STATE_DIR")
            .map(String::as_str),
        Some(f.state_dir.to_str().unwrap())
    );
    assert_eq!(calls[before + 1].0, status_call);
}

#[test]
fn the_server_answers_other_requests_while_the_updater_runs() {
    let f = Fixture::start();
    f.configure();
    std::fs::write(f.fake.path().join("sleep"), "3").unwrap();
    let socket = f.server.socket.clone();
    let started = Instant::now();
    let prepare =
        std::thread::spawn(move || common::http(&socket, "POST", "/actions/prepare-update", None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.commands().iter().any(|c| c == "prepare") {
        assert!(Instant::now() < deadline, "the updater did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = Instant::now();
    let (code, body) = f.server.http("GET", "/settings", None);
    assert_eq!(code, 200, "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "GET /settings waited {:?} for the updater",
        asked.elapsed()
    );
    assert_eq!(prepare.join().unwrap(), (204, String::new()));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the action answered before the updater finished"
    );
}
