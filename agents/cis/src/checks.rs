//! The check registry: one table, [`CHECKS`], of every CIS check Berth runs.
//!
//! A check is an id, a title, a benchmark, a level, a mode (automated or manual) and a function
//! over a [`HostRoot`] that answers pass, fail or skip with a reason. Manual checks answer
//! `Skip("manual: ...")` saying what to look at. Ids follow the CIS benchmarks; checks Berth adds
//! on top of the Bottlerocket benchmark have ids starting with `B.` (they come from the CIS
//! Distribution Independent Linux benchmark, or from Berth's own design).

use crate::host::HostRoot;
use crate::paths;
use serde::Serialize;
use serde_json::Value;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Which benchmark a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// CIS Bottlerocket Benchmark (plus Berth's `B.` checks).
    Bottlerocket,
    /// CIS Kubernetes Benchmark, worker node section (4).
    Kubernetes,
}

impl Benchmark {
    /// Parses the `type` query parameter of `/report/cis`.
    pub fn parse(s: &str) -> Option<Benchmark> {
        match s {
            "bottlerocket" => Some(Benchmark::Bottlerocket),
            "kubernetes" => Some(Benchmark::Kubernetes),
            _ => None,
        }
    }
}

/// Whether a check is decided by the code or needs a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Automated,
    Manual,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Automated => "Automated",
            Mode::Manual => "Manual",
        })
    }
}

/// The answer of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Pass,
    /// The host does not comply; the reason says what was found.
    Fail(String),
    /// The check could not decide (file absent, not applicable, manual); the reason says why.
    Skip(String),
}

/// One check of the registry.
#[derive(Debug)]
pub struct Check {
    pub id: &'static str,
    pub title: &'static str,
    pub benchmark: Benchmark,
    pub level: u8,
    pub mode: Mode,
    /// How Berth decides it, for the README and auditors.
    pub how: &'static str,
    pub run: fn(&HostRoot) -> CheckResult,
}

macro_rules! check {
    ($bench:ident, $id:literal, $level:literal, $mode:ident, $title:literal, $how:literal, $run:expr) => {
        Check {
            id: $id,
            title: $title,
            benchmark: Benchmark::$bench,
            level: $level,
            mode: Mode::$mode,
            how: $how,
            run: $run,
        }
    };
}

/// Every check, in report order.
pub static CHECKS: &[Check] = &[
    // ---- CIS Bottlerocket Benchmark ----
    check!(Bottlerocket, "1.1.1.1", 2, Automated,
        "Ensure mounting of udf filesystems is disabled",
        "`udf` is not in /proc/modules and modprobe.d has `install udf` with /bin/true, /bin/false, /usr/bin/true or /usr/bin/false, or `blacklist udf`",
        |h| modules_disabled(h, &["udf"])),
    check!(Bottlerocket, "1.2.1", 1, Manual,
        "Ensure software update repositories are configured",
        "manual: `apiclient get settings.updates` names the TUF repository (metadata-base-url, targets-base-url)",
        |_| manual("check that `apiclient get settings.updates` points at your update repository")),
    check!(Bottlerocket, "1.3.1", 1, Automated,
        "Ensure dm-verity is configured",
        "/proc/cmdline has `berth.verity.root=<64 hex>` and / is mounted read-only from /dev/mapper/root or a dm device named `root`",
        dm_verity),
    check!(Bottlerocket, "1.4.1", 1, Automated,
        "Ensure setuid programs do not create core dumps",
        "/proc/sys/fs/suid_dumpable is 0",
        |h| sysctls(h, &[("fs.suid_dumpable", "0")])),
    check!(Bottlerocket, "1.4.2", 1, Automated,
        "Ensure address space layout randomization (ASLR) is enabled",
        "/proc/sys/kernel/randomize_va_space is 2",
        |h| sysctls(h, &[("kernel.randomize_va_space", "2")])),
    check!(Bottlerocket, "1.4.3", 1, Automated,
        "Ensure unprivileged eBPF is disabled",
        "/proc/sys/kernel/unprivileged_bpf_disabled is 1 or 2",
        unprivileged_bpf),
    check!(Bottlerocket, "1.4.4", 2, Automated,
        "Ensure user namespaces are disabled",
        "/proc/sys/user/max_user_namespaces is 0",
        |h| sysctls(h, &[("user.max_user_namespaces", "0")])),
    check!(Bottlerocket, "1.5.1", 1, Automated,
        "Ensure SELinux is configured",
        "/sys/fs/selinux/enforce is 1, and /etc/selinux/config boots in enforcing mode (SELINUX=enforcing)",
        selinux),
    check!(Bottlerocket, "1.5.2", 2, Automated,
        "Ensure Lockdown is configured",
        "/sys/kernel/security/lockdown selects [integrity] or [confidentiality]",
        lockdown),
    check!(Bottlerocket, "1.6", 1, Manual,
        "Ensure updates, patches, and additional security software are installed",
        "manual: `apiclient update check` shows no newer version",
        |_| manual("run `apiclient update check` and apply any newer version")),
    check!(Bottlerocket, "2.1.1.1", 1, Automated,
        "Ensure chrony is configured",
        "/etc/chrony/chrony.conf (or /etc/chrony.conf, conf.d, sources.d) has a `server` or `pool` line, and a `chronyd` process runs (/proc/<pid>/comm)",
        chrony),
    check!(Bottlerocket, "3.1.1", 2, Automated,
        "Ensure packet redirect sending is disabled",
        "net.ipv4.conf.{all,default}.send_redirects are 0",
        |h| sysctls(h, &[
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ])),
    check!(Bottlerocket, "3.2.1", 2, Automated,
        "Ensure source routed packets are not accepted",
        "net.ipv4.conf.{all,default}.accept_source_route and the ipv6 ones are 0",
        |h| sysctls(h, &[
            ("net.ipv4.conf.all.accept_source_route", "0"),
            ("net.ipv4.conf.default.accept_source_route", "0"),
            ("net.ipv6.conf.all.accept_source_route", "0"),
            ("net.ipv6.conf.default.accept_source_route", "0"),
        ])),
    check!(Bottlerocket, "3.2.2", 2, Automated,
        "Ensure ICMP redirects are not accepted",
        "net.ipv4.conf.{all,default}.accept_redirects and the ipv6 ones are 0",
        |h| sysctls(h, &[
            ("net.ipv4.conf.all.accept_redirects", "0"),
            ("net.ipv4.conf.default.accept_redirects", "0"),
            ("net.ipv6.conf.all.accept_redirects", "0"),
            ("net.ipv6.conf.default.accept_redirects", "0"),
        ])),
    check!(Bottlerocket, "3.2.3", 2, Automated,
        "Ensure secure ICMP redirects are not accepted",
        "net.ipv4.conf.{all,default}.secure_redirects are 0",
        |h| sysctls(h, &[
            ("net.ipv4.conf.all.secure_redirects", "0"),
            ("net.ipv4.conf.default.secure_redirects", "0"),
        ])),
    check!(Bottlerocket, "3.2.4", 2, Automated,
        "Ensure suspicious packets are logged",
        "net.ipv4.conf.{all,default}.log_martians are 1",
        |h| sysctls(h, &[
            ("net.ipv4.conf.all.log_martians", "1"),
            ("net.ipv4.conf.default.log_martians", "1"),
        ])),
    check!(Bottlerocket, "3.2.5", 1, Automated,
        "Ensure broadcast ICMP requests are ignored",
        "net.ipv4.icmp_echo_ignore_broadcasts is 1",
        |h| sysctls(h, &[("net.ipv4.icmp_echo_ignore_broadcasts", "1")])),
    check!(Bottlerocket, "3.2.6", 1, Automated,
        "Ensure bogus ICMP responses are ignored",
        "net.ipv4.icmp_ignore_bogus_error_responses is 1",
        |h| sysctls(h, &[("net.ipv4.icmp_ignore_bogus_error_responses", "1")])),
    check!(Bottlerocket, "3.2.7", 1, Automated,
        "Ensure TCP SYN Cookies is enabled",
        "net.ipv4.tcp_syncookies is 1",
        |h| sysctls(h, &[("net.ipv4.tcp_syncookies", "1")])),
    check!(Bottlerocket, "3.3.1", 2, Automated,
        "Ensure SCTP is disabled",
        "`sctp` is not in /proc/modules and modprobe.d disables it (install /bin/true or blacklist)",
        |h| modules_disabled(h, &["sctp"])),
    check!(Bottlerocket, "3.4.1.1", 2, Automated,
        "Ensure IPv4 default deny firewall policy",
        "the kernel's nftables ruleset (/run/berth-firewall.ruleset) has `ip` or `inet` filter chains on the input, forward and output hooks with `policy drop`",
        |h| firewall_default_deny(h, Family::Ipv4)),
    check!(Bottlerocket, "3.4.1.2", 2, Automated,
        "Ensure IPv4 loopback traffic is configured",
        "the kernel's nftables ruleset (/run/berth-firewall.ruleset) accepts `iif lo` on input, drops `ip saddr 127.0.0.0/8` after it, and accepts `oif lo` on output",
        |h| firewall_loopback(h, Family::Ipv4)),
    check!(Bottlerocket, "3.4.1.3", 1, Manual,
        "Ensure IPv4 outbound and established connections are configured",
        "manual: review the output and established-connection rules of the nftables ruleset (/run/berth-firewall.ruleset)",
        |_| manual("review the output and established-connection rules of the IPv4 firewall")),
    check!(Bottlerocket, "3.4.2.1", 2, Automated,
        "Ensure IPv6 default deny firewall policy",
        "the kernel's nftables ruleset (/run/berth-firewall.ruleset) has `ip6` or `inet` filter chains on the input, forward and output hooks with `policy drop`",
        |h| firewall_default_deny(h, Family::Ipv6)),
    check!(Bottlerocket, "3.4.2.2", 2, Automated,
        "Ensure IPv6 loopback traffic is configured",
        "the kernel's nftables ruleset (/run/berth-firewall.ruleset) accepts `iif lo` on input, drops `ip6 saddr ::1` after it, and accepts `oif lo` on output",
        |h| firewall_loopback(h, Family::Ipv6)),
    check!(Bottlerocket, "3.4.2.3", 1, Manual,
        "Ensure IPv6 outbound and established connections are configured",
        "manual: review the output and established-connection rules of the nftables ruleset (/run/berth-firewall.ruleset)",
        |_| manual("review the output and established-connection rules of the IPv6 firewall")),
    check!(Bottlerocket, "4.1.1.1", 1, Automated,
        "Ensure journald is configured to write logs to persistent disk",
        "the effective `Storage=` of journald.conf and its drop-ins is `persistent`, or `auto` (the default) with /var/log/journal present",
        journald_persistent),
    check!(Bottlerocket, "4.1.2", 1, Automated,
        "Ensure permissions on journal files are configured",
        "no file under /var/log/journal grants any permission to other",
        journal_permissions),
    // ---- Berth additions to the Bottlerocket benchmark ----
    check!(Bottlerocket, "B.1.1", 1, Automated,
        "Ensure the image ships no shell or interpreter",
        "no sh, bash, dash, zsh, busybox, python, perl, ruby, lua, node, php or tcl executable in /usr/bin, /usr/sbin, /usr/local/bin, /bin or /sbin",
        no_shells),
    check!(Bottlerocket, "B.1.2", 2, Automated,
        "Ensure mounting of cramfs, freevxfs, hfs, hfsplus and jffs2 filesystems is disabled",
        "none of them is in /proc/modules and modprobe.d disables each",
        |h| modules_disabled(h, &["cramfs", "freevxfs", "hfs", "hfsplus", "jffs2"])),
    check!(Bottlerocket, "B.1.3", 1, Automated,
        "Ensure /tmp is a separate mount with nodev, nosuid and noexec",
        "the last /proc/mounts entry for /tmp has nodev, nosuid and noexec",
        |h| mount_options(h, "/tmp", &["nodev", "nosuid", "noexec"])),
    check!(Bottlerocket, "B.1.4", 1, Automated,
        "Ensure /dev/shm is mounted with nodev, nosuid and noexec",
        "the last /proc/mounts entry for /dev/shm has nodev, nosuid and noexec",
        |h| mount_options(h, "/dev/shm", &["nodev", "nosuid", "noexec"])),
    check!(Bottlerocket, "B.1.5", 1, Automated,
        "Ensure the root filesystem is mounted read-only",
        "the last /proc/mounts entry for / has ro",
        |h| mount_options(h, "/", &["ro"])),
    check!(Bottlerocket, "B.1.6", 1, Automated,
        "Ensure ptrace scope is restricted",
        "/proc/sys/kernel/yama/ptrace_scope is 1, 2 or 3",
        ptrace_scope),
    check!(Bottlerocket, "B.1.7", 1, Automated,
        "Ensure Secure Boot is enabled where the platform has it",
        "the SecureBoot EFI variable is 1; skipped when the host was not booted by UEFI or its firmware has no Secure Boot (docs/secure-boot.md)",
        secure_boot),
    check!(Bottlerocket, "B.3.1", 2, Automated,
        "Ensure DCCP, RDS and TIPC are disabled",
        "none of dccp, rds, tipc is in /proc/modules and modprobe.d disables each",
        |h| modules_disabled(h, &["dccp", "rds", "tipc"])),
    check!(Bottlerocket, "B.3.2", 2, Automated,
        "Ensure reverse path filtering is enabled",
        "net.ipv4.conf.{all,default}.rp_filter are 1 (strict; some CNI plugins need 2, hence Level 2)",
        |h| sysctls(h, &[
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.default.rp_filter", "1"),
        ])),
    check!(Bottlerocket, "B.3.3", 2, Automated,
        "Ensure IPv6 router advertisements are not accepted",
        "net.ipv6.conf.{all,default}.accept_ra are 0",
        |h| sysctls(h, &[
            ("net.ipv6.conf.all.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ])),
    check!(Bottlerocket, "B.4.1", 2, Automated,
        "Ensure auditing is enabled",
        "an `auditd` process runs and /etc/audit/audit.rules or /etc/audit/rules.d/*.rules holds a rule (-a or -w)",
        audit),
    // ---- CIS Kubernetes Benchmark, worker node ----
    check!(Kubernetes, "4.1.1", 1, Automated,
        "Ensure that the kubelet service file permissions are set to 600 or more restrictive",
        "kubelet.service and its drop-ins in /etc/systemd/system and /usr/lib/systemd/system have mode 600 or less",
        |h| kubelet_units(h, UnitCheck::Mode)),
    check!(Kubernetes, "4.1.2", 1, Automated,
        "Ensure that the kubelet service file ownership is set to root:root",
        "kubelet.service and its drop-ins are owned by 0:0",
        |h| kubelet_units(h, UnitCheck::Owner)),
    check!(Kubernetes, "4.1.3", 1, Automated,
        "If proxy kubeconfig file exists ensure permissions are set to 600 or more restrictive",
        "/etc/kubernetes/kube-proxy/kubeconfig, if present, has mode 600 or less",
        |h| file_mode_if_present(h, paths::KUBE_PROXY_KUBECONFIG, 0o600)),
    check!(Kubernetes, "4.1.4", 1, Automated,
        "If proxy kubeconfig file exists ensure ownership is set to root:root",
        "/etc/kubernetes/kube-proxy/kubeconfig, if present, is owned by 0:0",
        |h| owner_if_present(h, paths::KUBE_PROXY_KUBECONFIG)),
    check!(Kubernetes, "4.1.5", 1, Automated,
        "Ensure that the --kubeconfig kubelet.conf file permissions are set to 600 or more restrictive",
        "the kubelet's kubeconfig (/var/lib/kubelet/kubeconfig or /etc/kubernetes/kubelet/kubeconfig; before TLS bootstrap has written it, the bootstrap-kubeconfig next to it) has mode 600 or less",
        |h| with_kubelet(h, |h, _| with_kubeconfig(h, |h, path| file_mode(h, path, 0o600)))),
    check!(Kubernetes, "4.1.6", 1, Automated,
        "Ensure that the --kubeconfig kubelet.conf file ownership is set to root:root",
        "the kubelet's kubeconfig (/var/lib/kubelet/kubeconfig or /etc/kubernetes/kubelet/kubeconfig; before TLS bootstrap has written it, the bootstrap-kubeconfig next to it) is owned by 0:0",
        |h| with_kubelet(h, |h, _| with_kubeconfig(h, owner))),
    check!(Kubernetes, "4.1.7", 1, Automated,
        "Ensure that the certificate authorities file permissions are set to 644 or more restrictive",
        "the kubelet's authentication.x509.clientCAFile (default /etc/kubernetes/pki/ca.crt) has mode 644 or less",
        |h| with_kubelet(h, |h, k| file_mode(h, &client_ca(k), 0o644))),
    check!(Kubernetes, "4.1.8", 1, Automated,
        "Ensure that the client certificate authorities file ownership is set to root:root",
        "the kubelet's client CA file is owned by 0:0",
        |h| with_kubelet(h, |h, k| owner(h, &client_ca(k)))),
    check!(Kubernetes, "4.1.9", 1, Automated,
        "If the kubelet config.yaml configuration file is being used validate permissions set to 600 or more restrictive",
        "the kubelet config (/etc/kubernetes/kubelet/config, config.json or config.yaml) has mode 600 or less",
        |h| with_kubelet(h, |h, k| file_mode(h, k.path, 0o600))),
    check!(Kubernetes, "4.1.10", 1, Automated,
        "If the kubelet config.yaml configuration file is being used validate file ownership is set to root:root",
        "the kubelet config is owned by 0:0",
        |h| with_kubelet(h, |h, k| owner(h, k.path))),
    check!(Kubernetes, "4.2.1", 1, Automated,
        "Ensure that the --anonymous-auth argument is set to false",
        "kubelet config authentication.anonymous.enabled is false",
        |h| with_kubelet(h, |_, k| anonymous_auth(k))),
    check!(Kubernetes, "4.2.2", 1, Automated,
        "Ensure that the --authorization-mode argument is not set to AlwaysAllow",
        "kubelet config authorization.mode is Webhook",
        |h| with_kubelet(h, |_, k| authorization_mode(k))),
    check!(Kubernetes, "4.2.3", 1, Automated,
        "Ensure that the --client-ca-file argument is set as appropriate",
        "kubelet config authentication.x509.clientCAFile is set and the file exists",
        |h| with_kubelet(h, client_ca_file)),
    check!(Kubernetes, "4.2.4", 1, Automated,
        "Verify that if defined, readOnlyPort is set to 0",
        "kubelet config readOnlyPort is absent or 0",
        |h| with_kubelet(h, |_, k| read_only_port(k))),
    check!(Kubernetes, "4.2.5", 1, Automated,
        "Ensure that the --streaming-connection-idle-timeout argument is not set to 0",
        "kubelet config streamingConnectionIdleTimeout is absent or not zero",
        |h| with_kubelet(h, |_, k| streaming_timeout(k))),
    check!(Kubernetes, "4.2.6", 1, Automated,
        "Ensure that the --make-iptables-util-chains argument is set to true",
        "kubelet config makeIPTablesUtilChains is absent (default true) or true",
        |h| with_kubelet(h, |_, k| bool_default(k, "makeIPTablesUtilChains", true, true))),
    check!(Kubernetes, "4.2.7", 1, Manual,
        "Ensure that the --hostname-override argument is not set",
        "manual: the kubelet flags in the kubelet unit; EKS needs the override to match the EC2 private DNS name",
        |_| manual("check the kubelet flags in its unit for --hostname-override")),
    check!(Kubernetes, "4.2.8", 2, Manual,
        "Ensure that the eventRecordQPS argument is set to a level which ensures appropriate event capture",
        "manual: kubelet config eventRecordQPS against your event volume",
        |_| manual("check eventRecordQPS in the kubelet config against your event volume")),
    check!(Kubernetes, "4.2.9", 1, Automated,
        "Ensure that the --tls-cert-file and --tls-private-key-file arguments are set as appropriate",
        "kubelet config tlsCertFile and tlsPrivateKeyFile are set and exist, or serverTLSBootstrap is true",
        |h| with_kubelet(h, tls_files)),
    check!(Kubernetes, "4.2.10", 1, Automated,
        "Ensure that the --rotate-certificates argument is not set to false",
        "kubelet config rotateCertificates is true; or it is absent (kubelet's default, false), there is no bootstrap kubeconfig and every user of the kubelet's kubeconfig authenticates with an exec plugin or a token, so there is no client certificate to rotate (the benchmark: this applies only to kubelets that get their certificates from the API server; EKS's IAM exec plugin)",
        |h| with_kubelet(h, rotate_certificates)),
    check!(Kubernetes, "4.2.11", 1, Automated,
        "Verify that the RotateKubeletServerCertificate argument is set to true",
        "kubelet config featureGates.RotateKubeletServerCertificate is absent (default true) or true",
        |h| with_kubelet(h, |_, k| rotate_server_certificate(k))),
    check!(Kubernetes, "4.2.12", 1, Automated,
        "Ensure that the Kubelet only makes use of Strong Cryptographic Ciphers",
        "kubelet config tlsCipherSuites is set and holds only ECDHE AES-GCM and ChaCha20-Poly1305 suites",
        |h| with_kubelet(h, |_, k| cipher_suites(k))),
    check!(Kubernetes, "4.2.13", 1, Automated,
        "Ensure that a limit is set on pod PIDs",
        "kubelet config podPidsLimit is greater than 0",
        |h| with_kubelet(h, |_, k| pod_pids_limit(k))),
    check!(Kubernetes, "4.2.14", 1, Automated,
        "Ensure that the --seccomp-default parameter is set to true",
        "kubelet config seccompDefault is true",
        |h| with_kubelet(h, |_, k| bool_default(k, "seccompDefault", false, true))),
    check!(Kubernetes, "4.2.15", 2, Manual,
        "Ensure that the --IPAddressDeny is set to any",
        "manual: the kubelet unit's IPAddressDeny= (systemd) against the addresses the kubelet must reach",
        |_| manual("check IPAddressDeny=any and the IPAddressAllow= list in the kubelet unit")),
    check!(Kubernetes, "4.3.1", 1, Automated,
        "Ensure that the kube-proxy metrics service is bound to localhost",
        "/etc/kubernetes/kube-proxy/config (YAML or JSON), if present: metricsBindAddress is absent (default 127.0.0.1:10249) or not 0.0.0.0 or [::]; skips without a kube-proxy config on the host",
        kube_proxy_metrics),
    check!(Kubernetes, "B.4.2.1", 1, Automated,
        "Ensure that the --protect-kernel-defaults argument is set to true",
        "kubelet config protectKernelDefaults is true (4.2.6 of CIS Kubernetes v1.7 and earlier)",
        |h| with_kubelet(h, |_, k| bool_default(k, "protectKernelDefaults", false, true))),
];

fn manual(what: &str) -> CheckResult {
    CheckResult::Skip(format!("manual: {what}"))
}

// ---------------------------------------------------------------- sysctls

/// Each sysctl must hold the wanted value. Unreadable ones skip unless another one fails.
fn sysctls(host: &HostRoot, want: &[(&str, &str)]) -> CheckResult {
    let mut wrong = Vec::new();
    let mut unreadable = Vec::new();
    for (name, value) in want {
        match host.sysctl(name) {
            Ok(v) if v == *value => {}
            Ok(v) => wrong.push(format!("{name} = {v} (want {value})")),
            Err(e) => unreadable.push(e.reason()),
        }
    }
    if !wrong.is_empty() {
        CheckResult::Fail(wrong.join("; "))
    } else if !unreadable.is_empty() {
        CheckResult::Skip(unreadable.join("; "))
    } else {
        CheckResult::Pass
    }
}

fn sysctl_in(host: &HostRoot, name: &str, allowed: &[&str]) -> CheckResult {
    match host.sysctl(name) {
        Ok(v) if allowed.contains(&v.as_str()) => CheckResult::Pass,
        Ok(v) => CheckResult::Fail(format!("{name} = {v} (want {})", allowed.join(" or "))),
        Err(e) => CheckResult::Skip(e.reason()),
    }
}

fn unprivileged_bpf(host: &HostRoot) -> CheckResult {
    sysctl_in(host, "kernel.unprivileged_bpf_disabled", &["1", "2"])
}

fn ptrace_scope(host: &HostRoot) -> CheckResult {
    match host.sysctl("kernel.yama.ptrace_scope") {
        Err(e) if e.is_not_found() => {
            CheckResult::Fail("the Yama LSM is not active: no /proc/sys/kernel/yama".into())
        }
        _ => sysctl_in(host, "kernel.yama.ptrace_scope", &["1", "2", "3"]),
    }
}

// ---------------------------------------------------------------- kernel modules

/// Module names compare with `-` and `_` as the same character, as modprobe does.
fn module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// modprobe configuration files in precedence order: a file name in an earlier directory hides
/// the same name in later ones (modprobe.d(5)); files are then read in name order.
fn modprobe_files(host: &HostRoot) -> Result<Vec<String>, CheckResult> {
    let mut by_name = std::collections::BTreeMap::new();
    for dir in paths::MODPROBE_DIRS {
        let names = host.list(dir).map_err(|e| CheckResult::Skip(e.reason()))?;
        for name in names.into_iter().filter(|n| n.ends_with(".conf")) {
            by_name
                .entry(name.clone())
                .or_insert_with(|| format!("{dir}/{name}"));
        }
    }
    Ok(by_name.into_values().collect())
}

/// Modules that a modprobe rule disables: `install X /bin/true|/bin/false|/usr/bin/...` or
/// `blacklist X`.
fn disabled_modules(host: &HostRoot) -> Result<std::collections::BTreeSet<String>, CheckResult> {
    let mut out = std::collections::BTreeSet::new();
    for file in modprobe_files(host)? {
        let text = host
            .read(&file)
            .map_err(|e| CheckResult::Skip(e.reason()))?;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["install", module, cmd, ..]
                    if matches!(
                        *cmd,
                        "/bin/true" | "/bin/false" | "/usr/bin/true" | "/usr/bin/false"
                    ) =>
                {
                    out.insert(module_name(module));
                }
                ["blacklist", module, ..] => {
                    out.insert(module_name(module));
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn modules_disabled(host: &HostRoot, modules: &[&str]) -> CheckResult {
    let loaded_text = match host.read(paths::PROC_MODULES) {
        Ok(t) => t,
        Err(e) => return CheckResult::Skip(e.reason()),
    };
    let loaded: std::collections::BTreeSet<String> = loaded_text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(module_name)
        .collect();
    let disabled = match disabled_modules(host) {
        Ok(d) => d,
        Err(skip) => return skip,
    };
    let mut problems = Vec::new();
    for m in modules {
        let name = module_name(m);
        if loaded.contains(&name) {
            problems.push(format!("{m} is loaded ({})", paths::PROC_MODULES));
        } else if !disabled.contains(&name) {
            problems.push(format!(
                "{m} is not disabled: no `install {m} /usr/bin/false` (or /bin/true) or `blacklist {m}` in modprobe.d"
            ));
        }
    }
    if problems.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail(problems.join("; "))
    }
}

// ---------------------------------------------------------------- mounts

/// A /proc/mounts line: device, mount point, type, options.
struct MountEntry {
    device: String,
    point: String,
    options: Vec<String>,
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn mounts(host: &HostRoot) -> Result<Vec<MountEntry>, CheckResult> {
    let text = host
        .read(paths::PROC_MOUNTS)
        .map_err(|e| CheckResult::Skip(e.reason()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let device = unescape_mount(f.next()?);
            let point = unescape_mount(f.next()?);
            let _fstype = f.next()?;
            let options = f.next()?.split(',').map(str::to_string).collect();
            Some(MountEntry {
                device,
                point,
                options,
            })
        })
        .collect())
}

/// The mount on top at `point` (the last entry wins).
fn mount_at(host: &HostRoot, point: &str) -> Result<Option<MountEntry>, CheckResult> {
    Ok(mounts(host)?.into_iter().rev().find(|m| m.point == point))
}

fn mount_options(host: &HostRoot, point: &str, want: &[&str]) -> CheckResult {
    let entry = match mount_at(host, point) {
        Ok(Some(e)) => e,
        Ok(None) => {
            return CheckResult::Fail(format!(
                "{point} is not a separate mount ({})",
                paths::PROC_MOUNTS
            ))
        }
        Err(skip) => return skip,
    };
    let missing: Vec<&str> = want
        .iter()
        .copied()
        .filter(|o| !entry.options.iter().any(|have| have == o))
        .collect();
    if missing.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail(format!(
            "{point} is mounted without {} (options: {})",
            missing.join(", "),
            entry.options.join(",")
        ))
    }
}

// ---------------------------------------------------------------- boot integrity

fn dm_verity(host: &HostRoot) -> CheckResult {
    let cmdline = match host.read(paths::PROC_CMDLINE) {
        Ok(t) => t,
        Err(e) => return CheckResult::Skip(e.reason()),
    };
    let root_hash = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("berth.verity.root="));
    match root_hash {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
        Some(h) => {
            return CheckResult::Fail(format!(
                "berth.verity.root={h} on the kernel command line is not a sha256 root hash"
            ))
        }
        None => {
            return CheckResult::Fail(
                "no berth.verity.root= on the kernel command line: the root is not verified".into(),
            )
        }
    }
    let root = match mount_at(host, "/") {
        Ok(Some(e)) => e,
        Ok(None) => return CheckResult::Fail("no mount for / in /proc/mounts".into()),
        Err(skip) => return skip,
    };
    let on_verity = root.device == "/dev/mapper/root"
        || root
            .device
            .strip_prefix("/dev/")
            .filter(|d| d.starts_with("dm-"))
            .and_then(|d| host.read(&format!("/sys/block/{d}/dm/name")).ok())
            .is_some_and(|name| name.trim() == "root");
    if !on_verity {
        return CheckResult::Fail(format!(
            "/ is mounted from {}, not from the dm-verity device `root`",
            root.device
        ));
    }
    if !root.options.iter().any(|o| o == "ro") {
        return CheckResult::Fail("/ is mounted read-write".into());
    }
    CheckResult::Pass
}

fn selinux(host: &HostRoot) -> CheckResult {
    match host.read(paths::SELINUX_ENFORCE) {
        Ok(v) if v.trim() == "1" => {}
        Ok(v) => {
            return CheckResult::Fail(format!(
                "SELinux is not enforcing ({} is {})",
                paths::SELINUX_ENFORCE,
                v.trim()
            ))
        }
        Err(e) if e.is_not_found() => {
            return CheckResult::Fail(format!(
                "SELinux is not enabled ({} does not exist): no policy is loaded, or the kernel \
                 command line does not enable the SELinux LSM",
                paths::SELINUX_ENFORCE
            ))
        }
        Err(e) => return CheckResult::Skip(e.reason()),
    }
    // Enforcing now, and also after the next boot.
    let config = match host.read(paths::SELINUX_CONFIG) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => {
            return CheckResult::Fail(format!(
                "{} does not exist: the next boot loads no policy",
                paths::SELINUX_CONFIG
            ))
        }
        Err(e) => return CheckResult::Skip(e.reason()),
    };
    let mode = config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SELINUX="))
        .next_back()
        .map(str::trim);
    match mode {
        Some("enforcing") => CheckResult::Pass,
        Some(other) => CheckResult::Fail(format!(
            "{} boots SELinux in mode `{other}` (want enforcing)",
            paths::SELINUX_CONFIG
        )),
        None => CheckResult::Fail(format!("{} sets no SELINUX= mode", paths::SELINUX_CONFIG)),
    }
}

fn lockdown(host: &HostRoot) -> CheckResult {
    match host.read(paths::LOCKDOWN) {
        Ok(v) if v.contains("[integrity]") || v.contains("[confidentiality]") => CheckResult::Pass,
        Ok(v) => CheckResult::Fail(format!(
            "kernel lockdown is off ({}: {})",
            paths::LOCKDOWN,
            v.trim()
        )),
        Err(e) if e.is_not_found() => CheckResult::Fail(format!(
            "kernel lockdown is not available ({} does not exist)",
            paths::LOCKDOWN
        )),
        Err(e) => CheckResult::Skip(e.reason()),
    }
}

fn secure_boot(host: &HostRoot) -> CheckResult {
    use crate::platform::SecureBoot;
    match crate::platform::secure_boot(host) {
        SecureBoot::Enabled => CheckResult::Pass,
        SecureBoot::Disabled => CheckResult::Fail(format!(
            "the firmware supports Secure Boot but it is off ({}/SecureBoot-{} is 0): enrol \
             the image's keys (docs/secure-boot.md)",
            paths::EFIVARS,
            crate::platform::EFI_GLOBAL_VARIABLE
        )),
        SecureBoot::Unsupported => CheckResult::Skip(format!(
            "the platform has no UEFI Secure Boot (no SecureBoot variable under {})",
            paths::EFIVARS
        )),
    }
}

// ---------------------------------------------------------------- processes and services

/// True when a process whose `comm` is `name` runs (/proc/<pid>/comm).
fn process_running(host: &HostRoot, name: &str) -> Result<bool, CheckResult> {
    let pids = host
        .list("/proc")
        .map_err(|e| CheckResult::Skip(e.reason()))?;
    Ok(pids
        .iter()
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|p| host.read(&format!("/proc/{p}/comm")).ok())
        .any(|comm| comm.trim() == name))
}

/// Lines of config files whose first word is one of `keys`.
fn has_directive(text: &str, keys: &[&str]) -> bool {
    text.lines().any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|w| keys.contains(&w))
    })
}

fn chrony(host: &HostRoot) -> CheckResult {
    let mut files: Vec<String> = paths::CHRONY_CONFS.iter().map(|s| s.to_string()).collect();
    for dir in paths::CHRONY_DIRS {
        match host.list(dir) {
            Ok(names) => files.extend(
                names
                    .into_iter()
                    .filter(|n| n.ends_with(".conf") || n.ends_with(".sources"))
                    .map(|n| format!("{dir}/{n}")),
            ),
            Err(e) => return CheckResult::Skip(e.reason()),
        }
    }
    let mut configured = false;
    for file in &files {
        match host.read_optional(file) {
            Ok(Some(text)) if has_directive(&text, &["server", "pool", "peer"]) => {
                configured = true;
                break;
            }
            Ok(_) => {}
            Err(e) => return CheckResult::Skip(e.reason()),
        }
    }
    if !configured {
        return CheckResult::Fail(format!(
            "no `server` or `pool` line in {}",
            paths::CHRONY_CONFS.join(", ")
        ));
    }
    match process_running(host, "chronyd") {
        Ok(true) => CheckResult::Pass,
        Ok(false) => CheckResult::Fail("chronyd is not running".into()),
        Err(skip) => skip,
    }
}

fn audit(host: &HostRoot) -> CheckResult {
    match process_running(host, "auditd") {
        Ok(true) => {}
        Ok(false) => return CheckResult::Fail("auditd is not running".into()),
        Err(skip) => return skip,
    }
    let mut files = vec![paths::AUDIT_RULES.to_string()];
    match host.list(paths::AUDIT_RULES_DIR) {
        Ok(names) => files.extend(
            names
                .into_iter()
                .filter(|n| n.ends_with(".rules"))
                .map(|n| format!("{}/{n}", paths::AUDIT_RULES_DIR)),
        ),
        Err(e) => return CheckResult::Skip(e.reason()),
    }
    for file in &files {
        match host.read_optional(file) {
            Ok(Some(text)) if has_directive(&text, &["-a", "-w"]) => return CheckResult::Pass,
            Ok(_) => {}
            Err(e) => return CheckResult::Skip(e.reason()),
        }
    }
    CheckResult::Fail(format!(
        "no audit rule (-a or -w) in {} or {}/*.rules",
        paths::AUDIT_RULES,
        paths::AUDIT_RULES_DIR
    ))
}

// ---------------------------------------------------------------- journald

/// The effective `Storage=` of journald: main file, then drop-ins in name order, the last
/// setting winning; a drop-in name in /etc hides the same name in /run and /usr/lib.
fn journald_storage(host: &HostRoot) -> Result<String, CheckResult> {
    let mut files = vec![paths::JOURNALD_CONF.to_string()];
    let mut dropins = std::collections::BTreeMap::new();
    for dir in paths::JOURNALD_DROPIN_DIRS {
        let names = host.list(dir).map_err(|e| CheckResult::Skip(e.reason()))?;
        for name in names.into_iter().filter(|n| n.ends_with(".conf")) {
            dropins
                .entry(name.clone())
                .or_insert_with(|| format!("{dir}/{name}"));
        }
    }
    files.extend(dropins.into_values());
    let mut storage = "auto".to_string();
    for file in files {
        let text = match host.read_optional(&file) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => return Err(CheckResult::Skip(e.reason())),
        };
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("Storage=") {
                storage = v.trim().to_string();
            }
        }
    }
    Ok(storage)
}

fn journald_persistent(host: &HostRoot) -> CheckResult {
    let storage = match journald_storage(host) {
        Ok(s) => s,
        Err(skip) => return skip,
    };
    match storage.as_str() {
        "persistent" => CheckResult::Pass,
        "auto" if host.path(paths::JOURNAL_DIR).is_dir() => CheckResult::Pass,
        "auto" => CheckResult::Fail(format!(
            "journald Storage=auto and {} does not exist: logs are kept in memory",
            paths::JOURNAL_DIR
        )),
        other => CheckResult::Fail(format!("journald Storage={other}, not persistent")),
    }
}

fn journal_permissions(host: &HostRoot) -> CheckResult {
    let mut stack = vec![paths::JOURNAL_DIR.to_string()];
    let mut bad = Vec::new();
    while let Some(dir) = stack.pop() {
        let names = match host.list(&dir) {
            Ok(n) => n,
            Err(e) => return CheckResult::Skip(e.reason()),
        };
        for name in names {
            let path = format!("{dir}/{name}");
            let meta = match host.symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => return CheckResult::Skip(e.reason()),
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() && meta.permissions().mode() & 0o007 != 0 {
                bad.push(format!("{path} ({:o})", meta.permissions().mode() & 0o7777));
            }
        }
    }
    if bad.is_empty() {
        CheckResult::Pass
    } else {
        bad.sort();
        CheckResult::Fail(format!("readable by other: {}", bad.join(", ")))
    }
}

// ---------------------------------------------------------------- image content

fn no_shells(host: &HostRoot) -> CheckResult {
    let mut found = Vec::new();
    for dir in paths::BIN_DIRS {
        // A merged-/usr symlink (/bin -> usr/bin) is covered by its target.
        if host
            .symlink_metadata(dir)
            .is_ok_and(|m| m.file_type().is_symlink())
        {
            continue;
        }
        let names = match host.list(dir) {
            Ok(n) => n,
            Err(e) => return CheckResult::Skip(e.reason()),
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| is_shell_or_interpreter(n))
                .map(|n| format!("{dir}/{n}")),
        );
    }
    if found.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail(format!("found {}", found.join(", ")))
    }
}

fn is_shell_or_interpreter(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "sh", "bash", "rbash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "ash",
        "busybox", "node", "nodejs", "tclsh", "wish", "expect",
    ];
    const PREFIXES: &[&str] = &["python", "perl", "ruby", "lua", "php", "tclsh"];
    EXACT.contains(&name)
        || PREFIXES.iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        })
}

// ---------------------------------------------------------------- firewall

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn applies(self, table_family: &str) -> bool {
        match self {
            Family::Ipv4 => matches!(table_family, "ip" | "inet"),
            Family::Ipv6 => matches!(table_family, "ip6" | "inet"),
        }
    }
}

/// A base chain of an nftables ruleset: its table family, hook, policy and rule lines.
#[derive(Debug, Default)]
struct NftChain {
    family: String,
    hook: String,
    policy: String,
    rules: Vec<String>,
}

/// Reads the base chains of an `nft list ruleset`-style file: `table <family> <name> { chain
/// <name> { type filter hook <hook> priority <p>; policy <policy>; rules... } }`.
fn nft_chains(text: &str) -> Vec<NftChain> {
    let mut chains = Vec::new();
    let mut family = String::new();
    let mut current: Option<NftChain> = None;
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", fam, ..] => family = (*fam).to_string(),
            ["chain", ..] => {
                current = Some(NftChain {
                    family: family.clone(),
                    ..NftChain::default()
                })
            }
            ["}"] | ["};"] => {
                if let Some(chain) = current.take() {
                    if !chain.hook.is_empty() {
                        chains.push(chain);
                    }
                }
            }
            _ => {
                if let Some(chain) = current.as_mut() {
                    for stmt in line.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                        let w: Vec<&str> = stmt.split_whitespace().collect();
                        if let Some(i) = w.iter().position(|x| *x == "hook") {
                            if w.first() == Some(&"type") {
                                chain.hook = w.get(i + 1).unwrap_or(&"").to_string();
                                continue;
                            }
                        }
                        if let ["policy", p] = w.as_slice() {
                            chain.policy = (*p).to_string();
                            continue;
                        }
                        chain.rules.push(stmt.to_string());
                    }
                }
            }
        }
    }
    chains
}

fn ruleset(host: &HostRoot) -> Result<Vec<NftChain>, CheckResult> {
    match host.read_optional(paths::NFT_RULESET) {
        Ok(Some(text)) => Ok(nft_chains(&text)),
        Ok(None) => Err(CheckResult::Fail(format!(
            "no record of the kernel's nftables ruleset at {} (berth-firewall.service writes it): no firewall is loaded, the default policy is accept",
            paths::NFT_RULESET
        ))),
        Err(e) => Err(CheckResult::Skip(e.reason())),
    }
}

fn firewall_default_deny(host: &HostRoot, family: Family) -> CheckResult {
    let chains = match ruleset(host) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let missing: Vec<&str> = ["input", "forward", "output"]
        .into_iter()
        .filter(|hook| {
            !chains
                .iter()
                .any(|c| family.applies(&c.family) && c.hook == *hook && c.policy == "drop")
        })
        .collect();
    if missing.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail(format!(
            "no {family:?} base chain with policy drop on hook {} in {}",
            missing.join(", "),
            paths::NFT_RULESET
        ))
    }
}

fn firewall_loopback(host: &HostRoot, family: Family) -> CheckResult {
    let chains = match ruleset(host) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let spoof = match family {
        Family::Ipv4 => "ip saddr 127.0.0.0/8",
        Family::Ipv6 => "ip6 saddr ::1",
    };
    let norm = |r: &str| r.replace('"', "");
    let input_ok = chains
        .iter()
        .filter(|c| family.applies(&c.family) && c.hook == "input")
        .any(|c| {
            let lo = c
                .rules
                .iter()
                .position(|r| norm(r).starts_with("iif lo") && r.ends_with("accept"));
            let drop = c
                .rules
                .iter()
                .position(|r| r.starts_with(spoof) && r.ends_with("drop"));
            matches!((lo, drop), (Some(a), Some(b)) if a < b)
        });
    let output_ok = chains
        .iter()
        .filter(|c| family.applies(&c.family) && c.hook == "output")
        .any(|c| {
            c.rules
                .iter()
                .any(|r| norm(r).starts_with("oif lo") && r.ends_with("accept"))
        });
    match (input_ok, output_ok) {
        (true, true) => CheckResult::Pass,
        (false, _) => CheckResult::Fail(format!(
            "input chain lacks `iif lo accept` followed by `{spoof} drop` in {}",
            paths::NFT_RULESET
        )),
        (true, false) => CheckResult::Fail(format!(
            "output chain lacks `oif lo accept` in {}",
            paths::NFT_RULESET
        )),
    }
}

// ---------------------------------------------------------------- files

fn file_mode(host: &HostRoot, path: &str, max: u32) -> CheckResult {
    match host.metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            if mode & !max == 0 {
                CheckResult::Pass
            } else {
                CheckResult::Fail(format!("{path} has mode {mode:o}, more than {max:o}"))
            }
        }
        Err(e) if e.is_not_found() => CheckResult::Fail(format!("{path} does not exist")),
        Err(e) => CheckResult::Skip(e.reason()),
    }
}

fn owner(host: &HostRoot, path: &str) -> CheckResult {
    match host.metadata(path) {
        Ok(m) if m.uid() == 0 && m.gid() == 0 => CheckResult::Pass,
        Ok(m) => CheckResult::Fail(format!(
            "{path} is owned by {}:{}, not root:root",
            m.uid(),
            m.gid()
        )),
        Err(e) if e.is_not_found() => CheckResult::Fail(format!("{path} does not exist")),
        Err(e) => CheckResult::Skip(e.reason()),
    }
}

fn file_mode_if_present(host: &HostRoot, path: &str, max: u32) -> CheckResult {
    if host.exists(path) {
        file_mode(host, path, max)
    } else {
        CheckResult::Skip(format!("{path} does not exist (no kube-proxy on the host)"))
    }
}

fn owner_if_present(host: &HostRoot, path: &str) -> CheckResult {
    if host.exists(path) {
        owner(host, path)
    } else {
        CheckResult::Skip(format!("{path} does not exist (no kube-proxy on the host)"))
    }
}

#[derive(Debug, Clone, Copy)]
enum UnitCheck {
    Mode,
    Owner,
}

fn kubelet_units(host: &HostRoot, what: UnitCheck) -> CheckResult {
    let mut files = Vec::new();
    for dir in paths::UNIT_DIRS {
        let unit = format!("{dir}/kubelet.service");
        if host.exists(&unit) {
            files.push(unit);
        }
        let dropins = format!("{dir}/kubelet.service.d");
        match host.list(&dropins) {
            Ok(names) => files.extend(
                names
                    .into_iter()
                    .filter(|n| n.ends_with(".conf"))
                    .map(|n| format!("{dropins}/{n}")),
            ),
            Err(e) => return CheckResult::Skip(e.reason()),
        }
    }
    if files.is_empty() {
        return CheckResult::Skip("no kubelet.service unit: kubelet is not installed".into());
    }
    let mut problems = Vec::new();
    for file in &files {
        match match what {
            UnitCheck::Mode => file_mode(host, file, 0o600),
            UnitCheck::Owner => owner(host, file),
        } {
            CheckResult::Pass => {}
            CheckResult::Fail(r) => problems.push(r),
            skip @ CheckResult::Skip(_) => return skip,
        }
    }
    if problems.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail(problems.join("; "))
    }
}

// ---------------------------------------------------------------- kube-proxy

fn kube_proxy_metrics(host: &HostRoot) -> CheckResult {
    let path = paths::KUBE_PROXY_CONFIG;
    let text = match host.read_optional(path) {
        Ok(Some(t)) => t,
        Ok(None) => {
            return CheckResult::Skip(format!(
                "{path} does not exist (no kube-proxy on the host; on EKS check the kube-proxy DaemonSet's config)"
            ))
        }
        Err(e) => return CheckResult::Skip(e.reason()),
    };
    let config: Value = match serde_norway::from_str(&text) {
        Ok(c) => c,
        Err(e) => return CheckResult::Fail(format!("cannot parse {path}: {e}")),
    };
    match config
        .pointer("/metricsBindAddress")
        .and_then(Value::as_str)
    {
        Some(a) if a.contains("0.0.0.0") || a.contains("[::]") => CheckResult::Fail(format!(
            "metricsBindAddress is {a} in {path}: the metrics listen beyond localhost"
        )),
        _ => CheckResult::Pass,
    }
}

// ---------------------------------------------------------------- kubelet config

/// The kubelet configuration file and its parsed content.
struct Kubelet<'a> {
    path: &'a str,
    config: Value,
}

/// Runs `f` on the kubelet config, or skips when the host has none.
fn with_kubelet(host: &HostRoot, f: impl Fn(&HostRoot, &Kubelet) -> CheckResult) -> CheckResult {
    for path in paths::KUBELET_CONFIGS {
        let text = match host.read_optional(path) {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => return CheckResult::Skip(e.reason()),
        };
        // YAML is a superset of JSON, so one parser reads config, config.json and config.yaml.
        return match serde_norway::from_str::<Value>(&text) {
            Ok(config) => f(host, &Kubelet { path, config }),
            Err(e) => CheckResult::Fail(format!("cannot parse {path}: {e}")),
        };
    }
    CheckResult::Skip(format!(
        "no kubelet config ({}): kubelet is not configured on this host",
        paths::KUBELET_CONFIGS.join(", ")
    ))
}

/// Runs `f` on the first kubelet kubeconfig that exists, else on the first bootstrap
/// kubeconfig (with TLS bootstrap, kubelet writes its kubeconfig only once the API server
/// has signed its client certificate); fails naming them all when none exists.
fn with_kubeconfig(host: &HostRoot, f: impl Fn(&HostRoot, &str) -> CheckResult) -> CheckResult {
    let candidates = paths::KUBELET_KUBECONFIGS
        .iter()
        .chain(paths::KUBELET_BOOTSTRAP_KUBECONFIGS);
    match candidates.clone().find(|p| host.exists(p)) {
        Some(path) => f(host, path),
        None => CheckResult::Fail(format!(
            "no kubelet kubeconfig ({})",
            candidates.copied().collect::<Vec<_>>().join(", ")
        )),
    }
}

fn field<'a>(k: &'a Kubelet, pointer: &str) -> Option<&'a Value> {
    k.config.pointer(pointer).filter(|v| !v.is_null())
}

fn client_ca(k: &Kubelet) -> String {
    field(k, "/authentication/x509/clientCAFile")
        .and_then(Value::as_str)
        .unwrap_or(paths::KUBELET_DEFAULT_CA)
        .to_string()
}

fn anonymous_auth(k: &Kubelet) -> CheckResult {
    // The kubelet config file defaults anonymous auth to true when the field is absent.
    match field(k, "/authentication/anonymous/enabled").and_then(Value::as_bool) {
        Some(false) => CheckResult::Pass,
        Some(true) => CheckResult::Fail("authentication.anonymous.enabled is true".into()),
        None => CheckResult::Fail(
            "authentication.anonymous.enabled is not set (the kubelet default is true)".into(),
        ),
    }
}

fn authorization_mode(k: &Kubelet) -> CheckResult {
    match field(k, "/authorization/mode").and_then(Value::as_str) {
        Some("AlwaysAllow") => CheckResult::Fail("authorization.mode is AlwaysAllow".into()),
        Some(_) => CheckResult::Pass,
        None => CheckResult::Fail(
            "authorization.mode is not set (the kubelet default is AlwaysAllow)".into(),
        ),
    }
}

fn client_ca_file(host: &HostRoot, k: &Kubelet) -> CheckResult {
    match field(k, "/authentication/x509/clientCAFile").and_then(Value::as_str) {
        Some(path) if host.exists(path) => CheckResult::Pass,
        Some(path) => CheckResult::Fail(format!("clientCAFile {path} does not exist")),
        None => CheckResult::Fail("authentication.x509.clientCAFile is not set".into()),
    }
}

fn read_only_port(k: &Kubelet) -> CheckResult {
    match field(k, "/readOnlyPort").map(Value::as_i64) {
        None | Some(Some(0)) => CheckResult::Pass,
        Some(Some(p)) => CheckResult::Fail(format!("readOnlyPort is {p}")),
        Some(None) => CheckResult::Fail("readOnlyPort is not a number".into()),
    }
}

fn streaming_timeout(k: &Kubelet) -> CheckResult {
    match field(k, "/streamingConnectionIdleTimeout") {
        None => CheckResult::Pass,
        Some(v) => {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // A Go duration is zero when all its numbers are zero: "0", "0s", "0h0m0s".
            if s.chars().filter(char::is_ascii_digit).all(|c| c == '0') {
                CheckResult::Fail(format!("streamingConnectionIdleTimeout is {s}"))
            } else {
                CheckResult::Pass
            }
        }
    }
}

/// A boolean field that must be `want`; `default` applies when it is absent.
fn bool_default(k: &Kubelet, name: &str, default: bool, want: bool) -> CheckResult {
    match field(k, &format!("/{name}")) {
        None if default == want => CheckResult::Pass,
        None => CheckResult::Fail(format!("{name} is not set (the default is {default})")),
        Some(Value::Bool(b)) if *b == want => CheckResult::Pass,
        Some(v) => CheckResult::Fail(format!("{name} is {v}")),
    }
}

fn tls_files(host: &HostRoot, k: &Kubelet) -> CheckResult {
    let cert = field(k, "/tlsCertFile").and_then(Value::as_str);
    let key = field(k, "/tlsPrivateKeyFile").and_then(Value::as_str);
    match (cert, key) {
        (Some(c), Some(kf)) => {
            let missing: Vec<&str> = [c, kf].into_iter().filter(|p| !host.exists(p)).collect();
            if missing.is_empty() {
                CheckResult::Pass
            } else {
                CheckResult::Fail(format!("{} does not exist", missing.join(", ")))
            }
        }
        (None, None) if field(k, "/serverTLSBootstrap") == Some(&Value::Bool(true)) => {
            CheckResult::Pass
        }
        _ => CheckResult::Fail(
            "tlsCertFile and tlsPrivateKeyFile are not both set and serverTLSBootstrap is not true"
                .into(),
        ),
    }
}

fn rotate_certificates(host: &HostRoot, k: &Kubelet) -> CheckResult {
    match field(k, "/rotateCertificates") {
        Some(Value::Bool(true)) => return CheckResult::Pass,
        Some(v) => return CheckResult::Fail(format!("rotateCertificates is {v}")),
        None => {}
    }
    if let Some(path) = paths::KUBELET_BOOTSTRAP_KUBECONFIGS
        .iter()
        .find(|p| host.exists(p))
    {
        return CheckResult::Fail(format!(
            "rotateCertificates is not set (the default is false) and kubelet gets its client \
             certificate through {path}"
        ));
    }
    with_kubeconfig(host, |h, path| match client_credentials(h, path) {
        Ok(()) => CheckResult::Pass,
        Err(why) => CheckResult::Fail(format!(
            "rotateCertificates is not set (the default is false) and {why}"
        )),
    })
}

/// Ok when every user of the kubeconfig authenticates with an exec plugin or a token and none
/// with a client certificate; otherwise why not.
fn client_credentials(host: &HostRoot, path: &str) -> Result<(), String> {
    let text = host.read(path).map_err(|e| e.reason())?;
    let config: Value =
        serde_norway::from_str(&text).map_err(|e| format!("cannot parse {path}: {e}"))?;
    let users = config
        .get("users")
        .and_then(Value::as_array)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("{path} has no users"))?;
    for entry in users {
        let name = entry.get("name").and_then(Value::as_str).unwrap_or("?");
        let user = entry.get("user").unwrap_or(&Value::Null);
        let has = |key: &str| user.get(key).is_some_and(|v| !v.is_null());
        if has("client-certificate") || has("client-certificate-data") {
            return Err(format!(
                "user '{name}' of {path} authenticates with a client certificate"
            ));
        }
        if !(has("exec") || has("token") || has("tokenFile")) {
            return Err(format!(
                "user '{name}' of {path} has neither an exec plugin nor a token"
            ));
        }
    }
    Ok(())
}

fn rotate_server_certificate(k: &Kubelet) -> CheckResult {
    match field(k, "/featureGates/RotateKubeletServerCertificate") {
        None | Some(Value::Bool(true)) => CheckResult::Pass,
        Some(v) => CheckResult::Fail(format!(
            "featureGates.RotateKubeletServerCertificate is {v}"
        )),
    }
}

/// Cipher suites the benchmark accepts.
const STRONG_CIPHERS: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
];

fn cipher_suites(k: &Kubelet) -> CheckResult {
    let Some(list) = field(k, "/tlsCipherSuites").and_then(Value::as_array) else {
        return CheckResult::Fail(
            "tlsCipherSuites is not set (Go's defaults include CBC and RSA key exchange)".into(),
        );
    };
    let weak: Vec<String> = list
        .iter()
        .map(|v| v.as_str().unwrap_or("?").to_string())
        .filter(|s| !STRONG_CIPHERS.contains(&s.as_str()))
        .collect();
    if list.is_empty() {
        CheckResult::Fail("tlsCipherSuites is empty".into())
    } else if weak.is_empty() {
        CheckResult::Pass
    } else {
        CheckResult::Fail(format!("weak cipher suites: {}", weak.join(", ")))
    }
}

fn pod_pids_limit(k: &Kubelet) -> CheckResult {
    match field(k, "/podPidsLimit").map(Value::as_i64) {
        Some(Some(n)) if n > 0 => CheckResult::Pass,
        Some(Some(n)) => CheckResult::Fail(format!("podPidsLimit is {n} (unlimited)")),
        Some(None) => CheckResult::Fail("podPidsLimit is not a number".into()),
        None => CheckResult::Fail("podPidsLimit is not set (unlimited)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_well_formed() {
        let mut ids = std::collections::BTreeSet::new();
        for c in CHECKS {
            assert!(
                ids.insert((c.benchmark as u8, c.id)),
                "duplicate id {}",
                c.id
            );
            assert!(matches!(c.level, 1 | 2), "{}: level {}", c.id, c.level);
            assert!(
                c.title.starts_with("Ensure")
                    || c.title.starts_with("Verify")
                    || c.title.starts_with("If "),
                "{}",
                c.id
            );
            assert!(!c.how.is_empty());
            if c.mode == Mode::Manual {
                // Manual checks never touch the host and always say what to look at.
                match (c.run)(&HostRoot::new("/nonexistent")) {
                    CheckResult::Skip(r) => assert!(r.starts_with("manual: "), "{}", c.id),
                    other => panic!("{}: manual check answered {other:?}", c.id),
                }
            }
        }
    }

    #[test]
    fn the_readme_lists_every_check() {
        // The README's tables are these rows; on a change, paste the printed rows there.
        let readme = include_str!("../README.md");
        let rows: Vec<String> = CHECKS
            .iter()
            .map(|c| {
                format!(
                    "| {} | {} | {} | {} | {} |",
                    c.id, c.title, c.level, c.mode, c.how
                )
            })
            .collect();
        let missing: Vec<&String> = rows
            .iter()
            .filter(|r| !readme.contains(r.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "README.md lacks rows:\n{}",
            rows.join("\n")
        );
    }

    #[test]
    fn nft_chains_are_read() {
        let chains = nft_chains(
            "table inet filter {\n chain input { # base\n  type filter hook input priority 0; policy drop;\n  iif \"lo\" accept\n }\n chain helper {\n  accept\n }\n}\n",
        );
        assert_eq!(chains.len(), 1);
        assert_eq!(chains[0].family, "inet");
        assert_eq!(chains[0].hook, "input");
        assert_eq!(chains[0].policy, "drop");
        assert_eq!(chains[0].rules, vec!["iif \"lo\" accept".to_string()]);
    }

    #[test]
    fn interpreter_names() {
        for n in [
            "sh",
            "bash",
            "python3",
            "python3.13",
            "perl5.40.1",
            "lua5.4",
            "busybox",
        ] {
            assert!(is_shell_or_interpreter(n), "{n}");
        }
        for n in ["shred", "python-config", "luac-helper", "kubelet", "nsh"] {
            assert!(!is_shell_or_interpreter(n), "{n}");
        }
    }
}
