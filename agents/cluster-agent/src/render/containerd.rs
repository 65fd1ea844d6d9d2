//! containerd's base runtime spec (`/etc/containerd/base-runtime-spec.json`): the OCI spec
//! the CRI plugin starts every pod container from (`base_runtime_spec` of the `runc` runtime
//! in `/etc/containerd/config.toml`, boot-config's `containerd-config` template).
//!
//! The spec is containerd's Linux default as nodeadm writes it, with nodeadm's open-files
//! limit (`RLIMIT_NOFILE` 65536 soft, 1048576 hard), and `settings.oci-defaults` applied over
//! it the way Bottlerocket applies it: `capabilities.<name> = true` adds a capability to the
//! default set, `false` removes it; `resource-limits.<name>` sets that limit (`-1`:
//! unlimited). Privileged containers still get every capability (CRI's rule).

use super::{to_json, OutputFile, RenderError};
use crate::paths;
use serde_json::{json, Value};
use settings_api::model::{OciDefaults, ResourceLimit};
use std::collections::BTreeMap;

/// containerd's default capabilities for a container (what Docker grants too).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// nodeadm's open-files limit: soft 65536, hard 1048576 (without it a container inherits
/// containerd's own limit).
const DEFAULT_NOFILE: (u64, u64) = (65536, 1_048_576);

/// `settings.oci-defaults.resource-limits` names (Bottlerocket's) and the rlimit each sets.
fn rlimit_type(name: &str) -> Option<&'static str> {
    Some(match name {
        "max-address-space" => "RLIMIT_AS",
        "max-core-file-size" => "RLIMIT_CORE",
        "max-cpu-time" => "RLIMIT_CPU",
        "max-data-size" => "RLIMIT_DATA",
        "max-file-locks" => "RLIMIT_LOCKS",
        "max-file-size" => "RLIMIT_FSIZE",
        "max-locked-memory" => "RLIMIT_MEMLOCK",
        "max-msgqueue-size" => "RLIMIT_MSGQUEUE",
        "max-nice-priority" => "RLIMIT_NICE",
        "max-open-files" => "RLIMIT_NOFILE",
        "max-pending-signals" => "RLIMIT_SIGPENDING",
        "max-processes" => "RLIMIT_NPROC",
        "max-realtime-priority" => "RLIMIT_RTPRIO",
        "max-realtime-timeout" => "RLIMIT_RTTIME",
        "max-resident-set" => "RLIMIT_RSS",
        "max-stack-size" => "RLIMIT_STACK",
        _ => return None,
    })
}

/// `net-bind-service` -> `CAP_NET_BIND_SERVICE`.
fn capability_constant(name: &str) -> String {
    format!("CAP_{}", name.replace('-', "_").to_ascii_uppercase())
}

/// The capabilities containers get: the default set with the settings applied, sorted.
fn capabilities(defaults: Option<&OciDefaults>) -> Vec<String> {
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    for (name, enabled) in defaults
        .and_then(|d| d.capabilities.as_ref())
        .into_iter()
        .flatten()
    {
        let cap = capability_constant(name.as_ref());
        caps.retain(|c| *c != cap);
        if *enabled {
            caps.push(cap);
        }
    }
    caps.sort();
    caps
}

/// The rlimits, by type: nodeadm's open-files limit unless set, then the settings.
fn rlimits(
    defaults: Option<&OciDefaults>,
) -> Result<BTreeMap<&'static str, (u64, u64)>, RenderError> {
    let mut limits = BTreeMap::from([("RLIMIT_NOFILE", DEFAULT_NOFILE)]);
    for (name, limit) in defaults
        .and_then(|d| d.resource_limits.as_ref())
        .into_iter()
        .flatten()
    {
        // The model admits only names this maps; a new one there must be added here.
        let kind = rlimit_type(name.as_ref()).ok_or_else(|| RenderError::InvalidSetting {
            key: format!("settings.oci-defaults.resource-limits.{}", name.as_ref()),
            reason: "no OCI rlimit for this name; it cannot be applied".to_string(),
        })?;
        limits.insert(
            kind,
            (
                ResourceLimit::as_rlimit(limit.soft_limit),
                ResourceLimit::as_rlimit(limit.hard_limit),
            ),
        );
    }
    Ok(limits)
}

/// The base runtime spec as JSON.
pub fn base_runtime_spec(defaults: Option<&OciDefaults>) -> Result<Value, RenderError> {
    let caps = capabilities(defaults);
    let rlimits: Vec<Value> = rlimits(defaults)?
        .into_iter()
        .map(|(kind, (soft, hard))| json!({ "type": kind, "soft": soft, "hard": hard }))
        .collect();
    Ok(json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": { "uid": 0, "gid": 0 },
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "rlimits": rlimits,
            "noNewPrivileges": true,
        },
        "root": { "path": "rootfs" },
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
        ],
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": [
                { "type": "pid" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" },
                { "type": "network" },
            ],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }))
}

/// `/etc/containerd/base-runtime-spec.json`, readable by all (nothing secret in it).
pub fn base_runtime_spec_file(defaults: Option<&OciDefaults>) -> Result<OutputFile, RenderError> {
    Ok(OutputFile::new(
        paths::CONTAINERD_BASE_RUNTIME_SPEC,
        0o644,
        to_json(
            "containerd base runtime spec",
            &base_runtime_spec(defaults)?,
        )?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use settings_api::model::Settings;

    fn oci(v: serde_json::Value) -> OciDefaults {
        Settings::from_json(&json!({ "oci-defaults": v }))
            .expect("valid settings")
            .oci_defaults
            .expect("oci-defaults")
    }

    #[test]
    fn defaults_are_containerds_caps_and_nodeadms_open_files_limit() {
        let spec = base_runtime_spec(None).expect("render");
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("list");
        assert_eq!(caps.len(), 14);
        assert!(caps.contains(&json!("CAP_NET_RAW")));
        assert_eq!(
            spec["process"]["rlimits"],
            json!([{"type": "RLIMIT_NOFILE", "soft": 65536, "hard": 1048576}])
        );
    }

    #[test]
    fn oci_defaults_add_and_remove_capabilities_and_set_limits() {
        let d = oci(json!({
            "capabilities": {"net-raw": false, "sys-ptrace": true},
            "resource-limits": {
                "max-open-files": {"hard-limit": 4096, "soft-limit": 1024},
                "max-processes": {"hard-limit": -1, "soft-limit": 2048}
            }
        }));
        let spec = base_runtime_spec(Some(&d)).expect("render");
        for set in ["bounding", "effective", "permitted"] {
            let caps = &spec["process"]["capabilities"][set];
            assert!(!caps.as_array().unwrap().contains(&json!("CAP_NET_RAW")));
            assert!(caps.as_array().unwrap().contains(&json!("CAP_SYS_PTRACE")));
        }
        assert_eq!(
            spec["process"]["rlimits"],
            json!([
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
                {"type": "RLIMIT_NPROC", "soft": 2048, "hard": u64::MAX}
            ])
        );
    }

    #[test]
    fn every_model_limit_name_has_an_rlimit() {
        for &name in settings_api::model::RLIMIT_NAMES {
            // The model accepts the name, and the renderer maps it.
            let d = oci(json!({"resource-limits": {name: {"hard-limit": 1, "soft-limit": 1}}}));
            assert!(rlimit_type(name).is_some(), "{name}");
            let limits = rlimits(Some(&d)).expect("mapped");
            assert_eq!(limits.len(), if name == "max-open-files" { 1 } else { 2 });
        }
    }
}
