//! Settings + facts + kubelet version -> the files to write. Pure: nothing here touches the
//! host, so every rule is testable and a bad input fails before any file is written.

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
