//! Settings + facts + kubelet version -> the files to write. Pure: nothing here touches the
//! host, so every rule is testable and a bad input fails before any file is written.

mod containerd;
mod credential_provider;
mod ecs;
mod kubeconfig;
mod kubelet;
mod resolve;

use crate::facts::Facts;
use crate::version::KubeletVersion;
use settings_api::model::Settings;

/// One file to write, relative to the output root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    /// Relative path (no leading `/`).
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    pub contents: Vec<u8>,
}

impl OutputFile {
    fn new(path: impl Into<String>, mode: u32, contents: impl Into<Vec<u8>>) -> OutputFile {
        OutputFile {
            path: path.into(),
            mode,
            contents: contents.into(),
        }
    }
}

/// Why the settings and facts cannot be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("setting '{key}' is required: {hint}")]
    MissingSetting {
        key: &'static str,
        hint: &'static str,
    },
    #[error("invalid setting '{key}': {reason}")]
    InvalidSetting { key: String, reason: String },
    #[error("fact '{key}' is missing from the facts file; {hint}")]
    MissingFact {
        key: &'static str,
        hint: &'static str,
    },
    #[error("invalid fact '{key}': {reason}")]
    InvalidFact { key: &'static str, reason: String },
    #[error(
        "the settings have neither 'settings.kubernetes' nor 'settings.ecs'; set one of them to join a cluster"
    )]
    NothingToRender,
    #[error("serialize {what}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Renders every file the settings call for: the Kubernetes node's when
/// `settings.kubernetes` exists, the ECS agent's when `settings.ecs` exists.
pub fn render(
    settings: &Settings,
    facts: &Facts,
    version: KubeletVersion,
) -> Result<Vec<OutputFile>, RenderError> {
    let mut files = Vec::new();
    if let Some(k8s) = &settings.kubernetes {
        let node = resolve::resolve(settings, k8s, facts, version)?;
        files.push(kubelet::config_file(k8s, &node, version)?);
        if let Some(ca) = &node.ca_pem {
            files.push(OutputFile::new(crate::paths::CLUSTER_CA, 0o644, ca.clone()));
        }
        files.extend(kubeconfig::files(&node)?);
        let providers = credential_provider::file(k8s, &node, version)?;
        let has_providers = providers.is_some();
        files.extend(providers);
        files.extend(kubelet::static_pod_files(k8s)?);
        files.push(containerd::base_runtime_spec_file(
            settings.oci_defaults.as_ref(),
        )?);
        files.push(kubelet::environment_file(
            k8s,
            &node,
            version,
            has_providers,
        ));
    }
    if let Some(ecs) = &settings.ecs {
        files.push(ecs::config_file(ecs, settings, facts)?);
    }
    if files.is_empty() {
        return Err(RenderError::NothingToRender);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Pretty JSON with nodeadm's 4-space indent and a final newline.
fn to_json(what: &'static str, value: &serde_json::Value) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(value, &mut ser)
        .map_err(|source| RenderError::Serialize { what, source })?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CERT: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVQnc9PQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==";

    fn settings(k8s: serde_json::Value) -> Settings {
        let mut base = json!({
            "cluster-name": "c",
            "api-server": "https://api.example.com",
            "cluster-certificate": CERT,
        });
        let obj = base.as_object_mut().expect("object");
        obj.extend(k8s.as_object().expect("object").clone());
        Settings::from_json(&json!({ "kubernetes": base })).expect("valid settings")
    }

    fn facts() -> Facts {
        Facts {
            instance_type: Some("m5.large".into()),
            instance_id: Some("i-1".into()),
            availability_zone: Some("us-west-2a".into()),
            region: Some("us-west-2".into()),
            private_dns_name: Some("ip-1.ec2.internal".into()),
            local_ipv4: Some("192.168.0.1".parse().expect("literal")),
            cpus: Some(2),
            ..Facts::default()
        }
    }

    fn paths(files: &[OutputFile]) -> Vec<&str> {
        files.iter().map(|f| f.path.as_str()).collect()
    }

    fn text<'a>(files: &'a [OutputFile], path: &str) -> &'a str {
        let file = files.iter().find(|f| f.path == path).expect(path);
        std::str::from_utf8(&file.contents).expect("utf-8")
    }

    #[test]
    fn disabling_ecr_drops_the_provider_config_and_its_flags() {
        let s = settings(json!({
            "credential-providers": { "ecr-credential-provider": { "enabled": false } }
        }));
        let files = render(&s, &facts(), KubeletVersion::new(33)).expect("render");
        assert!(!paths(&files).contains(&crate::paths::CREDENTIAL_PROVIDER_CONFIG));
        assert!(!text(&files, crate::paths::KUBELET_ENV).contains("image-credential-provider"));
    }

    #[test]
    fn an_enabled_provider_needs_image_patterns() {
        let s = settings(json!({ "credential-providers": { "corp": { "enabled": true } } }));
        let err = render(&s, &facts(), KubeletVersion::new(33)).expect_err("no patterns");
        assert!(
            err.to_string()
                .contains("settings.kubernetes.credential-providers.corp.image-patterns"),
            "{err}"
        );
    }

    #[test]
    fn standalone_needs_no_cluster_and_writes_no_kubeconfig() {
        let s = Settings::from_json(&json!({ "kubernetes": { "standalone-mode": true } }))
            .expect("valid settings");
        let f = Facts {
            cpus: Some(1),
            ..Facts::default()
        };
        let files = render(&s, &f, KubeletVersion::new(33)).expect("render");
        assert_eq!(
            paths(&files),
            vec![
                crate::paths::CONTAINERD_BASE_RUNTIME_SPEC,
                crate::paths::KUBELET_CONFIG,
                crate::paths::KUBELET_ENV
            ]
        );
        let config = text(&files, crate::paths::KUBELET_CONFIG);
        assert!(config.contains("\"AlwaysAllow\""), "{config}");
        assert!(
            !config.contains("clientCAFile"),
            "no CA to point at: {config}"
        );
        assert!(!text(&files, crate::paths::KUBELET_ENV).contains("kubeconfig"));
    }

    #[test]
    fn ipv6_clusters_need_the_ipv6_fact() {
        let s = settings(json!({ "service-cidr": "fd00:ec2::/108" }));
        let err = render(&s, &facts(), KubeletVersion::new(33)).expect_err("no ipv6");
        assert!(err.to_string().contains("fact 'ipv6'"), "{err}");
    }

    #[test]
    fn kube_reserved_cpu_needs_the_cpu_count_unless_set() {
        let f = Facts {
            cpus: None,
            ..facts()
        };
        let err = render(&settings(json!({})), &f, KubeletVersion::new(33)).expect_err("no cpus");
        assert!(err.to_string().contains("fact 'cpus'"), "{err}");
        let s = settings(json!({ "kube-reserved": { "cpu": "1" } }));
        let files = render(&s, &f, KubeletVersion::new(33)).expect("cpu set by the user");
        assert!(text(&files, crate::paths::KUBELET_CONFIG).contains("\"cpu\": \"1\""));
    }

    #[test]
    fn an_empty_cloud_provider_means_none_and_no_provider_id() {
        let s = settings(json!({ "cloud-provider": "" }));
        let files = render(&s, &facts(), KubeletVersion::new(33)).expect("render");
        let env = text(&files, crate::paths::KUBELET_ENV);
        assert!(!env.contains("--cloud-provider"), "{env}");
        assert!(!env.contains("--hostname-override"), "{env}");
        assert!(!text(&files, crate::paths::KUBELET_CONFIG).contains("providerID"));
    }

    #[test]
    fn kubernetes_and_ecs_render_side_by_side() {
        let mut s = settings(json!({}));
        s.ecs = Some(Default::default());
        let files = render(&s, &facts(), KubeletVersion::new(33)).expect("render");
        assert!(paths(&files).contains(&crate::paths::ECS_CONFIG));
        assert!(paths(&files).contains(&crate::paths::KUBELET_CONFIG));
    }
}
