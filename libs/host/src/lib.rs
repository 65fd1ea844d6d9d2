//! What Berth's host programs (boot-config, the cluster agent, the updater, apiserver) share
//! about the machine they run on, so that no agent reaches into another for it:
//!
//! - [`platform`]: which platform the host runs on (aws, vmware, qemu, metal);
//! - [`imds`]: the EC2 instance metadata service (IMDSv2), blocking, with retries;
//! - [`systemd`]: systemd's unit manager over D-Bus: one trait, the real client, a recording
//!   fake; jobs waited for by their `JobRemoved` signal; reboot.
//!
//! The boot contract (command line, partitions, EFI variables) is in `boot-contract`, which
//! the initramfs links too.

pub mod imds;
pub mod platform;
pub mod systemd;
