//! The two A/B slots.

use std::fmt;
use std::str::FromStr;

/// An A/B slot: a root partition, its verity partition and the UKI that names both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(rename_all = "lowercase")
)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The slot's name on the command line, in partition names and in state files.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A slot name other than `a` or `b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSlot(pub String);

impl fmt::Display for BadSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {:?} is not a or b", self.0)
    }
}

impl std::error::Error for BadSlot {}

impl FromStr for Slot {
    type Err = BadSlot;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "a" => Ok(Slot::A),
            "b" => Ok(Slot::B),
            other => Err(BadSlot(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for slot in Slot::ALL {
            assert_eq!(slot.to_string().parse::<Slot>(), Ok(slot));
            assert_eq!(slot.other().other(), slot);
            assert_ne!(slot.other(), slot);
        }
        assert_eq!("A".parse::<Slot>(), Err(BadSlot("A".into())));
        assert_eq!(
            "c".parse::<Slot>().unwrap_err().to_string(),
            "slot \"c\" is not a or b"
        );
    }

    /// The updater's state files and os-build's manifest store slots as `a` / `b`, also as
    /// map keys.
    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_same_names() {
        let map = std::collections::BTreeMap::from([(Slot::A, 1), (Slot::B, 2)]);
        let json = serde_json::to_string(&map).expect("serialize");
        assert_eq!(json, r#"{"a":1,"b":2}"#);
        let back: std::collections::BTreeMap<Slot, i32> =
            serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, map);
        assert!(serde_json::from_str::<Slot>(r#""c""#).is_err());
    }
}
