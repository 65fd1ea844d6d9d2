//! max-pods from the instance type, as nodeadm computes it for the AWS VPC CNI:
//! `ENIs x (IPv4 addresses per ENI - 1) + 2`.
//!
//! Each ENI's primary address is the node's, not a pod's (hence `- 1`); the `+ 2` counts
//! kube-proxy and the VPC CNI's aws-node, which use host networking and take no address.
//! The table is nodeadm's `instance-info.jsonl` (see `data/NOTICE.md`); an instance type it
//! does not list gets kubelet's default of 110, as nodeadm does when it cannot ask EC2.
//! nodeadm applies no cap to the table's value.
//!
//! When `settings.kubernetes.vpc-cni` says how the cluster's CNI hands out addresses, the
//! EKS max-pods calculator's rules apply instead (`--cni-prefix-delegation-enabled`,
//! `--cni-custom-networking-enabled`): with prefix delegation each address slot holds a
//! /28 prefix (16 pods); with custom networking the primary ENI carries no pods; and the
//! result is capped at 110 pods, or 250 on instances with more than 30 vCPUs.

use serde::Deserialize;

/// kubelet's own default, used for unknown instance types and hosts off EC2.
pub const DEFAULT_MAX_PODS: u32 = 110;

/// Pods that use host networking and take no VPC address (kube-proxy, aws-node).
const HOST_NETWORK_PODS: u32 = 2;

/// The instance table, embedded so the agent needs no file and no network at boot.
const INSTANCE_INFO: &str = include_str!("../../data/ec2-instance-info.jsonl");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InstanceInfo {
    instance_type: String,
    #[serde(rename = "defaultMaxENIs")]
    default_max_enis: u32,
    ipv4_addresses_per_interface: u32,
}

/// ENIs and IPv4 addresses per ENI of `instance_type`, if the table lists it.
fn lookup(instance_type: &str) -> Option<InstanceInfo> {
    INSTANCE_INFO
        .lines()
        // A line that does not parse is skipped, as nodeadm skips it; the table test below
        // proves there is none.
        .filter_map(|line| serde_json::from_str::<InstanceInfo>(line).ok())
        .find(|info| info.instance_type == instance_type)
}

/// max-pods for `instance_type` (None: not on EC2), nodeadm's rule.
pub fn for_instance_type(instance_type: Option<&str>) -> u32 {
    instance_type
        .and_then(lookup)
        .map_or(DEFAULT_MAX_PODS, |info| {
            info.default_max_enis * info.ipv4_addresses_per_interface.saturating_sub(1)
                + HOST_NETWORK_PODS
        })
}

/// How the cluster's VPC CNI assigns pod addresses (`settings.kubernetes.vpc-cni`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cni {
    pub prefix_delegation: bool,
    pub custom_networking: bool,
}

/// Addresses one prefix-delegation slot holds (a /28).
const ADDRESSES_PER_PREFIX: u32 = 16;
/// The max-pods calculator's ceilings, and the vCPU count above which the higher applies.
const CEILING_LOW_CPU: u32 = 110;
const CEILING_HIGH_CPU: u32 = 250;
const HIGH_CPU_ABOVE: u32 = 30;

/// max-pods by the EKS max-pods calculator's rules for `cni`, on a host with `cpus` vCPUs;
/// the plain table value when neither input is on. `None` when the calculator's ceiling
/// needs the vCPU count and `cpus` is unknown.
pub fn with_cni(instance_type: Option<&str>, cni: Cni, cpus: Option<u32>) -> Option<u32> {
    if cni == Cni::default() {
        return Some(for_instance_type(instance_type));
    }
    let Some(info) = instance_type.and_then(lookup) else {
        return Some(DEFAULT_MAX_PODS);
    };
    let enis = info.default_max_enis - u32::from(cni.custom_networking).min(info.default_max_enis);
    let per_slot = if cni.prefix_delegation {
        ADDRESSES_PER_PREFIX
    } else {
        1
    };
    let pods =
        enis * info.ipv4_addresses_per_interface.saturating_sub(1) * per_slot + HOST_NETWORK_PODS;
    let ceiling = if cpus? > HIGH_CPU_ABOVE {
        CEILING_HIGH_CPU
    } else {
        CEILING_LOW_CPU
    };
    Some(pods.min(ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_line_parses() {
        let lines = INSTANCE_INFO.lines().filter(|l| !l.trim().is_empty());
        for line in lines {
            serde_json::from_str::<InstanceInfo>(line).expect(line);
        }
        assert!(INSTANCE_INFO.lines().count() > 1000);
    }

    #[test]
    fn known_types_follow_the_vpc_cni_formula() {
        // m5.large: 3 ENIs x 10 IPv4 -> 3 x 9 + 2 (EKS AMI eni-max-pods.txt: 29).
        assert_eq!(for_instance_type(Some("m5.large")), 29);
        // c6g.4xlarge: 8 x 30 -> 8 x 29 + 2 = 234 (eni-max-pods.txt: 234).
        assert_eq!(for_instance_type(Some("c6g.4xlarge")), 234);
        // t3.micro: 2 x 2 -> 2 x 1 + 2 = 4.
        assert_eq!(for_instance_type(Some("t3.micro")), 4);
        // m5.24xlarge: 15 x 50 -> 737, no cap without prefix delegation.
        assert_eq!(for_instance_type(Some("m5.24xlarge")), 737);
    }

    #[test]
    fn prefix_delegation_and_custom_networking_follow_the_calculator() {
        let pd = Cni {
            prefix_delegation: true,
            custom_networking: false,
        };
        let cn = Cni {
            prefix_delegation: false,
            custom_networking: true,
        };
        let both = Cni {
            prefix_delegation: true,
            custom_networking: true,
        };
        // m5.large, 2 vCPUs: 3 x 9 x 16 + 2 = 434, capped at 110.
        assert_eq!(with_cni(Some("m5.large"), pd, Some(2)), Some(110));
        // m5.24xlarge, 96 vCPUs: 15 x 49 x 16 + 2, capped at 250.
        assert_eq!(with_cni(Some("m5.24xlarge"), pd, Some(96)), Some(250));
        // t3.micro: 2 x 1 x 16 + 2 = 34, under the cap.
        assert_eq!(with_cni(Some("t3.micro"), pd, Some(2)), Some(34));
        // Custom networking: the primary ENI carries no pods: (3 - 1) x 9 + 2 = 20.
        assert_eq!(with_cni(Some("m5.large"), cn, Some(2)), Some(20));
        // c6g.4xlarge, both: (8 - 1) x 29 x 16 + 2 = 3250, 16 vCPUs: capped at 110.
        assert_eq!(with_cni(Some("c6g.4xlarge"), both, Some(16)), Some(110));
        // Neither input: the table, uncapped, no vCPU count needed.
        assert_eq!(
            with_cni(Some("m5.24xlarge"), Cni::default(), None),
            Some(737)
        );
        // The ceiling needs the vCPU count.
        assert_eq!(with_cni(Some("m5.large"), pd, None), None);
        assert_eq!(with_cni(Some("x99.nonexistent"), pd, None), Some(110));
    }

    #[test]
    fn unknown_types_and_hosts_off_ec2_get_kubelets_default() {
        assert_eq!(for_instance_type(Some("x99.nonexistent")), 110);
        assert_eq!(for_instance_type(None), 110);
    }

    #[test]
    fn agrees_with_the_eks_ami_table() {
        // The older eni-max-pods.txt lists max-pods directly; both tables must agree.
        let table = include_str!("../../tests/fixtures/eni-max-pods.txt");
        let mut checked = 0;
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        {
            let mut fields = line.split_whitespace();
            let (Some(ty), Some(pods)) = (fields.next(), fields.next()) else {
                continue;
            };
            if lookup(ty).is_some() {
                assert_eq!(for_instance_type(Some(ty)).to_string(), pods, "{ty}");
                checked += 1;
            }
        }
        assert!(checked > 1000, "only {checked} types compared");
    }
}
