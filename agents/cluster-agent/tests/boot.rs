//! Host test of `berth-cluster-agent boot` (without starting units): live settings from a
//! real settings API server on a temporary socket, instance facts from the IMDSv2 emulator of
//! qemu-tests, a host tree on a temporary folder that says "Amazon EC2".
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use cluster_agent::boot::{self, BootArgs};
use cluster_agent::live::{self, ApplyArgs};
use host::systemd::{Job, RecordingSystemd};
use qemu_tests::imds as emulator;
use serde_json::json;

/// A settings API server whose live settings are `defaults`, in this process.
fn api(defaults: serde_json::Value) -> (PathBuf, tempfile::TempDir) {
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
    (socket, dir)
}

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    boot: BootArgs,
}

#[derive(Parser)]
struct WrapApply {
    #[command(flatten)]
    apply: ApplyArgs,
}

/// Commits `patch` through the API, as `apiclient set` does.
fn set(socket: &std::path::Path, patch: serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let body = serde_json::to_vec(&patch).unwrap();
        settings_api::client::call(socket, "PATCH", "/settings?tx=t", Some(body))
            .await
            .unwrap();
        settings_api::client::call(socket, "POST", "/tx/commit?tx=t", None)
            .await
            .unwrap();
    });
}

#[test]
fn boot_renders_from_the_api_and_imds() {
    let (socket, _api_dir) = api(json!({
        "kubernetes": {
            "cluster-name": "berth-eks",
            "api-server": "https://ABC.gr7.eu-central-1.eks.amazonaws.com",
            "cluster-certificate": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVQnc9PQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg=="
        }
    }));
    let mut config = emulator::Config::instance("eu-central-1");
    config.meta_data.insert(
        "network/interfaces/macs/02:00:0a:00:01:17/vpc-ipv4-cidr-blocks".into(),
        "10.0.0.0/16".into(),
    );
    let imds = emulator::Imds::start(config).unwrap();
    let root = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("sys/class/dmi/id/sys_vendor", "Amazon EC2\n");
    write("sys/devices/system/cpu/online", "0-1\n");
    write("usr/lib/os-release", "ID=berth\nVARIANT_ID=aws-k8s-1.33\n");

    let args = Wrap::try_parse_from([
        "x",
        "--socket-path",
        socket.to_str().unwrap(),
        "--imds-endpoint",
        &imds.endpoint(),
        "--root",
        root.path().to_str().unwrap(),
        "--no-start",
    ])
    .unwrap()
    .boot;
    let outcome = boot::run(&args).unwrap();
    assert!(outcome.started.is_empty(), "--no-start starts nothing");

    let read = |rel: &str| std::fs::read_to_string(root.path().join(rel)).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&read("etc/kubernetes/kubelet/config.json")).unwrap();
    assert_eq!(config["maxPods"], 29);
    assert_eq!(
        config["providerID"],
        "aws:///eu-central-1a/i-0123456789abcdef0"
    );
    assert_eq!(config["clusterDNS"], json!(["172.20.0.10"]), "VPC in 10/8");
    let env = read("etc/kubernetes/kubelet/environment");
    assert!(env.contains("--node-ip=10.0.1.23"), "{env}");
    assert!(
        env.contains("--hostname-override=ip-10-0-1-23.eu-central-1.compute.internal"),
        "{env}"
    );
    let kubeconfig = read("var/lib/kubelet/kubeconfig");
    assert!(kubeconfig.contains("eu-central-1"), "{kubeconfig}");
    let facts: serde_json::Value =
        serde_json::from_str(&read("run/berth/cluster-facts.json")).unwrap();
    assert_eq!(facts["instance-type"], "m5.large");
    assert_eq!(facts["cpus"], 2);
    assert_eq!(facts["variant"], "aws-k8s-1.33");
    assert!(imds
        .requests()
        .iter()
        .all(|r| r.method != "GET" || r.valid_token));

    // A live change: `berth-cluster-agent apply` renders from the API and the recorded facts
    // (no IMDS: the emulator is gone), rewrites config.json and restarts a started kubelet.
    drop(imds);
    set(&socket, json!({"kubernetes": {"max-pods": 42}}));
    let apply_args = WrapApply::try_parse_from([
        "x",
        "--socket-path",
        socket.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
    ])
    .unwrap()
    .apply;
    let units = RecordingSystemd::with_active(&["kubelet.service"]);
    let applied = live::from_api(&apply_args, &units).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&read("etc/kubernetes/kubelet/config.json")).unwrap();
    assert_eq!(config["maxPods"], 42);
    assert_eq!(
        config["providerID"], "aws:///eu-central-1a/i-0123456789abcdef0",
        "facts from the record"
    );
    assert_eq!(
        applied.changed,
        [root.path().join("etc/kubernetes/kubelet/config.json")]
    );
    assert_eq!(units.jobs(), [(Job::Restart, "kubelet.service".to_owned())]);
    // The same settings again: nothing changes, nothing restarts.
    let again = live::from_api(&apply_args, &units).unwrap();
    assert_eq!(again, live::Applied::default());
    assert_eq!(units.jobs().len(), 1);
}

#[test]
fn boot_without_kubernetes_settings_does_nothing() {
    let (socket, _api_dir) = api(json!({"motd": "hi"}));
    let root = tempfile::tempdir().unwrap();
    let args = Wrap::try_parse_from([
        "x",
        "--socket-path",
        socket.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
    ])
    .unwrap()
    .boot;
    let outcome = boot::run(&args).unwrap();
    assert_eq!(outcome, boot::Outcome::default());
    assert!(!root.path().join("etc").exists());
}

#[test]
fn boot_renders_the_ecs_config_off_ec2() {
    let (socket, _api_dir) = api(json!({
        "ecs": {"cluster": "berth-ecs", "awsvpc-block-imds": true}
    }));
    let root = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write("usr/lib/os-release", "ID=berth\nVARIANT_ID=aws-ecs\n");
    let args = Wrap::try_parse_from([
        "x",
        "--socket-path",
        socket.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
        "--no-start",
    ])
    .unwrap()
    .boot;
    let outcome = boot::run(&args).unwrap();
    assert_eq!(
        outcome.written,
        [root.path().join(cluster_agent::paths::ECS_CONFIG)]
    );
    assert!(outcome.started.is_empty());
    let config =
        std::fs::read_to_string(root.path().join(cluster_agent::paths::ECS_CONFIG)).unwrap();
    assert!(config.contains("ECS_CLUSTER=berth-ecs\n"), "{config}");
    assert!(config.contains("ECS_AWSVPC_BLOCK_IMDS=true\n"), "{config}");
    assert!(
        config.contains(r#"ECS_INSTANCE_ATTRIBUTES={"berth.variant":"aws-ecs"}"#),
        "{config}"
    );
}
