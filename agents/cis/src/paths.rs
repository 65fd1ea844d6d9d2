//! Host paths the checks read, as absolute paths resolved under the host root.

/// Loaded kernel modules.
pub const PROC_MODULES: &str = "/proc/modules";
/// Mounts of the reading process's namespace.
pub const PROC_MOUNTS: &str = "/proc/mounts";
/// The kernel command line.
pub const PROC_CMDLINE: &str = "/proc/cmdline";
/// efivarfs: the firmware's variables (SecureBoot).
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// Kernel lockdown mode.
pub const LOCKDOWN: &str = "/sys/kernel/security/lockdown";
/// SELinux enforcing flag.
pub const SELINUX_ENFORCE: &str = "/sys/fs/selinux/enforce";
/// The SELinux mode and policy the next boot loads.
pub const SELINUX_CONFIG: &str = "/etc/selinux/config";
/// modprobe configuration directories, in precedence order (modprobe.d(5)).
pub const MODPROBE_DIRS: &[&str] = &[
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
];
/// chrony configuration files (Debian's, then the upstream default).
pub const CHRONY_CONFS: &[&str] = &["/etc/chrony/chrony.conf", "/etc/chrony.conf"];
/// chrony configuration and source directories (Debian's `confdir`/`sourcedir`).
pub const CHRONY_DIRS: &[&str] = &["/etc/chrony/conf.d", "/etc/chrony/sources.d"];
/// audit rules loaded by `augenrules` and the directory it compiles them from.
pub const AUDIT_RULES: &str = "/etc/audit/audit.rules";
/// Directory of audit rule fragments.
pub const AUDIT_RULES_DIR: &str = "/etc/audit/rules.d";
/// journald's main configuration file.
pub const JOURNALD_CONF: &str = "/etc/systemd/journald.conf";
/// journald drop-in directories, in precedence order.
pub const JOURNALD_DROPIN_DIRS: &[&str] = &[
    "/etc/systemd/journald.conf.d",
    "/run/systemd/journald.conf.d",
    "/usr/lib/systemd/journald.conf.d",
];
/// Persistent journal directory.
pub const JOURNAL_DIR: &str = "/var/log/journal";
/// Directories that must hold no shell or interpreter.
pub const BIN_DIRS: &[&str] = &["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"];
/// The kernel's nftables ruleset, as `nft list ruleset` printed it right after
/// berth-firewall.service loaded Berth's table (its ExecStartPost, docs/boot-config.md): what
/// the kernel holds, not the rendered file, so a ruleset `nft` refused is not taken as loaded.
/// Production images have no `nft` for the checks to run themselves.
pub const NFT_RULESET: &str = "/run/berth-firewall.ruleset";
/// systemd unit directories searched for kubelet.service and its drop-ins.
pub const UNIT_DIRS: &[&str] = &["/etc/systemd/system", "/usr/lib/systemd/system"];
/// Kubelet configuration file, in the names Berth accepts (first found wins).
pub const KUBELET_CONFIGS: &[&str] = &[
    "/etc/kubernetes/kubelet/config",
    "/etc/kubernetes/kubelet/config.json",
    "/etc/kubernetes/kubelet/config.yaml",
];
/// Kubelet's kubeconfig, where Berth's cluster agent and nodeadm write it, then where
/// Bottlerocket does (first found wins).
pub const KUBELET_KUBECONFIGS: &[&str] = &[
    "/var/lib/kubelet/kubeconfig",
    "/etc/kubernetes/kubelet/kubeconfig",
];
/// Kubelet's bootstrap kubeconfig (TLS bootstrap: kubelet gets its client certificate from
/// the API server), where Berth's cluster agent writes it, then Bottlerocket's path.
pub const KUBELET_BOOTSTRAP_KUBECONFIGS: &[&str] = &[
    "/var/lib/kubelet/bootstrap-kubeconfig",
    "/etc/kubernetes/kubelet/bootstrap-kubeconfig",
];
/// Client CA used when the kubelet config names none.
pub const KUBELET_DEFAULT_CA: &str = "/etc/kubernetes/pki/ca.crt";
/// kube-proxy's kubeconfig.
pub const KUBE_PROXY_KUBECONFIG: &str = "/etc/kubernetes/kube-proxy/kubeconfig";
/// kube-proxy's configuration (KubeProxyConfiguration, YAML or JSON).
pub const KUBE_PROXY_CONFIG: &str = "/etc/kubernetes/kube-proxy/config";
