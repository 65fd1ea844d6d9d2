//! Kubelet's own check on `--node-labels`: a kubelet may only set labels in the Kubernetes
//! namespaces (`kubernetes.io`, `k8s.io` and their subdomains) that the NodeRestriction
//! admission plugin lets it set, and refuses to start otherwise. Checked here so the error
//! names the setting instead of showing up as a kubelet crash loop.

use super::RenderError;
use settings_api::model::Kubernetes;

/// Labels in Kubernetes namespaces a kubelet may set (kubelet's `kubeletLabels`).
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

/// Whether a kubelet may register with label `key`.
fn allowed(key: &str) -> bool {
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

/// Fails on the first node label kubelet would refuse.
pub fn check(k8s: &Kubernetes) -> Result<(), RenderError> {
    for key in k8s.node_labels.iter().flatten().map(|(k, _)| k.as_ref()) {
        if !allowed(key) {
            return Err(RenderError::InvalidSetting {
                key: format!("settings.kubernetes.node-labels.{key}"),
                reason: "kubelet may not set labels in the kubernetes.io / k8s.io namespaces \
                         except node.kubernetes.io/*, kubelet.kubernetes.io/* and the well-known \
                         topology, os and arch labels; set it with kubectl or use your own prefix"
                    .to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::allowed;

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
            assert!(allowed(ok), "{ok}");
        }
        for bad in [
            "node-role.kubernetes.io/worker",
            "kubernetes.io/role",
            "k8s.io/x",
            "foo.k8s.io/x",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
    }
}
