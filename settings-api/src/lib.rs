//! Berth's settings API: the typed settings model, the datastore, the API server and the
//! client, compatible with Bottlerocket's API and `apiclient`.

pub mod api;
pub mod apply;
pub mod cli;
pub mod client;
pub mod datastore;
pub mod defaults;
pub mod key;
pub mod metadata;
pub mod model;
pub mod paths;
pub mod pem;
pub mod reboot;
pub mod server;
pub mod updates;

/// Sets up `tracing` to stderr, filtered by `RUST_LOG` (default `info`); no timestamps under
/// systemd, whose journal adds them; colours only on a terminal.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
