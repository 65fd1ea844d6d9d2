//! UKI file names on the ESP, with boot counting (Boot Loader Specification).
//!
//! A new UKI is installed as `berth-<version>+3.efi`; before each try systemd-boot renames it
//! (`+2-1`, `+1-2`, `+0-3`) and says which file it booted in `LoaderBootCountPath`; the health
//! gate renames a good one to `berth-<version>.efi`. At `+0` an entry is bad and sorts after
//! every other, so the other slot's UKI boots.

use std::fmt;

/// The ESP folder systemd-boot reads Type #2 entries (UKIs) from.
pub const DIR: &str = "EFI/Linux";
/// Boot tries a newly installed UKI gets.
pub const BOOT_TRIES: u32 = 3;

const PREFIX: &str = "berth-";
const SUFFIX: &str = ".efi";

/// A boot counter: `+left` or `+left-done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCounter {
    /// Tries left.
    pub left: u32,
    /// Tries done; `None` before the first (`+3`).
    pub done: Option<u32>,
}

impl BootCounter {
    /// The counter of a freshly installed UKI.
    pub const FRESH: BootCounter = BootCounter {
        left: BOOT_TRIES,
        done: None,
    };
    /// The counter of an entry marked bad.
    pub const BAD: BootCounter = BootCounter {
        left: 0,
        done: None,
    };

    fn parse(s: &str) -> Option<BootCounter> {
        let digits = |s: &str| -> Option<u32> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match s.split_once('-') {
            Some((left, done)) => Some(BootCounter {
                left: digits(left)?,
                done: Some(digits(done)?),
            }),
            None => Some(BootCounter {
                left: digits(s)?,
                done: None,
            }),
        }
    }
}

/// The name of a Berth UKI: `berth-<version>[+left[-done]].efi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiName {
    /// The image version (semver on update images; may carry `+build` metadata).
    pub version: String,
    pub counter: Option<BootCounter>,
}

impl UkiName {
    /// The name a UKI is installed under: `berth-<version>+3.efi`.
    pub fn fresh(version: impl fmt::Display) -> UkiName {
        UkiName {
            version: version.to_string(),
            counter: Some(BootCounter::FRESH),
        }
    }

    /// The name of a UKI known good: `berth-<version>.efi`.
    pub fn good(version: impl fmt::Display) -> UkiName {
        UkiName {
            version: version.to_string(),
            counter: None,
        }
    }

    /// The name of a UKI marked bad: `berth-<version>+0.efi`.
    pub fn bad(version: impl fmt::Display) -> UkiName {
        UkiName {
            version: version.to_string(),
            counter: Some(BootCounter::BAD),
        }
    }

    /// Parses a file name; `None` for anything that is not a Berth UKI.
    pub fn parse(file_name: &str) -> Option<UkiName> {
        let stem = file_name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
        // Semver build metadata also starts with '+': a boot counter is the last '+' part
        // made only of digits and one '-'.
        let (version, counter) = match stem.rsplit_once('+') {
            Some((v, c)) => match BootCounter::parse(c) {
                Some(counter) => (v, Some(counter)),
                None => (stem, None),
            },
            None => (stem, None),
        };
        if version.is_empty() {
            return None;
        }
        Some(UkiName {
            version: version.to_owned(),
            counter,
        })
    }

    /// The same UKI with its counter removed (what the health gate renames a good one to).
    pub fn blessed(&self) -> UkiName {
        UkiName::good(&self.version)
    }

    /// Path relative to the ESP root: `EFI/Linux/<name>`.
    pub fn esp_path(&self) -> String {
        format!("{DIR}/{self}")
    }
}

impl fmt::Display for UkiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.version)?;
        match self.counter {
            Some(BootCounter {
                left,
                done: Some(done),
            }) => write!(f, "+{left}-{done}")?,
            Some(BootCounter { left, done: None }) => write!(f, "+{left}")?,
            None => {}
        }
        f.write_str(SUFFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_of_each_stage() {
        assert_eq!(UkiName::fresh("1.2.3").to_string(), "berth-1.2.3+3.efi");
        assert_eq!(UkiName::good("1.2.3").to_string(), "berth-1.2.3.efi");
        assert_eq!(UkiName::bad("1.2.3").to_string(), "berth-1.2.3+0.efi");
        assert_eq!(
            UkiName::fresh("1.2.3").esp_path(),
            "EFI/Linux/berth-1.2.3+3.efi"
        );
        let tried = UkiName::parse("berth-2.0.0+1-2.efi").expect("counted");
        assert_eq!(tried.version, "2.0.0");
        assert_eq!(
            tried.counter,
            Some(BootCounter {
                left: 1,
                done: Some(2)
            })
        );
        assert_eq!(tried.blessed().to_string(), "berth-2.0.0.efi");
    }

    #[test]
    fn build_metadata_is_not_a_counter() {
        let n = UkiName::parse("berth-1.2.3+build5.efi").expect("a name");
        assert_eq!(n.version, "1.2.3+build5");
        assert_eq!(n.counter, None);
        let n = UkiName::parse("berth-1.2.3+build5+2.efi").expect("a name");
        assert_eq!(n.version, "1.2.3+build5");
        assert_eq!(n.counter.map(|c| c.left), Some(2));
    }

    #[test]
    fn other_files_are_not_ukis() {
        for name in [
            "systemd-bootx64.efi",
            "berth-.efi",
            "berth-1.0.0.conf",
            "x-1.efi",
        ] {
            assert_eq!(UkiName::parse(name), None, "{name}");
        }
    }

    proptest! {
        /// format -> parse gives version and counter back.
        #[test]
        fn format_then_parse_round_trips(
            version in "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(-[a-z][a-z0-9]{0,5})?(\\+[a-z][a-z0-9]{0,5})?",
            counter in proptest::option::of((0u32..10, proptest::option::of(0u32..10))),
        ) {
            let name = UkiName {
                version,
                counter: counter.map(|(left, done)| BootCounter { left, done }),
            };
            prop_assert_eq!(UkiName::parse(&name.to_string()), Some(name));
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = UkiName::parse(&s);
        }
    }
}
