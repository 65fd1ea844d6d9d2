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
    /// Unit files, relative to the workspace root, installed to /usr/lib/systemd/system.
    pub units: &'static [&'static str],
}

/// The initramfs PID 1: always built, installed into the initramfs, not the root.
pub const EARLY_INIT: Program = Program {
    name: "early-init",
    package: "early-init",
    install_path: "/init",
    units: &[],
};

const PROGRAMS: &[Program] = &[Program {
    name: "berth-probe",
    package: "probe",
    install_path: "/usr/bin/berth-probe",
    units: &["agents/probe/berth-probe.service"],
}];

pub fn find(name: &str) -> Option<&'static Program> {
    PROGRAMS.iter().find(|p| p.name == name)
}

pub fn names() -> Vec<&'static str> {
    PROGRAMS.iter().map(|p| p.name).collect()
}
