//! Command-line arguments.

use crate::version::KubeletVersion;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Renders the files that join this host to an EKS, EKS Anywhere or ECS cluster.
#[derive(Debug, Parser)]
#[command(name = "berth-cluster-agent", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render kubelet / ECS agent configuration from settings and instance facts.
    Render(RenderArgs),
    /// At boot (berth-cluster-agent.service): live settings from the API + instance facts ->
    /// files under /etc and /var/lib/kubelet, then start containerd and kubelet
    /// (settings.kubernetes) and/or docker and the ECS agent (settings.ecs).
    Boot(crate::boot::BootArgs),
    /// After a live settings change (boot-config's `kubernetes` service): render again from
    /// the API and the facts the boot step recorded, write the files that changed, and
    /// restart kubelet if one of its files changed and it was started at this boot.
    Apply(crate::live::ApplyArgs),
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Settings JSON, as `apiclient get settings` prints it (`{"settings": {...}}`).
    #[arg(long, value_name = "FILE")]
    pub settings: PathBuf,
    /// Instance facts JSON (instance-type, instance-id, availability-zone, region, ...).
    #[arg(long, value_name = "FILE")]
    pub facts: PathBuf,
    /// Root to write under (`/` on the host; files go to `OUT/etc/...`, `OUT/var/...`).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Kubelet version the files are for; nodeadm varies a few fields by minor version.
    #[arg(long, value_name = "1.MINOR", default_value = "1.33")]
    pub kubelet_version: KubeletVersion,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn render_takes_files_and_a_default_version() {
        let cli = Cli::try_parse_from([
            "berth-cluster-agent",
            "render",
            "--settings",
            "s.json",
            "--facts",
            "f.json",
            "--out",
            "/",
        ])
        .expect("valid arguments");
        let Command::Render(args) = cli.command else {
            panic!("render")
        };
        assert_eq!(args.settings, PathBuf::from("s.json"));
        assert_eq!(args.facts, PathBuf::from("f.json"));
        assert_eq!(args.out, PathBuf::from("/"));
        assert_eq!(args.kubelet_version, KubeletVersion::new(33));
    }

    #[test]
    fn kubelet_version_is_parsed() {
        let cli = Cli::try_parse_from([
            "x",
            "render",
            "--settings",
            "s",
            "--facts",
            "f",
            "--out",
            "o",
            "--kubelet-version",
            "v1.28.5",
        ])
        .expect("valid arguments");
        let Command::Render(args) = cli.command else {
            panic!("render")
        };
        assert_eq!(args.kubelet_version, KubeletVersion::new(28));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        let base = [
            "x",
            "render",
            "--settings",
            "s",
            "--facts",
            "f",
            "--out",
            "o",
        ];
        let err = Cli::try_parse_from(base.iter().chain(&["--kubelet-version", "2.0"]))
            .expect_err("bad version");
        assert!(err.to_string().contains("kubelet version '2.0'"), "{err}");
        assert!(
            Cli::try_parse_from(&base[..6]).is_err(),
            "--out is required"
        );
        assert!(
            Cli::try_parse_from(["x"]).is_err(),
            "a subcommand is required"
        );
    }
}
