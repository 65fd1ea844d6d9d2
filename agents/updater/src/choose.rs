//! Which update a host takes: variant and arch match, `version <= max_version`, the version
//! lock, no downgrade unless asked, and waves by the host's seed and the time.
//!
//! Waves follow Bottlerocket's rule: the manifest maps seed bounds to times. A host with seed
//! `s` is in the wave between the last bound below `s` (its start seed and start time) and the
//! first bound at or above `s` (its end seed and end time). Before the start time it waits;
//! after the end time it may update; in between its turn comes at the time proportional to
//! its place between the start and end seeds, so a wave's hosts spread evenly over it. Hosts
//! past the last bound update from the last bound's time on; hosts before the first bound may
//! update at once. (Bottlerocket's updog computes the place from the absolute seed, which puts
//! late-wave hosts past the wave's end; we use the seed's offset within the wave.)

use semver::Version;

use crate::manifest::{Manifest, Update, MAX_SEED};

/// Which version a host wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionLock {
    /// The newest version the waves allow.
    Latest,
    /// Exactly this version.
    Exact(Version),
}

impl std::str::FromStr for VersionLock {
    type Err = semver::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "latest" {
            Ok(VersionLock::Latest)
        } else {
            Version::parse(s.strip_prefix('v').unwrap_or(s)).map(VersionLock::Exact)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub variant: String,
    pub arch: String,
    /// The running version.
    pub current: Version,
    pub version_lock: VersionLock,
    pub allow_downgrade: bool,
    pub ignore_waves: bool,
    /// The host's seed, `0..MAX_SEED`.
    pub seed: u32,
    pub now: jiff::Timestamp,
    /// The host's anti-rollback floor: no version below it is chosen, downgrade or not.
    pub floor: Option<Version>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChooseError {
    #[error("version-lock {wanted} is older than the running {current}; a downgrade must be asked for explicitly")]
    Downgrade { wanted: Version, current: Version },
    #[error(
        "version-lock {0} is not offered for this variant and arch (or is above its max_version)"
    )]
    NotOffered(Version),
    #[error("seed {0} is out of range (0..{MAX_SEED})")]
    Seed(u32),
    #[error("version-lock {wanted} is below this host's rollback floor {floor}, set when an update that raised it booted healthy: lock a version at or above {floor} (the floor is never lowered; docs/updates.md#rollback-floor)")]
    BelowFloor { wanted: Version, floor: Version },
}

/// The versions offered to this host's variant and arch (newest first), wave or not.
pub fn offered<'m>(manifest: &'m Manifest, policy: &Policy) -> Vec<&'m Update> {
    let mut list: Vec<&Update> = manifest
        .updates
        .iter()
        .filter(|u| u.variant == policy.variant && u.arch == policy.arch)
        .filter(|u| u.version <= u.max_version)
        .collect();
    list.sort_by(|x, y| y.version.cmp(&x.version));
    list
}

/// The update this host should take now, or `None` when there is nothing to do.
pub fn choose<'m>(
    manifest: &'m Manifest,
    policy: &Policy,
) -> Result<Option<&'m Update>, ChooseError> {
    if policy.seed >= MAX_SEED {
        return Err(ChooseError::Seed(policy.seed));
    }
    let offered = offered(manifest, policy);
    match &policy.version_lock {
        VersionLock::Exact(wanted) => {
            if wanted == &policy.current {
                return Ok(None);
            }
            if let Some(floor) = policy.floor.as_ref().filter(|f| wanted < *f) {
                return Err(ChooseError::BelowFloor {
                    wanted: wanted.clone(),
                    floor: floor.clone(),
                });
            }
            if wanted < &policy.current && !policy.allow_downgrade {
                return Err(ChooseError::Downgrade {
                    wanted: wanted.clone(),
                    current: policy.current.clone(),
                });
            }
            let update = offered
                .into_iter()
                .find(|u| &u.version == wanted)
                .ok_or_else(|| ChooseError::NotOffered(wanted.clone()))?;
            // An explicit lock still respects waves unless told to ignore them.
            Ok(
                (policy.ignore_waves || wave_ready(update, policy.seed, policy.now))
                    .then_some(update),
            )
        }
        VersionLock::Latest => Ok(offered.into_iter().find(|u| {
            u.version > policy.current
                && policy.floor.as_ref().is_none_or(|f| &u.version >= f)
                && (policy.ignore_waves || wave_ready(u, policy.seed, policy.now))
        })),
    }
}

/// Whether a host with `seed` may take `update` at `now` (see the module docs).
pub fn wave_ready(update: &Update, seed: u32, now: jiff::Timestamp) -> bool {
    let start = update.waves.range(..seed).next_back();
    let end = update.waves.range(seed..=MAX_SEED).next();
    match (start, end) {
        // No waves at all.
        (None, None) => true,
        // Before the first bound: the initial wave has no start.
        (None, Some(_)) => true,
        // The last wave: from its start on.
        (Some((_, start_time)), None) => now >= *start_time,
        (Some((start_seed, start_time)), Some((end_seed, end_time))) => {
            if now >= *end_time {
                return true;
            }
            if now < *start_time {
                return false;
            }
            let span_seeds = i128::from(end_seed - start_seed);
            let span_ns = end_time.as_nanosecond() - start_time.as_nanosecond();
            let offset = i128::from(seed - start_seed);
            let turn_ns = start_time.as_nanosecond() + span_ns * offset / span_seeds;
            now.as_nanosecond() >= turn_ns
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::tests::update;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn policy(current: &str) -> Policy {
        Policy {
            variant: "qemu".into(),
            arch: "x86_64".into(),
            current: v(current),
            version_lock: VersionLock::Latest,
            allow_downgrade: false,
            ignore_waves: false,
            seed: 100,
            now: t("2026-06-01T00:00:00Z"),
            floor: None,
        }
    }

    fn manifest(versions: &[&str]) -> Manifest {
        let mut m = Manifest::default();
        for ver in versions {
            m.upsert(update(ver));
        }
        m
    }

    #[test]
    fn latest_picks_newest_above_current() {
        let m = manifest(&["1.0.0", "1.1.0", "1.2.0"]);
        let got = choose(&m, &policy("1.0.0")).unwrap().unwrap();
        assert_eq!(got.version, v("1.2.0"));
        assert!(choose(&m, &policy("1.2.0")).unwrap().is_none());
    }

    #[test]
    fn other_variant_and_max_version_are_skipped() {
        let mut m = manifest(&["1.0.0", "1.1.0"]);
        let mut other = update("3.0.0");
        other.variant = "aws-k8s".into();
        m.upsert(other);
        let mut pulled = update("2.0.0");
        pulled.max_version = v("1.1.0");
        m.upsert(pulled);
        let got = choose(&m, &policy("1.0.0")).unwrap().unwrap();
        assert_eq!(got.version, v("1.1.0"));
    }

    #[test]
    fn exact_lock_and_downgrade() {
        let m = manifest(&["1.0.0", "1.1.0", "1.2.0"]);
        let mut p = policy("1.2.0");
        p.version_lock = VersionLock::Exact(v("1.0.0"));
        assert_eq!(
            choose(&m, &p).unwrap_err(),
            ChooseError::Downgrade {
                wanted: v("1.0.0"),
                current: v("1.2.0")
            }
        );
        p.allow_downgrade = true;
        assert_eq!(choose(&m, &p).unwrap().unwrap().version, v("1.0.0"));
        p.version_lock = VersionLock::Exact(v("5.0.0"));
        assert_eq!(
            choose(&m, &p).unwrap_err(),
            ChooseError::NotOffered(v("5.0.0"))
        );
        p.version_lock = "1.2.0".parse().unwrap();
        assert!(choose(&m, &p).unwrap().is_none());
        // Below the floor even an allowed downgrade is refused.
        p.version_lock = VersionLock::Exact(v("1.0.0"));
        p.floor = Some(v("1.1.0"));
        assert_eq!(
            choose(&m, &p).unwrap_err(),
            ChooseError::BelowFloor {
                wanted: v("1.0.0"),
                floor: v("1.1.0")
            }
        );
        p.version_lock = VersionLock::Exact(v("1.1.0"));
        assert_eq!(choose(&m, &p).unwrap().unwrap().version, v("1.1.0"));
        // A host running below its floor (an old UKI booted) takes nothing below it.
        let mut p = policy("1.0.0");
        p.floor = Some(v("1.3.0"));
        assert!(choose(&m, &p).unwrap().is_none());
    }

    /// Bounds 0 @ T, 50 @ T+200s, 100 @ T+1024s, 1024 @ T+4096s (the shape of Bottlerocket's
    /// own tests, in seconds).
    fn waved() -> Update {
        let mut u = update("2.0.0");
        let base = t("2026-01-01T00:00:00Z");
        for (bound, secs) in [(0, 0), (50, 200), (100, 1024), (1024, 4096)] {
            u.waves
                .insert(bound, base + jiff::SignedDuration::from_secs(secs));
        }
        u
    }

    fn at(secs: i64) -> jiff::Timestamp {
        t("2026-01-01T00:00:00Z") + jiff::SignedDuration::from_secs(secs)
    }

    #[test]
    fn waves_spread_hosts_within_their_wave() {
        let u = waved();
        // Seed 60 is in the wave 50..100 running from 200 s to 1024 s; its turn is at
        // 200 + (1024 - 200) * 10 / 50 = 364.8 s.
        assert!(!wave_ready(&u, 60, at(199)));
        assert!(!wave_ready(&u, 60, at(364)));
        assert!(wave_ready(&u, 60, at(365)));
        assert!(wave_ready(&u, 60, at(1024)));
        // Seed 50 is the end bound of the first wave: it is last in that wave.
        assert!(!wave_ready(&u, 50, at(199)));
        assert!(wave_ready(&u, 50, at(200)));
        // Seed 1500 is past the last bound: it waits for 4096 s.
        assert!(!wave_ready(&u, 1500, at(4095)));
        assert!(wave_ready(&u, 1500, at(4096)));
        // Seed 0 is at the first bound: the initial wave has no start time.
        assert!(wave_ready(&u, 0, at(-10)));
        // No waves: everyone.
        assert!(wave_ready(&update("2.0.0"), 2047, at(-10)));
    }

    #[test]
    fn latest_respects_waves_unless_ignored() {
        let mut m = manifest(&["1.0.0", "1.1.0"]);
        m.upsert(waved());
        let mut p = policy("1.0.0");
        p.seed = 1500;
        p.now = at(1000);
        // 2.0.0 is not ready for this host yet: the newest ready one is 1.1.0.
        assert_eq!(choose(&m, &p).unwrap().unwrap().version, v("1.1.0"));
        p.ignore_waves = true;
        assert_eq!(choose(&m, &p).unwrap().unwrap().version, v("2.0.0"));
        p.ignore_waves = false;
        p.now = at(5000);
        assert_eq!(choose(&m, &p).unwrap().unwrap().version, v("2.0.0"));
        p.seed = MAX_SEED;
        assert_eq!(choose(&m, &p).unwrap_err(), ChooseError::Seed(MAX_SEED));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Waves with increasing bounds and increasing times, as `os-build repo add` makes them.
        fn waves() -> impl Strategy<Value = Update> {
            proptest::collection::btree_map(0u32..=MAX_SEED, 1i64..100_000, 1..6).prop_map(|m| {
                let mut u = update("2.0.0");
                let mut t = 0i64;
                for (bound, step) in m {
                    t += step;
                    u.waves.insert(bound, at(t));
                }
                u
            })
        }

        proptest! {
            /// Once a host may update, it may update at every later time.
            #[test]
            fn readiness_never_goes_back(u in waves(), seed in 0u32..MAX_SEED, a in -10i64..700_000, b in 0i64..700_000) {
                if wave_ready(&u, seed, at(a)) {
                    prop_assert!(wave_ready(&u, seed, at(a + b)));
                }
            }

            /// A lower seed never has to wait longer than a higher one.
            #[test]
            fn lower_seeds_go_first(u in waves(), s1 in 0u32..MAX_SEED, s2 in 0u32..MAX_SEED, now in -10i64..700_000) {
                let (low, high) = (s1.min(s2), s1.max(s2));
                if wave_ready(&u, high, at(now)) {
                    prop_assert!(wave_ready(&u, low, at(now)));
                }
            }

            /// After the last bound's time every host may update.
            #[test]
            fn everyone_after_the_last_wave(u in waves(), seed in 0u32..MAX_SEED) {
                let last = *u.waves.values().next_back().unwrap();
                prop_assert!(wave_ready(&u, seed, last));
            }
        }
    }
}
