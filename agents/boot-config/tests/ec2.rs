//! Host tests of the EC2 path: the IMDSv2 client against the emulator of qemu-tests (retries,
//! backoff, deadline), and `userdata` + `generate` against a real settings API server on a
//! temporary socket, with the platform forced to aws and the emulator as metadata service.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boot_config::generate::{self, Facts};
use boot_config::imds::{Imds, ImdsError, Retry};
use boot_config::platform::{Detected, Platform};
use boot_config::userdata::{self, Sources};
use qemu_tests::imds as emulator;
use serde_json::json;

fn retry(total_ms: u64) -> Retry {
    Retry {
        request_timeout: Duration::from_secs(2),
        first_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        total: Duration::from_millis(total_ms),
    }
}

#[test]
fn retries_back_off_until_the_service_answers() {
    let mut config = emulator::Config::instance("eu-north-1");
    config.user_data = Some("[settings]\nmotd = \"m\"\n".into());
    config.fail_first = 4;
    let imds = emulator::Imds::start(config).unwrap();
    let mut client = Imds::new(&imds.endpoint(), retry(10_000)).unwrap();
    let start = Instant::now();
    let got = client.user_data().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got.unwrap(), b"[settings]\nmotd = \"m\"\n");
    // Four failures: pauses of 50, 100, 200 and 400 ms before the fifth attempt.
    assert!(elapsed >= Duration::from_millis(750), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let log = imds.requests();
    let summary: Vec<(String, u16)> = log
        .iter()
        .map(|r| (format!("{} {}", r.method, r.path), r.status))
        .collect();
    let put = "PUT /latest/api/token".to_string();
    assert_eq!(
        summary,
        [
            (put.clone(), 503),
            (put.clone(), 503),
            (put.clone(), 503),
            (put.clone(), 503),
            (put, 200),
            ("GET /latest/user-data".into(), 200),
        ]
    );
    assert!(log[5].valid_token);
    // The token is kept for the session: one more GET, no new PUT.
    assert_eq!(
        client.meta_data("placement/region").unwrap().as_deref(),
        Some("eu-north-1")
    );
    assert_eq!(client.meta_data("no-such-item").unwrap(), None);
    assert_eq!(imds.requests().len(), 8);
}

#[test]
fn a_dead_service_fails_within_the_deadline() {
    let imds = emulator::Imds::start(emulator::Config {
        fail_first: usize::MAX,
        ..emulator::Config::default()
    })
    .unwrap();
    let mut client = Imds::new(&imds.endpoint(), retry(600)).unwrap();
    let start = Instant::now();
    let e = client.user_data().unwrap_err();
    let elapsed = start.elapsed();
    assert!(matches!(e, ImdsError::Deadline { .. }), "{e}");
    assert!(e.to_string().contains("HTTP 503"), "{e}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    // 50 + 100 + 200 = 350 ms of pauses fit in 600 ms; the next (400 ms) does not.
    assert_eq!(imds.requests().len(), 4);
}

#[test]
fn no_user_data_is_a_404_not_an_error() {
    let imds = emulator::Imds::start(emulator::Config::instance("us-east-2")).unwrap();
    let mut client = Imds::new(&imds.endpoint(), retry(2000)).unwrap();
    assert_eq!(client.user_data().unwrap(), None);
    let doc = client.identity_document().unwrap().unwrap();
    assert_eq!(doc["region"], "us-east-2");
}

/// A settings API server on a temporary socket, in this process.
struct Api {
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    fn start(defaults: serde_json::Value) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("api.sock");
        let ds = settings_api::datastore::Datastore::open(dir.path().join("ds")).unwrap();
        let state = settings_api::server::State::open(
            ds,
            Some(defaults),
            settings_api::metadata::Metadata::default(),
            Default::default(),
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = socket.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = settings_api::server::bind(&path, None).unwrap();
                tx.send(()).unwrap();
                let _ = settings_api::server::serve(listener, Arc::new(state)).await;
            });
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Api { socket, _dir: dir }
    }

    fn settings(&self) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let body = rt
            .block_on(settings_api::client::call(
                &self.socket,
                "GET",
                "/settings",
                None,
            ))
            .unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    fn set(&self, patch: serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let body = serde_json::to_vec(&patch).unwrap();
            settings_api::client::call(&self.socket, "PATCH", "/settings?tx=t", Some(body))
                .await
                .unwrap();
            settings_api::client::call(&self.socket, "POST", "/tx/commit?tx=t", None)
                .await
                .unwrap();
        });
    }
}

fn aws() -> Detected {
    Detected {
        platform: Platform::Aws,
        reason: "test".into(),
    }
}

fn host_root(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("proc/sys/kernel")).unwrap();
    std::fs::write(root.join("proc/sys/kernel/hostname"), "localhost\n").unwrap();
    root
}

#[test]
fn ec2_user_data_and_generators_end_to_end() {
    let api = Api::start(json!({"motd": "default motd", "ntp": {"time-servers": ["pool"]}}));
    let mut config = emulator::Config::instance("ap-southeast-2");
    config.user_data = Some(
        "[settings]\nmotd = \"from imds\"\n[settings.ntp]\ntime-servers = [\"169.254.169.123\"]\n[settings.kubernetes]\ncluster-name = \"prod\"\n"
            .into(),
    );
    config.fail_first = 2;
    let imds = emulator::Imds::start(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = host_root(dir.path());
    let sources = Sources {
        root: root.clone(),
        platform: aws(),
        local: dir.path().join("user-data.toml"),
        overrides: dir.path().join("user-data-overrides.toml"),
        fw_cfg: dir.path().join("no-fw-cfg"),
        imds_endpoint: imds.endpoint(),
        imds_retry: retry(10_000),
        config_drive_mount: dir.path().join("mnt"),
        ovf_env_mount: dir.path().join("ovf-env"),
        ovf_env_wait: std::time::Duration::ZERO,
    };
    // Local file first, IMDS over it, overrides last.
    std::fs::write(
        &sources.local,
        "[settings]\nmotd = \"local\"\n[settings.kernel.sysctl]\n\"vm.swappiness\" = \"10\"\n",
    )
    .unwrap();
    std::fs::write(
        &sources.overrides,
        "[settings.kubernetes]\nnode-ip = \"192.0.2.7\"\n",
    )
    .unwrap();
    let status_file = dir.path().join("user-data.json");
    userdata::run(&api.socket, &sources, &status_file).unwrap();
    let status: userdata::Status =
        serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap();
    assert_eq!(status.state, "applied");
    let kinds: Vec<&str> = status
        .sources
        .iter()
        .map(|s| s.split(' ').next().unwrap())
        .collect();
    assert_eq!(kinds, ["local-file", "imds", "overrides"], "{status:?}");
    let live = api.settings();
    assert_eq!(live["motd"], "from imds");
    assert_eq!(live["ntp"]["time-servers"], json!(["169.254.169.123"]));
    assert_eq!(live["kernel"]["sysctl"]["vm.swappiness"], "10");
    assert_eq!(live["kubernetes"]["cluster-name"], "prod");

    // Generators: hostname, region, provider id from IMDS; node-ip was set by the user.
    let gen_status = dir.path().join("generated.json");
    let mut facts = Facts::new(root.clone(), aws(), imds.endpoint(), retry(10_000));
    generate::run(&api.socket, &mut facts, &gen_status).unwrap();
    let live = api.settings();
    assert_eq!(
        live["network"]["hostname"],
        "ip-10-0-1-23.ap-southeast-2.compute.internal"
    );
    assert_eq!(live["aws"]["region"], "ap-southeast-2");
    assert_eq!(
        live["kubernetes"]["provider-id"],
        "aws:///ap-southeast-2a/i-0123456789abcdef0"
    );
    assert_eq!(
        live["kubernetes"]["node-ip"], "192.0.2.7",
        "user value wins"
    );
    let record: generate::Status =
        serde_json::from_slice(&std::fs::read(&gen_status).unwrap()).unwrap();
    assert_eq!(record.user_set, ["kubernetes.node-ip"]);

    // The user renames the host; the next boot's generators leave it alone but still own
    // the region.
    api.set(json!({"network": {"hostname": "renamed"}}));
    let mut facts = Facts::new(root, aws(), imds.endpoint(), retry(10_000));
    generate::run(&api.socket, &mut facts, &gen_status).unwrap();
    let live = api.settings();
    assert_eq!(live["network"]["hostname"], "renamed");
    let record: generate::Status =
        serde_json::from_slice(&std::fs::read(&gen_status).unwrap()).unwrap();
    assert!(record.user_set.contains(&"network.hostname".to_string()));
    assert!(record.generated.contains_key("aws.region"));

    // Every GET carried a token, and the first request was the token PUT.
    let log = imds.requests();
    assert_eq!(log[0].method, "PUT");
    assert!(log
        .iter()
        .filter(|r| r.method == "GET")
        .all(|r| r.valid_token));
}

/// Item 4 of issue 17: on an IPv6 cluster the generated node IP is the IPv6 address of the
/// primary interface (IMDS `ipv6s`), not `local-ipv4`; on an IPv4 cluster it stays IPv4.
#[test]
fn the_node_ip_follows_the_clusters_ip_family() {
    let mut config = emulator::Config::instance("us-west-2");
    config.meta_data.insert(
        "network/interfaces/macs/02:00:0a:00:01:17/ipv6s".into(),
        "2600:1f14:abc:de00::1234 2600:1f14:abc:de00::5678".into(),
    );
    let imds = emulator::Imds::start(config).unwrap();
    for (kubernetes, want) in [
        (
            json!({"cluster-name": "v6", "service-cidr": "fd00:ec2::/108"}),
            "2600:1f14:abc:de00::1234",
        ),
        (
            json!({"cluster-name": "v6", "ip-family": "ipv6"}),
            "2600:1f14:abc:de00::1234",
        ),
        (
            json!({"cluster-name": "v4", "service-cidr": "10.100.0.0/16"}),
            "10.0.1.23",
        ),
        (json!({"cluster-name": "v4"}), "10.0.1.23"),
    ] {
        let api = Api::start(json!({}));
        api.set(json!({ "kubernetes": kubernetes.clone() }));
        let dir = tempfile::tempdir().unwrap();
        let root = host_root(dir.path());
        let mut facts = Facts::new(root, aws(), imds.endpoint(), retry(10_000));
        generate::run(&api.socket, &mut facts, &dir.path().join("generated.json")).unwrap();
        assert_eq!(
            api.settings()["kubernetes"]["node-ip"],
            want,
            "{kubernetes}"
        );
    }
}
