//! Reads the two input files: settings as the API serves them (`{"settings": {...}}`) and
//! instance facts.

use crate::facts::Facts;
use settings_api::model::{ModelError, Settings};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} must be an object with a 'settings' key, as `apiclient get settings` prints")]
    NoSettings { path: PathBuf },
    #[error("{path}")]
    Settings {
        path: PathBuf,
        #[source]
        source: ModelError,
    },
    #[error("{path}: bad instance facts")]
    Facts {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn read_json(path: &Path) -> Result<serde_json::Value, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| InputError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Settings from `path`, validated by the settings model (the error names the key).
pub fn settings(path: &Path) -> Result<Settings, InputError> {
    let value = read_json(path)?;
    let inner = value
        .get("settings")
        .ok_or_else(|| InputError::NoSettings {
            path: path.to_path_buf(),
        })?;
    Settings::from_json(inner).map_err(|source| InputError::Settings {
        path: path.to_path_buf(),
        source,
    })
}

/// Facts from `path`.
pub fn facts(path: &Path) -> Result<Facts, InputError> {
    let value = read_json(path)?;
    serde_json::from_value(value).map_err(|source| InputError::Facts {
        path: path.to_path_buf(),
        source,
    })
}
