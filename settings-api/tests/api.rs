//! The real apiserver on a temp socket and datastore, driven by the real apiclient.

mod common;

use common::{fixture, Server};
use serde_json::{json, Value};

#[test]
fn set_then_get_types_values_by_the_model() {
    let s = Server::start(&[]);
    s.ok(&[
        "set",
        "motd=123",
        "settings.kubernetes.max-pods=110",
        "kubernetes.standalone-mode=true",
        r#"kubernetes.node-labels."example.com/role"=worker"#,
        r#"kernel.sysctl."vm.max_map_count"=262144"#,
    ]);
    let got = s.get(&[]);
    assert_eq!(
        got,
        json!({"settings": {
            "motd": "123",
            "kubernetes": {"max-pods": 110, "standalone-mode": true,
                           "node-labels": {"example.com/role": "worker"}},
            "kernel": {"sysctl": {"vm.max_map_count": "262144"}}
        }})
    );
    assert_eq!(
        s.get(&["ecs"]),
        json!({"settings": {}}),
        "unset prefix prints empty settings"
    );
    // Prefix queries, with and without "settings.".
    assert_eq!(
        s.get(&["settings.kubernetes.max-pods", "motd"]),
        json!({"settings": {"motd": "123", "kubernetes": {"max-pods": 110}}})
    );
    assert_eq!(
        s.get(&[r#"kubernetes.node-labels."example.com/role""#]),
        json!({"settings": {"kubernetes": {"node-labels": {"example.com/role": "worker"}}}})
    );
    // --json, with a value that only JSON can express as a string.
    s.ok(&[
        "set",
        "--json",
        r#"{"kubernetes": {"cluster-dns-ip": ["10.0.0.10", "10.0.0.11"]}}"#,
    ]);
    assert_eq!(
        s.get(&["kubernetes.cluster-dns-ip"])["settings"]["kubernetes"]["cluster-dns-ip"],
        json!(["10.0.0.10", "10.0.0.11"])
    );
    // Each set is its own transaction, committed: nothing is left pending.
    assert_eq!(s.http("GET", "/tx/list", None), (200, "[]".to_string()));
}

#[test]
fn bad_input_names_the_key_exits_non_zero_and_stores_nothing() {
    let s = Server::start(&[]);
    s.ok(&["set", "motd=before"]);
    let err = s.fails(&["set", "motd=after", "kubernetes.max-pods=0"]);
    assert!(err.contains("settings.kubernetes.max-pods"), "{err}");
    let err = s.fails(&["set", "network.hostname=-bad-"]);
    assert!(
        err.contains("settings.network.hostname") && err.contains("RFC 1123"),
        "{err}"
    );
    // The firewall's ports and interfaces (settings.network.firewall).
    let err = s.fails(&["set", "network.firewall.inbound-tcp-ports=[22,70000]"]);
    assert!(
        err.contains("settings.network.firewall.inbound-tcp-ports.1")
            && err.contains("out of range 1..=65535"),
        "{err}"
    );
    let err = s.fails(&[
        "set",
        "network.firewall.enabled=true",
        r#"network.firewall.forward-interfaces=["veth*","bad name"]"#,
    ]);
    assert!(
        err.contains("settings.network.firewall.forward-interfaces.1"),
        "{err}"
    );
    let err = s.fails(&["set", "kubernetes.no-such-thing=1"]);
    assert!(
        err.contains("settings.kubernetes.no-such-thing") && err.contains("unknown field"),
        "{err}"
    );
    let err = s.fails(&[
        "set",
        r#"kubernetes.node-taints.dedicated=["gpu:Sometimes"]"#,
    ]);
    assert!(
        err.contains("settings.kubernetes.node-taints.dedicated"),
        "{err}"
    );
    let err = s.fails(&["set", "motd"]);
    assert!(err.contains("not key=value"), "{err}");
    // Nothing of the failed requests was stored, live or pending.
    assert_eq!(s.get(&[]), json!({"settings": {"motd": "before"}}));
    assert_eq!(s.http("GET", "/tx/list", None), (200, "[]".to_string()));

    // The HTTP answer is 400 with the key in the JSON error.
    let (code, body) = s.http(
        "PATCH",
        "/settings?tx=t",
        Some(r#"{"updates": {"seed": 5000}}"#),
    );
    assert_eq!(code, 400);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["key"], "settings.updates.seed");
    assert_eq!(s.http("GET", "/tx?tx=t", None), (200, "{}".to_string()));
    assert_eq!(s.http("PATCH", "/settings", Some("not json")).0, 400);
    assert_eq!(s.http("PATCH", "/settings", Some("[1]")).0, 400);
    assert_eq!(s.http("PATCH", "/settings?tx=../live", Some("{}")).0, 400);
    assert_eq!(s.http("GET", "/settings?keys=a..b", None).0, 400);
}

#[test]
fn transactions_are_isolated_until_committed() {
    let s = Server::start(&[]);
    assert_eq!(
        s.http("PATCH", "/settings?tx=one", Some(r#"{"motd": "one"}"#))
            .0,
        204
    );
    assert_eq!(
        s.http(
            "PATCH",
            "/settings?tx=two",
            Some(r#"{"motd": "two", "ntp": {"time-servers": ["a.example.com"]}}"#)
        )
        .0,
        204
    );
    assert_eq!(
        s.http("PATCH", "/settings", Some(r#"{"motd": "default-tx"}"#))
            .0,
        204
    );
    // Live is untouched; each transaction sees only its own changes.
    assert_eq!(s.get(&[]), json!({"settings": {}}));
    assert_eq!(
        s.http("GET", "/tx?tx=one", None),
        (200, r#"{"motd":"one"}"#.to_string())
    );
    assert_eq!(
        s.http("GET", "/tx", None),
        (200, r#"{"motd":"default-tx"}"#.to_string())
    );
    let (_, list) = s.http("GET", "/tx/list", None);
    assert_eq!(
        serde_json::from_str::<Value>(&list).unwrap(),
        json!(["default", "one", "two"])
    );

    // Commit returns the changed keys; a re-commit of the same value changes nothing.
    let (code, body) = s.http("POST", "/tx/commit?tx=two", None);
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!(["settings.motd", "settings.ntp.time-servers"])
    );
    assert_eq!(s.get(&["motd"]), json!({"settings": {"motd": "two"}}));
    assert_eq!(s.http("GET", "/tx?tx=one", None).1, r#"{"motd":"one"}"#);

    // Discarding returns the keys it held and leaves live alone.
    let (code, body) = s.http("DELETE", "/tx?tx=one", None);
    assert_eq!((code, body.as_str()), (200, r#"["settings.motd"]"#));
    let (code, body) = s.http("POST", "/tx/commit_and_apply", None);
    assert_eq!((code, body.as_str()), (200, r#"["settings.motd"]"#));
    assert_eq!(
        s.get(&["motd"]),
        json!({"settings": {"motd": "default-tx"}})
    );
    assert_eq!(s.http("GET", "/tx/list", None).1, "[]");
    assert_eq!(s.http("POST", "/tx/apply?keys=settings.motd", None).0, 204);
}

#[test]
fn apply_reads_toml_and_json_from_files_stdin_and_http_in_one_transaction() {
    let s = Server::start(&[]);
    let ud = fixture("user-data.toml");
    let json_path = s.dir.path().join("extra.json");
    std::fs::write(
        &json_path,
        r#"{"settings": {"network": {"hostname": "node-7"}}}"#,
    )
    .unwrap();
    s.ok(&[
        "apply",
        "-f",
        ud.to_str().unwrap(),
        "-f",
        json_path.to_str().unwrap(),
    ]);
    let got = s.get(&[]);
    assert_eq!(got["settings"]["kubernetes"]["cluster-name"], "prod-east");
    assert_eq!(got["settings"]["kubernetes"]["max-pods"], 58);
    assert_eq!(
        got["settings"]["kubernetes"]["node-labels"]["example.com/role"],
        "worker"
    );
    assert_eq!(
        got["settings"]["kernel"]["sysctl"]["vm.max_map_count"],
        "262144"
    );
    assert_eq!(got["settings"]["network"]["hostname"], "node-7");

    // stdin
    let out = s.client_stdin(&["apply"], Some("[settings]\nmotd = \"from stdin\"\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.get(&["motd"])["settings"]["motd"], "from stdin");

    // http:// URL served by a one-shot local server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let web = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf).unwrap();
        let body = "[settings]\nmotd = \"from http\"\n";
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    });
    s.ok(&["apply", "-f", &format!("http://127.0.0.1:{port}/user-data")]);
    web.join().unwrap();
    assert_eq!(s.get(&["motd"])["settings"]["motd"], "from http");

    // One bad value in any input: the whole apply is rejected, nothing changes.
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(&bad, "[settings.kubernetes]\nmax-pods = -1\n").unwrap();
    let before = s.get(&[]);
    let err = s.fails(&[
        "apply",
        "-f",
        json_path.to_str().unwrap(),
        "-f",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains("settings.kubernetes.max-pods"), "{err}");
    assert_eq!(s.get(&[]), before);
    let err = s.fails(&["apply", "-f", "https://example.com/ud"]);
    assert!(err.contains("only http://"), "{err}");
    let nosettings = s.dir.path().join("nosettings.toml");
    std::fs::write(&nosettings, "motd = \"x\"\n").unwrap();
    assert!(s
        .fails(&["apply", "-f", nosettings.to_str().unwrap()])
        .contains("settings"));
}

#[test]
fn defaults_fill_in_and_user_values_survive_restart() {
    let defaults = fixture("defaults");
    let metadata = fixture("metadata.toml");
    let mut s = Server::start(&[
        "--defaults-dir",
        defaults.to_str().unwrap(),
        "--metadata-file",
        metadata.to_str().unwrap(),
    ]);
    let got = s.get(&[]);
    assert_eq!(got["settings"]["motd"], "Berth default motd");
    assert_eq!(got["settings"]["kubernetes"]["max-pods"], 110);
    assert_eq!(got["settings"]["updates"]["seed"], 100);
    s.ok(&["set", "motd=mine", "host-containers.admin.enabled=true"]);
    s.kill_and_restart();
    let got = s.get(&[]);
    assert_eq!(
        got["settings"]["motd"], "mine",
        "defaults must not overwrite user values"
    );
    assert_eq!(got["settings"]["host-containers"]["admin"]["enabled"], true);
    assert_eq!(got["settings"]["ntp"]["time-servers"][1], "time.aws.com");

    // Metadata endpoints.
    let (code, body) = s.http(
        "GET",
        "/metadata/affected-services?keys=settings.ntp.time-servers,network.hostname,motd",
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"settings.ntp.time-servers": ["chronyd"],
               "settings.network.hostname": ["hostname", "kubelet"],
               "settings.motd": []})
    );
    assert_eq!(s.http("GET", "/metadata/affected-services", None).0, 400);
    let (code, body) = s.http("GET", "/services?names=chronyd", None);
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"chronyd": {"configuration-files": ["chrony-conf"],
                           "restart-commands": ["/usr/bin/systemctl try-restart chronyd.service"]}})
    );
    assert_eq!(s.http("GET", "/services?names=nope", None).0, 404);
    let (code, body) = s.http("GET", "/configuration-files?names=chrony-conf", None);
    assert_eq!(code, 200);
    assert!(body.contains("/etc/chrony.conf"));
    let (code, body) = s.http("GET", "/?prefix=settings.motd", None);
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"settings":{"motd":"mine"}}"#)
    );
    let (code, body) = s.http("GET", "/os", None);
    assert_eq!(code, 200);
    assert!(body.contains("\"arch\""));
    // The firmware's state, read from the host the test runs on (docs/secure-boot.md).
    let os: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        ["enabled", "disabled", "unsupported"].contains(&os["secure_boot"].as_str().unwrap_or("")),
        "{body}"
    );
    assert!(os["lockdown"].is_string(), "{body}");
    // apiclient get reaches the other parts of the model too.
    let got = s.get(&["os", "services.chronyd", "motd"]);
    assert!(got["os"]["arch"].is_string());
    assert_eq!(
        got["services"]["chronyd"]["configuration-files"],
        json!(["chrony-conf"])
    );
    assert_eq!(got["settings"]["motd"], "mine");
}

#[test]
fn status_codes_follow_bottlerocket() {
    let s = Server::start(&[]);
    assert_eq!(s.http("GET", "/nope", None).0, 404);
    assert_eq!(s.http("PUT", "/settings", Some("{}")).0, 405);
    assert_eq!(s.http("GET", "/tx/commit", None).0, 405);
    let big = format!(r#"{{"motd": "{}"}}"#, "x".repeat(2 << 20));
    assert_eq!(s.http("PATCH", "/settings", Some(&big)).0, 413);
    // Actions this server was not set up for say so, and apiclient exits non-zero
    // (tests/updates.rs covers the update routes with an updater).
    for (method, path, says) in [
        ("POST", "/actions/reboot", "not implemented"),
        ("POST", "/actions/refresh-updates", "not configured"),
        ("GET", "/updates/status", "not configured"),
    ] {
        let (code, body) = s.http(method, path, None);
        assert_eq!(code, 501, "{path}");
        assert!(body.contains(says), "{body}");
    }
    assert!(s.fails(&["reboot"]).contains("501"));
    assert!(s.fails(&["update", "check"]).contains("501"));
    // raw prints the body and fails on an error status.
    assert_eq!(s.ok(&["raw", "-u", "/tx/list"]).trim(), "[]");
    s.ok(&[
        "raw",
        "-u",
        "/settings?tx=r",
        "-m",
        "PATCH",
        "-d",
        r#"{"motd": "raw"}"#,
    ]);
    assert!(s.ok(&["raw", "-u", "/tx?tx=r"]).contains("raw"));
    assert!(s.fails(&["raw", "-u", "/nope"]).contains("404"));
}

#[test]
fn apiclient_reboot_is_answered_when_apiserver_may_reboot() {
    // `--reboot log` stands in for `--reboot systemd` (D-Bus) on the build host.
    let s = Server::start(&["--reboot", "log"]);
    assert_eq!(s.http("POST", "/actions/reboot", None).0, 204);
    s.ok(&["reboot"]);
    assert_eq!(s.http("GET", "/actions/reboot", None).0, 405);
}

#[test]
fn socket_has_mode_0660_and_missing_server_is_a_clear_error() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // Our own primary group: any user may give a file it owns to it.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let gid = status
        .lines()
        .find_map(|l| l.strip_prefix("Gid:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .to_string();
    let s = Server::start(&["--socket-gid", &gid]);
    let meta = std::fs::metadata(&s.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid().to_string(), gid);
    let out = std::process::Command::new(common::APICLIENT)
        .args(["--socket-path", "/nonexistent/api.sock", "get"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/api.sock"));
}

#[test]
fn readiness_is_reported_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut child = std::process::Command::new(common::APISERVER)
        .arg("--socket-path")
        .arg(dir.path().join("api.sock"))
        .arg("--datastore-path")
        .arg(dir.path().join("ds"))
        .env("NOTIFY_SOCKET", &notify)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(&buf[..n.unwrap()], b"READY=1");
    // Ready means listening.
    assert!(dir.path().join("api.sock").exists());
}

#[test]
fn concurrent_writers_and_readers_lose_nothing() {
    let s = Server::start(&[]);
    let socket = s.socket.clone();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let tx = format!("w{w}-{i}");
                    let body = format!(
                        r#"{{"kubernetes": {{"node-labels": {{"example.com/w{w}-{i}": "v{i}"}}}}, "motd": "w{w}-{i}"}}"#
                    );
                    let (code, _) = common::http(&socket, "PATCH", &format!("/settings?tx={tx}"), Some(&body));
                    assert_eq!(code, 204);
                    let (code, _) = common::http(&socket, "POST", &format!("/tx/commit?tx={tx}"), None);
                    assert_eq!(code, 200);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let (code, body) = common::http(&socket, "GET", "/settings", None);
                    assert_eq!(code, 200);
                    let v: Value = serde_json::from_str(&body).unwrap();
                    // Every snapshot is a whole commit: the motd's label is present.
                    if let Some(m) = v["motd"].as_str() {
                        assert!(
                            v["kubernetes"]["node-labels"][format!("example.com/{m}")].is_string()
                        );
                    }
                }
            })
        })
        .collect();
    for t in writers.into_iter().chain(readers) {
        t.join().unwrap();
    }
    let labels = s.get(&["kubernetes.node-labels"]);
    let labels = labels["settings"]["kubernetes"]["node-labels"]
        .as_object()
        .unwrap()
        .len();
    assert_eq!(labels, 40, "every commit's label is live");
    // The in-memory snapshot matches the datastore after a restart.
    let before = s.get(&[]);
    let mut s = s;
    s.kill_and_restart();
    assert_eq!(s.get(&[]), before);
}

/// An image built with `os-build --allow-missing-artifacts` says so at `/os`; one with every
/// artifact has no `missing_artifacts` key.
#[test]
fn os_reports_missing_external_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("missing-artifacts.json");
    std::fs::write(
        &record,
        r#"[{"name": "kubelet", "path": "/usr/bin/kubelet",
             "url": "https://dl.k8s.io/release/v1.33.8/bin/linux/amd64/kubelet",
             "sha256": "1caa69c5328cfa774218f75f0621a6f10a1b97e095af85015f468aeb8fdf956a",
             "reason": "download failed"}]"#,
    )
    .unwrap();
    let s = common::Server::start(&["--missing-artifacts", record.to_str().unwrap()]);
    let (code, body) = s.http("GET", "/os", None);
    assert_eq!(code, 200);
    let os: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(os["missing_artifacts"][0]["name"], "kubelet");
    assert_eq!(os["missing_artifacts"][0]["path"], "/usr/bin/kubelet");
    assert!(os["arch"].is_string(), "{os}");

    let none = dir.path().join("absent.json");
    let s = common::Server::start(&["--missing-artifacts", none.to_str().unwrap()]);
    let (_, body) = s.http("GET", "/os", None);
    let os: Value = serde_json::from_str(&body).unwrap();
    assert!(os.get("missing_artifacts").is_none(), "{os}");
}
