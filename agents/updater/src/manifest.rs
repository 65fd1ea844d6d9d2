//! The Berth update manifest: the TUF target `manifest.json` that lists, per variant and
//! architecture, the versions a repository offers, their per-slot images, waves, datastore
//! migrations and the highest version hosts may take. `os-build repo` writes it; the updater
//! reads it. Shape and rules: docs/updates.md.

use std::collections::BTreeMap;
use std::fmt;

use boot_contract::Slot;
use semver::Version;
use serde::{Deserialize, Serialize};

/// Name of the manifest target in the TUF repository.
pub const MANIFEST_TARGET: &str = "manifest.json";
/// Version of the manifest's shape; a reader refuses others.
pub const SCHEMA_VERSION: u32 = 1;
/// Host seeds are in `0..MAX_SEED`; wave bounds are in `0..=MAX_SEED` (Bottlerocket's range).
pub const MAX_SEED: u32 = 2048;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    /// One entry per (variant, arch, version).
    #[serde(default)]
    pub updates: Vec<Update>,
    /// Datastore migrations to run when going from one version to another (and in reverse
    /// order on the way back).
    #[serde(default)]
    pub migrations: Vec<Migration>,
}

impl Default for Manifest {
    fn default() -> Self {
        Manifest {
            schema_version: SCHEMA_VERSION,
            updates: Vec::new(),
            migrations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub variant: String,
    pub arch: String,
    pub version: Version,
    /// Hosts take this update only if `version <= max_version`; lowering it pulls a release.
    pub max_version: Version,
    /// Once this version has booted healthy on a host, the host never installs, boots or
    /// rolls back to a version below this one (its anti-rollback floor; docs/updates.md).
    /// Omitted when the release does not raise the floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_floor: Option<Version>,
    /// Wave bounds: seed bound -> time from which hosts with seeds from this bound onwards may
    /// start taking the update. Empty means everyone at once. See [`crate::choose`].
    #[serde(default)]
    pub waves: BTreeMap<u32, jiff::Timestamp>,
    /// dm-verity parameters of the root image (the same on both slots).
    pub verity: VerityInfo,
    /// The images for each slot.
    pub slots: SlotImages,
}

/// `variant arch version`, for messages.
impl fmt::Display for Update {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.variant, self.arch, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotImages {
    pub a: Images,
    pub b: Images,
}

impl SlotImages {
    pub fn get(&self, slot: Slot) -> &Images {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// What one slot needs: its root image, its verity hash tree and its UKI (whose command line
/// names the slot and the verity root hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    pub root: Image,
    pub verity: Image,
    pub uki: Image,
}

/// One image: a compressed TUF target and the size and sha256 of its uncompressed bytes (the
/// TUF targets metadata holds the compressed size and hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub target: String,
    pub compression: Compression,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// sha256 root hash, hex.
    pub root_hash: String,
    /// Salt, hex (empty for none).
    pub salt: String,
    /// Number of 4096-byte data blocks covered.
    pub data_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub from: Version,
    pub to: Version,
    /// Migration names, run in this order going forward.
    pub names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of the Berth manifest shape")]
    Parse(#[source] serde_json::Error),
    #[error("manifest schema_version is {0}, this updater reads {SCHEMA_VERSION}")]
    Schema(u32),
    #[error("manifest lists {variant} {arch} {version} twice")]
    Duplicate {
        variant: String,
        arch: String,
        version: Version,
    },
    #[error("manifest wave bound {0} is above {MAX_SEED}")]
    WaveBound(u32),
    #[error("manifest entry {entry} names target {name:?}, which is not a plain file name (no path separator, no `..`, no leading `.`): refused, since the updater stores targets under their names")]
    TargetName { entry: String, name: String },
    #[error("manifest entry {entry} has rollback floor {floor}, above its own version")]
    FloorAboveVersion { entry: String, floor: Version },
}

/// Whether `name` can be used as a file name in the staging folder as it is: no path
/// separators, no `..`, not hidden (the updater's own temporary names start with `.`), no
/// control characters.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_slice(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(ManifestError::Parse)?;
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(ManifestError::Schema(self.schema_version));
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &self.updates {
            if !seen.insert((&u.variant, &u.arch, &u.version)) {
                return Err(ManifestError::Duplicate {
                    variant: u.variant.clone(),
                    arch: u.arch.clone(),
                    version: u.version.clone(),
                });
            }
            if let Some(bound) = u.waves.keys().find(|b| **b > MAX_SEED) {
                return Err(ManifestError::WaveBound(*bound));
            }
            for images in [&u.slots.a, &u.slots.b] {
                for image in [&images.root, &images.verity, &images.uki] {
                    if !is_plain_file_name(&image.target) {
                        return Err(ManifestError::TargetName {
                            entry: u.to_string(),
                            name: image.target.clone(),
                        });
                    }
                }
            }
            if let Some(floor) = u.rollback_floor.as_ref().filter(|f| **f > u.version) {
                return Err(ManifestError::FloorAboveVersion {
                    entry: u.to_string(),
                    floor: floor.clone(),
                });
            }
        }
        Ok(())
    }

    /// Adds or replaces the entry for the same variant, arch and version.
    pub fn upsert(&mut self, update: Update) {
        self.updates.retain(|u| {
            !(u.variant == update.variant && u.arch == update.arch && u.version == update.version)
        });
        self.updates.push(update);
        self.updates.sort_by(|x, y| {
            (&x.variant, &x.arch, &x.version).cmp(&(&y.variant, &y.arch, &y.version))
        });
    }

    /// Migration names to run going from `from` to `to` (forward), following the listed
    /// steps; going back, the same names in reverse order. `None` if no chain of steps joins
    /// the two versions (equal versions need none).
    pub fn migrations_between(&self, from: &Version, to: &Version) -> Option<Vec<String>> {
        let (low, high, reverse) = if from <= to {
            (from, to, false)
        } else {
            (to, from, true)
        };
        let mut names = Vec::new();
        let mut at = low.clone();
        while &at != high {
            // The longest step that does not overshoot, as Bottlerocket's updog does.
            let step = self
                .migrations
                .iter()
                .filter(|m| m.from == at && &m.to <= high && m.to > at)
                .max_by(|x, y| x.to.cmp(&y.to))?;
            names.extend(step.names.iter().cloned());
            at = step.to.clone();
        }
        if reverse {
            names.reverse();
        }
        Some(names)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn image(name: &str) -> Image {
        Image {
            target: name.into(),
            compression: Compression::Zstd,
            size: 4096,
            sha256: "00".repeat(32),
        }
    }

    pub(crate) fn update(version: &str) -> Update {
        let images = Images {
            root: image("root"),
            verity: image("verity"),
            uki: image("uki"),
        };
        Update {
            variant: "qemu".into(),
            arch: "x86_64".into(),
            version: v(version),
            max_version: v("9.9.9"),
            rollback_floor: None,
            waves: BTreeMap::new(),
            verity: VerityInfo {
                root_hash: "11".repeat(32),
                salt: String::new(),
                data_blocks: 1,
            },
            slots: SlotImages {
                a: images.clone(),
                b: images,
            },
        }
    }

    #[test]
    fn round_trip_with_waves() {
        let mut m = Manifest::default();
        let mut u = update("1.0.0");
        u.waves.insert(0, "2026-01-01T00:00:00Z".parse().unwrap());
        u.waves
            .insert(1024, "2026-01-02T00:00:00Z".parse().unwrap());
        m.upsert(u);
        let json = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(Manifest::from_slice(&json).unwrap(), m);
    }

    #[test]
    fn unknown_fields_and_schema_are_refused() {
        let json = serde_json::json!({"schema_version": 1, "updates": [], "extra": 1});
        assert!(Manifest::from_slice(json.to_string().as_bytes()).is_err());
        let json = serde_json::json!({"schema_version": 2});
        let err = Manifest::from_slice(json.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("schema_version is 2"));
    }

    #[test]
    fn target_names_must_be_plain_file_names() {
        for bad in [
            "../../private/datastore/live/settings.json",
            "/etc/passwd",
            "sub/dir.zst",
            "..",
            ".hidden.zst",
            "a\\b",
            "",
        ] {
            let mut m = Manifest::default();
            let mut u = update("1.0.0");
            u.slots.b.uki.target = bad.into();
            m.upsert(u);
            let json = serde_json::to_vec(&m).unwrap();
            let err = Manifest::from_slice(&json).unwrap_err().to_string();
            assert!(err.contains("not a plain file name"), "{bad:?}: {err}");
        }
        assert!(is_plain_file_name("qemu-test-x86_64-2.0.0-uki-b.efi.zst"));
    }

    #[test]
    fn a_floor_above_its_own_version_is_refused() {
        let mut m = Manifest::default();
        let mut u = update("1.0.0");
        u.rollback_floor = Some(v("1.0.0"));
        m.upsert(u.clone());
        Manifest::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        u.rollback_floor = Some(v("1.0.1"));
        m.upsert(u);
        let err = Manifest::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap_err();
        assert!(err.to_string().contains("above its own version"), "{err}");
    }

    #[test]
    fn upsert_replaces_same_version() {
        let mut m = Manifest::default();
        m.upsert(update("1.0.0"));
        m.upsert(update("2.0.0"));
        let mut again = update("1.0.0");
        again.max_version = v("1.0.0");
        m.upsert(again);
        assert_eq!(m.updates.len(), 2);
        assert_eq!(m.updates[0].max_version, v("1.0.0"));
    }

    #[test]
    fn migrations_forward_and_back() {
        let mut m = Manifest::default();
        let mig = |f: &str, t: &str, n: &[&str]| Migration {
            from: v(f),
            to: v(t),
            names: n.iter().map(|s| s.to_string()).collect(),
        };
        m.migrations = vec![
            mig("1.0.0", "1.1.0", &["a", "b"]),
            mig("1.1.0", "1.2.0", &["c"]),
            mig("1.1.0", "1.3.0", &["shortcut"]),
        ];
        assert_eq!(
            m.migrations_between(&v("1.0.0"), &v("1.3.0")).unwrap(),
            ["a", "b", "shortcut"]
        );
        assert_eq!(
            m.migrations_between(&v("1.3.0"), &v("1.0.0")).unwrap(),
            ["shortcut", "b", "a"]
        );
        assert_eq!(m.migrations_between(&v("1.0.0"), &v("1.4.0")), None);
        assert_eq!(
            m.migrations_between(&v("1.2.0"), &v("1.2.0")).unwrap(),
            Vec::<String>::new()
        );
    }
}
