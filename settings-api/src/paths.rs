//! Host paths used by the settings API.

/// The API socket.
pub const API_SOCKET: &str = "/run/api.sock";
/// Root of the settings datastore, on the `private` partition.
pub const DATASTORE: &str = "/private/datastore";
/// os-release file served at `/os`.
pub const OS_RELEASE: &str = "/etc/os-release";
/// Written by os-build when an image is built with `--allow-missing-artifacts`.
pub const MISSING_ARTIFACTS: &str = "/usr/share/berth/missing-artifacts.json";
/// Group database used to resolve `--socket-gid NAME`.
pub const GROUP_FILE: &str = "/etc/group";
/// State folder of `berth-updater` (state.json, the update lock), on the `private` partition.
pub const UPDATES_STATE_DIR: &str = "/private/updates";
