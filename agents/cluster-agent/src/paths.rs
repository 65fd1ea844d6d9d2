//! Where rendered files go on the host (relative to the output root) and the host paths the
//! rendered files refer to. One place, so the files and the units that read them agree.

/// KubeletConfiguration, as nodeadm writes it.
pub const KUBELET_CONFIG: &str = "etc/kubernetes/kubelet/config.json";
/// Kubelet flags, a systemd `EnvironmentFile` read by `kubelet.service`.
pub const KUBELET_ENV: &str = "etc/kubernetes/kubelet/environment";
/// Name of the variable in [`KUBELET_ENV`] that `kubelet.service` expands in `ExecStart`.
pub const KUBELET_ARGS_VAR: &str = "KUBELET_ARGS";
/// Kubelet's kubeconfig (IAM exec plugin); in TLS mode kubelet writes it itself.
pub const KUBECONFIG: &str = "var/lib/kubelet/kubeconfig";
/// Bootstrap kubeconfig holding the bootstrap token (TLS bootstrap, EKS Anywhere).
pub const BOOTSTRAP_KUBECONFIG: &str = "var/lib/kubelet/bootstrap-kubeconfig";
/// The cluster CA, decoded from `settings.kubernetes.cluster-certificate`.
pub const CLUSTER_CA: &str = "etc/kubernetes/pki/ca.crt";
/// CredentialProviderConfig for kubelet's image credential providers.
pub const CREDENTIAL_PROVIDER_CONFIG: &str = "etc/eks/image-credential-provider/config.json";
/// Folder of static pod manifests.
pub const STATIC_PODS_DIR: &str = "etc/kubernetes/static-pods";
/// containerd's base OCI spec for pod containers (`base_runtime_spec` in its config.toml).
pub const CONTAINERD_BASE_RUNTIME_SPEC: &str = "etc/containerd/base-runtime-spec.json";
/// ECS agent configuration, a systemd `EnvironmentFile` read by `ecs.service`.
pub const ECS_CONFIG: &str = "etc/ecs/ecs.config";

/// Image credential provider binaries (ecr-credential-provider), on the read-only root.
pub const CREDENTIAL_PROVIDER_BIN_DIR: &str = "/usr/libexec/kubernetes/credential-providers";
/// The pod sandbox image every Kubernetes variant ships (`[pause-image]` in
/// `variants/shared/k8s.toml`, imported by `berth-pause-image.service`) and containerd's
/// `sandbox_image` unless `settings.kubernetes.pod-infra-container-image` names another.
pub const PAUSE_IMAGE: &str = "localhost/berth/pause:1";
/// Its OCI archive in the image (relative to the root), imported at boot.
pub const PAUSE_IMAGE_ARCHIVE: &str = "usr/share/berth/pause-image.tar";

/// containerd's CRI socket.
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";
/// ECS agent data and logs, as in Bottlerocket.
pub const ECS_DATADIR: &str = "/var/lib/ecs/data";
pub const ECS_LOGFILE: &str = "/var/log/ecs/ecs-agent.log";
pub const ECS_AUDIT_LOGFILE: &str = "/var/log/ecs/audit.log";

/// The facts the boot step rendered with (JSON), on the `/run` tmpfs.
pub const FACTS_RECORD: &str = "run/berth/cluster-facts.json";

/// The absolute host path of an output-relative path.
pub fn host(relative: &str) -> String {
    format!("/{relative}")
}

/// The IAM token exec plugin on the read-only root (an external artifact of EKS variants).
pub const AWS_IAM_AUTHENTICATOR: &str = "/usr/bin/aws-iam-authenticator";

#[cfg(test)]
mod tests {
    use super::*;

    /// The pause image's name and archive path are data in four places besides this file:
    /// the variant (os-build builds the archive), the import unit, and boot-config's
    /// containerd template (sandbox_image). A rename in one of them alone would leave
    /// containerd pulling an image that is not there.
    #[test]
    fn the_pause_image_is_named_alike_everywhere() {
        let variant: toml::Table =
            toml::from_str(include_str!("../../../variants/shared/k8s.toml")).expect("TOML");
        let image = &variant["pause-image"];
        assert_eq!(image["name"].as_str(), Some(PAUSE_IMAGE));
        assert_eq!(
            image["path"].as_str(),
            Some(host(PAUSE_IMAGE_ARCHIVE).as_str())
        );
        let unit = include_str!("../units/berth-pause-image.service");
        let exec: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("ExecStart="))
            .collect();
        assert!(exec[0].ends_with(&format!(" images import {}", host(PAUSE_IMAGE_ARCHIVE))));
        assert!(exec[1].contains(&format!(" images label {PAUSE_IMAGE} ")));
        let template = include_str!("../../boot-config/templates/containerd-config");
        assert!(template.contains(&format!("default(\"{PAUSE_IMAGE}\")")));
        assert!(template.contains(&format!("\"{}\"", host(CONTAINERD_BASE_RUNTIME_SPEC))));
    }
}
