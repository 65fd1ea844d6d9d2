use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use super::*;
use crate::dm::{DeviceMapper, TargetStatus};

struct FakeDm;

impl DeviceMapper for FakeDm {
    fn table_status(&self, name: &str) -> io::Result<TargetStatus> {
        assert_eq!(name, "root");
        Ok(TargetStatus {
            target_type: "verity".into(),
            status: "V".into(),
        })
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("readdir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        let kind = e.file_type().expect("type");
        if kind.is_symlink() {
            let target = std::fs::read_link(e.path()).expect("readlink");
            std::os::unix::fs::symlink(target, dst).expect("symlink");
        } else if kind.is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).expect("copy");
        }
    }
}

fn fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    copy_dir(&src, dir.path());
    dir
}

#[test]
fn facts_of_a_booted_berth_host() {
    let root = fixture("booted");
    let facts = facts(root.path(), &FakeDm);
    let keys: Vec<&str> = facts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "root-source",
            "root-fstype",
            "root-ro",
            "root-dm-name",
            "root-dm-target",
            "root-dm-status",
            "etc-fstype",
            "etc-writable",
            "var-fstype",
            "var-partname",
            "private-fstype",
            "private-partname",
            "local-fstype",
            "local-partname",
            "slot",
            "loader-entry",
            "stub-image",
            "secure-boot",
            "lockdown",
            "kernel",
            "machine-id",
            "selinux-enforce",
            "selinux-context",
            "selinux-domains",
            "motd",
            "chrony-servers",
            "sysctl-vm.max_map_count",
            "hostname",
            "etc-hostname",
            "hosts-hostname",
            "proxy-https",
            "proxy-no",
            "dns-servers",
            "dns-search",
            "resolv-conf-link",
            "ca-bundle-certs",
            "ca-bundle-pki",
            "ca-bundle-last-cert-end",
            "containerd-mirrors",
            "containerd-auth",
            "containerd-endpoints",
            "containerd-config-mode",
            "user-data-state",
            "rss-kib-apiserver",
            "rss-kib-chronyd",
            "rss-kib-berth-api-bridge",
            "kubelet-max-pods",
            "kubelet-provider-id",
            "kubelet-cluster-dns",
            "kubelet-cgroup-driver",
            "kubelet-args",
            "kubeconfig-server",
            "kubeconfig-mode",
            "bootstrap-kubeconfig-server",
            "bootstrap-kubeconfig-token-id",
            "bootstrap-kubeconfig-mode",
            "kubernetes-ca-mode",
            "credential-provider-config-mode",
            "containerd-socket",
            "containerd-sandbox-image",
            "base-spec-nofile",
            "base-spec-mode",
            "cri-sandbox-image",
            "cri-enable-cdi",
            "cri-discard-unpacked-layers",
            "cri-runc-base-runtime-spec",
            "cri-sandbox-image-status",
            "ecs-cluster",
            "ecs-instance-attributes",
            "ecs-awsvpc-block-imds",
            "ecs-disable-privileged",
            "ecs-logging-drivers",
            "ecs-selinux-capable",
            "ecs-config-names",
            "ecs-config-mode",
            "docker-ping",
            "docker-version",
            "route-localnet",
            "missing-artifacts",
        ]
    );
    let f: BTreeMap<_, _> = facts.into_iter().collect();
    assert_eq!(f["root-source"], "/dev/mapper/root");
    assert_eq!(f["root-fstype"], "erofs");
    assert_eq!(f["root-ro"], "true");
    assert_eq!(f["root-dm-name"], "root");
    assert_eq!(f["root-dm-target"], "verity");
    assert_eq!(f["root-dm-status"], "V");
    assert_eq!(f["etc-fstype"], "tmpfs");
    assert_eq!(f["etc-writable"], "true");
    assert_eq!(f["var-fstype"], "ext4");
    assert_eq!(f["var-partname"], "data");
    assert_eq!(f["private-partname"], "private");
    assert_eq!(f["slot"], "a");
    assert_eq!(f["loader-entry"], "berth-1.2.0+3.efi");
    assert_eq!(f["stub-image"], "\\EFI\\Linux\\berth-1.2.0+3.efi");
    assert_eq!(f["secure-boot"], "enabled");
    assert_eq!(f["lockdown"], "integrity");
    assert_eq!(f["kernel"], "6.12.107+deb13-amd64");
    assert_eq!(f["machine-id"], "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    assert_eq!(f["selinux-enforce"], "1");
    // The kernel ends the context with a NUL.
    assert_eq!(f["selinux-context"], "system_u:system_r:system_t:s0");
    assert_eq!(f["selinux-domains"], "apiserver:api_t");
    assert_eq!(f["motd"], "Welcome to Berth!");
    assert_eq!(f["chrony-servers"], "10.0.2.2,ntp.example.com");
    assert_eq!(f["sysctl-vm.max_map_count"], "262144");
    assert_eq!(f["user-data-state"], "applied");
    assert_eq!(f["hostname"], "node-1.example.com");
    assert_eq!(f["etc-hostname"], "node-1.example.com");
    assert_eq!(f["hosts-hostname"], "node-1.example.com,node-1");
    assert_eq!(f["proxy-https"], "http://proxy.example.com:3128");
    assert_eq!(
        f["proxy-no"],
        "localhost,127.0.0.1,::1,169.254.169.254,.example.com,10.0.0.0/8"
    );
    assert_eq!(f["dns-servers"], "10.0.2.3,fd00::3,10.0.2.4");
    assert_eq!(f["dns-search"], "example.com,corp.example");
    assert_eq!(
        f["resolv-conf-link"],
        "../run/systemd/resolve/stub-resolv.conf"
    );
    assert_eq!(f["ca-bundle-certs"], "2");
    assert_eq!(f["ca-bundle-pki"], "corp");
    assert_eq!(f["ca-bundle-last-cert-end"], "yrJwItqNv0a0S+BHermYtw==");
    assert_eq!(f["containerd-mirrors"], "docker.io,*");
    assert_eq!(
        f["containerd-auth"],
        "registry-1.docker.io,registry.example.com:5000"
    );
    assert_eq!(
        f["containerd-endpoints"],
        r#"["https://mirror.example.com", "https://mirror2.example.com"];["https://all.example.com"]"#
    );
    assert_eq!(f["rss-kib-apiserver"], "5120");
    // The write test left nothing behind.
    assert_eq!(
        std::fs::read_dir(root.path().join("etc"))
            .expect("etc")
            .count(),
        9
    );
}

#[test]
fn an_empty_root_gives_none_everywhere_but_writability() {
    let root = tempfile::tempdir().expect("tempdir");
    let facts = facts(root.path(), &FakeDm);
    for (k, v) in &facts {
        if k != "etc-writable" {
            assert_eq!(v, NONE, "{k}");
        }
    }
}

#[test]
fn mountinfo_parsing_and_lookup() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/booted/proc/self/mountinfo"),
    )
    .expect("fixture");
    let mounts = parse_mountinfo(&text);
    assert_eq!(mounts.len(), 11);
    assert_eq!(mounts[10].mountpoint, "/var/lib/with space");
    assert_eq!(
        mount_of(&mounts, "/var/log").map(|m| m.mountpoint.as_str()),
        Some("/var")
    );
    assert_eq!(
        mount_of(&mounts, "/variable").map(|m| m.mountpoint.as_str()),
        Some("/")
    );
    assert_eq!(
        mount_of(&mounts, "/var/lib/with space/x").map(|m| m.fstype.as_str()),
        Some("tmpfs")
    );
    assert_eq!(
        mount_of(&mounts, "/usr/bin").map(|m| m.fstype.as_str()),
        Some("erofs")
    );
    assert!(parse_mountinfo("garbage\n1 2 x").is_empty());
}

#[test]
fn stacked_mounts_use_the_last_one() {
    let text = "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 0:5 / /etc rw - ext4 /dev/sda1 rw\n3 1 0:6 / /etc rw - tmpfs tmpfs rw\n";
    let mounts = parse_mountinfo(text);
    assert_eq!(
        mount_of(&mounts, "/etc").map(|m| m.fstype.as_str()),
        Some("tmpfs")
    );
}
