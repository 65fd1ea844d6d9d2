//! berth-probe: read-only facts about how the host booted, for the QEMU tests
//! (docs/boot.md, "Guest probe"). Every read goes through a root directory, so the tests run
//! on fixture trees.

pub mod cluster;
pub mod cri;
pub mod dm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use boot_contract::{cmdline, efi};
use dm::DeviceMapper;

/// Printed for a fact that does not apply or cannot be read.
pub const NONE: &str = "none";

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    pub mountpoint: String,
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo; malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (major, minor) = pre.get(2)?.split_once(':')?;
            Some(Mount {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                mountpoint: unescape(pre.get(4)?),
                options: pre.get(5)?.split(',').map(str::to_string).collect(),
                fstype: post.first()?.to_string(),
                source: unescape(post.get(1)?),
            })
        })
        .collect()
}

/// The mount that holds `path`: the longest mount point that is a prefix of it, the last
/// one listed when several are stacked.
pub fn mount_of<'a>(mounts: &'a [Mount], path: &str) -> Option<&'a Mount> {
    let covers = |mp: &str| {
        mp == "/" || path == mp || path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
    };
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| covers(&m.mountpoint))
        .max_by_key(|(i, m)| (m.mountpoint.len(), *i))
        .map(|(_, m)| m)
}

/// Sum of VmRSS (kB) of the processes whose `comm` is `comm`; None when there is none.
fn rss_kib(root: &Path, comm: &str) -> Option<u64> {
    let mut total = None;
    for entry in std::fs::read_dir(root.join("proc")).ok()?.flatten() {
        let dir = entry.path();
        if read_trim(dir.join("comm")).as_deref() != Some(comm) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(kib) = kib {
            total = Some(total.unwrap_or(0) + kib);
        }
    }
    total
}

/// The SELinux type (domain) of the first process of each of `comms`, in one pass over
/// /proc, as `comm:type` in the order of `comms`; processes not running are left out.
fn selinux_domains(root: &Path, comms: &[&str]) -> Vec<String> {
    let mut found: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(root.join("proc"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(comm) = read_trim(entry.path().join("comm")) else {
            continue;
        };
        if !comms.contains(&comm.as_str()) || found.contains_key(&comm) {
            continue;
        }
        // user:role:type:level
        let domain = read_trim(entry.path().join("attr/current")).and_then(|c| {
            c.trim_end_matches('\0')
                .split(':')
                .nth(2)
                .map(str::to_string)
        });
        if let Some(domain) = domain {
            found.insert(comm, domain);
        }
    }
    comms
        .iter()
        .filter_map(|comm| Some(format!("{comm}:{}", found.get(*comm)?)))
        .collect()
}

fn read_trim(p: PathBuf) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn uevent_value(root: &Path, m: &Mount, key: &str) -> Option<String> {
    let text =
        std::fs::read_to_string(root.join(format!("sys/dev/block/{}:{}/uevent", m.major, m.minor)))
            .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// Creates and removes a file in `dir`: is it writable?
fn writable(dir: &Path) -> bool {
    let p = dir.join(format!(".berth-probe-{}", std::process::id()));
    let ok = std::fs::write(&p, b"probe").is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

/// The facts, in print order. Values never contain a newline; unknown values are `none`.
pub fn facts(root: &Path, dm: &dyn DeviceMapper) -> Vec<(String, String)> {
    let mounts = read_trim(root.join("proc/self/mountinfo"))
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default();
    let at = |p: &str| mount_of(&mounts, p);
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut push = |k: &str, v: Option<String>| out.push((k.to_string(), v));

    let rootm = at("/");
    push("root-source", rootm.map(|m| m.source.clone()));
    push("root-fstype", rootm.map(|m| m.fstype.clone()));
    push(
        "root-ro",
        rootm.map(|m| m.options.iter().any(|o| o == "ro").to_string()),
    );
    let dm_name = rootm.and_then(|m| {
        read_trim(root.join(format!("sys/dev/block/{}:{}/dm/name", m.major, m.minor)))
    });
    let status = dm_name.as_deref().map(|n| dm.table_status(n));
    push("root-dm-name", dm_name.clone());
    match status {
        Some(Ok(s)) => {
            push("root-dm-target", Some(s.target_type));
            push("root-dm-status", Some(s.status));
        }
        Some(Err(e)) => {
            push("root-dm-target", Some(format!("error: {e}")));
            push("root-dm-status", None);
        }
        None => {
            push("root-dm-target", None);
            push("root-dm-status", None);
        }
    }
    let etc = at("/etc");
    push("etc-fstype", etc.map(|m| m.fstype.clone()));
    push(
        "etc-writable",
        Some(writable(&root.join("etc")).to_string()),
    );
    for (key, path) in [
        ("var", "/var"),
        ("private", "/private"),
        ("local", "/local"),
    ] {
        let m = at(path);
        push(&format!("{key}-fstype"), m.map(|m| m.fstype.clone()));
        push(
            &format!("{key}-partname"),
            m.and_then(|m| uevent_value(root, m, "PARTNAME")),
        );
    }
    let cmdline = read_trim(root.join("proc/cmdline")).unwrap_or_default();
    push("slot", cmdline::slot(&cmdline).ok().map(|s| s.to_string()));
    push("loader-entry", efi::LOADER_ENTRY_SELECTED.read_string(root));
    push("stub-image", efi::STUB_IMAGE_IDENTIFIER.read_string(root));
    // Secure Boot (docs/secure-boot.md): the firmware's SecureBoot variable (4 attribute
    // bytes, which `read` strips, then 1 or 0) and the kernel's lockdown mode.
    push(
        "secure-boot",
        efi::Variable::global("SecureBoot").read(root).map(|b| {
            if b.first() == Some(&1) {
                "enabled"
            } else {
                "disabled"
            }
            .to_string()
        }),
    );
    push(
        "lockdown",
        read_trim(root.join("sys/kernel/security/lockdown")).and_then(|t| {
            let start = t.find('[')? + 1;
            Some(t[start..start + t[start..].find(']')?].to_string())
        }),
    );
    push("kernel", read_trim(root.join("proc/sys/kernel/osrelease")));
    push("machine-id", read_trim(root.join("etc/machine-id")));
    // SELinux (docs/selinux.md): 1 when enforcing, and the probe's own domain, which a
    // program systemd starts from the image should be in (system_t).
    push(
        "selinux-enforce",
        read_trim(root.join("sys/fs/selinux/enforce")),
    );
    push(
        "selinux-context",
        read_trim(root.join("proc/self/attr/current"))
            .map(|c| c.trim_end_matches('\0').to_string()),
    );
    // The domains of the host's long-running services, `comm:type` for those running
    // (comm is cut to 15 characters by the kernel).
    let domains = selinux_domains(
        root,
        &[
            "systemd",
            "systemd-journal",
            "systemd-logind",
            "systemd-network",
            "systemd-resolve",
            "dbus-broker",
            "chronyd",
            "apiserver",
        ],
    );
    push(
        "selinux-domains",
        (!domains.is_empty()).then(|| domains.join(",")),
    );
    // Boot-time configuration (docs/boot-config.md): rendered files, live sysctl, user data.
    push("motd", read_trim(root.join("etc/motd")));
    push(
        "chrony-servers",
        read_trim(root.join("etc/chrony/chrony.conf")).map(|t| {
            t.lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    matches!(w.next(), Some("pool" | "server"))
                        .then(|| w.next())
                        .flatten()
                })
                .collect::<Vec<_>>()
                .join(",")
        }),
    );
    push(
        "sysctl-vm.max_map_count",
        read_trim(root.join("proc/sys/vm/max_map_count")),
    );
    // Host services rendered from settings: hostname, proxy, DNS, CA bundle, containerd.
    push("hostname", read_trim(root.join("proc/sys/kernel/hostname")));
    push("etc-hostname", read_trim(root.join("etc/hostname")));
    push(
        "hosts-hostname",
        read_trim(root.join("etc/hosts")).and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("127.0.1.1"))
                .map(|names| names.split_whitespace().collect::<Vec<_>>().join(","))
        }),
    );
    let proxy_env = read_trim(root.join("etc/network/proxy.env")).unwrap_or_default();
    let env_value = |name: &str| {
        proxy_env
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    push("proxy-https", env_value("HTTPS_PROXY"));
    push("proxy-no", env_value("NO_PROXY"));
    // What systemd-resolved uses (global servers from settings.dns, then DHCP's per link).
    let resolv = read_trim(root.join("run/systemd/resolve/resolv.conf"));
    let resolv_words = |key: &str| {
        resolv.as_deref().map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix(key))
                .flat_map(str::split_whitespace)
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    push("dns-servers", resolv_words("nameserver "));
    push("dns-search", resolv_words("search "));
    push(
        "resolv-conf-link",
        std::fs::read_link(root.join("etc/resolv.conf"))
            .ok()
            .map(|p| p.display().to_string()),
    );
    let bundle = read_trim(root.join("etc/ssl/certs/ca-certificates.crt"));
    push(
        "ca-bundle-certs",
        bundle
            .as_deref()
            .map(|t| t.matches("-----BEGIN CERTIFICATE-----").count().to_string()),
    );
    push(
        "ca-bundle-pki",
        bundle.as_deref().map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("# settings.pki."))
                .collect::<Vec<_>>()
                .join(",")
        }),
    );
    push(
        "ca-bundle-last-cert-end",
        bundle.as_deref().and_then(|t| {
            let body = t.rsplit_once("-----END CERTIFICATE-----")?.0;
            let body: String = body.lines().last()?.trim().to_string();
            Some(body[body.len().saturating_sub(24)..].to_string())
        }),
    );
    let containerd = read_trim(root.join("etc/containerd/config.toml"));
    let headers = |kind: &str| {
        containerd.as_deref().map(|t| {
            let marker = format!(".registry.{kind}.");
            t.lines()
                .filter_map(|l| {
                    let rest = &l[l.find(&marker)? + marker.len()..];
                    let name = rest.strip_prefix('"')?;
                    Some(name[..name.find('"')?].to_string())
                })
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    push("containerd-mirrors", headers("mirrors"));
    push("containerd-auth", headers("configs"));
    push(
        "containerd-endpoints",
        containerd.as_deref().map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("endpoint = "))
                .collect::<Vec<_>>()
                .join(";")
        }),
    );
    push(
        "containerd-config-mode",
        std::fs::metadata(root.join("etc/containerd/config.toml"))
            .ok()
            .map(|m| {
                format!(
                    "{:o}",
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
                )
            }),
    );
    push(
        "user-data-state",
        read_trim(root.join("private/boot-config/user-data.json")).and_then(|t| {
            let rest = &t[t.find("\"state\"")? + 7..];
            let start = rest.find('"')? + 1;
            let end = start + rest[start..].find('"')?;
            Some(rest[start..end].to_string())
        }),
    );

    // Resident memory of Berth's long-running programs (kB, summed over processes).
    for (key, comm) in [
        ("rss-kib-apiserver", "apiserver"),
        ("rss-kib-chronyd", "chronyd"),
        ("rss-kib-berth-api-bridge", "berth-api-bridg"),
    ] {
        push(key, rss_kib(root, comm).map(|k| k.to_string()));
    }
    for (key, value) in cluster::facts(root) {
        push(key, value);
    }

    out.into_iter()
        .map(|(k, v)| {
            let v = v
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| NONE.to_string())
                .replace(['\n', '\r'], " ");
            (k, v)
        })
        .collect()
}

#[cfg(test)]
mod tests;
