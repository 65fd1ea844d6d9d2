//! Host paths used by boot-config.

/// User data handed over by QEMU (`-fw_cfg name=opt/org.berth/user-data,file=...`).
pub const FW_CFG_USER_DATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.berth/user-data/raw";
/// First-boot marker and outcome of applying user data (JSON), on `private`.
pub const USER_DATA_STATUS: &str = "/private/boot-config/user-data.json";
/// Service metadata: setting prefixes -> services -> configuration files and restarts.
pub const METADATA: &str = "/usr/share/berth/metadata.toml";
/// The transaction user data is applied in.
pub const USER_DATA_TX: &str = "boot-config-user-data";
/// Local user data on `private`, read before the platform's source.
pub const LOCAL_USER_DATA: &str = "/private/user-data.toml";
/// Local overrides on `private`, read after the platform's source.
pub const USER_DATA_OVERRIDES: &str = "/private/user-data-overrides.toml";
/// What the setting generators wrote (the record of which keys they own).
pub const GENERATED_STATUS: &str = "/private/boot-config/generated.json";
