//! `apiclient report cis|cis-k8s` against apiserver running the CIS checks on fixture trees.

// Test helpers: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::Path;

const HARDENED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../agents/cis/tests/fixtures/hardened"
);

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn report_cis_passes_on_the_hardened_fixture() {
    let s = Server::start(&["--cis-root", HARDENED]);
    let text = s.ok(&["report", "cis"]);
    assert!(
        text.starts_with("Benchmark name:  CIS Bottlerocket Benchmark\n"),
        "{text}"
    );
    assert!(text.contains("\nBenchmark level: 1\n"), "{text}");
    assert!(text.contains("\nStatus:          PASS\n"), "{text}");
    assert!(text.contains("\nFailed:          0\n"), "{text}");
    assert!(text.contains(
        "\n[PASS] 1.4.2     Ensure address space layout randomization (ASLR) is enabled (Level 1 - Automated)\n"
    ));
    assert!(
        text.contains("\n[PASS] 1.3.1     Ensure dm-verity is configured (Level 1 - Automated)\n")
    );
    assert!(text.contains(
        "\n[SKIP] 1.2.1     Ensure software update repositories are configured (Level 1 - Manual)\n"
    ));
    // Level 1 leaves the Level 2 checks out; -l 2 adds them.
    assert!(!text.contains("Ensure user namespaces are disabled"));
    let text = s.ok(&["report", "cis", "-l", "2"]);
    assert!(text.contains(
        "\n[PASS] 1.4.4     Ensure user namespaces are disabled (Level 2 - Automated)\n"
    ));
    assert!(text.contains("\nStatus:          PASS\n"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["report", "cis", "-l", "2", "-f", "json"])).unwrap();
    assert_eq!(json["status"], "PASS");
    assert_eq!(json["level"], 2);
    assert_eq!(json["failed"], 0);
    assert!(json["results"].as_array().unwrap().len() > 30);

    let text = s.ok(&["report", "cis-k8s"]);
    assert!(
        text.starts_with("Benchmark name:  CIS Kubernetes Benchmark (Worker Node)\n"),
        "{text}"
    );
    assert!(text.contains(
        "\n[PASS] 4.2.1     Ensure that the --anonymous-auth argument is set to false (Level 1 - Automated)\n"
    ));
}

#[test]
fn report_cis_fails_the_broken_check() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(Path::new(HARDENED), dir.path());
    std::fs::write(dir.path().join("proc/sys/kernel/randomize_va_space"), "0\n").unwrap();
    let root = dir.path().to_str().unwrap();
    let s = Server::start(&["--cis-root", root]);
    let text = s.ok(&["report", "cis", "-l", "1"]);
    assert!(text.contains("\nStatus:          FAIL\n"), "{text}");
    assert!(text.contains("\nFailed:          1\n"), "{text}");
    assert!(text.contains(
        "\n[FAIL] 1.4.2     Ensure address space layout randomization (ASLR) is enabled (Level 1 - Automated)\n"
    ));
    assert!(text.contains("[FAIL] 1.4.2: kernel.randomize_va_space = 0 (want 2)"));
    assert!(text.contains("\n[PASS] 1.4.1     Ensure setuid programs do not create core dumps"));
    let json: serde_json::Value =
        serde_json::from_str(&s.ok(&["report", "cis", "-f", "json"])).unwrap();
    assert_eq!(json["status"], "FAIL");
}

#[test]
fn report_cis_rejects_bad_parameters() {
    let s = Server::start(&["--cis-root", HARDENED]);
    let (code, body) = s.http("GET", "/report/cis?type=bottlerocket&level=2", None);
    assert_eq!(code, 200);
    assert!(body.contains("Benchmark level: 2"));
    let (code, body) = s.http("GET", "/report/cis-k8s?format=json", None);
    assert_eq!(code, 200);
    assert!(body.contains("CIS Kubernetes Benchmark"));
    for (uri, what) in [
        ("/report/cis?level=3", "'level' must be 1 or 2"),
        (
            "/report/cis?type=fips",
            "'type' must be bottlerocket or kubernetes",
        ),
        ("/report/cis?format=yaml", "'format' must be text or json"),
        ("/report/cis-k8s?type=bottlerocket", "'type'"),
    ] {
        let (code, body) = s.http("GET", uri, None);
        assert_eq!(code, 400, "{uri}");
        assert!(body.contains(what), "{uri}: {body}");
    }
}
