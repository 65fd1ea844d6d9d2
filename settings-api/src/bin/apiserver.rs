//! `apiserver`: serves the settings API on a Unix socket.

use anyhow::Context;
use clap::Parser;
use settings_api::cli::ServerArgs;
use settings_api::{apply, datastore, defaults, metadata, server};
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    let args = ServerArgs::parse();
    settings_api::init_tracing();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("apiserver: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: ServerArgs) -> anyhow::Result<()> {
    let ds = datastore::Datastore::open(&args.datastore_path)
        .with_context(|| format!("opening datastore {}", args.datastore_path.display()))?;
    let defaults = args
        .defaults_dir
        .as_deref()
        .map(defaults::load_dir)
        .transpose()?;
    let metadata = match &args.metadata_file {
        Some(path) => metadata::Metadata::load(path)?,
        None => metadata::Metadata::default(),
    };
    let mut state = server::State::open(ds, defaults, metadata, server::os_info(&args.os_release))?
        .with_missing_artifacts(server::missing_artifacts(&args.missing_artifacts));
    if let Some(program) = &args.apply_command {
        state = state.with_applier(Arc::new(apply::CommandApplier::new(program.clone())));
    }
    let mut state = state.with_cis_root(args.cis_root.clone());
    if let Some(path) = &args.user_data_status {
        if state.quarantined_now() {
            // The settings user data made are in quarantine: boot-config applies it again.
            settings_api::datastore::rearm_user_data(path)
                .with_context(|| format!("re-arming user data ({})", path.display()))?;
        }
        state = state.with_user_data_status(path.clone());
    }
    if let Some(method) = args.reboot {
        state = state.with_rebooter(method.rebooter());
    }
    if let Some(program) = &args.updater_command {
        state = state.with_updater(settings_api::updates::Updater::new(
            program.clone(),
            args.updates_state_dir.clone(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let gid = match &args.socket_gid {
        Some(group) => Some(
            server::resolve_gid(group, std::path::Path::new(settings_api::paths::GROUP_FILE))
                .with_context(|| {
                    format!(
                        "unknown group '{group}' for --socket-gid (not a number, not in {})",
                        settings_api::paths::GROUP_FILE
                    )
                })?,
        ),
        None => None,
    };
    runtime.block_on(async {
        let listener = server::bind(&args.socket_path, gid)?;
        tracing::info!(socket = %args.socket_path.display(), "listening");
        server::notify_ready();
        server::serve(listener, Arc::new(state))
            .await
            .context("serving")
    })
}
