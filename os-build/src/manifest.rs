//! The build manifest (`manifest.json`): what was built, from what, and the sha256 of
//! every artifact, for the tests, the update repository and auditors.

use std::collections::BTreeMap;
use std::path::Path;

use boot_contract::Slot;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::disk::Layout;

#[derive(Debug, Serialize)]
pub struct Manifest {
    pub version: String,
    pub variant: String,
    pub arch: String,
    pub production: bool,
    pub kernel_release: String,
    pub root_hash: String,
    pub verity_salt: String,
    pub verity_data_blocks: u64,
    pub cmdline: BTreeMap<Slot, String>,
    pub layout: Layout,
    pub packages_lock_sha256: String,
    pub artifacts: BTreeMap<String, Artifact>,
    /// External artifacts installed into the root, and those missing (built with
    /// `--allow-missing-artifacts`).
    pub external_artifacts: crate::artifacts::Report,
    /// `signed` (systemd-boot and the UKIs carry the db key's signature) or `unsigned`.
    pub secure_boot: crate::secureboot::State,
    /// The certificate that signed them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secure_boot_db: Option<crate::secureboot::DbCert>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

pub fn artifact(path: &Path) -> std::io::Result<Artifact> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)?;
    Ok(Artifact {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        size,
        sha256: hex::encode(hasher.finalize()),
    })
}
