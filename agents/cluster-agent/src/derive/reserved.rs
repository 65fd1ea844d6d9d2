//! kube-reserved defaults, nodeadm's (and the EKS AMI's) formulas.
//!
//! CPU: 6% of the first core, 1% of the second, 0.5% of the third and fourth, 0.25% of every
//! core above four. Memory: 255 MiB plus 11 MiB per pod the node may run. Ephemeral
//! storage: 1 GiB.

/// `(upper bound in millicores, share in hundredths of a percent)` per band, nodeadm's
/// `getCPUMillicoresToReserve` bands; the last band is open-ended.
const CPU_BANDS: [(u64, u64); 4] = [(1000, 600), (2000, 100), (4000, 50), (u64::MAX, 25)];

/// Millicores to reserve on a host with `cpus` CPUs.
pub fn cpu_millicores(cpus: u32) -> u64 {
    let total = u64::from(cpus) * 1000;
    let mut start = 0;
    let mut reserved = 0;
    for (end, share) in CPU_BANDS {
        if total <= start {
            break;
        }
        // Integer division per band, as nodeadm does it, so the sums match to the millicore.
        reserved += (total.min(end) - start) * share / 10_000;
        start = end;
    }
    reserved
}

/// MiB of memory to reserve for a node running at most `max_pods` pods.
pub fn memory_mebibytes(max_pods: u32) -> u64 {
    11 * u64::from(max_pods) + 255
}

/// Ephemeral storage to reserve, as a Kubernetes quantity.
pub const EPHEMERAL_STORAGE: &str = "1Gi";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_follows_the_eks_bands() {
        assert_eq!(cpu_millicores(1), 60); // 6% of 1000
        assert_eq!(cpu_millicores(2), 70); // + 1% of 1000
        assert_eq!(cpu_millicores(4), 80); // + 0.5% of 2000
        assert_eq!(cpu_millicores(8), 90); // + 0.25% of 4000
        assert_eq!(cpu_millicores(16), 110); // + 0.25% of 12000
        assert_eq!(cpu_millicores(96), 310); // + 0.25% of 92000
        assert_eq!(cpu_millicores(0), 0);
    }

    #[test]
    fn memory_grows_with_pods() {
        assert_eq!(memory_mebibytes(29), 574); // m5.large
        assert_eq!(memory_mebibytes(110), 1465);
        assert_eq!(memory_mebibytes(234), 2829); // c6g.4xlarge
    }
}
