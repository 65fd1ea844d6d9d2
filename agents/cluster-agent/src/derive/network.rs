//! Cluster DNS address and node IP.

use settings_api::model::ServiceCidr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The tenth address of the service network: where EKS (and kubeadm) put the kube-dns
/// service.
///
/// nodeadm builds it as text (the IPv4 CIDR up to its last dot plus `.10`, the IPv6 prefix
/// plus `a`); the settings model only takes a network address (no host bits) with room for a
/// tenth address, and for those both rules give the same address.
pub fn tenth_address(cidr: &ServiceCidr) -> IpAddr {
    match cidr.network().0 {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 10)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 10)),
    }
}

/// Cluster DNS when no service CIDR is known: the EKS AMI's `bootstrap.sh` rule, which EKS
/// mirrors when it picks a service CIDR — `172.20.0.10` when the VPC uses 10.0.0.0/8 (the
/// default `10.100.0.0/16` would collide), `10.100.0.10` otherwise. Without VPC CIDRs, the
/// node's own address stands in for the VPC's.
pub fn fallback_cluster_dns(vpc_cidrs: &[String], node_ipv4: Option<IpAddr>) -> IpAddr {
    let in_ten = if vpc_cidrs.is_empty() {
        matches!(node_ipv4, Some(IpAddr::V4(a)) if a.octets()[0] == 10)
    } else {
        vpc_cidrs.iter().any(|c| c.starts_with("10."))
    };
    if in_ten {
        IpAddr::V4(Ipv4Addr::new(172, 20, 0, 10))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 100, 0, 10))
    }
}

/// kubeadm's default service CIDR, `10.96.0.0/12`, whose tenth address EKS Anywhere clusters
/// use for DNS.
pub const KUBEADM_CLUSTER_DNS: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(cidr: &str) -> String {
        let cidr = ServiceCidr::try_from(cidr.to_string()).expect(cidr);
        tenth_address(&cidr).to_string()
    }

    #[test]
    fn dns_is_the_tenth_address_of_the_service_cidr() {
        assert_eq!(dns("10.100.0.0/16"), "10.100.0.10");
        assert_eq!(dns("172.20.0.0/16"), "172.20.0.10");
        assert_eq!(dns("192.168.128.0/20"), "192.168.128.10");
        // nodeadm: IPv6 prefix + "a".
        assert_eq!(dns("fd00:ec2::/108"), "fd00:ec2::a");
        assert_eq!(dns("fd30:1c53:5f8a::/108"), "fd30:1c53:5f8a::a");
    }

    #[test]
    fn fallback_avoids_the_vpc_range() {
        let ten = vec!["10.0.0.0/16".to_string()];
        let other = vec!["192.168.0.0/16".to_string()];
        assert_eq!(fallback_cluster_dns(&ten, None).to_string(), "172.20.0.10");
        assert_eq!(
            fallback_cluster_dns(&other, None).to_string(),
            "10.100.0.10"
        );
        let node: IpAddr = "10.1.2.3".parse().expect("literal");
        assert_eq!(
            fallback_cluster_dns(&[], Some(node)).to_string(),
            "172.20.0.10"
        );
        assert_eq!(fallback_cluster_dns(&[], None).to_string(), "10.100.0.10");
    }
}
