//! Facts about a cluster node (aws-k8s and aws-ecs variants): what berth-cluster-agent
//! rendered, whether containerd / docker answer on their sockets, and what the image says is
//! missing (whether kubelet's or the ECS agent's unit was started is systemd's to say:
//! berth-cluster-agent logs it). Plain text scans of the files, like the rest of the probe (no
//! JSON library in it): the files are the agent's pretty-printed output.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The value after `"key":` in pretty-printed JSON: a number, `true`/`false`, or a string
/// without its quotes.
pub fn json_scalar(text: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let rest = text[text.find(&needle)? + needle.len()..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        return Some(s[..s.find('"')?].to_string());
    }
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// The strings of the array after `"key":`, joined with `,`.
pub fn json_string_list(text: &str, key: &str) -> Option<String> {
    let needle = format!("\"{key}\":");
    let rest = text[text.find(&needle)? + needle.len()..].trim_start();
    let body = &rest.strip_prefix('[')?[..rest.find(']')? - 1];
    let items: Vec<&str> = body
        .split(',')
        .map(|s| s.trim().trim_matches('"'))
        .filter(|s| !s.is_empty())
        .collect();
    Some(items.join(","))
}

/// Speaks the first step of HTTP/2 (what gRPC runs on) to a Unix socket: the client preface
/// and an empty SETTINGS frame. A gRPC server answers with its own SETTINGS frame.
pub fn http2_answers(socket: &Path) -> Result<(), String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(5));
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    s.write_all(&hello).map_err(|e| e.to_string())?;
    let mut header = [0u8; 9];
    s.read_exact(&mut header).map_err(|e| e.to_string())?;
    if header[3] == 4 {
        Ok(())
    } else {
        Err(format!("first frame has type {}, not SETTINGS", header[3]))
    }
}

/// `GET path` over HTTP/1.1 on a Unix socket (docker's API): the status line and the body
/// as text. The request asks the server to close, so the answer ends at EOF.
pub fn http1_get(socket: &Path, path: &str) -> Result<(String, String), String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(10));
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header in {} bytes", answer.len()))?;
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// The value of `NAME=` in a systemd environment file.
fn env_value(text: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(str::to_string)
}

/// Docker's answer to `GET /_ping` (`OK`) and the engine version from `GET /version`.
fn docker(root: &Path) -> (Option<String>, Option<String>) {
    let socket = root.join("run/docker.sock");
    if !socket.exists() {
        return (None, None);
    }
    let ping = match http1_get(&socket, "/_ping") {
        Ok((status, body)) if status.contains(" 200 ") => body.trim().to_string(),
        Ok((status, _)) => format!("error: {status}"),
        Err(e) => format!("error: {e}"),
    };
    let version = http1_get(&socket, "/version")
        .ok()
        .and_then(|(_, body)| json_scalar(&body, "Version"));
    (Some(ping), version)
}

fn read(root: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(root.join(rel)).ok()
}

fn mode(root: &Path, rel: &str) -> Option<String> {
    let m = std::fs::metadata(root.join(rel)).ok()?;
    Some(format!(
        "{:o}",
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
    ))
}

/// What containerd's CRI plugin says about itself (`Status` and `ImageStatus` over gRPC):
/// its sandbox image, CDI, discard_unpacked_layers and runc's base runtime spec from the
/// effective configuration, and the sandbox image as the CRI store holds it. `None`s when
/// containerd is not running here.
fn cri_facts(root: &Path) -> Vec<(&'static str, Option<String>)> {
    let socket = root.join("run/containerd/containerd.sock");
    let keys = [
        "cri-sandbox-image",
        "cri-enable-cdi",
        "cri-discard-unpacked-layers",
        "cri-runc-base-runtime-spec",
        "cri-sandbox-image-status",
    ];
    if !socket.exists() {
        return keys.into_iter().map(|k| (k, None)).collect();
    }
    let config = match crate::cri::status_info(&socket) {
        Ok(info) => info.get("config").cloned().unwrap_or_default(),
        Err(e) => {
            let error = Some(format!("error: {e}"));
            return keys.into_iter().map(|k| (k, error.clone())).collect();
        }
    };
    let field = |key: &str| json_scalar(&config, key);
    let sandbox = field("sandboxImage");
    // runc's entry in the runtimes map (the deprecated default runtime comes first, empty).
    let runc = config
        .find("\"runc\":{")
        .and_then(|at| json_scalar(&config[at..], "baseRuntimeSpec"));
    let status = sandbox
        .as_deref()
        .map(|image| match crate::cri::image_status(&socket, image) {
            Ok(Some(found)) => format!("{} pinned={}", found.tags.join(","), found.pinned),
            Ok(None) => "absent".to_string(),
            Err(e) => format!("error: {e}"),
        });
    vec![
        (keys[0], sandbox),
        (keys[1], field("enableCDI")),
        (keys[2], field("discardUnpackedLayers")),
        (keys[3], runc),
        (keys[4], status),
    ]
}

/// `soft/hard` of RLIMIT_NOFILE in a runtime spec (JSON text).
fn nofile(spec: &str) -> Option<String> {
    let at = spec.find("\"RLIMIT_NOFILE\"")?;
    // The entry is one JSON object; its fields may come before or after the type.
    let start = spec[..at].rfind('{')?;
    let end = at + spec[at..].find('}')?;
    let entry = &spec[start..=end];
    Some(format!(
        "{}/{}",
        json_scalar(entry, "soft")?,
        json_scalar(entry, "hard")?
    ))
}

/// The names set in a systemd environment file, comma-separated.
fn env_names(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.split_once('=').map(|(name, _)| name))
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster facts, in print order (`None` prints as `none`).
pub fn facts(root: &Path) -> Vec<(&'static str, Option<String>)> {
    let config = read(root, "etc/kubernetes/kubelet/config.json");
    let field = |key: &str| config.as_deref().and_then(|c| json_scalar(c, key));
    let env = read(root, "etc/kubernetes/kubelet/environment");
    let kubeconfig = read(root, "var/lib/kubelet/kubeconfig");
    let bootstrap = read(root, "var/lib/kubelet/bootstrap-kubeconfig");
    let socket = root.join("run/containerd/containerd.sock");
    let containerd = if socket.exists() {
        Some(match http2_answers(&socket) {
            Ok(()) => "http2".to_string(),
            Err(e) => format!("error: {e}"),
        })
    } else {
        None
    };
    let missing = read(root, "usr/share/berth/missing-artifacts.json").map(|t| {
        t.lines()
            .filter_map(|l| json_scalar(l, "name"))
            .collect::<Vec<_>>()
            .join(",")
    });
    let containerd_config = read(root, "etc/containerd/config.toml");
    let base_spec = read(root, "etc/containerd/base-runtime-spec.json");
    let ecs_config = read(root, "etc/ecs/ecs.config");
    let ecs = |name: &str| ecs_config.as_deref().and_then(|t| env_value(t, name));
    let (docker_ping, docker_version) = docker(root);
    let mut out = vec![
        ("kubelet-max-pods", field("maxPods")),
        ("kubelet-provider-id", field("providerID")),
        (
            "kubelet-cluster-dns",
            config
                .as_deref()
                .and_then(|c| json_string_list(c, "clusterDNS")),
        ),
        ("kubelet-cgroup-driver", field("cgroupDriver")),
        (
            "kubelet-args",
            env.as_deref()
                .and_then(|e| e.lines().find_map(|l| l.strip_prefix("KUBELET_ARGS=")))
                .map(str::to_string),
        ),
        (
            "kubeconfig-server",
            kubeconfig
                .as_deref()
                .and_then(|k| k.lines().find_map(|l| l.trim().strip_prefix("server:")))
                .map(|s| s.trim().trim_matches('"').to_string()),
        ),
        ("kubeconfig-mode", mode(root, "var/lib/kubelet/kubeconfig")),
        // EKS Anywhere (authentication-mode tls): the bootstrap kubeconfig kubelet starts
        // from. Only the token id (the part before the dot) is printed, never the secret.
        (
            "bootstrap-kubeconfig-server",
            bootstrap
                .as_deref()
                .and_then(|k| k.lines().find_map(|l| l.trim().strip_prefix("server:")))
                .map(|s| s.trim().trim_matches('"').to_string()),
        ),
        (
            "bootstrap-kubeconfig-token-id",
            bootstrap
                .as_deref()
                .and_then(|k| k.lines().find_map(|l| l.trim().strip_prefix("token:")))
                .and_then(|t| t.trim().trim_matches('"').split_once('.'))
                .map(|(id, _)| id.to_string()),
        ),
        (
            "bootstrap-kubeconfig-mode",
            mode(root, "var/lib/kubelet/bootstrap-kubeconfig"),
        ),
        (
            "kubernetes-ca-mode",
            mode(root, "etc/kubernetes/pki/ca.crt"),
        ),
        (
            "credential-provider-config-mode",
            mode(root, "etc/eks/image-credential-provider/config.json"),
        ),
        ("containerd-socket", containerd),
        (
            "containerd-sandbox-image",
            containerd_config.as_deref().and_then(|c| {
                c.lines()
                    .find_map(|l| l.trim().strip_prefix("sandbox_image = "))
                    .map(|v| v.trim_matches('"').to_string())
            }),
        ),
        ("base-spec-nofile", base_spec.as_deref().and_then(nofile)),
        (
            "base-spec-mode",
            mode(root, "etc/containerd/base-runtime-spec.json"),
        ),
    ];
    out.extend(cri_facts(root));
    out.extend([
        ("ecs-cluster", ecs("ECS_CLUSTER")),
        ("ecs-instance-attributes", ecs("ECS_INSTANCE_ATTRIBUTES")),
        ("ecs-awsvpc-block-imds", ecs("ECS_AWSVPC_BLOCK_IMDS")),
        ("ecs-disable-privileged", ecs("ECS_DISABLE_PRIVILEGED")),
        ("ecs-logging-drivers", ecs("ECS_AVAILABLE_LOGGING_DRIVERS")),
        ("ecs-selinux-capable", ecs("ECS_SELINUX_CAPABLE")),
        ("ecs-config-names", ecs_config.as_deref().map(env_names)),
        ("ecs-config-mode", mode(root, "etc/ecs/ecs.config")),
        ("docker-ping", docker_ping),
        ("docker-version", docker_version),
        (
            "route-localnet",
            read(root, "proc/sys/net/ipv4/conf/all/route_localnet").map(|v| v.trim().to_string()),
        ),
        ("missing-artifacts", missing),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{
    "cgroupDriver": "systemd",
    "clusterDNS": [
        "10.100.0.10",
        "10.100.0.11"
    ],
    "maxPods": 29,
    "providerID": "aws:///us-west-2a/i-1"
}
"#;

    #[test]
    fn scalars_and_lists_from_pretty_json() {
        assert_eq!(json_scalar(CONFIG, "maxPods").as_deref(), Some("29"));
        assert_eq!(
            json_scalar(CONFIG, "providerID").as_deref(),
            Some("aws:///us-west-2a/i-1")
        );
        assert_eq!(
            json_string_list(CONFIG, "clusterDNS").as_deref(),
            Some("10.100.0.10,10.100.0.11")
        );
        assert_eq!(json_scalar(CONFIG, "nope"), None);
    }

    #[test]
    fn node_facts_from_a_fixture_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        write("etc/kubernetes/kubelet/config.json", CONFIG);
        write(
            "etc/containerd/config.toml",
            "[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"localhost/berth/pause:1\"\n",
        );
        write(
            "etc/containerd/base-runtime-spec.json",
            "{\n    \"process\": {\n        \"rlimits\": [\n            {\n                \"hard\": 1048576,\n                \"soft\": 65536,\n                \"type\": \"RLIMIT_NOFILE\"\n            }\n        ]\n    }\n}\n",
        );
        write(
            "etc/kubernetes/kubelet/environment",
            "KUBELET_ARGS=--node-ip=10.0.1.23 --config=/etc/kubernetes/kubelet/config.json\n",
        );
        write(
            "usr/share/berth/missing-artifacts.json",
            "[\n  {\n    \"name\": \"kubelet\",\n    \"path\": \"/usr/bin/kubelet\"\n  },\n  {\n    \"name\": \"ecr\"\n  }\n]\n",
        );
        let facts: std::collections::BTreeMap<_, _> = facts(root).into_iter().collect();
        assert_eq!(facts["kubelet-max-pods"].as_deref(), Some("29"));
        assert_eq!(
            facts["kubelet-args"].as_deref(),
            Some("--node-ip=10.0.1.23 --config=/etc/kubernetes/kubelet/config.json")
        );
        assert_eq!(facts["missing-artifacts"].as_deref(), Some("kubelet,ecr"));
        assert_eq!(facts["containerd-socket"], None);
        assert_eq!(
            facts["containerd-sandbox-image"].as_deref(),
            Some("localhost/berth/pause:1")
        );
        assert_eq!(facts["base-spec-nofile"].as_deref(), Some("65536/1048576"));
        assert_eq!(facts["cri-sandbox-image"], None, "no containerd here");
        assert_eq!(facts["bootstrap-kubeconfig-token-id"], None);
        write(
            "var/lib/kubelet/bootstrap-kubeconfig",
            "clusters:\n  - cluster:\n      server: \"https://10.20.0.5:6443\"\nusers:\n  - user:\n      token: \"abcdef.0123456789abcdef\"\n",
        );
        let facts: std::collections::BTreeMap<_, _> = super::facts(root).into_iter().collect();
        assert_eq!(
            facts["bootstrap-kubeconfig-server"].as_deref(),
            Some("https://10.20.0.5:6443")
        );
        assert_eq!(
            facts["bootstrap-kubeconfig-token-id"].as_deref(),
            Some("abcdef")
        );
    }

    #[test]
    fn ecs_facts_and_docker_over_http1() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/ecs")).unwrap();
        std::fs::write(
            root.join("etc/ecs/ecs.config"),
            "ECS_AWSVPC_BLOCK_IMDS=true\nECS_CLUSTER=berth-ecs\nECS_INSTANCE_ATTRIBUTES={\"berth.variant\":\"aws-ecs\"}\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        let listener =
            std::os::unix::net::UnixListener::bind(root.join("run/docker.sock")).unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
                "HTTP/1.1 200 OK\r\n\r\n{\"Platform\":{\"Name\":\"\"},\"Version\":\"26.1.5+dfsg1\",\"ApiVersion\":\"1.45\"}",
            ] {
                let (mut c, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") {
                    c.read_exact(&mut byte).unwrap();
                    request.push(byte[0]);
                }
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        let facts: std::collections::BTreeMap<_, _> = facts(root).into_iter().collect();
        server.join().unwrap();
        assert_eq!(facts["ecs-cluster"].as_deref(), Some("berth-ecs"));
        assert_eq!(facts["ecs-awsvpc-block-imds"].as_deref(), Some("true"));
        assert_eq!(
            facts["ecs-instance-attributes"].as_deref(),
            Some(r#"{"berth.variant":"aws-ecs"}"#)
        );
        assert_eq!(facts["ecs-disable-privileged"], None);
        assert_eq!(
            facts["ecs-config-names"].as_deref(),
            Some("ECS_AWSVPC_BLOCK_IMDS,ECS_CLUSTER,ECS_INSTANCE_ATTRIBUTES")
        );
        assert_eq!(facts["docker-ping"].as_deref(), Some("OK"));
        assert_eq!(facts["docker-version"].as_deref(), Some("26.1.5+dfsg1"));
    }

    #[test]
    fn a_silent_socket_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut buf = [0u8; 33];
            c.read_exact(&mut buf).unwrap();
            // An HTTP/1 server would answer like this.
            c.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
        });
        assert!(http2_answers(&path).is_err());
        server.join().unwrap();
    }
}
