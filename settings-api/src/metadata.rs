//! Service metadata: which setting prefixes affect which services, and for each service its
//! configuration files and restart commands. Loaded from one TOML file:
//!
//! ```toml
//! [affected-services]
//! "ntp" = ["chronyd"]              # setting prefix (with or without "settings.") -> services
//!
//! [services.chronyd]
//! configuration-files = ["chrony-conf"]
//! restart-commands = ["/usr/bin/systemctl try-restart chronyd.service"]
//!
//! [configuration-files.chrony-conf]
//! path = "/etc/chrony.conf"
//! template-path = "/usr/share/templates/chrony-conf"
//! mode = "0644"
//! ```
//!
//! Berth adds one key to a configuration file: `remove-when-empty = true` makes the file exist
//! only when its template renders something other than whitespace; otherwise the renderer
//! removes it (the firewall ruleset `/etc/nftables.conf`, absent while the firewall is off).

use crate::key::{Key, KeyError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Errors from loading metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("failed to read metadata file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata file {path} is invalid")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("metadata file {path}: bad setting prefix")]
    Prefix { path: PathBuf, source: KeyError },
    #[error("metadata file {path}: service '{service}' is not defined under [services]")]
    UnknownService { path: PathBuf, service: String },
    #[error(
        "metadata file {path}: configuration file '{file}' of service '{service}' is not defined"
    )]
    UnknownFile {
        path: PathBuf,
        service: String,
        file: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Service {
    #[serde(default)]
    pub configuration_files: Vec<String>,
    #[serde(default)]
    pub restart_commands: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigurationFile {
    pub path: String,
    pub template_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Berth's: a template that renders only whitespace removes the file instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove_when_empty: bool,
}

/// The whole metadata file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Metadata {
    #[serde(default)]
    pub affected_services: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub configuration_files: BTreeMap<String, ConfigurationFile>,
    #[serde(skip)]
    prefixes: Vec<(Key, Vec<String>)>,
}

impl Metadata {
    /// Loads and cross-checks a metadata file.
    pub fn load(path: &Path) -> Result<Metadata, MetadataError> {
        let text = std::fs::read_to_string(path).map_err(|source| MetadataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Metadata::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Metadata, MetadataError> {
        let mut md: Metadata = toml::from_str(text).map_err(|source| MetadataError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        for (prefix, services) in &md.affected_services {
            let key = Key::parse_setting(prefix).map_err(|source| MetadataError::Prefix {
                path: path.to_path_buf(),
                source,
            })?;
            for service in services {
                if !md.services.contains_key(service) {
                    return Err(MetadataError::UnknownService {
                        path: path.to_path_buf(),
                        service: service.clone(),
                    });
                }
            }
            md.prefixes.push((key, services.clone()));
        }
        for (service, def) in &md.services {
            for file in &def.configuration_files {
                if !md.configuration_files.contains_key(file) {
                    return Err(MetadataError::UnknownFile {
                        path: path.to_path_buf(),
                        service: service.clone(),
                        file: file.clone(),
                    });
                }
            }
        }
        Ok(md)
    }

    /// Services affected by a change to `key` (or to anything below it).
    pub fn affected_services(&self, key: &Key) -> BTreeSet<String> {
        self.prefixes
            .iter()
            .filter(|(prefix, _)| prefix.is_prefix_of(key) || key.is_prefix_of(prefix))
            .flat_map(|(_, services)| services.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[affected-services]
"settings.ntp" = ["chronyd"]
"kubernetes" = ["kubelet"]
"kubernetes.node-labels" = ["kubelet", "node-labeler"]

[services.chronyd]
configuration-files = ["chrony-conf"]
restart-commands = ["systemctl try-restart chronyd"]
[services.kubelet]
[services.node-labeler]

[configuration-files.chrony-conf]
path = "/etc/chrony.conf"
template-path = "/usr/share/templates/chrony-conf"
"#;

    #[test]
    fn maps_keys_to_services_by_prefix() {
        let md = Metadata::parse(SAMPLE, Path::new("t.toml")).unwrap();
        let k = |s| Key::parse_setting(s).unwrap();
        assert_eq!(
            md.affected_services(&k("settings.ntp.time-servers")),
            BTreeSet::from(["chronyd".to_string()])
        );
        assert_eq!(
            md.affected_services(&k(r#"kubernetes.node-labels."a.b/c""#)),
            BTreeSet::from(["kubelet".to_string(), "node-labeler".to_string()])
        );
        assert!(md.affected_services(&k("motd")).is_empty());
    }

    #[test]
    fn rejects_dangling_references() {
        let bad = "[affected-services]\nntp = [\"nope\"]\n";
        assert!(matches!(
            Metadata::parse(bad, Path::new("t.toml")),
            Err(MetadataError::UnknownService { .. })
        ));
    }
}
