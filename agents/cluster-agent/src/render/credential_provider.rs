//! Kubelet's CredentialProviderConfig: which provider binaries fetch registry credentials
//! for which images. On EKS, nodeadm's ECR provider; plus or instead of it, the providers in
//! `settings.kubernetes.credential-providers`.

use super::resolve::{Auth, Node};
use super::{to_json, OutputFile, RenderError};
use crate::paths;
use crate::version::KubeletVersion;
use serde_json::{json, Value};
use settings_api::model::Kubernetes;

/// The ECR provider's binary name, also its name in the config.
const ECR: &str = "ecr-credential-provider";

/// nodeadm's ECR registry patterns: commercial, dual-stack, China, FIPS, the isolated and
/// sovereign partitions (C2S, SC2S, the UK's ADC, ISO-F's `csp.hci.ic.gov`, the European
/// Sovereign Cloud), and ECR Public, so that pulls from `public.ecr.aws` authenticate (and get
/// the authenticated pull rate).
const ECR_IMAGES: [&str; 12] = [
    "*.dkr.ecr.*.amazonaws.com",
    "*.dkr-ecr.*.on.aws",
    "*.dkr.ecr.*.amazonaws.com.cn",
    "*.dkr-ecr.*.on.amazonwebservices.com.cn",
    "*.dkr.ecr-fips.*.amazonaws.com",
    "*.dkr-ecr-fips.*.on.aws",
    "*.dkr.ecr.*.c2s.ic.gov",
    "*.dkr.ecr.*.sc2s.sgov.gov",
    "*.dkr.ecr.*.cloud.adc-e.uk",
    "*.dkr.ecr.*.csp.hci.ic.gov",
    "*.dkr.ecr.*.amazonaws.eu",
    "public.ecr.aws",
];

/// ECR Public's second host name, from 1.32 (the ECR credential provider of that release
/// line knows its token endpoint).
const ECR_PUBLIC_SINCE_1_32: &str = "ecr-public.aws.com";

/// nodeadm's cache duration for ECR tokens (they live 12 hours).
const DEFAULT_CACHE: &str = "12h";

/// The config file, or None when no provider is enabled (then kubelet gets no provider
/// flags at all).
pub fn file(
    k8s: &Kubernetes,
    node: &Node,
    version: KubeletVersion,
) -> Result<Option<OutputFile>, RenderError> {
    // The v1 APIs arrived in 1.26 and nodeadm switches to them from 1.27.
    let (config_api, provider_api) = if version.at_least(27) {
        (
            "kubelet.config.k8s.io/v1",
            "credentialprovider.kubelet.k8s.io/v1",
        )
    } else {
        (
            "kubelet.config.k8s.io/v1alpha1",
            "credentialprovider.kubelet.k8s.io/v1alpha1",
        )
    };
    let user = k8s.credential_providers.as_ref();
    let ecr_setting = user.and_then(|m| m.iter().find(|(n, _)| n.as_ref() == ECR));
    // ECR is on by default on EKS only: off AWS it has no instance role to use.
    let ecr_default = matches!(node.auth, Auth::Aws { .. });

    let mut providers = Vec::new();
    if ecr_setting.map_or(ecr_default, |(_, p)| p.enabled.unwrap_or(true)) {
        let p = ecr_setting.map(|(_, p)| p);
        providers.push(provider(
            ECR,
            p.and_then(|p| p.image_patterns.as_ref())
                .map(|v| v.iter().map(|s| s.as_ref().to_string()).collect())
                .unwrap_or_else(|| ecr_images(version)),
            cache(p, ECR)?,
            provider_api,
        ));
    }
    for (name, p) in user.into_iter().flatten() {
        if name.as_ref() == ECR || p.enabled != Some(true) {
            continue;
        }
        let patterns = p
            .image_patterns
            .as_ref()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| RenderError::InvalidSetting {
                key: format!(
                    "settings.kubernetes.credential-providers.{}.image-patterns",
                    name.as_ref()
                ),
                reason: "an enabled provider needs at least one image pattern".to_string(),
            })?;
        providers.push(provider(
            name.as_ref(),
            patterns.iter().map(|s| s.as_ref().to_string()).collect(),
            cache(Some(p), name.as_ref())?,
            provider_api,
        ));
    }
    if providers.is_empty() {
        return Ok(None);
    }
    let config = json!({
        "apiVersion": config_api,
        "kind": "CredentialProviderConfig",
        "providers": providers,
    });
    Ok(Some(OutputFile::new(
        paths::CREDENTIAL_PROVIDER_CONFIG,
        0o644,
        to_json("credential provider config", &config)?,
    )))
}

/// The ECR provider's default patterns for `version`.
fn ecr_images(version: KubeletVersion) -> Vec<String> {
    let mut images: Vec<String> = ECR_IMAGES.iter().map(|s| s.to_string()).collect();
    if version.at_least(32) {
        images.push(ECR_PUBLIC_SINCE_1_32.to_string());
    }
    images
}

fn cache(
    p: Option<&settings_api::model::CredentialProvider>,
    name: &str,
) -> Result<String, RenderError> {
    match p.and_then(|p| p.cache_duration.as_ref()) {
        Some(d) => {
            crate::duration::check(d.as_ref()).map_err(|reason| RenderError::InvalidSetting {
                key: format!("settings.kubernetes.credential-providers.{name}.cache-duration"),
                reason,
            })?;
            Ok(d.as_ref().to_string())
        }
        None => Ok(DEFAULT_CACHE.to_string()),
    }
}

fn provider(name: &str, images: Vec<String>, cache: String, api: &str) -> Value {
    json!({
        "name": name,
        "matchImages": images,
        "defaultCacheDuration": cache,
        "apiVersion": api,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecr_public_is_matched_and_its_second_host_from_1_32() {
        let old = ecr_images(KubeletVersion::new(31));
        assert!(old.iter().any(|p| p == "public.ecr.aws"));
        assert!(old.iter().any(|p| p == "*.dkr.ecr.*.csp.hci.ic.gov"));
        assert!(!old.iter().any(|p| p == "ecr-public.aws.com"));
        let new = ecr_images(KubeletVersion::new(32));
        assert_eq!(new.last().map(String::as_str), Some("ecr-public.aws.com"));
        assert_eq!(new.len(), old.len() + 1);
    }
}
