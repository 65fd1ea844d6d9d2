//! Cluster DNS address and node IP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A service CIDR that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a CIDR such as 10.100.0.0/16 or fd00:ec2::/108")]
pub struct CidrError(String);

/// A parsed CIDR: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError(s.to_string());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// The tenth address of the network: where EKS (and kubeadm) put the kube-dns service.
    ///
    /// nodeadm builds it as text (the IPv4 CIDR up to its last dot plus `.10`, the IPv6
    /// prefix plus `a`); for the network addresses EKS allows both are the same address, and
    /// counting from the masked network address stays right for a CIDR written with host
    /// bits set.
    pub fn tenth_address(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from((u32::from(a) & mask).wrapping_add(10)))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from((u128::from(a) & mask).wrapping_add(10)))
            }
        }
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
        cidr.parse::<Cidr>()
            .expect(cidr)
            .tenth_address()
            .to_string()
    }

    #[test]
    fn dns_is_the_tenth_address_of_the_service_cidr() {
        assert_eq!(dns("10.100.0.0/16"), "10.100.0.10");
        assert_eq!(dns("172.20.0.0/16"), "172.20.0.10");
        assert_eq!(dns("192.168.128.0/20"), "192.168.128.10");
        // nodeadm: IPv6 prefix + "a".
        assert_eq!(dns("fd00:ec2::/108"), "fd00:ec2::a");
        assert_eq!(dns("fd30:1c53:5f8a::/108"), "fd30:1c53:5f8a::a");
        // Host bits set: counted from the network address.
        assert_eq!(dns("10.100.3.7/16"), "10.100.0.10");
    }

    #[test]
    fn bad_cidrs_are_rejected() {
        for s in [
            "10.100.0.0",
            "10.100.0.0/33",
            "fd00::/129",
            "x/16",
            "10.100.0.0/x",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s}");
        }
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
