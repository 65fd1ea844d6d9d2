//! max-pods from the instance type, as nodeadm computes it for the AWS VPC CNI without
//! prefix delegation: `ENIs x (IPv4 addresses per ENI - 1) + 2`.
//!
//! Each ENI's primary address is the node's, not a pod's (hence `- 1`); the `+ 2` counts
//! kube-proxy and the VPC CNI's aws-node, which use host networking and take no address.
//! The table is nodeadm's `instance-info.jsonl` (see `data/NOTICE.md`); an instance type it
//! does not list gets kubelet's default of 110, as nodeadm does when it cannot ask EC2.
//! nodeadm applies no cap here: the 110/250 caps belong to prefix delegation, which the
//! settings model does not expose.

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
