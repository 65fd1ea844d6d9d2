//! Gathers the instance facts on the host at boot: IMDSv2 on EC2 (through boot-config's
//! client, the same one the setting generators use), the CPU count and the variant
//! everywhere. The result is written to a record file so the inputs of a render can be read
//! back (`/run/berth/cluster-facts.json`).

use crate::facts::Facts;
use host::imds::{Imds, ImdsError};
use host::platform::Platform;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HostFactsError {
    #[error("cannot reach the instance metadata service at {endpoint}")]
    Imds {
        endpoint: String,
        #[source]
        source: ImdsError,
    },
    #[error("cannot read meta-data/{item} from the instance metadata service")]
    MetaData {
        item: String,
        #[source]
        source: ImdsError,
    },
}

/// Facts for `platform`; `root` is the host tree (`/`), `endpoint` IMDS's `host:port`.
pub fn gather(
    platform: Platform,
    root: &Path,
    endpoint: &str,
    retry: host::imds::Retry,
) -> Result<Facts, HostFactsError> {
    let mut facts = Facts {
        cpus: cpus(root),
        variant: variant(root),
        ..Facts::default()
    };
    if platform != Platform::Aws {
        return Ok(facts);
    }
    let mut imds = Imds::new(endpoint, retry).map_err(|source| HostFactsError::Imds {
        endpoint: endpoint.to_string(),
        source,
    })?;
    let mut meta = |item: &str| {
        imds.meta_data(item)
            .map(|v| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
            .map_err(|source| HostFactsError::MetaData {
                item: item.to_string(),
                source,
            })
    };
    facts.instance_type = meta("instance-type")?;
    facts.instance_id = meta("instance-id")?;
    facts.availability_zone = meta("placement/availability-zone")?;
    facts.region = meta("placement/region")?;
    // local-hostname may list several names; the first is the private DNS name EKS uses.
    facts.private_dns_name =
        meta("local-hostname")?.and_then(|n| n.split_whitespace().next().map(str::to_string));
    facts.local_ipv4 = meta("local-ipv4")?.and_then(|ip| ip.parse().ok());
    if let Some(mac) = meta("mac")? {
        let base = format!("network/interfaces/macs/{mac}");
        facts.vpc_ipv4_cidr_blocks = meta(&format!("{base}/vpc-ipv4-cidr-blocks"))?
            .map(|blocks| blocks.split_whitespace().map(str::to_string).collect());
        facts.ipv6 = meta(&format!("{base}/ipv6s"))?
            .and_then(|v| v.split_whitespace().next().and_then(|ip| ip.parse().ok()));
    }
    Ok(facts)
}

/// Online CPUs from `/sys/devices/system/cpu/online` (`0-3`, `0,2-3`).
fn cpus(root: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(root.join("sys/devices/system/cpu/online")).ok()?;
    let mut count = 0u32;
    for range in text.trim().split(',').filter(|r| !r.is_empty()) {
        let (lo, hi) = match range.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
            None => {
                let one = range.parse::<u32>().ok()?;
                (one, one)
            }
        };
        count += hi.checked_sub(lo)? + 1;
    }
    (count > 0).then_some(count)
}

/// `VARIANT_ID` of the image's os-release.
fn variant(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join("usr/lib/os-release")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VARIANT_ID="))
        .map(|v| v.trim_matches('"').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn cpus_and_variant_from_the_host_tree() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/devices/system/cpu/online", "0,2-3\n");
        write(
            dir.path(),
            "usr/lib/os-release",
            "ID=berth\nVARIANT_ID=aws-k8s-1.33\n",
        );
        let facts = gather(
            Platform::Qemu,
            dir.path(),
            "127.0.0.1:1",
            host::imds::Retry::default(),
        )
        .unwrap();
        assert_eq!(facts.cpus, Some(3));
        assert_eq!(facts.variant.as_deref(), Some("aws-k8s-1.33"));
        assert_eq!(facts.instance_type, None, "no IMDS off EC2");
    }

    #[test]
    fn bad_cpu_list_is_no_fact() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "sys/devices/system/cpu/online", "3-1\n");
        assert_eq!(cpus(dir.path()), None);
    }
}
