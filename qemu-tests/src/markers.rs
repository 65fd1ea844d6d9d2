//! Console lines the boot contract (docs/boot.md) promises, as regular expressions.

/// The kernel's banner: first kernel line on the serial console, once per boot.
pub const KERNEL_BANNER: &str = r"Linux version \d";
/// Any line of the initramfs PID 1.
pub const EARLY_INIT: &str = r"early-init: ";
/// early-init's last line before it execs systemd.
pub const SWITCH_ROOT: &str = r"early-init: switching root to systemd";
/// early-init's single failure line.
pub const EARLY_INIT_FATAL: &str = r"early-init: FATAL: ";
/// early-init stopping the machine (a `private` e2fsck could not repair): one line, then
/// power off.
pub const EARLY_INIT_STOP: &str = r"early-init: STOP: ";
/// early-init repaired a damaged `private` with e2fsck instead of formatting it.
pub const PRIVATE_REPAIRED: &str = r"early-init: private repaired by e2fsck";
/// A line that means this boot failed: early-init gave up or stopped, the kernel panicked,
/// or the kernel is restarting the machine.
pub const BOOT_FAILURE: &str =
    r"early-init: FATAL: |early-init: STOP: |Kernel panic - not syncing|reboot: Restarting system";
/// early-init failing because the root read back wrong (I/O error from dm-verity).
pub const EARLY_INIT_READ_ERROR: &str =
    r"early-init: FATAL: .*(?i:corrupt|input/output error|os error 5\))";
/// systemd reached multi-user.target.
pub const MULTI_USER: &str = r"Reached target.*[Mm]ulti-[Uu]ser";
/// The UEFI boot manager starting a boot option: printed once per firmware boot.
pub const FIRMWARE_BOOT: &str = r"BdsDxe: (loading|starting) Boot";
/// The kernel reporting a block that does not match the dm-verity hash tree.
pub const VERITY_CORRUPTION: &str = r"device-mapper: verity: .*(corrupted|corruption)";
/// An SELinux denial (docs/selinux.md): the kernel prints AVC records on the console when no
/// audit daemon takes them, in enforcing and permissive mode alike.
pub const SELINUX_DENIAL: &str = r"avc:\s+denied";
/// The kernel restarting the machine (for instance after dm-verity corruption).
pub const KERNEL_RESTART: &str = r"reboot: Restarting system";
/// A line of the guest probe: `berth-probe: key=value`, as printed, or with journald's
/// console prefix (`StandardOutput=journal+console`): `berth-probe[pid]: berth-probe: ...`.
pub const PROBE_LINE: &str = r"berth-probe(?:\[\d+\])?: (?:berth-probe: )?(.*)$";
/// The probe's last line.
pub const PROBE_END: &str = r"berth-probe(?:\[\d+\])?: (?:berth-probe: )?end\s*$";
/// The kernel's EFI stub: the firmware enforces Secure Boot (docs/secure-boot.md).
pub const SECURE_BOOT_ENABLED: &str = r"UEFI Secure Boot is enabled";
/// Debian's kernel locking itself down because the firmware enforces Secure Boot.
pub const LOCKDOWN_SECURE_BOOT: &str = r"Kernel is locked down from EFI Secure Boot";
/// The firmware refusing an image whose signature it does not trust, as the firmware's boot
/// manager (BdsDxe) or systemd-boot reports the EFI status.
pub const SECURE_BOOT_REFUSED: &str = r"(?i)access denied|security violation";
/// systemd's status line once the settings API is up: apiserver.service is `Type=notify` and
/// tells systemd it is ready after it listens on /run/api.sock.
pub const API_READY: &str = r"Started apiserver\.service";

// ---------------------------------------------------------------------------------------------
// systemd's lines for Berth's targets and units.

/// systemd reached `configured.target`: settings rendered, the host configured.
pub const CONFIGURED: &str = r"Reached target configured\.target";
/// systemd finished (re)starting the host firewall (`berth-firewall.service` is oneshot).
pub const FIREWALL_STARTED: &str = r"Finished berth-firewall\.service";
/// systemd reports the host firewall failed to start.
pub const FIREWALL_FAILED: &str = r"Failed to start berth-firewall\.service";

// ---------------------------------------------------------------------------------------------
// Berth's own events. Berth's programs log through tracing, `LEVEL target: message field=value
// ...`. A marker matches the message and one field, never the target (the module path) or the
// program that logged it, so code can move between modules, crates and processes without a
// scenario noticing. Each message below is logged at one place, which says so with a
// `marker:` comment; renaming it means renaming it here.

/// A Berth event: `message` (a regular expression, where tracing puts the message: after the
/// level or the target, so "not restarted" is not "restarted"), then among its
/// fields `field="value"` or `field=value` (`value` a regular expression).
#[macro_export]
macro_rules! event {
    ($message:literal) => {
        concat!(r"(?:^|: |(?:TRACE|DEBUG|INFO|WARN|ERROR)\s+)", $message)
    };
    ($message:literal, $field:ident = $value:literal) => {
        concat!(
            r"(?:^|: |(?:TRACE|DEBUG|INFO|WARN|ERROR)\s+)",
            $message,
            r"(?: \S+=\S+)*? ",
            stringify!($field),
            r#"="?"#,
            $value,
            r#"(?:"|\s|$)"#
        )
    };
}

/// boot-config render: wrote a file (`rendered file=... service=...`).
pub const RENDERED: &str = event!("rendered", file = r"\S+");
/// boot-config render: restarted a unit and it came up (any unit).
pub const RESTARTED: &str = event!("restarted and active", unit = r"\S+");
pub const RESTARTED_CHRONY: &str = event!("restarted and active", unit = r"chrony\.service");
pub const RESTARTED_RESOLVED: &str =
    event!("restarted and active", unit = r"systemd-resolved\.service");
pub const RESTARTED_FIREWALL: &str =
    event!("restarted and active", unit = r"berth-firewall\.service");
/// boot-config render: a unit of the variant's services that this image does not have.
pub const CONTAINERD_NOT_LOADED: &str =
    event!("not loaded; not restarted", unit = r"containerd\.service");
/// boot-config render: set the kernel's host name.
pub const HOSTNAME_SET: &str = event!("host name set", hostname = r"\S+");
/// boot-config userdata: the platform it reads user data from.
pub const USER_DATA_FROM_AWS: &str = event!("reading user data", platform = "aws");
/// boot-config userdata: not the first boot.
pub const USER_DATA_DONE: &str = event!("user data was handled at first boot");
/// boot-config userdata: refused user data, naming the key.
pub const USER_DATA_INVALID_NTP: &str = event!(r"invalid user data.*settings\.ntp\.time-servers");
/// boot-config generate: a key the user set is left alone.
pub const HOSTNAME_NOT_GENERATED: &str =
    event!("set by the user; not generated", key = r"network\.hostname");

/// berth-cluster-agent boot: started a unit and it is active.
pub const CONTAINERD_ACTIVE: &str = event!("started and active", unit = r"containerd\.service");
pub const DOCKER_ACTIVE: &str = event!("started and active", unit = r"docker\.service");
pub const ECS_BLOCK_IMDS_ACTIVE: &str =
    event!("started and active", unit = r"ecs-block-imds\.service");
/// berth-cluster-agent boot: started a unit that is not awaited (kubelet, the ECS agent).
pub const KUBELET_STARTED: &str = event!("started", unit = r"kubelet\.service");
pub const ECS_STARTED: &str = event!("started", unit = r"ecs\.service");
/// berth-cluster-agent boot: the unit's command and start results, after the start.
pub const KUBELET_COMMAND: &str = event!("command", unit = r"kubelet\.service");
pub const ECS_COMMAND: &str = event!("command", unit = r"ecs\.service");
/// berth-cluster-agent boot: the image lacks the binary (built without external artifacts).
pub const KUBELET_EXEC_FAILED: &str = event!(r".*kubelet cannot run");
pub const ECS_EXEC_FAILED: &str = event!(r".*the ECS agent cannot run");
/// berth-cluster-agent apply: a rendered file changed, and the unit it restarted for that.
pub const KUBELET_CONFIG_CHANGED: &str =
    event!("changed", path = r"/etc/kubernetes/kubelet/config\.json");
pub const KUBELET_RESTARTED: &str = event!("restarted", unit = r"kubelet\.service");
pub const ECS_CONFIG_CHANGED: &str = event!("changed", path = r"/etc/ecs/ecs\.config");
pub const ECS_RESTARTED: &str = event!("restarted", unit = r"ecs\.service");
/// berth-cluster-agent boot: the pause image imported (a oneshot unit between containerd and
/// kubelet).
pub const PAUSE_IMAGE_IMPORTED: &str =
    event!("started and active", unit = r"berth-pause-image\.service");
/// berth-cluster-agent apply: the base runtime spec changed, and containerd restarted for it.
pub const BASE_RUNTIME_SPEC_CHANGED: &str =
    event!("changed", path = r"/etc/containerd/base-runtime-spec\.json");
pub const CONTAINERD_RESTARTED: &str = event!("restarted", unit = r"containerd\.service");

/// berth-updater health-gate: the boot passed its gate.
pub const HEALTH_GATE_PASSED: &str = event!("health gate passed");
/// berth-updater health-gate: a trial boot failed its gate and reboots.
pub const HEALTH_GATE_FAILED_REBOOTING: &str =
    event!("health gate failed on a trial boot; rebooting");

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn matches(pattern: &str, line: &str) -> bool {
        Regex::new(pattern).expect("valid marker").is_match(line)
    }

    /// Lines as the journal puts them on the console, before and after a move of the code
    /// that logs them: the module path and the program do not matter.
    #[test]
    fn events_match_whatever_module_or_program_logs_them() {
        for line in [
            r#"berth-cluster-agent[301]:  INFO cluster_agent::boot: started and active unit="containerd.service""#,
            "apiserver[212]:  INFO host::systemd: started and active unit=containerd.service",
            "berth-cluster-agent[301]:  INFO started and active unit=containerd.service elapsed_ms=12",
        ] {
            assert!(matches(CONTAINERD_ACTIVE, line), "{line}");
        }
        assert!(matches(
            RENDERED,
            "boot-config[275]:  INFO boot_config::render: rendered file=/etc/motd service=motd"
        ));
        assert!(matches(
            ECS_CONFIG_CHANGED,
            "apiserver[212]:  INFO cluster_agent::live: changed path=/etc/ecs/ecs.config keys=ecs.cluster"
        ));
    }

    #[test]
    fn events_do_not_match_their_neighbours() {
        // The message starts where tracing puts it (after the level or the target), so a
        // longer message that ends with the same words is another event.
        let not_restarted = r#"boot-config[384]:  INFO boot_config::render: not running; not restarted unit="containerd.service" state=inactive"#;
        assert!(!matches(CONTAINERD_RESTARTED, not_restarted));
        assert!(matches(
            CONTAINERD_RESTARTED,
            r#"apiserver[509]:  INFO cluster_agent::live: restarted unit="containerd.service" state=active"#
        ));
        let restarted = "INFO x: restarted and active unit=kubelet.service";
        assert!(!matches(KUBELET_STARTED, restarted));
        assert!(!matches(KUBELET_RESTARTED, restarted));
        assert!(!matches(
            KUBELET_STARTED,
            "INFO x: started and active unit=kubelet.service"
        ));
        assert!(!matches(
            RENDERED,
            "INFO x: removed (rendered empty) file=/etc/nftables.conf"
        ));
        assert!(!matches(
            CONTAINERD_ACTIVE,
            "INFO x: started and active unit=containerd.service.d"
        ));
        assert!(matches(RESTARTED, restarted));
    }

    #[test]
    fn every_marker_is_a_valid_regex() {
        for marker in [
            KERNEL_BANNER,
            EARLY_INIT,
            SWITCH_ROOT,
            EARLY_INIT_FATAL,
            BOOT_FAILURE,
            EARLY_INIT_READ_ERROR,
            MULTI_USER,
            FIRMWARE_BOOT,
            VERITY_CORRUPTION,
            SELINUX_DENIAL,
            KERNEL_RESTART,
            PROBE_LINE,
            PROBE_END,
            CONFIGURED,
            FIREWALL_STARTED,
            FIREWALL_FAILED,
            RENDERED,
            RESTARTED,
            RESTARTED_CHRONY,
            RESTARTED_RESOLVED,
            RESTARTED_FIREWALL,
            CONTAINERD_NOT_LOADED,
            HOSTNAME_SET,
            USER_DATA_FROM_AWS,
            USER_DATA_DONE,
            USER_DATA_INVALID_NTP,
            HOSTNAME_NOT_GENERATED,
            CONTAINERD_ACTIVE,
            DOCKER_ACTIVE,
            ECS_BLOCK_IMDS_ACTIVE,
            KUBELET_STARTED,
            ECS_STARTED,
            KUBELET_COMMAND,
            ECS_COMMAND,
            KUBELET_EXEC_FAILED,
            ECS_EXEC_FAILED,
            KUBELET_CONFIG_CHANGED,
            KUBELET_RESTARTED,
            ECS_CONFIG_CHANGED,
            ECS_RESTARTED,
            PAUSE_IMAGE_IMPORTED,
            BASE_RUNTIME_SPEC_CHANGED,
            CONTAINERD_RESTARTED,
            SECURE_BOOT_ENABLED,
            LOCKDOWN_SECURE_BOOT,
            SECURE_BOOT_REFUSED,
            API_READY,
            HEALTH_GATE_PASSED,
            HEALTH_GATE_FAILED_REBOOTING,
        ] {
            Regex::new(marker).expect(marker);
        }
    }
}
