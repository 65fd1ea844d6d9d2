//! The node's effective identity and sizes: each value the user set, otherwise the one
//! nodeadm would derive from the instance facts.

use super::RenderError;
use crate::derive::network;
use crate::derive::{maxpods, reserved};
use crate::facts::Facts;
use crate::version::KubeletVersion;
use settings_api::model::{AuthenticationMode, ClusterDnsIp, IpFamily, Kubernetes, Settings};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// How kubelet authenticates to the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// EKS: an IAM token from the exec plugin, for `cluster` in `region`.
    Aws { cluster: String, region: String },
    /// EKS Anywhere: TLS bootstrap with a bootstrap token, then rotated client certificates.
    Tls { token: String },
    /// Standalone kubelet: no API server.
    Standalone,
}

/// Everything the kubelet files need beyond the settings they copy through.
#[derive(Debug, Clone)]
pub struct Node {
    pub auth: Auth,
    pub api_server: Option<String>,
    /// PEM text of the cluster CA.
    pub ca_pem: Option<String>,
    pub max_pods: u32,
    pub cluster_dns: Vec<IpAddr>,
    pub node_ip: Option<IpAddr>,
    pub provider_id: Option<String>,
    pub hostname_override: Option<String>,
    pub cloud_provider: Option<String>,
    pub kube_reserved: BTreeMap<String, String>,
}

const CLUSTER_NAME: &str = "settings.kubernetes.cluster-name";
const API_SERVER: &str = "settings.kubernetes.api-server";
const CERTIFICATE: &str = "settings.kubernetes.cluster-certificate";
const TOKEN: &str = "settings.kubernetes.bootstrap-token";
const SERVICE_CIDR: &str = "settings.kubernetes.service-cidr";

/// Where the cluster's IP family comes from, for error messages.
fn family_source(k8s: &Kubernetes) -> String {
    match (&k8s.ip_family, &k8s.service_cidr) {
        (Some(_), _) => "settings.kubernetes.ip-family".to_string(),
        (None, Some(cidr)) => format!("settings.kubernetes.service-cidr {}", cidr.as_ref()),
        (None, None) => "no family set".to_string(),
    }
}

/// Checks a fact that ends up in a flag or a kubeconfig: one non-empty word.
fn word(key: &'static str, value: Option<&str>) -> Result<(), RenderError> {
    match value {
        Some(v) if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            Err(RenderError::InvalidFact {
                key,
                reason: format!("'{v}' must be one word without spaces"),
            })
        }
        _ => Ok(()),
    }
}

pub fn resolve(
    settings: &Settings,
    k8s: &Kubernetes,
    facts: &Facts,
    version: KubeletVersion,
) -> Result<Node, RenderError> {
    word("instance-id", facts.instance_id.as_deref())?;
    word("availability-zone", facts.availability_zone.as_deref())?;
    word("region", facts.region.as_deref())?;
    word("private-dns-name", facts.private_dns_name.as_deref())?;
    let standalone = k8s.standalone_mode == Some(true);
    let tls = k8s.authentication_mode == Some(AuthenticationMode::Tls);

    let api_server = match (&k8s.api_server, standalone) {
        (Some(url), _) => Some(url.as_ref().to_string()),
        (None, true) => None,
        (None, false) => {
            return Err(RenderError::MissingSetting {
                key: API_SERVER,
                hint: "set it to the cluster's API server URL (https://...)",
            })
        }
    };
    let ca_pem = match (&k8s.cluster_certificate, standalone) {
        (Some(cert), _) => Some(
            settings_api::pem::decode_certificates(cert.as_ref()).map_err(|e| {
                RenderError::InvalidSetting {
                    key: CERTIFICATE.to_string(),
                    reason: format!("must be base64-encoded PEM certificates: {e}"),
                }
            })?,
        ),
        (None, true) => None,
        (None, false) => {
            return Err(RenderError::MissingSetting {
                key: CERTIFICATE,
                hint: "set it to the cluster's CA certificate, base64-encoded PEM",
            })
        }
    };
    let cluster_name = k8s.cluster_name.as_ref().map(|n| n.as_ref().to_string());
    if cluster_name.is_none() && !standalone {
        return Err(RenderError::MissingSetting {
            key: CLUSTER_NAME,
            hint: "set it to the name of the cluster to join",
        });
    }

    let auth = if standalone {
        Auth::Standalone
    } else if tls {
        let token = k8s
            .bootstrap_token
            .as_ref()
            .ok_or(RenderError::MissingSetting {
                key: TOKEN,
                hint:
                    "authentication-mode 'tls' joins with a bootstrap token (kubeadm token create)",
            })?;
        Auth::Tls {
            token: token.as_ref().to_string(),
        }
    } else {
        let region = settings
            .aws
            .as_ref()
            .and_then(|a| a.region.as_ref())
            .map(|r| r.as_ref().to_string())
            .or_else(|| facts.region.clone())
            .ok_or(RenderError::MissingFact {
                key: "region",
                hint: "the IAM token is for one region; give 'region' or set settings.aws.region",
            })?;
        Auth::Aws {
            cluster: cluster_name.clone().unwrap_or_default(),
            region,
        }
    };
    let on_aws = matches!(auth, Auth::Aws { .. });

    // The cluster's IP family decides the node IP and must agree with every address given.
    let family = k8s
        .cluster_ip_family()
        .map_err(|e| RenderError::InvalidSetting {
            key: e.key,
            reason: e.reason,
        })?;
    let check_family = |key: &str, ip: IpAddr| match family {
        Some(f) if IpFamily::of(ip) != f => Err(RenderError::InvalidSetting {
            key: format!("settings.kubernetes.{key}"),
            reason: format!(
                "{ip} is an {} address but the cluster is {} ({}); use an {} address",
                IpFamily::of(ip).name(),
                f.name(),
                family_source(k8s),
                f.name()
            ),
        }),
        _ => Ok(()),
    };

    let cluster_dns = match &k8s.cluster_dns_ip {
        Some(ClusterDnsIp::Scalar(ip)) => vec![*ip],
        Some(ClusterDnsIp::Vector(ips)) => ips.clone(),
        None => vec![match (&k8s.service_cidr, family) {
            (Some(cidr), _) => network::tenth_address(cidr),
            (None, Some(IpFamily::Ipv6)) => {
                return Err(RenderError::MissingSetting {
                    key: SERVICE_CIDR,
                    hint: "an IPv6 cluster's DNS address is the tenth of its service CIDR, \
                           which EKS picks itself; set service-cidr (aws eks describe-cluster: \
                           kubernetesNetworkConfig.serviceIpv6Cidr) or cluster-dns-ip",
                })
            }
            (None, _) if on_aws => network::fallback_cluster_dns(
                facts.vpc_ipv4_cidr_blocks.as_deref().unwrap_or_default(),
                facts.local_ipv4,
            ),
            (None, _) => network::KUBEADM_CLUSTER_DNS,
        }],
    };
    for ip in &cluster_dns {
        check_family("cluster-dns-ip", *ip)?;
    }

    // nodeadm: the IPv6 address of the primary interface on IPv6 clusters, the private
    // IPv4 address otherwise.
    let node_ip = match k8s.node_ip {
        Some(ip) => {
            check_family("node-ip", ip)?;
            Some(ip)
        }
        None if family == Some(IpFamily::Ipv6) => Some(facts.ipv6.ok_or(RenderError::MissingFact {
            key: "ipv6",
            hint: "the cluster is IPv6, so the node registers with the IPv6 address of its primary interface (IMDS ipv6s); or set settings.kubernetes.node-ip",
        })?),
        None if on_aws => Some(facts.local_ipv4.ok_or(RenderError::MissingFact {
            key: "local-ipv4",
            hint: "an EKS node registers with its private IPv4 address; or set settings.kubernetes.node-ip",
        })?),
        None => facts.local_ipv4,
    };

    let cloud_provider = match &k8s.cloud_provider {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(p.clone()),
        // nodeadm: the external AWS cloud controller from 1.26, the in-tree provider before.
        None if on_aws && version.at_least(26) => Some("external".to_string()),
        None if on_aws => Some("aws".to_string()),
        None => None,
    };
    let external_on_aws = on_aws && cloud_provider.as_deref() == Some("external");

    let provider_id = match &k8s.provider_id {
        Some(id) => Some(id.as_ref().to_string()),
        // The external cloud controller finds the instance by provider ID, so nodeadm sets it.
        None if external_on_aws => {
            let az = facts
                .availability_zone
                .as_deref()
                .ok_or(RenderError::MissingFact {
                    key: "availability-zone",
                    hint: "the provider ID is aws:///<availability zone>/<instance id>",
                })?;
            let id = facts
                .instance_id
                .as_deref()
                .ok_or(RenderError::MissingFact {
                    key: "instance-id",
                    hint: "the provider ID is aws:///<availability zone>/<instance id>",
                })?;
            Some(format!("aws:///{az}/{id}"))
        }
        None => None,
    };

    let hostname_override = match &k8s.hostname_override {
        Some(h) => Some(h.as_ref().to_string()),
        // nodeadm names the node after the EC2 private DNS name when the cloud provider is
        // external, because the in-tree provider that used to do it is gone.
        None if external_on_aws => Some(facts.private_dns_name.clone().ok_or(
            RenderError::MissingFact {
                key: "private-dns-name",
                hint: "an EKS node is named after its EC2 private DNS name; or set settings.kubernetes.hostname-override",
            },
        )?),
        None => None,
    };

    let max_pods = match k8s.max_pods {
        Some(m) => u32::try_from(i64::from(m)).map_err(|_| RenderError::InvalidSetting {
            key: "settings.kubernetes.max-pods".to_string(),
            reason: "out of range".to_string(),
        })?,
        None => {
            let cni = k8s.vpc_cni.as_ref();
            let cni = maxpods::Cni {
                prefix_delegation: cni.and_then(|c| c.prefix_delegation).unwrap_or(false),
                custom_networking: cni.and_then(|c| c.custom_networking).unwrap_or(false),
            };
            maxpods::with_cni(facts.instance_type.as_deref(), cni, facts.cpus).ok_or(
                RenderError::MissingFact {
                    key: "cpus",
                    hint: "with settings.kubernetes.vpc-cni, max-pods is capped by the vCPU count (110, or 250 above 30 vCPUs); or set settings.kubernetes.max-pods",
                },
            )?
        }
    };

    let user_reserved: BTreeMap<String, String> = k8s
        .kube_reserved
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
        .collect();
    let mut kube_reserved = BTreeMap::new();
    if !user_reserved.contains_key("cpu") {
        let cpus = facts.cpus.ok_or(RenderError::MissingFact {
            key: "cpus",
            hint: "kube-reserved cpu is derived from the CPU count; or set settings.kubernetes.kube-reserved.cpu",
        })?;
        kube_reserved.insert(
            "cpu".to_string(),
            format!("{}m", reserved::cpu_millicores(cpus)),
        );
    }
    kube_reserved.insert(
        "ephemeral-storage".to_string(),
        reserved::EPHEMERAL_STORAGE.to_string(),
    );
    // From the effective max-pods, so a user's max-pods also sizes the reservation.
    kube_reserved.insert(
        "memory".to_string(),
        format!("{}Mi", reserved::memory_mebibytes(max_pods)),
    );
    kube_reserved.extend(user_reserved);

    Ok(Node {
        auth,
        api_server,
        ca_pem,
        max_pods,
        cluster_dns,
        node_ip,
        provider_id,
        hostname_override,
        cloud_provider,
        kube_reserved,
    })
}
