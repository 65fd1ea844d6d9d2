//! KubeletConfiguration (`config.json`), kubelet's flags (an `EnvironmentFile`) and static
//! pod manifests.
//!
//! The defaults are nodeadm's `defaultKubeletSubConfig` and its version toggles; each
//! Berth setting then overrides the field kubelet reads it from, the way nodeadm merges a
//! user's `kubelet.config` over its own. Keys are written sorted (nodeadm's merged output
//! is a sorted map too), with nodeadm's 4-space indent.

use super::resolve::{Auth, Node};
use super::{to_json, OutputFile, RenderError};
use crate::paths;
use crate::version::KubeletVersion;
use serde_json::{json, Map, Value};
use settings_api::model::{CpuManagerPolicy, Kubernetes, TopologyManagerPolicy};
use std::collections::BTreeMap;

/// nodeadm's TLS cipher suites without its two `TLS_RSA_WITH_AES_*_GCM` ones: only ECDHE
/// (forward-secret) AEAD suites, which is what CIS Kubernetes 4.2.12 accepts (README,
/// deliberate difference 10).
const TLS_CIPHER_SUITES: [&str; 6] = [
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
];

/// `podPidsLimit` when `settings.kubernetes.pod-pids-limit` is not set: nodeadm leaves it
/// unlimited, CIS Kubernetes 4.2.13 asks for a limit (README, deliberate difference 11).
pub const DEFAULT_POD_PIDS_LIMIT: i64 = 4096;

/// nodeadm's graceful node shutdown defaults from 1.34: pods get two and a half minutes,
/// the last thirty seconds of them kept for critical pods.
const SHUTDOWN_GRACE_PERIOD_1_34: &str = "2m30s";
const SHUTDOWN_GRACE_PERIOD_CRITICAL_PODS_1_34: &str = "30s";

/// The cgroup containerd runs in (`containerd-berth.conf`: `Slice=runtime.slice`), passed as
/// `--runtime-cgroups` as nodeadm and Bottlerocket do, so kubelet accounts the runtime's
/// usage to kube-reserved.
const RUNTIME_CGROUPS: &str = "/runtime.slice/containerd.service";

/// Grace period given to each soft eviction threshold. Kubelet refuses a soft threshold
/// without one and the settings model has no key for it (Bottlerocket's
/// `eviction-soft-grace-period`), so every soft threshold gets this.
const EVICTION_SOFT_GRACE_PERIOD: &str = "1m30s";

fn string_map<K: AsRef<str>, V: AsRef<str>>(map: &BTreeMap<K, V>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| (k.as_ref().to_string(), Value::from(v.as_ref())))
        .collect()
}

fn invalid(key: &str, reason: impl Into<String>) -> RenderError {
    RenderError::InvalidSetting {
        key: format!("settings.kubernetes.{key}"),
        reason: reason.into(),
    }
}

/// The KubeletConfiguration as a JSON object.
pub fn config(
    k8s: &Kubernetes,
    node: &Node,
    version: KubeletVersion,
) -> Result<Value, RenderError> {
    let standalone = node.auth == Auth::Standalone;
    let mut c = json!({
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "address": "0.0.0.0",
        "authentication": {
            "anonymous": { "enabled": false },
            // A standalone kubelet has no API server to check tokens with.
            "webhook": { "enabled": !standalone, "cacheTTL": "2m0s" },
            "x509": { "clientCAFile": paths::host(paths::CLUSTER_CA) },
        },
        "authorization": {
            "mode": if standalone { "AlwaysAllow" } else { "Webhook" },
            "webhook": { "cacheAuthorizedTTL": "5m0s", "cacheUnauthorizedTTL": "30s" },
        },
        "cgroupDriver": "systemd",
        "cgroupRoot": "/",
        "clusterDNS": node.cluster_dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "clusterDomain": k8s.cluster_domain.as_ref().map_or("cluster.local", |d| d.as_ref()),
        "containerRuntimeEndpoint": paths::CONTAINERD_SOCKET,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "10%",
            "nodefs.inodesFree": "5%",
        },
        "featureGates": { "RotateKubeletServerCertificate": true },
        "hairpinMode": "hairpin-veth",
        "kubeReserved": node.kube_reserved,
        "kubeReservedCgroup": "/runtime",
        "logging": { "verbosity": 2 },
        "maxPods": node.max_pods,
        "podPidsLimit": k8s.pod_pids_limit.map_or(DEFAULT_POD_PIDS_LIMIT, i64::from),
        "protectKernelDefaults": true,
        "readOnlyPort": 0,
        // CIS Kubernetes 4.2.14; nodeadm leaves kubelet's default (false). README,
        // deliberate difference 12.
        "seccompDefault": k8s.seccomp_default.unwrap_or(true),
        "serializeImagePulls": false,
        "serverTLSBootstrap": true,
        "systemReservedCgroup": "/system",
        "tlsCipherSuites": TLS_CIPHER_SUITES,
    });
    let obj = c
        .as_object_mut()
        .expect("json! of an object literal is an object");

    // nodeadm's version toggles.
    let gates = obj
        .get_mut("featureGates")
        .and_then(Value::as_object_mut)
        .expect("featureGates is set above");
    if !version.at_least(28) {
        // The gate is gone (always on) from 1.28.
        gates.insert("KubeletCredentialProviders".into(), true.into());
    }
    if version.at_least(33) {
        // EKS turns dynamic resource allocation on from 1.33.
        gates.insert("DynamicResourceAllocation".into(), true.into());
    }
    if version.at_least(34) {
        // and, from 1.34, CSI drivers may update a node's attachable volume count.
        gates.insert("MutableCSINodeAllocatableCount".into(), true.into());
    }
    if version.at_least(22) && !version.at_least(27) {
        // API priority and fairness: 1.27 raised kubelet's own defaults to 50/100.
        obj.insert("kubeAPIQPS".into(), 10.into());
        obj.insert("kubeAPIBurst".into(), 20.into());
    }

    if node.ca_pem.is_none() {
        // Kubelet fails to start on a missing CA file; a standalone kubelet may have none.
        if let Some(auth) = obj.get_mut("authentication").and_then(Value::as_object_mut) {
            auth.remove("x509");
        }
    }
    if let Some(id) = &node.provider_id {
        obj.insert("providerID".into(), id.as_str().into());
    }
    if matches!(node.auth, Auth::Tls { .. }) {
        // TLS bootstrap only gets a first client certificate; kubelet must renew it.
        obj.insert("rotateCertificates".into(), true.into());
    }

    // Settings that map one to one.
    if let Some(taints) = &k8s.node_taints {
        let list: Vec<Value> = taints
            .iter()
            .flat_map(|(key, values)| values.iter().map(move |v| (key, v)))
            .map(|(key, v)| {
                // The model checked the `value:Effect` shape; an empty value is left out,
                // as Kubernetes' Taint omits it.
                let (value, effect) = v.as_ref().rsplit_once(':').unwrap_or(("", v.as_ref()));
                let mut t = Map::new();
                t.insert("effect".into(), effect.into());
                t.insert("key".into(), key.as_ref().into());
                if !value.is_empty() {
                    t.insert("value".into(), value.into());
                }
                Value::Object(t)
            })
            .collect();
        if !list.is_empty() {
            obj.insert("registerWithTaints".into(), list.into());
        }
    }
    if let Some(reserved) = &k8s.system_reserved {
        obj.insert("systemReserved".into(), string_map(reserved).into());
    }
    if let Some(hard) = &k8s.eviction_hard {
        let target = obj
            .get_mut("evictionHard")
            .and_then(Value::as_object_mut)
            .expect("evictionHard is set above");
        target.extend(string_map(hard));
    }
    if let Some(soft) = &k8s.eviction_soft {
        let grace: Map<String, Value> = soft
            .keys()
            .map(|k| (k.as_ref().to_string(), EVICTION_SOFT_GRACE_PERIOD.into()))
            .collect();
        obj.insert("evictionSoft".into(), string_map(soft).into());
        obj.insert("evictionSoftGracePeriod".into(), grace.into());
    }
    if let Some(p) = k8s.cpu_manager_policy {
        let name = match p {
            CpuManagerPolicy::None => "none",
            CpuManagerPolicy::Static => "static",
        };
        obj.insert("cpuManagerPolicy".into(), name.into());
    }
    if let Some(p) = k8s.topology_manager_policy {
        let name = match p {
            TopologyManagerPolicy::None => "none",
            TopologyManagerPolicy::Restricted => "restricted",
            TopologyManagerPolicy::BestEffort => "best-effort",
            TopologyManagerPolicy::SingleNumaNode => "single-numa-node",
        };
        obj.insert("topologyManagerPolicy".into(), name.into());
    }
    if let Some(size) = &k8s.container_log_max_size {
        obj.insert("containerLogMaxSize".into(), size.as_ref().into());
    }
    if let Some(files) = k8s.container_log_max_files {
        let files = i64::from(files);
        if files < 2 {
            // Kubelet's validation: rotation needs a current file and at least one old one.
            return Err(invalid("container-log-max-files", "must be at least 2"));
        }
        obj.insert("containerLogMaxFiles".into(), files.into());
    }
    let high = k8s.image_gc_high_threshold_percent.map(i64::from);
    let low = k8s.image_gc_low_threshold_percent.map(i64::from);
    if let (Some(h), Some(l)) = (high, low) {
        if l >= h {
            return Err(invalid(
                "image-gc-low-threshold-percent",
                format!("{l} must be below image-gc-high-threshold-percent ({h})"),
            ));
        }
    }
    if let Some(h) = high {
        obj.insert("imageGCHighThresholdPercent".into(), h.into());
    }
    if let Some(l) = low {
        obj.insert("imageGCLowThresholdPercent".into(), l.into());
    }
    let counts = [
        ("registryPullQPS", k8s.registry_qps),
        ("registryBurst", k8s.registry_burst),
        ("eventRecordQPS", k8s.event_qps),
        ("eventBurst", k8s.event_burst),
        ("kubeAPIQPS", k8s.kube_api_qps),
        ("kubeAPIBurst", k8s.kube_api_burst),
    ];
    for (field, value) in counts {
        if let Some(v) = value {
            obj.insert(field.into(), i64::from(v).into());
        }
    }
    if let Some(sysctls) = &k8s.allowed_unsafe_sysctls {
        let list: Vec<Value> = sysctls.iter().map(|s| s.as_ref().into()).collect();
        obj.insert("allowedUnsafeSysctls".into(), list.into());
    }
    if let Some(b) = k8s.server_tls_bootstrap {
        obj.insert("serverTLSBootstrap".into(), b.into());
    }
    for (field, value) in shutdown(k8s, version)? {
        obj.insert(field.into(), value.into());
    }
    if let Some(level) = k8s.log_level {
        obj.insert("logging".into(), json!({ "verbosity": i64::from(level) }));
    }
    if enabled_static_pods(k8s).next().is_some() {
        obj.insert(
            "staticPodPath".into(),
            paths::host(paths::STATIC_PODS_DIR).into(),
        );
    }
    Ok(c)
}

/// `shutdownGracePeriod` and `shutdownGracePeriodCriticalPods`: the settings, else nodeadm's
/// defaults from 1.34 (kubelet's, off, before). Kubelet refuses a critical-pods period longer
/// than the whole period, and one without the whole period does nothing, so both are errors
/// here, naming the setting to change.
fn shutdown(
    k8s: &Kubernetes,
    version: KubeletVersion,
) -> Result<Vec<(&'static str, String)>, RenderError> {
    const GRACE: &str = "shutdown-grace-period";
    const CRITICAL: &str = "shutdown-grace-period-for-critical-pods";
    let defaults = version.at_least(34);
    let user_grace = k8s.shutdown_grace_period.as_ref().map(|v| v.as_ref());
    let user_critical = k8s
        .shutdown_grace_period_for_critical_pods
        .as_ref()
        .map(|v| v.as_ref());
    let grace = user_grace.or(defaults.then_some(SHUTDOWN_GRACE_PERIOD_1_34));
    let critical = user_critical.or(defaults.then_some(SHUTDOWN_GRACE_PERIOD_CRITICAL_PODS_1_34));
    let grace_nanos = grace
        .map(|g| crate::duration::parse(g).map_err(|r| invalid(GRACE, r)))
        .transpose()?;
    let critical_nanos = critical
        .map(|c| crate::duration::parse(c).map_err(|r| invalid(CRITICAL, r)))
        .transpose()?;
    match (grace_nanos, critical_nanos) {
        (None, Some(_)) => {
            return Err(invalid(
                CRITICAL,
                format!(
                "'{}' needs settings.kubernetes.{GRACE}, the whole shutdown delay it is part of",
                critical.unwrap_or_default()
            ),
            ))
        }
        (Some(g), Some(c)) if c > g => {
            let g_text = grace.unwrap_or_default();
            let c_text = critical.unwrap_or_default();
            return Err(if user_critical.is_some() {
                invalid(
                    CRITICAL,
                    format!("'{c_text}' is longer than {GRACE} '{g_text}'; it is a part of it"),
                )
            } else {
                invalid(
                    GRACE,
                    format!(
                        "'{g_text}' is shorter than the {c_text} kept for critical pods by default \
                         from 1.34; set {CRITICAL} too (at most '{g_text}')"
                    ),
                )
            });
        }
        _ => {}
    }
    let mut out = Vec::new();
    if let Some(g) = grace {
        out.push(("shutdownGracePeriod", g.to_string()));
    }
    if let Some(c) = critical {
        out.push(("shutdownGracePeriodCriticalPods", c.to_string()));
    }
    Ok(out)
}

/// `config.json`, readable by root only (CIS Kubernetes 4.1.9; nodeadm writes it 0644).
pub fn config_file(
    k8s: &Kubernetes,
    node: &Node,
    version: KubeletVersion,
) -> Result<OutputFile, RenderError> {
    let value = config(k8s, node, version)?;
    Ok(OutputFile::new(
        paths::KUBELET_CONFIG,
        0o600,
        to_json("kubelet config", &value)?,
    ))
}

/// Kubelet's command-line flags, sorted by name.
pub fn flags(
    k8s: &Kubernetes,
    node: &Node,
    version: KubeletVersion,
    credential_providers: bool,
) -> BTreeMap<&'static str, String> {
    let mut f = BTreeMap::new();
    f.insert("config", paths::host(paths::KUBELET_CONFIG));
    match node.auth {
        Auth::Aws { .. } => {
            f.insert("kubeconfig", paths::host(paths::KUBECONFIG));
        }
        Auth::Tls { .. } => {
            // Kubelet writes the kubeconfig itself once the bootstrap CSR is signed.
            f.insert(
                "bootstrap-kubeconfig",
                paths::host(paths::BOOTSTRAP_KUBECONFIG),
            );
            f.insert("kubeconfig", paths::host(paths::KUBECONFIG));
        }
        Auth::Standalone => {}
    }
    if let Some(p) = &node.cloud_provider {
        f.insert("cloud-provider", p.clone());
    }
    if let Some(h) = &node.hostname_override {
        f.insert("hostname-override", h.clone());
    }
    if let Some(ip) = node.node_ip {
        f.insert("node-ip", ip.to_string());
    }
    f.insert("runtime-cgroups", RUNTIME_CGROUPS.to_string());
    if credential_providers {
        f.insert(
            "image-credential-provider-bin-dir",
            paths::CREDENTIAL_PROVIDER_BIN_DIR.to_string(),
        );
        f.insert(
            "image-credential-provider-config",
            paths::host(paths::CREDENTIAL_PROVIDER_CONFIG),
        );
    }
    if let Some(labels) = k8s.node_labels.as_ref().filter(|l| !l.is_empty()) {
        let joined: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{}={}", k.as_ref(), v.as_ref()))
            .collect();
        f.insert("node-labels", joined.join(","));
    }
    if !version.at_least(27) {
        // Before 1.27 the runtime endpoint was a flag, with the runtime kind beside it.
        f.insert("container-runtime", "remote".to_string());
        f.insert(
            "container-runtime-endpoint",
            paths::CONTAINERD_SOCKET.to_string(),
        );
    }
    if !version.at_least(29) {
        // Before 1.29 kubelet's image GC honoured this flag to keep the sandbox image; from
        // 1.29 the runtime pins it (the image carries containerd's pinned label) and kubelet
        // ignores the flag, so nodeadm drops it. The image is containerd's sandbox_image:
        // the setting, else the pause image the variant ships.
        let image = k8s
            .pod_infra_container_image
            .as_ref()
            .map_or(paths::PAUSE_IMAGE, |i| i.as_ref());
        f.insert("pod-infra-container-image", image.to_string());
    }
    f
}

/// The `EnvironmentFile` `kubelet.service` reads: `KUBELET_ARGS=--a=b --c=d`.
///
/// Unquoted on purpose: systemd keeps inner spaces of an unquoted value and `$KUBELET_ARGS`
/// in `ExecStart` splits it into words. No value holds a space (the model's label, host
/// name and image rules exclude it).
pub fn environment_file(
    k8s: &Kubernetes,
    node: &Node,
    version: KubeletVersion,
    credential_providers: bool,
) -> OutputFile {
    let args: Vec<String> = flags(k8s, node, version, credential_providers)
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect();
    let text = format!("{}={}\n", paths::KUBELET_ARGS_VAR, args.join(" "));
    OutputFile::new(paths::KUBELET_ENV, 0o644, text)
}

fn enabled_static_pods(
    k8s: &Kubernetes,
) -> impl Iterator<
    Item = (
        &settings_api::model::Identifier,
        &settings_api::model::StaticPod,
    ),
> {
    k8s.static_pods
        .iter()
        .flatten()
        .filter(|(_, pod)| pod.enabled != Some(false))
}

/// One manifest per enabled `settings.kubernetes.static-pods.<name>`.
pub fn static_pod_files(k8s: &Kubernetes) -> Result<Vec<OutputFile>, RenderError> {
    enabled_static_pods(k8s)
        .map(|(name, pod)| {
            let key = format!("static-pods.{}.manifest", name.as_ref());
            let manifest = pod
                .manifest
                .as_ref()
                .ok_or_else(|| invalid(&key, "an enabled static pod needs a manifest"))?;
            let bytes = settings_api::pem::decode_base64(manifest.as_ref())
                .map_err(|e| invalid(&key, format!("must be base64: {e}")))?;
            Ok(OutputFile::new(
                format!("{}/{}.yaml", paths::STATIC_PODS_DIR, name.as_ref()),
                0o644,
                bytes,
            ))
        })
        .collect()
}
