//! The typed settings model, with Bottlerocket's names and shapes.
//!
//! Every field is optional: the same type describes a full live state, a PATCH body and a
//! pending transaction. Input is rejected when a key is unknown (`deny_unknown_fields`) or a
//! value breaks its type's rule; [`Settings::from_json`] reports the dotted key and the reason.

use crate::key::Key;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A value that failed validation.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid setting '{key}': {reason}")]
pub struct ModelError {
    /// Dotted key of the offending value, with the `settings.` prefix.
    pub key: String,
    pub reason: String,
}

/// Defines a string newtype that is validated on deserialization.
macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(&s)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

// ---- validators -------------------------------------------------------------------------

fn dns_label(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("'{s}' must be 1 to {max} characters"));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("'{s}' may only hold letters, digits and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!("'{s}' must not start or end with '-'"));
    }
    Ok(())
}

/// RFC 1123 host name: dot-separated labels, 253 characters at most.
fn hostname(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "host name '{s}' must be 1 to 253 characters (RFC 1123)"
        ));
    }
    for label in s.trim_end_matches('.').split('.') {
        dns_label(label, 63).map_err(|e| format!("host name label {e} (RFC 1123)"))?;
    }
    Ok(())
}

fn host_or_ip(s: &str) -> Result<(), String> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bracketed = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if bracketed.is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()) {
        return Ok(());
    }
    hostname(s)
}

/// `scheme://host[:port][/path]` with a scheme from `schemes`.
fn url_with(s: &str, schemes: &[&str]) -> Result<(), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("'{s}' is not a URL (expected {}://host...)", schemes[0]))?;
    if !schemes.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "URL scheme '{scheme}' is not allowed; use {}",
            schemes.join(" or ")
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if hostport.starts_with('[') {
        match hostport.find(']') {
            Some(end) => {
                let port = &hostport[end + 1..];
                if !port.is_empty() {
                    port_part(port.strip_prefix(':').unwrap_or("x"), s)?;
                }
                &hostport[..=end]
            }
            None => return Err(format!("'{s}' has an unterminated IPv6 address")),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => {
                port_part(p, s)?;
                h
            }
            None => hostport,
        }
    };
    host_or_ip(host).map_err(|e| format!("URL '{s}': {e}"))?;
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("URL '{s}' must not contain whitespace"));
    }
    Ok(())
}

fn port_part(p: &str, s: &str) -> Result<(), String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(format!("URL '{s}' has an invalid port '{p}'")),
    }
}

fn base64(s: &str) -> Result<(), String> {
    let body = s.trim_end_matches('=');
    let ok = s.len() - body.len() <= 2
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '\n' | '\r'));
    if ok {
        Ok(())
    } else {
        Err("value must be base64-encoded".to_string())
    }
}

/// Kubernetes qualified name: optional DNS-subdomain prefix and '/', then a name of up to 63
/// characters made of alphanumerics, '-', '_' and '.', starting and ending alphanumeric.
fn k8s_name_part(s: &str, what: &str, allow_empty: bool) -> Result<(), String> {
    if s.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(format!("{what} must not be empty"))
        };
    }
    if s.len() > 63 {
        return Err(format!("{what} '{s}' is longer than 63 characters"));
    }
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok_chars && ok_ends {
        Ok(())
    } else {
        Err(format!(
            "{what} '{s}' must be alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

fn k8s_label_key(s: &str) -> Result<(), String> {
    let name = match s.split_once('/') {
        Some((prefix, name)) => {
            hostname(prefix).map_err(|e| format!("label key prefix: {e}"))?;
            name
        }
        None => s,
    };
    k8s_name_part(name, "label key name", false)
}

/// Labels in Kubernetes namespaces a kubelet may register with (kubelet's `kubeletLabels`).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// Namespaces (and their subdomains) whose labels a kubelet may set freely.
const KUBELET_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

fn in_namespace(namespace: &str, domain: &str) -> bool {
    namespace == domain || namespace.ends_with(&format!(".{domain}"))
}

/// Whether a kubelet may register with label `key`: the NodeRestriction admission plugin
/// lets it set labels in the `kubernetes.io` / `k8s.io` namespaces only for the well-known
/// ones, and kubelet refuses to start with any other (`--node-labels`).
fn kubelet_may_set(key: &str) -> bool {
    let Some((namespace, _)) = key.split_once('/') else {
        return true;
    };
    let namespace = namespace.to_ascii_lowercase();
    let reserved = in_namespace(&namespace, "kubernetes.io") || in_namespace(&namespace, "k8s.io");
    !reserved
        || KUBELET_LABELS.contains(&key)
        || KUBELET_NAMESPACES
            .iter()
            .any(|ns| in_namespace(&namespace, ns))
}

fn k8s_node_label_key(s: &str) -> Result<(), String> {
    k8s_label_key(s)?;
    if kubelet_may_set(s) {
        Ok(())
    } else {
        Err(format!(
            "kubelet may not set label '{s}': the kubernetes.io / k8s.io namespaces are reserved \
             except node.kubernetes.io/*, kubelet.kubernetes.io/* and the well-known topology, os \
             and arch labels; set it with kubectl or use your own prefix"
        ))
    }
}

fn k8s_label_value(s: &str) -> Result<(), String> {
    k8s_name_part(s, "label value", true)
}

fn k8s_taint_value(s: &str) -> Result<(), String> {
    let (value, effect) = s.rsplit_once(':').unwrap_or(("", s));
    k8s_label_value(value)?;
    match effect {
        "NoSchedule" | "PreferNoSchedule" | "NoExecute" => Ok(()),
        _ => Err(format!(
            "taint '{s}' must be 'value:Effect' with Effect one of NoSchedule, PreferNoSchedule, NoExecute"
        )),
    }
}

fn k8s_quantity(s: &str) -> Result<(), String> {
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    let num_ok = !num.is_empty() && num.parse::<f64>().is_ok();
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    );
    if num_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a Kubernetes quantity (e.g. 100m, 512Mi, 1Gi)"
        ))
    }
}

fn k8s_threshold(s: &str) -> Result<(), String> {
    match s.strip_suffix('%') {
        Some(p) => match p.parse::<f64>() {
            Ok(v) if (0.0..=100.0).contains(&v) => Ok(()),
            _ => Err(format!(
                "threshold '{s}' must be a percentage from 0% to 100%"
            )),
        },
        None => k8s_quantity(s),
    }
}

fn k8s_reserved_resource(s: &str) -> Result<(), String> {
    match s {
        "cpu" | "memory" | "ephemeral-storage" | "pid" => Ok(()),
        _ => Err(format!(
            "reserved resource '{s}' must be one of cpu, memory, ephemeral-storage, pid"
        )),
    }
}

fn k8s_eviction_signal(s: &str) -> Result<(), String> {
    match s {
        "memory.available" | "nodefs.available" | "nodefs.inodesFree" | "imagefs.available"
        | "imagefs.inodesFree" | "pid.available" => Ok(()),
        _ => Err(format!(
            "eviction signal '{s}' must be one of memory.available, nodefs.available, nodefs.inodesFree, imagefs.available, imagefs.inodesFree, pid.available"
        )),
    }
}

fn k8s_cluster_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 100 {
        return Err("cluster name must be 1 to 100 characters".to_string());
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(format!(
            "cluster name '{s}' must start with a letter or digit and hold only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

fn bootstrap_token(s: &str) -> Result<(), String> {
    let ok = s.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && id
                .chars()
                .chain(secret.chars())
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err("bootstrap token must match [a-z0-9]{6}.[a-z0-9]{16}".to_string())
    }
}

fn identifier(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 128 {
        return Err("name must be 1 to 128 characters".to_string());
    }
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
    {
        Ok(())
    } else {
        Err(format!(
            "name '{s}' may only hold letters, digits, '-', '_' and '.'"
        ))
    }
}

fn sysctl_key(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.split(['.', '/']).all(|seg| {
            !seg.is_empty()
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '*'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "sysctl name '{s}' must be dot- or slash-separated segments of letters, digits, '_' and '-'"
        ))
    }
}

fn ntp_server(s: &str) -> Result<(), String> {
    if s.contains("://") {
        url_with(s, &["ntp", "http", "https"])
    } else {
        host_or_ip(s)
    }
}

fn proxy(s: &str) -> Result<(), String> {
    if s.contains("://") {
        url_with(s, &["http", "https"])
    } else {
        url_with(&format!("http://{s}"), &["http"])
    }
}

fn no_proxy_entry(s: &str) -> Result<(), String> {
    let host = s.trim_start_matches('.').trim_start_matches("*.");
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    if s == "*" || host_or_ip(host).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "no-proxy entry '{s}' must be a host, domain, IP or CIDR"
        ))
    }
}

fn version_lock(s: &str) -> Result<(), String> {
    if s == "latest" {
        return Ok(());
    }
    let v = s.strip_prefix('v').unwrap_or(s);
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.parse::<u64>().is_ok())
    {
        Ok(())
    } else {
        Err(format!(
            "version lock '{s}' must be 'latest' or a version such as v1.2.3"
        ))
    }
}

fn aws_region(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.split('-').count() >= 3;
    if ok {
        Ok(())
    } else {
        Err(format!("AWS region '{s}' must look like us-west-2"))
    }
}

fn image_ref(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 1024 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "image reference '{s}' must be non-empty and hold no whitespace"
        ))
    } else {
        Ok(())
    }
}

fn capability(s: &str) -> Result<(), String> {
    const CAPS: &[&str] = &[
        "audit-control",
        "audit-read",
        "audit-write",
        "block-suspend",
        "bpf",
        "checkpoint-restore",
        "chown",
        "dac-override",
        "dac-read-search",
        "fowner",
        "fsetid",
        "ipc-lock",
        "ipc-owner",
        "kill",
        "lease",
        "linux-immutable",
        "mac-admin",
        "mac-override",
        "mknod",
        "net-admin",
        "net-bind-service",
        "net-broadcast",
        "net-raw",
        "perfmon",
        "setfcap",
        "setgid",
        "setpcap",
        "setuid",
        "sys-admin",
        "sys-boot",
        "sys-chroot",
        "sys-module",
        "sys-nice",
        "sys-pacct",
        "sys-ptrace",
        "sys-rawio",
        "sys-resource",
        "sys-time",
        "sys-tty-config",
        "syslog",
        "wake-alarm",
    ];
    if CAPS.contains(&s) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a Linux capability name (kebab-case, e.g. net-bind-service)"
        ))
    }
}

/// The resource limit names of `settings.oci-defaults.resource-limits` (Bottlerocket's).
pub const RLIMIT_NAMES: &[&str] = &[
    "max-address-space",
    "max-core-file-size",
    "max-cpu-time",
    "max-data-size",
    "max-file-locks",
    "max-file-size",
    "max-locked-memory",
    "max-msgqueue-size",
    "max-nice-priority",
    "max-open-files",
    "max-pending-signals",
    "max-processes",
    "max-realtime-priority",
    "max-realtime-timeout",
    "max-resident-set",
    "max-stack-size",
];

fn rlimit_name(s: &str) -> Result<(), String> {
    if RLIMIT_NAMES.contains(&s) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a resource limit name (e.g. max-open-files)"
        ))
    }
}

/// A network interface name (at most 15 bytes, the kernel's IFNAMSIZ less the NUL) or an
/// nftables wildcard: such a name prefix followed by `*` (`veth*`, `eni*`).
fn interface_pattern(s: &str) -> Result<(), String> {
    let name = s.strip_suffix('*').unwrap_or(s);
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface '{s}' must be a name of 1 to 15 characters, optionally followed by '*' (e.g. eth0, veth*)"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("interface '{s}' is not a valid interface name"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "interface '{s}' may only hold letters, digits, '-', '_' and '.', and '*' at the end"
        ));
    }
    Ok(())
}

/// A network in CIDR notation whose tenth address lies inside it (where the cluster DNS
/// service lives): the network address itself (no host bits set), prefix at most /28 (IPv4)
/// or /124 (IPv6).
fn service_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("'{s}' is not a CIDR such as 10.100.0.0/16 or fd00:ec2::/108");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u32 = prefix.parse().map_err(|_| bad())?;
    let (bits, max) = match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    if prefix > max - 4 {
        return Err(format!(
            "'{s}': the prefix must be at most /{} so the network holds the cluster DNS address (the tenth)",
            max - 4
        ));
    }
    let host_bits = max - prefix;
    if bits & ((1u128 << host_bits) - 1) != 0 {
        return Err(format!(
            "'{s}' has host bits set; write the network address (e.g. 10.100.0.0/16)"
        ));
    }
    Ok(())
}

fn non_empty(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("value must not be empty".to_string())
    } else {
        Ok(())
    }
}

validated_string!(
    /// RFC 1123 host name.
    Hostname, hostname);
validated_string!(
    /// Host name or IP address.
    HostOrIp, host_or_ip);
validated_string!(
    /// `https://` URL.
    HttpsUrl, |s| url_with(s, &["https"]));
validated_string!(
    /// `http://` or `https://` URL.
    HttpUrl, |s| url_with(s, &["http", "https"]));
validated_string!(
    /// Base64-encoded data.
    Base64, base64);
validated_string!(
    /// Base64-encoded PEM certificates (`settings.pki.<name>.data`).
    PemBundle, |s| crate::pem::decode_certificates(s)
        .map(drop)
        .map_err(|e| format!("value must be base64-encoded PEM certificates: {e}")));
validated_string!(
    /// Kubernetes label key (`[prefix/]name`).
    LabelKey, k8s_label_key);
validated_string!(
    /// A label kubelet registers its node with: a label key kubelet may set.
    NodeLabelKey, k8s_node_label_key);
validated_string!(
    /// Kubernetes label value.
    LabelValue, k8s_label_value);
validated_string!(
    /// Kubernetes taint `value:Effect`.
    TaintValue, k8s_taint_value);
validated_string!(
    /// Kubernetes resource quantity.
    Quantity, k8s_quantity);
validated_string!(
    /// Eviction threshold: a percentage or a quantity.
    Threshold, k8s_threshold);
validated_string!(
    /// Reserved resource name.
    ReservedResource, k8s_reserved_resource);
validated_string!(
    /// Kubelet eviction signal.
    EvictionSignal, k8s_eviction_signal);
validated_string!(
    /// Kubernetes or ECS cluster name.
    ClusterName, k8s_cluster_name);
validated_string!(
    /// Kubernetes bootstrap token.
    BootstrapToken, bootstrap_token);
validated_string!(
    /// A name used as a map key (host container, module, bundle, ...).
    Identifier, identifier);
validated_string!(
    /// A sysctl name such as `net.ipv4.ip_forward`.
    SysctlKey, sysctl_key);
validated_string!(
    /// An NTP server: host name, IP or URL.
    NtpServer, ntp_server);
validated_string!(
    /// Proxy: `host:port` or an http(s) URL.
    Proxy, proxy);
validated_string!(
    /// A no-proxy entry: host, domain, IP or CIDR.
    NoProxyEntry, no_proxy_entry);
validated_string!(
    /// Version lock: `latest` or `v1.2.3`.
    VersionLock, version_lock);
validated_string!(
    /// AWS region.
    AwsRegion, aws_region);
validated_string!(
    /// Container image reference.
    ImageRef, image_ref);
validated_string!(
    /// Linux capability in kebab-case.
    Capability, capability);
validated_string!(
    /// Resource limit name.
    RlimitName, rlimit_name);
validated_string!(
    /// A non-empty string.
    NonEmpty, non_empty);
validated_string!(
    /// A network interface name, or a prefix and `*` (nftables' wildcard).
    InterfacePattern, interface_pattern);
validated_string!(
    /// A Kubernetes service CIDR: a network address and prefix, IPv4 or IPv6.
    ServiceCidr, service_cidr);

/// A bounded integer newtype.
macro_rules! bounded_int {
    ($(#[$meta:meta])* $name:ident, $ty:ty, $min:expr, $max:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(try_from = "i64", into = "i64")]
        pub struct $name($ty);

        impl TryFrom<i64> for $name {
            type Error = String;
            fn try_from(v: i64) -> Result<Self, String> {
                if ($min..=$max).contains(&v) {
                    Ok($name(v as $ty))
                } else {
                    Err(format!("{v} is out of range {}..={}", $min, $max))
                }
            }
        }

        impl From<$name> for i64 {
            fn from(v: $name) -> i64 {
                i64::from(v.0)
            }
        }
    };
}

bounded_int!(
    /// Pods per node, at least 1.
    MaxPods, u32, 1, 10_000);
bounded_int!(
    /// A TCP or UDP port, 1..=65535.
    Port, u16, 1, 65535);
bounded_int!(
    /// Update wave seed, 0..=2047.
    Seed, u32, 0, 2047);
bounded_int!(
    /// A percentage.
    Percent, u8, 0, 100);
bounded_int!(
    /// A positive count or rate.
    PositiveU32, u32, 1, i64::from(u32::MAX));
bounded_int!(
    /// A non-negative count.
    Count, u32, 0, i64::from(u32::MAX));
bounded_int!(
    /// Kubelet's per-pod PID limit: -1 (the node's limit), 0 (unset) or up to the kernel's
    /// `PID_MAX_LIMIT` (4194304).
    PodPidsLimit, i64, -1, 4_194_304);

// ---- the model --------------------------------------------------------------------------

/// All settings of a Berth host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub motd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecs: Option<Ecs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates: Option<Updates>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Ntp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_containers: Option<BTreeMap<Identifier, HostContainer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_containers: Option<BTreeMap<Identifier, BootstrapContainer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_registry: Option<ContainerRegistry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_defaults: Option<OciDefaults>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pki: Option<BTreeMap<Identifier, PkiBundle>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<Aws>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

/// `cluster-dns-ip`: one address or a list, as in Bottlerocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ClusterDnsIp {
    Scalar(IpAddr),
    Vector(Vec<IpAddr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthenticationMode {
    Aws,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CpuManagerPolicy {
    None,
    Static,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TopologyManagerPolicy {
    None,
    Restricted,
    BestEffort,
    SingleNumaNode,
}

/// `ip-family`: the cluster's IP family (EKS's `ipFamily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv6() {
            IpFamily::Ipv6
        } else {
            IpFamily::Ipv4
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
        }
    }
}

/// `settings.kubernetes.vpc-cni`: how the cluster's Amazon VPC CNI hands out pod addresses,
/// as the node needs to know it to size max-pods (the EKS max-pods calculator's
/// `--cni-prefix-delegation-enabled` and `--cni-custom-networking-enabled`). These do not
/// configure the CNI, which the cluster runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct VpcCni {
    /// `ENABLE_PREFIX_DELEGATION`: each ENI slot holds a /28 prefix (16 pod addresses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix_delegation: Option<bool>,
    /// `AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG`: pods use secondary ENIs only, never the primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_networking: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StaticPod {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Base64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CredentialProvider {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_duration: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_patterns: Option<Vec<NonEmpty>>,
}

/// `settings.kubernetes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Kubernetes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<ClusterName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_server: Option<HttpsUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_certificate: Option<Base64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_dns_ip: Option<ClusterDnsIp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<Hostname>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_labels: Option<BTreeMap<NodeLabelKey, LabelValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_taints: Option<BTreeMap<LabelKey, Vec<TaintValue>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<MaxPods>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_reserved: Option<BTreeMap<ReservedResource, Quantity>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_reserved: Option<BTreeMap<ReservedResource, Quantity>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_hard: Option<BTreeMap<EvictionSignal, Threshold>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eviction_soft: Option<BTreeMap<EvictionSignal, Threshold>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<BootstrapToken>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standalone_mode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication_mode: Option<AuthenticationMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_infra_container_image: Option<ImageRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub static_pods: Option<BTreeMap<Identifier, StaticPod>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_manager_policy: Option<CpuManagerPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology_manager_policy: Option<TopologyManagerPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_size: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_log_max_files: Option<PositiveU32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_high_threshold_percent: Option<Percent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_gc_low_threshold_percent: Option<Percent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_qps: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_burst: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_qps: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_burst: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_api_qps: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kube_api_burst: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_unsafe_sysctls: Option<Vec<SysctlKey>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_bootstrap: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname_override: Option<Hostname>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_providers: Option<BTreeMap<Identifier, CredentialProvider>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp_default: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_pids_limit: Option<PodPidsLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period_for_critical_pods: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<Percent>,
    /// The cluster's service CIDR (nodeadm's `cluster.cidr`): cluster DNS and IP family.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_cidr: Option<ServiceCidr>,
    /// The cluster's IP family; follows `service-cidr` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<IpFamily>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc_cni: Option<VpcCni>,
}

impl ServiceCidr {
    /// The network address and prefix length (checked when the value was made).
    pub fn network(&self) -> (IpAddr, u8) {
        let (addr, prefix) = self
            .0
            .split_once('/')
            .expect("a ServiceCidr was checked to hold a '/'");
        (
            addr.parse()
                .expect("a ServiceCidr was checked to hold an address"),
            prefix
                .parse()
                .expect("a ServiceCidr was checked to hold a prefix"),
        )
    }

    pub fn family(&self) -> IpFamily {
        IpFamily::of(self.network().0)
    }
}

impl Kubernetes {
    /// The cluster's IP family: `ip-family` when set, else that of `service-cidr`; `None`
    /// when neither is set. Fails, naming both keys, when they disagree.
    pub fn cluster_ip_family(&self) -> Result<Option<IpFamily>, ModelError> {
        let from_cidr = self.service_cidr.as_ref().map(ServiceCidr::family);
        match (self.ip_family, from_cidr) {
            (Some(set), Some(cidr)) if set != cidr => Err(ModelError {
                key: "settings.kubernetes.ip-family".to_string(),
                reason: format!(
                    "'{}' contradicts settings.kubernetes.service-cidr '{}', an {} network; \
                     change or remove one of them",
                    set.name(),
                    self.service_cidr
                        .as_ref()
                        .map(AsRef::as_ref)
                        .unwrap_or_default(),
                    cidr.name()
                ),
            }),
            (set, cidr) => Ok(set.or(cidr)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EcsLogLevel {
    Debug,
    Info,
    Warn,
    Error,
    Crit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImagePullBehavior {
    Default,
    Always,
    Once,
    PreferCached,
}

/// `settings.ecs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Ecs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_attributes: Option<BTreeMap<Identifier, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_privileged_containers: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logging_drivers: Option<Vec<NonEmpty>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loglevel: Option<EcsLogLevel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_spot_instance_draining: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_behavior: Option<ImagePullBehavior>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_stop_timeout: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_cleanup_wait: Option<NonEmpty>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_service_rps: Option<PositiveU32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_service_burst: Option<PositiveU32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_memory: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awsvpc_block_imds: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_container_metadata: Option<bool>,
}

/// `settings.updates`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Updates {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_base_url: Option<HttpUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets_base_url: Option<HttpUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<Seed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_lock: Option<VersionLock>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_waves: Option<bool>,
}

/// `settings.network`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Network {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<Hostname>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_proxy: Option<Proxy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_proxy: Option<Vec<NoProxyEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall: Option<Firewall>,
}

/// `settings.network.firewall` (Berth's own; Bottlerocket leaves the host firewall to
/// bootstrap containers): an nftables table `inet berth` with default-deny input, forward and
/// output chains, off unless `enabled` (docs/boot-config.md, Firewall).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Firewall {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// TCP ports new inbound connections may reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_tcp_ports: Option<Vec<Port>>,
    /// UDP ports inbound datagrams may reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound_udp_ports: Option<Vec<Port>>,
    /// Interfaces (or `prefix*` wildcards) whose forwarded traffic, in or out, is accepted:
    /// the pods' or containers' (`veth*`, `eni*`, `docker0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forward_interfaces: Option<Vec<InterfacePattern>>,
}

/// `settings.ntp`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Ntp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_servers: Option<Vec<NtpServer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<NonEmpty>>,
}

/// `settings.dns`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Dns {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_servers: Option<Vec<IpAddr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_list: Option<Vec<Hostname>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Lockdown {
    None,
    Integrity,
    Confidentiality,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct KernelModule {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoload: Option<bool>,
}

/// `settings.kernel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Kernel {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockdown: Option<Lockdown>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sysctl: Option<BTreeMap<SysctlKey, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modules: Option<BTreeMap<Identifier, KernelModule>>,
}

/// `settings.host-containers.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HostContainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superpowered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<Base64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapMode {
    Off,
    Once,
    Always,
}

/// `settings.bootstrap-containers.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BootstrapContainer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<ImageRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<BootstrapMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub essential: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<Base64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegistryMirror {
    pub registry: NonEmpty,
    pub endpoint: Vec<HttpUrl>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RegistryCredential {
    pub registry: NonEmpty,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<Base64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identitytoken: Option<String>,
}

/// `settings.container-registry`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ContainerRegistry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirrors: Option<Vec<RegistryMirror>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<RegistryCredential>>,
}

/// A resource limit of `settings.oci-defaults.resource-limits` (Bottlerocket's shape): `-1`
/// means unlimited; the soft limit may not exceed the hard one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(
    rename_all = "kebab-case",
    deny_unknown_fields,
    try_from = "RawResourceLimit"
)]
pub struct ResourceLimit {
    pub hard_limit: i64,
    pub soft_limit: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawResourceLimit {
    hard_limit: i64,
    soft_limit: i64,
}

impl ResourceLimit {
    /// The limit as the kernel takes it: `-1` is `RLIM_INFINITY`.
    pub fn as_rlimit(value: i64) -> u64 {
        u64::try_from(value).unwrap_or(u64::MAX)
    }
}

impl TryFrom<RawResourceLimit> for ResourceLimit {
    type Error = String;
    fn try_from(raw: RawResourceLimit) -> Result<Self, String> {
        for (name, v) in [
            ("hard-limit", raw.hard_limit),
            ("soft-limit", raw.soft_limit),
        ] {
            if v < -1 {
                return Err(format!("{name} {v} must be -1 (unlimited) or at least 0"));
            }
        }
        if ResourceLimit::as_rlimit(raw.soft_limit) > ResourceLimit::as_rlimit(raw.hard_limit) {
            return Err(format!(
                "soft-limit {} is above hard-limit {}; the soft limit may not exceed the hard one",
                raw.soft_limit, raw.hard_limit
            ));
        }
        Ok(ResourceLimit {
            hard_limit: raw.hard_limit,
            soft_limit: raw.soft_limit,
        })
    }
}

/// `settings.oci-defaults`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct OciDefaults {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<BTreeMap<Capability, bool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_limits: Option<BTreeMap<RlimitName, ResourceLimit>>,
}

/// `settings.pki.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PkiBundle {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PemBundle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted: Option<bool>,
}

/// `settings.boot`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Boot {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_to_reconcile: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_parameters: Option<BTreeMap<SysctlKey, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_parameters: Option<BTreeMap<SysctlKey, Vec<String>>>,
}

/// `settings.aws`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Aws {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<AwsRegion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Base64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Base64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Identifier>,
}

/// `settings.metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_url: Option<HttpUrl>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_metrics: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_checks: Option<Vec<Identifier>>,
}

impl Settings {
    /// Deserializes and validates settings, naming the offending key on failure.
    pub fn from_json(value: &serde_json::Value) -> Result<Settings, ModelError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let mut segments = vec!["settings".to_string()];
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Seq { index } => segments.push(index.to_string()),
                    serde_path_to_error::Segment::Map { key } => segments.push(key.clone()),
                    serde_path_to_error::Segment::Enum { variant } => {
                        segments.push(variant.clone())
                    }
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let reason = e.inner().to_string();
            let key = Key::from_segments(segments)
                .map(|k| k.to_string())
                .unwrap_or_default();
            ModelError { key, reason }
        })
    }

    /// Validates `value` and returns its canonical JSON form.
    pub fn canonicalize(value: &serde_json::Value) -> Result<serde_json::Value, ModelError> {
        let settings = Settings::from_json(value)?;
        serde_json::to_value(settings).map_err(|e| ModelError {
            key: "settings".to_string(),
            reason: e.to_string(),
        })
    }
}

/// Types the raw string `raw` for setting `key` using the model: a value that is valid as a
/// string stays a string (so `motd=123` keeps `"123"`); otherwise it is read as JSON (numbers,
/// booleans, lists). Returns the nested patch, e.g. `{"kubernetes": {"max-pods": 110}}`.
pub fn typed_patch(key: &Key, raw: &str) -> Result<serde_json::Value, ModelError> {
    let as_string = key.nest(serde_json::Value::String(raw.to_string()));
    let string_err = match Settings::canonicalize(&as_string) {
        Ok(_) => return Ok(as_string),
        Err(e) => e,
    };
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(parsed) if !parsed.is_string() => {
            let as_json = key.nest(parsed);
            Settings::canonicalize(&as_json).map(|_| as_json)
        }
        _ => Err(string_err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn err(v: serde_json::Value) -> ModelError {
        Settings::from_json(&v).expect_err("must be rejected")
    }

    #[test]
    fn accepts_bottlerocket_shapes() {
        let v = json!({
            "motd": "hi",
            "kubernetes": {
                "cluster-name": "prod-1",
                "api-server": "https://ABC.gr7.us-west-2.eks.amazonaws.com",
                "cluster-dns-ip": ["10.100.0.10", "fd00::a"],
                "node-labels": {"example.com/role": "worker", "tier": ""},
                "node-taints": {"dedicated": ["gpu:NoSchedule", "x:NoExecute"]},
                "max-pods": 110,
                "kube-reserved": {"cpu": "100m", "memory": "512Mi"},
                "eviction-hard": {"memory.available": "10%"},
                "bootstrap-token": "abcdef.0123456789abcdef",
                "standalone-mode": false
            },
            "ecs": {"cluster": "c", "allow-privileged-containers": true, "logging-drivers": ["json-file"]},
            "updates": {"seed": 2047, "version-lock": "v1.2.3", "ignore-waves": false,
                        "metadata-base-url": "https://updates.example.com/meta/"},
            "network": {"hostname": "node-1.example.com", "https-proxy": "proxy:3128", "no-proxy": [".local", "10.0.0.0/8"],
                        "firewall": {"enabled": true, "inbound-tcp-ports": [22, 10250], "inbound-udp-ports": [4789],
                                     "forward-interfaces": ["veth*", "eni*", "docker0", "cni0"]}},
            "ntp": {"time-servers": ["time.aws.com", "ntp://pool.ntp.org"]},
            "dns": {"name-servers": ["1.1.1.1"], "search-list": ["example.com"]},
            "kernel": {"lockdown": "integrity", "sysctl": {"vm.max_map_count": "262144"},
                       "modules": {"sctp": {"allowed": false}}},
            "host-containers": {"admin": {"enabled": true, "superpowered": true, "source": "public.ecr.aws/x/admin:v1"}},
            "bootstrap-containers": {"setup": {"mode": "once", "essential": true, "user-data": "aGk="}},
            "container-registry": {"mirrors": [{"registry": "docker.io", "endpoint": ["https://mirror.example.com"]}]},
            "oci-defaults": {"capabilities": {"net-raw": false}, "resource-limits": {"max-open-files": {"hard-limit": 1024, "soft-limit": 512}}},
            "pki": {"corp": {"data": crate::pem::tests::CERT_B64, "trusted": true}},
            "boot": {"reboot-to-reconcile": true, "kernel-parameters": {"console": ["ttyS0"]}},
            "aws": {"region": "us-west-2"},
            "metrics": {"send-metrics": false}
        });
        let canon = Settings::canonicalize(&v).expect("valid");
        assert_eq!(canon, v, "canonical form keeps Bottlerocket's shapes");
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let e = err(json!({"kubernetes": {"max-pods": 0}}));
        assert_eq!(e.key, "settings.kubernetes.max-pods");
        assert!(e.reason.contains("out of range"), "{}", e.reason);

        let e = err(json!({"kubernetes": {"node-labels": {"example.com/role": "bad value!"}}}));
        assert_eq!(
            e.key,
            r#"settings.kubernetes.node-labels."example.com/role""#
        );

        let e = err(json!({"kubernetes": {"node-taints": {"k": ["v:Sometimes"]}}}));
        assert!(
            e.key.starts_with("settings.kubernetes.node-taints.k"),
            "{}",
            e.key
        );
        assert!(e.reason.contains("NoSchedule"));

        let e = err(json!({"kubernetes": {"api-server": "http://insecure"}}));
        assert_eq!(e.key, "settings.kubernetes.api-server");
        assert!(e.reason.contains("https"));

        let e = err(json!({"network": {"hostname": "-bad-"}}));
        assert_eq!(e.key, "settings.network.hostname");

        let e = err(json!({"updates": {"seed": 4096}}));
        assert_eq!(e.key, "settings.updates.seed");

        let e = err(json!({"kubernetes": {"no-such-setting": 1}}));
        assert_eq!(e.key, "settings.kubernetes.no-such-setting");
        assert!(e.reason.contains("unknown field"));

        let e = err(json!({"kernel": {"sysctl": {"../etc/passwd": "1"}}}));
        assert!(e.key.starts_with("settings.kernel.sysctl"));

        // pki data: base64 of PEM certificates, checked when stored.
        for (data, why) in [
            ("aGk=", "no PEM certificate"),
            ("not base64!", "not base64"),
            (
                "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIK",
                "END CERTIFICATE",
            ),
        ] {
            let e = err(json!({"pki": {"corp": {"data": data, "trusted": true}}}));
            assert_eq!(e.key, "settings.pki.corp.data");
            assert!(e.reason.contains(why), "{data}: {}", e.reason);
        }
        let e = err(json!({"dns": {"name-servers": ["not-an-ip"]}}));
        assert_eq!(e.key, "settings.dns.name-servers.0");
        let e = err(json!({"network": {"https-proxy": "ftp://proxy:21"}}));
        assert_eq!(e.key, "settings.network.https-proxy");
        let e = err(json!({"network": {"no-proxy": ["bad host!"]}}));
        assert_eq!(e.key, "settings.network.no-proxy.0");
        let e = err(
            json!({"container-registry": {"mirrors": [{"registry": "docker.io", "endpoint": ["ftp://m"]}]}}),
        );
        assert_eq!(e.key, "settings.container-registry.mirrors.0.endpoint.0");

        // Firewall ports are 1..=65535, interface names what the kernel and nft accept.
        for (ports, why) in [
            (json!([0]), "out of range 1..=65535"),
            (json!([22, 65536]), "out of range 1..=65535"),
            (json!(["ssh"]), "expected i64"),
            (json!(22), "expected a sequence"),
        ] {
            let e = err(json!({"network": {"firewall": {"inbound-tcp-ports": ports}}}));
            assert!(
                e.key
                    .starts_with("settings.network.firewall.inbound-tcp-ports"),
                "{}",
                e.key
            );
            assert!(e.reason.contains(why), "{ports}: {}", e.reason);
        }
        let e = err(json!({"network": {"firewall": {"inbound-udp-ports": [53, -1]}}}));
        assert_eq!(e.key, "settings.network.firewall.inbound-udp-ports.1");
        for (name, why) in [
            ("*", "1 to 15 characters"),
            ("", "1 to 15 characters"),
            ("averyverylongname0", "1 to 15 characters"),
            ("veth*x", "'*' at the end"),
            ("eth 0", "'*' at the end"),
            ("eth\"0", "'*' at the end"),
            ("..", "not a valid interface name"),
        ] {
            let e = err(json!({"network": {"firewall": {"forward-interfaces": ["veth*", name]}}}));
            assert_eq!(e.key, "settings.network.firewall.forward-interfaces.1");
            assert!(e.reason.contains(why), "{name:?}: {}", e.reason);
        }
        let e = err(json!({"network": {"firewall": {"enabled": "yes"}}}));
        assert_eq!(e.key, "settings.network.firewall.enabled");
        let e = err(json!({"network": {"firewall": {"inbound-ports": [22]}}}));
        assert_eq!(e.key, "settings.network.firewall.inbound-ports");

        // Resource limits: -1 is unlimited, soft at most hard.
        let limit = |hard: i64, soft: i64| json!({"oci-defaults": {"resource-limits": {"max-open-files": {"hard-limit": hard, "soft-limit": soft}}}});
        for (hard, soft, why) in [
            (1024, 2048, "soft-limit 2048 is above hard-limit 1024"),
            (1024, -1, "soft-limit -1 is above hard-limit 1024"),
            (-2, 0, "hard-limit -2 must be -1"),
        ] {
            let e = err(limit(hard, soft));
            assert_eq!(
                e.key,
                "settings.oci-defaults.resource-limits.max-open-files"
            );
            assert!(e.reason.contains(why), "{hard}/{soft}: {}", e.reason);
        }
        Settings::from_json(&limit(-1, 65536)).expect("unlimited hard limit");
    }

    #[test]
    fn keypair_values_are_typed_by_the_model() {
        let k = |s| Key::parse_setting(s).unwrap();
        assert_eq!(
            typed_patch(&k("motd"), "123").unwrap(),
            json!({"motd": "123"})
        );
        assert_eq!(
            typed_patch(&k("kubernetes.max-pods"), "110").unwrap(),
            json!({"kubernetes": {"max-pods": 110}})
        );
        assert_eq!(
            typed_patch(&k("kubernetes.standalone-mode"), "true").unwrap(),
            json!({"kubernetes": {"standalone-mode": true}})
        );
        assert_eq!(
            typed_patch(&k("kernel.sysctl.\"vm.max_map_count\""), "262144").unwrap(),
            json!({"kernel": {"sysctl": {"vm.max_map_count": "262144"}}})
        );
        assert_eq!(
            typed_patch(&k("ntp.time-servers"), r#"["a.example.com"]"#).unwrap(),
            json!({"ntp": {"time-servers": ["a.example.com"]}})
        );
        let e = typed_patch(&k("kubernetes.max-pods"), "0").unwrap_err();
        assert_eq!(e.key, "settings.kubernetes.max-pods");
        let e = typed_patch(&k("kubernetes.node-labels.\"kubernetes.io/role\""), "x").unwrap_err();
        assert!(
            e.to_string()
                .contains("kubelet may not set label 'kubernetes.io/role'"),
            "{e}"
        );
        let e = typed_patch(&k("kubernetes.standalone-mode"), "yes").unwrap_err();
        assert_eq!(e.key, "settings.kubernetes.standalone-mode");
        assert_eq!(
            typed_patch(&k("kubernetes.pod-pids-limit"), "-1").unwrap(),
            json!({"kubernetes": {"pod-pids-limit": -1}})
        );
        assert_eq!(
            typed_patch(&k("network.firewall.enabled"), "true").unwrap(),
            json!({"network": {"firewall": {"enabled": true}}})
        );
        assert_eq!(
            typed_patch(&k("network.firewall.inbound-tcp-ports"), "[8080]").unwrap(),
            json!({"network": {"firewall": {"inbound-tcp-ports": [8080]}}})
        );
        assert_eq!(
            typed_patch(&k("network.firewall.inbound-tcp-ports"), "[]").unwrap(),
            json!({"network": {"firewall": {"inbound-tcp-ports": []}}})
        );
        let e = typed_patch(&k("network.firewall.inbound-tcp-ports"), "[70000]").unwrap_err();
        assert_eq!(e.key, "settings.network.firewall.inbound-tcp-ports.0");
        let e = typed_patch(&k("kubernetes.pod-pids-limit"), "-2").unwrap_err();
        assert_eq!(e.key, "settings.kubernetes.pod-pids-limit");
        assert!(e.to_string().contains("out of range -1..=4194304"), "{e}");
    }

    #[test]
    fn service_cidrs_and_the_ip_family() {
        let k8s = |v: serde_json::Value| {
            Settings::from_json(&json!({ "kubernetes": v }))
                .map(|s| s.kubernetes.expect("kubernetes"))
        };
        for ok in [
            "10.100.0.0/16",
            "172.20.0.0/16",
            "fd00:ec2::/108",
            "10.0.0.0/28",
        ] {
            let k = k8s(json!({ "service-cidr": ok })).expect(ok);
            assert_eq!(k.service_cidr.as_ref().map(AsRef::as_ref), Some(ok));
        }
        for (bad, why) in [
            ("10.100.0.0", "not a CIDR"),
            ("10.100.3.0/16", "host bits set"),
            ("10.100.0.0/29", "at most /28"),
            ("fd00::/125", "at most /124"),
            ("x/16", "not a CIDR"),
        ] {
            let e = k8s(json!({ "service-cidr": bad })).expect_err(bad);
            assert_eq!(e.key, "settings.kubernetes.service-cidr");
            assert!(e.reason.contains(why), "{bad}: {}", e.reason);
        }
        let family = |v| k8s(v).expect("valid").cluster_ip_family();
        assert_eq!(family(json!({})).unwrap(), None);
        assert_eq!(
            family(json!({"service-cidr": "fd00:ec2::/108"})).unwrap(),
            Some(IpFamily::Ipv6)
        );
        assert_eq!(
            family(json!({"ip-family": "ipv6"})).unwrap(),
            Some(IpFamily::Ipv6)
        );
        assert_eq!(
            family(json!({"ip-family": "ipv4", "service-cidr": "10.100.0.0/16"})).unwrap(),
            Some(IpFamily::Ipv4)
        );
        let e = family(json!({"ip-family": "ipv4", "service-cidr": "fd00:ec2::/108"}))
            .expect_err("contradiction");
        assert_eq!(e.key, "settings.kubernetes.ip-family");
        assert!(e.reason.contains("an ipv6 network"), "{}", e.reason);
        let e = k8s(json!({"ip-family": "ipv5"})).expect_err("bad family");
        assert_eq!(e.key, "settings.kubernetes.ip-family");
    }

    #[test]
    fn kubelet_label_rules() {
        for ok in [
            "team",
            "example.com/pool",
            "node.kubernetes.io/lifecycle",
            "kubelet.kubernetes.io/x",
            "topology.kubernetes.io/zone",
            "kubernetes.io/arch",
            "eks.amazonaws.com/nodegroup",
        ] {
            assert!(kubelet_may_set(ok), "{ok}");
        }
        for bad in [
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "k8s.io/x",
            "foo.k8s.io/x",
        ] {
            assert!(!kubelet_may_set(bad), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn string_settings_keep_any_text(s in any::<String>()) {
            let k = Key::parse("motd").unwrap();
            prop_assert_eq!(typed_patch(&k, &s).unwrap(), json!({"motd": s}));
        }

        #[test]
        fn integer_settings_accept_exactly_their_range(n in -5000i64..5000) {
            let k = Key::parse("updates.seed").unwrap();
            let r = typed_patch(&k, &n.to_string());
            prop_assert_eq!(r.is_ok(), (0..2048).contains(&n));
            if let Ok(v) = r {
                prop_assert_eq!(v, json!({"updates": {"seed": n}}));
            }
        }

        #[test]
        fn label_values_follow_kubernetes_rules(v in "[a-zA-Z0-9._ -]{0,70}") {
            let k = Key::parse(r#"kubernetes.node-labels."example.com/x""#).unwrap();
            let expected = v.is_empty() || (v.len() <= 63
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
            prop_assert_eq!(typed_patch(&k, &v).is_ok(), expected);
        }
    }
}
