//! Variant defaults: TOML fragments (`*.toml`) in one directory, merged in lexical order.
//!
//! Each fragment uses Bottlerocket's user-data shape, a top-level `[settings]` table; later
//! fragments override earlier ones key by key. The merged value is validated against the model
//! and fills in the keys that live settings lack when the server starts (as Bottlerocket's
//! storewolf does), never overwriting a value a user has set.

use crate::datastore::merge;
use crate::model::{ModelError, Settings};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Errors from loading defaults.
#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("failed to read defaults {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("defaults fragment {path} is not valid TOML")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("defaults fragment {path} has a top-level table other than [settings]: '{table}'")]
    UnknownTable { path: PathBuf, table: String },
    #[error("merged defaults in {dir} are invalid")]
    Invalid { dir: PathBuf, source: ModelError },
}

/// Loads and merges the fragments in `dir`; returns the canonical settings JSON.
pub fn load_dir(dir: &Path) -> Result<Value, DefaultsError> {
    let read_err = |source| DefaultsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    let mut merged = Value::Object(serde_json::Map::new());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| DefaultsError::Read {
            path: path.clone(),
            source,
        })?;
        let doc: Value = toml::from_str(&text).map_err(|source| DefaultsError::Parse {
            path: path.clone(),
            source,
        })?;
        if let Value::Object(tables) = doc {
            for (table, value) in tables {
                if table != "settings" {
                    return Err(DefaultsError::UnknownTable { path, table });
                }
                merge(&mut merged, &value);
            }
        }
    }
    Settings::canonicalize(&merged).map_err(|source| DefaultsError::Invalid {
        dir: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fragments_merge_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-base.toml"),
            "[settings]\nmotd = \"base\"\n[settings.ntp]\ntime-servers = [\"a.example.com\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-k8s.toml"),
            "[settings]\nmotd = \"k8s\"\n[settings.kubernetes]\nmax-pods = 110\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "ignored").unwrap();
        let v = load_dir(dir.path()).unwrap();
        assert_eq!(
            v,
            json!({"motd": "k8s", "ntp": {"time-servers": ["a.example.com"]},
                   "kubernetes": {"max-pods": 110}})
        );
    }

    #[test]
    fn invalid_defaults_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "[settings.updates]\nseed = 9999\n",
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err();
        match err {
            DefaultsError::Invalid { source, .. } => {
                assert_eq!(source.key, "settings.updates.seed")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
