//! `berth-cluster-agent`: turns Berth settings plus instance facts into the files that join
//! the host to a cluster — kubelet's config, flags, kubeconfig and image credential provider
//! config for EKS (as nodeadm, EKS's node bootstrap, writes them), a bootstrap kubeconfig for
//! EKS Anywhere, and the ECS agent's config. See `README.md` for the rules and the places
//! where Berth deliberately differs from nodeadm.

pub mod boot;
pub mod cli;
pub(crate) mod derive;
pub(crate) mod duration;
pub mod facts;
pub mod hostfacts;
pub(crate) mod input;
pub mod live;
pub(crate) mod output;
pub mod paths;
pub mod render;
pub mod version;

use anyhow::Context;

/// Runs a parsed command line.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Render(args) => {
            let settings = input::settings(&args.settings)?;
            let facts = input::facts(&args.facts)?;
            let files =
                render::render(&settings, &facts, args.kubelet_version).with_context(|| {
                    format!(
                        "render from {} and {}",
                        args.settings.display(),
                        args.facts.display()
                    )
                })?;
            let written = output::write_all(&args.out, &files)?;
            for path in written {
                tracing::info!(path = %path.display(), "wrote");
            }
            Ok(())
        }
        cli::Command::Boot(args) => boot::run(&args).map(|_| ()),
        cli::Command::Apply(args) => live::run(&args).map(|_| ()),
    }
}
