//! Instance facts: what the host knows about itself that is not a setting (IMDS answers on
//! EC2, the host's CPU count everywhere). `boot-config` reads IMDS; this crate only takes the
//! result as JSON, so rendering stays a pure function that tests can drive with any instance.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// Facts about the instance, from the `--facts` JSON file (kebab-case keys; unknown keys are
/// rejected so a typo does not silently fall back to a default).
///
/// Every field is optional because an EKS Anywhere host on vSphere or metal has no IMDS; a
/// fact a rendering step needs and does not find is an error that names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Facts {
    /// EC2 instance type (`m5.large`), for max-pods.
    pub instance_type: Option<String>,
    /// EC2 instance id (`i-0123...`), for the provider ID.
    pub instance_id: Option<String>,
    /// Availability zone (`us-west-2a`), for the provider ID.
    pub availability_zone: Option<String>,
    /// Region (`us-west-2`), for the kubeconfig's token command.
    pub region: Option<String>,
    /// EC2 private DNS name, the node name nodeadm registers with (`hostname-override`).
    pub private_dns_name: Option<String>,
    /// Primary private IPv4 address (IMDS `local-ipv4`).
    pub local_ipv4: Option<IpAddr>,
    /// Primary IPv6 address of the primary interface, used as node IP on IPv6 clusters.
    pub ipv6: Option<IpAddr>,
    /// The VPC's IPv4 CIDR blocks (IMDS `vpc-ipv4-cidr-blocks`), for the cluster DNS
    /// fallback when the service CIDR is not known.
    pub vpc_ipv4_cidr_blocks: Option<Vec<String>>,
    /// Online CPUs of the host, for the kube-reserved CPU share.
    pub cpus: Option<u32>,
    /// Berth variant (`aws-ecs`), reported to ECS as an instance attribute.
    pub variant: Option<String>,
}
