//! Berth's own programs that a variant can install: which cargo package builds each,
//! where the binary goes in the image, and which systemd units come with it.

#[derive(Debug, Clone, Copy)]
pub struct Program {
    /// Name used in variant files (`programs = [...]`) and the binary's name.
    pub name: &'static str,
    /// Cargo package that builds it.
    pub package: &'static str,
    /// Destination in the image.
    pub install_path: &'static str,
    /// Unit files, relative to the workspace root, installed to /usr/lib/systemd/system
    /// (mode 0644).
    pub units: &'static [&'static str],
    /// Unit files installed the same way but readable by root only (mode 0600): CIS
    /// Kubernetes 4.1.1 asks this of kubelet.service.
    pub private_units: &'static [&'static str],
    /// Data files: (source relative to the workspace root, destination in the image).
    pub data: &'static [(&'static str, &'static str)],
    /// Only for test images: refused in variants that do not set `test = true`.
    pub test_only: bool,
}

/// The initramfs PID 1: always built, installed into the initramfs, not the root.
pub const EARLY_INIT: Program = Program {
    name: "early-init",
    package: "early-init",
    install_path: "/init",
    units: &[],
    data: &[],
    private_units: &[],
    test_only: false,
};

const PROGRAMS: &[Program] = &[
    Program {
        name: "berth-probe",
        package: "probe",
        install_path: "/usr/bin/berth-probe",
        units: &["agents/probe/berth-probe.service"],
        data: &[],
        private_units: &[],
        test_only: false,
    },
    Program {
        name: "apiserver",
        package: "settings-api",
        install_path: "/usr/bin/apiserver",
        units: &["settings-api/units/apiserver.service"],
        data: &[(
            "settings-api/units/berth-api.sysusers",
            "/usr/lib/sysusers.d/berth-api.conf",
        )],
        private_units: &[],
        test_only: false,
    },
    Program {
        name: "apiclient",
        package: "settings-api",
        install_path: "/usr/bin/apiclient",
        units: &[],
        data: &[],
        private_units: &[],
        test_only: false,
    },
    Program {
        name: "boot-config",
        package: "boot-config",
        install_path: "/usr/bin/boot-config",
        units: &[
            "agents/boot-config/units/preconfigured.target",
            "agents/boot-config/units/configured.target",
            "agents/boot-config/units/boot-config-userdata.service",
            "agents/boot-config/units/boot-config-generate.service",
            "agents/boot-config/units/boot-config-render.service",
            "agents/boot-config/units/berth-firewall.service",
        ],
        data: &[
            (
                "agents/boot-config/templates/motd",
                "/usr/share/berth/templates/motd",
            ),
            (
                "agents/boot-config/templates/chrony-conf",
                "/usr/share/berth/templates/chrony-conf",
            ),
            (
                "agents/boot-config/templates/modprobe-conf",
                "/usr/share/berth/templates/modprobe-conf",
            ),
            (
                "agents/boot-config/units/chrony-berth.conf",
                "/usr/lib/systemd/system/chrony.service.d/berth.conf",
            ),
            (
                "agents/boot-config/templates/hostname",
                "/usr/share/berth/templates/hostname",
            ),
            (
                "agents/boot-config/templates/hosts",
                "/usr/share/berth/templates/hosts",
            ),
            (
                "agents/boot-config/templates/proxy-env",
                "/usr/share/berth/templates/proxy-env",
            ),
            (
                "agents/boot-config/templates/resolved-conf",
                "/usr/share/berth/templates/resolved-conf",
            ),
            (
                "agents/boot-config/templates/ca-bundle",
                "/usr/share/berth/templates/ca-bundle",
            ),
            (
                "agents/boot-config/templates/containerd-config",
                "/usr/share/berth/templates/containerd-config",
            ),
            (
                "agents/boot-config/units/proxy-env.conf",
                "/usr/lib/systemd/system/containerd.service.d/berth-proxy.conf",
            ),
            (
                "agents/boot-config/templates/nftables-conf",
                "/usr/share/berth/templates/nftables-conf",
            ),
            (
                "agents/boot-config/templates/firewall-nft",
                "/usr/share/berth/templates/firewall-nft",
            ),
        ],
        private_units: &[],
        test_only: false,
    },
    Program {
        name: "berth-updater",
        package: "updater",
        install_path: "/usr/bin/berth-updater",
        units: &[
            "agents/updater/units/berth-health-gate.service",
            "agents/updater/units/boot.mount",
        ],
        data: &[],
        private_units: &[],
        test_only: false,
    },
    Program {
        name: "berth-cluster-agent",
        package: "cluster-agent",
        install_path: "/usr/bin/berth-cluster-agent",
        units: &[
            "agents/cluster-agent/units/berth-cluster-agent.service",
            "agents/cluster-agent/units/ecs.service",
            "agents/cluster-agent/units/ecs-block-imds.service",
            "agents/cluster-agent/units/berth-pause-image.service",
        ],
        private_units: &["agents/cluster-agent/units/kubelet.service"],
        data: &[
            (
                "agents/cluster-agent/units/containerd-berth.conf",
                "/usr/lib/systemd/system/containerd.service.d/berth-runtime.conf",
            ),
            (
                "agents/cluster-agent/units/docker-berth.conf",
                "/usr/lib/systemd/system/docker.service.d/berth.conf",
            ),
            (
                "agents/cluster-agent/units/ecs-route-localnet.conf",
                "/usr/lib/berth/ecs/route-localnet.conf",
            ),
        ],
        test_only: false,
    },
    Program {
        name: "berth-api-bridge",
        package: "api-bridge",
        install_path: "/usr/bin/berth-api-bridge",
        units: &["agents/api-bridge/berth-api-bridge.service"],
        data: &[],
        private_units: &[],
        test_only: true,
    },
];

pub fn find(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.name == name)
}

/// Every program an image can hold, early-init first.
pub fn all() -> Vec<&'static Program> {
    std::iter::once(&EARLY_INIT).chain(PROGRAMS).collect()
}

pub fn names() -> Vec<&'static str> {
    PROGRAMS.iter().map(|p| p.name).collect()
}
