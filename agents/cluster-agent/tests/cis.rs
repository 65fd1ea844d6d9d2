//! The CIS Kubernetes Benchmark's worker checks (agents/cis) over what the agent renders:
//! every Kubernetes golden case, rendered by the real binary into a fresh root next to the
//! image's `kubelet.service` (installed 0600 by os-build), must pass every automated check
//! except the kube-proxy ones, which skip (no kube-proxy on the host; EKS runs it as a
//! DaemonSet). Then single values are broken to show the same run fails on them.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use cis::{Benchmark, CheckResult, Mode, CHECKS};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Kubernetes cases of tests/fixtures.
fn k8s_cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(crate_dir().join("tests/fixtures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("settings.json").is_file())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("eks")
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "{cases:?}");
    cases
}

/// Renders `case` under a new root with the image's kubelet.service at mode 0600.
fn render(case: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-cluster-agent"));
    cmd.arg("render")
        .arg("--settings")
        .arg(case.join("settings.json"))
        .arg("--facts")
        .arg(case.join("facts.json"))
        .arg("--out")
        .arg(root.path());
    if let Ok(v) = fs::read_to_string(case.join("kubelet-version")) {
        cmd.arg("--kubelet-version").arg(v.trim());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        case.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = root.path().join("usr/lib/systemd/system/kubelet.service");
    fs::create_dir_all(unit.parent().unwrap()).unwrap();
    fs::copy(crate_dir().join("units/kubelet.service"), &unit).unwrap();
    fs::set_permissions(&unit, fs::Permissions::from_mode(0o600)).unwrap();
    root
}

/// Checks whose files the test user owns: they pass only when the tests run as root.
const OWNERSHIP: [&str; 4] = ["4.1.2", "4.1.6", "4.1.8", "4.1.10"];
/// kube-proxy is not on the host: these skip.
const KUBE_PROXY: [&str; 3] = ["4.1.3", "4.1.4", "4.3.1"];

/// The automated checks of both levels that do not pass: `(id, result)`.
fn not_passing(root: &Path) -> Vec<(&'static str, CheckResult)> {
    let host = cis::HostRoot::new(root);
    let as_root = fs::metadata(root).unwrap().uid_is_root();
    CHECKS
        .iter()
        .filter(|c| c.benchmark == Benchmark::Kubernetes && c.mode == Mode::Automated)
        .filter(|c| as_root || !OWNERSHIP.contains(&c.id))
        .map(|c| (c.id, (c.run)(&host)))
        .filter(|(id, r)| match r {
            CheckResult::Pass => false,
            CheckResult::Skip(reason) => {
                !(KUBE_PROXY.contains(id) && reason.contains("no kube-proxy on the host"))
            }
            CheckResult::Fail(_) => true,
        })
        .collect()
}

trait UidIsRoot {
    fn uid_is_root(&self) -> bool;
}

impl UidIsRoot for fs::Metadata {
    fn uid_is_root(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.uid() == 0
    }
}

/// Failures a case asks for through a setting, with the reason.
const USER_CHOICES: [(&str, &str, &str); 1] = [(
    "eks-custom-1.33",
    "4.2.9",
    "settings.kubernetes.server-tls-bootstrap = false: kubelet serves a self-signed certificate",
)];

#[test]
fn every_rendered_kubernetes_case_passes_the_automated_worker_checks() {
    for case in k8s_cases() {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let root = render(&case);
        let failing: Vec<&str> = not_passing(root.path())
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let expected: Vec<&str> = USER_CHOICES
            .iter()
            .filter(|(c, _, _)| *c == name)
            .map(|(_, id, _)| *id)
            .collect();
        assert_eq!(failing, expected, "{name}");
    }
}

const CONFIG: &str = "etc/kubernetes/kubelet/config.json";

/// Edits the rendered kubelet config.
fn edit(root: &Path, f: &dyn Fn(&mut serde_json::Value)) {
    let path = root.join(CONFIG);
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn a_wrong_value_in_the_rendered_files_fails_its_check() {
    let case = crate_dir().join("tests/fixtures/eks-m5-large-1.33");
    let failing = |root: &Path| -> Vec<&'static str> {
        not_passing(root)
            .into_iter()
            .map(|(id, r)| {
                assert!(matches!(r, CheckResult::Fail(_)), "{id}: {r:?}");
                id
            })
            .collect()
    };
    type Mutation = (&'static str, Box<dyn Fn(&Path)>);
    let mutations: Vec<Mutation> = vec![
        (
            "4.1.1",
            Box::new(|root: &Path| {
                let unit = root.join("usr/lib/systemd/system/kubelet.service");
                fs::set_permissions(unit, fs::Permissions::from_mode(0o644)).unwrap();
            }),
        ),
        (
            "4.1.9",
            Box::new(|root: &Path| {
                fs::set_permissions(root.join(CONFIG), fs::Permissions::from_mode(0o644)).unwrap();
            }),
        ),
        (
            "4.2.10",
            Box::new(|root: &Path| edit(root, &|v| v["rotateCertificates"] = false.into())),
        ),
        (
            "4.2.12",
            Box::new(|root: &Path| {
                edit(root, &|v| {
                    v["tlsCipherSuites"]
                        .as_array_mut()
                        .unwrap()
                        .push("TLS_RSA_WITH_AES_128_GCM_SHA256".into())
                })
            }),
        ),
        (
            "4.2.13",
            Box::new(|root: &Path| {
                edit(root, &|v| {
                    v.as_object_mut().unwrap().remove("podPidsLimit");
                })
            }),
        ),
        (
            "4.2.14",
            Box::new(|root: &Path| edit(root, &|v| v["seccompDefault"] = false.into())),
        ),
    ];
    for (id, mutate) in mutations {
        let root = render(&case);
        mutate(root.path());
        assert_eq!(failing(root.path()), [id]);
    }
}
