//! The `berth.*` parameters of a slot's kernel command line (the UKI's `.cmdline` section):
//! written by `os-build`, read by `early-init` (all of them), the updater and `berth-probe`
//! (the slot).

use std::fmt;

use crate::slot::Slot;

/// The parameter names.
pub mod key {
    /// Every Berth parameter starts with this; variants may not set any.
    pub const PREFIX: &str = "berth.";
    pub const SLOT: &str = "berth.slot";
    pub const VERITY_ROOT: &str = "berth.verity.root";
    pub const VERITY_SALT: &str = "berth.verity.salt";
    pub const VERITY_DATA_BLOCKS: &str = "berth.verity.data-blocks";
    pub const VERITY_HASH_START: &str = "berth.verity.hash-start";
}

/// Data and hash block size of the verity device, in bytes.
pub const VERITY_BLOCK_SIZE: u64 = 4096;
/// First hash-tree block on the verity partition when the command line does not say (block 0
/// holds the `veritysetup` superblock).
pub const DEFAULT_HASH_START: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    Missing(&'static str),
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    Duplicate(&'static str),
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::Missing(key) => write!(f, "missing {key}= on the kernel command line"),
            CmdlineError::Invalid { key, value, reason } => {
                write!(
                    f,
                    "bad {key}={value:?} on the kernel command line: {reason}"
                )
            }
            CmdlineError::Duplicate(key) => {
                write!(f, "{key} given twice on the kernel command line")
            }
        }
    }
}

impl std::error::Error for CmdlineError {}

/// dm-verity parameters of the slot's root image (sha256, format 1, 4096-byte blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    /// sha256 root hash, 64 lowercase hex digits.
    pub root_hash: String,
    /// Salt in lowercase hex; `None` for no salt (`-`).
    pub salt: Option<String>,
    /// Number of 4096-byte data blocks.
    pub data_blocks: u64,
    /// First hash block on the verity partition, in 4096-byte blocks.
    pub hash_start: u64,
}

/// The Berth parameters of one slot's command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub slot: Slot,
    pub verity: Verity,
}

impl fmt::Display for Cmdline {
    /// The parameters as os-build puts them first on the command line, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.verity;
        write!(
            f,
            "{}={} {}={} {}={} {}={} {}={}",
            key::SLOT,
            self.slot,
            key::VERITY_ROOT,
            v.root_hash,
            key::VERITY_SALT,
            v.salt.as_deref().unwrap_or("-"),
            key::VERITY_DATA_BLOCKS,
            v.data_blocks,
            key::VERITY_HASH_START,
            v.hash_start,
        )
    }
}

/// Is `word` a Berth parameter (which only os-build may set)?
pub fn is_reserved(word: &str) -> bool {
    word.starts_with(key::PREFIX)
}

/// Splits a command line into words the way the kernel does: whitespace separates, double
/// quotes group (and are removed).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn number(key: &'static str, value: &str) -> Result<u64, CmdlineError> {
    value.parse().map_err(|_| CmdlineError::Invalid {
        key,
        value: value.to_string(),
        reason: "not a decimal number",
    })
}

/// The value of each Berth parameter on a command line, each at most once.
#[derive(Default)]
struct Values {
    slot: Option<String>,
    root: Option<String>,
    salt: Option<String>,
    data_blocks: Option<String>,
    hash_start: Option<String>,
}

impl Values {
    fn collect(line: &str) -> Result<Values, CmdlineError> {
        let mut v = Values::default();
        for w in words(line) {
            let Some((name, value)) = w.split_once('=') else {
                continue;
            };
            let (slot, name) = match name {
                key::SLOT => (&mut v.slot, key::SLOT),
                key::VERITY_ROOT => (&mut v.root, key::VERITY_ROOT),
                key::VERITY_SALT => (&mut v.salt, key::VERITY_SALT),
                key::VERITY_DATA_BLOCKS => (&mut v.data_blocks, key::VERITY_DATA_BLOCKS),
                key::VERITY_HASH_START => (&mut v.hash_start, key::VERITY_HASH_START),
                _ => continue,
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(CmdlineError::Duplicate(name));
            }
        }
        Ok(v)
    }

    fn slot(&self) -> Result<Slot, CmdlineError> {
        let value = self
            .slot
            .as_deref()
            .ok_or(CmdlineError::Missing(key::SLOT))?;
        value.parse().map_err(|_| CmdlineError::Invalid {
            key: key::SLOT,
            value: value.to_string(),
            reason: "must be a or b",
        })
    }
}

/// The slot of a command line (`berth.slot=`), for readers that need only that.
pub fn slot(line: &str) -> Result<Slot, CmdlineError> {
    Values::collect(line)?.slot()
}

impl Cmdline {
    /// Parses the contents of `/proc/cmdline`. Parameters other than `berth.*` are ignored.
    pub fn parse(line: &str) -> Result<Cmdline, CmdlineError> {
        let values = Values::collect(line)?;
        let slot = values.slot()?;
        let root = values
            .root
            .as_deref()
            .ok_or(CmdlineError::Missing(key::VERITY_ROOT))?;
        if root.len() != 64 || !is_hex(root) {
            return Err(CmdlineError::Invalid {
                key: key::VERITY_ROOT,
                value: root.to_string(),
                reason: "must be 64 hex digits (sha256)",
            });
        }
        let salt = match values.salt.as_deref().unwrap_or("-") {
            "-" | "" => None,
            s if is_hex(s) && s.len() % 2 == 0 && s.len() <= 512 => Some(s.to_ascii_lowercase()),
            s => {
                return Err(CmdlineError::Invalid {
                    key: key::VERITY_SALT,
                    value: s.to_string(),
                    reason: "must be an even number of hex digits, or -",
                })
            }
        };
        let data_blocks = number(
            key::VERITY_DATA_BLOCKS,
            values
                .data_blocks
                .as_deref()
                .ok_or(CmdlineError::Missing(key::VERITY_DATA_BLOCKS))?,
        )?;
        if data_blocks == 0 {
            return Err(CmdlineError::Invalid {
                key: key::VERITY_DATA_BLOCKS,
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        let hash_start = match values.hash_start.as_deref() {
            Some(v) => number(key::VERITY_HASH_START, v)?,
            None => DEFAULT_HASH_START,
        };
        Ok(Cmdline {
            slot,
            verity: Verity {
                root_hash: root.to_ascii_lowercase(),
                salt,
                data_blocks,
                hash_start,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use key::*;

    const ROOT_HASH: &str = "4c6f1a0b3c9d2e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

    fn line(extra: &str) -> String {
        format!(
            "console=ttyS0 berth.slot=b berth.verity.root={ROOT_HASH} berth.verity.salt=00ff \
             berth.verity.data-blocks=1234 berth.verity.hash-start=1 panic=10 {extra}"
        )
    }

    #[test]
    fn parses_a_full_command_line() {
        let c = Cmdline::parse(&line("quiet")).expect("valid");
        assert_eq!(c.slot, Slot::B);
        assert_eq!(c.verity.root_hash, ROOT_HASH);
        assert_eq!(c.verity.salt.as_deref(), Some("00ff"));
        assert_eq!(c.verity.data_blocks, 1234);
        assert_eq!(c.verity.hash_start, 1);
        assert_eq!(c.slot.to_string(), "b");
        assert_eq!(slot(&line("")), Ok(Slot::B));
    }

    #[test]
    fn formats_every_parameter_in_order() {
        let c = Cmdline::parse(&line("")).expect("valid");
        assert_eq!(
            c.to_string(),
            format!(
                "berth.slot=b berth.verity.root={ROOT_HASH} berth.verity.salt=00ff \
                 berth.verity.data-blocks=1234 berth.verity.hash-start=1"
            )
        );
        let unsalted = Cmdline {
            verity: Verity {
                salt: None,
                ..c.verity.clone()
            },
            ..c
        };
        assert!(unsalted.to_string().contains("berth.verity.salt=- "));
    }

    #[test]
    fn salt_dash_and_default_hash_start() {
        let c = Cmdline::parse(&format!(
            "berth.slot=a berth.verity.root={ROOT_HASH} berth.verity.salt=- berth.verity.data-blocks=8\n"
        ))
        .expect("valid");
        assert_eq!(c.verity.salt, None);
        assert_eq!(c.verity.hash_start, 1);
    }

    #[test]
    fn quoted_words_are_grouped() {
        let c = Cmdline::parse(&format!(
            "foo=\"a b c\" berth.slot=\"a\" berth.verity.root={ROOT_HASH} berth.verity.data-blocks=8"
        ))
        .expect("valid");
        assert_eq!(c.slot, Slot::A);
        assert_eq!(words("x=\"a b\" y"), vec!["x=a b", "y"]);
    }

    #[test]
    fn missing_slot_is_reported() {
        let err = Cmdline::parse(&format!(
            "berth.verity.root={ROOT_HASH} berth.verity.data-blocks=8"
        ))
        .expect_err("no slot");
        assert_eq!(err, CmdlineError::Missing(SLOT));
        assert_eq!(
            err.to_string(),
            "missing berth.slot= on the kernel command line"
        );
        assert_eq!(slot("root=/dev/sda"), Err(CmdlineError::Missing(SLOT)));
        // A longer key that starts with the slot key is another parameter.
        assert_eq!(slot("berth.slots=b"), Err(CmdlineError::Missing(SLOT)));
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = [
            (line("").replace("slot=b", "slot=c"), SLOT),
            (line("").replace(ROOT_HASH, "abc"), VERITY_ROOT),
            (line("").replace(ROOT_HASH, &"g".repeat(64)), VERITY_ROOT),
            (line("").replace("salt=00ff", "salt=0ff"), VERITY_SALT),
            (
                line("").replace("data-blocks=1234", "data-blocks=12x"),
                VERITY_DATA_BLOCKS,
            ),
            (
                line("").replace("data-blocks=1234", "data-blocks=0"),
                VERITY_DATA_BLOCKS,
            ),
            (
                line("").replace("hash-start=1", "hash-start=-1"),
                VERITY_HASH_START,
            ),
        ];
        for (l, key) in bad {
            match Cmdline::parse(&l) {
                Err(CmdlineError::Invalid { key: k, .. }) => assert_eq!(k, key, "{l}"),
                other => panic!("{l}: expected invalid {key}, got {other:?}"),
            }
        }
        assert!(matches!(
            slot("berth.slot=c"),
            Err(CmdlineError::Invalid { key: SLOT, .. })
        ));
    }

    #[test]
    fn duplicates_are_rejected() {
        assert_eq!(
            Cmdline::parse(&line("berth.slot=a")),
            Err(CmdlineError::Duplicate(SLOT))
        );
        assert_eq!(
            slot("berth.slot=a berth.slot=a"),
            Err(CmdlineError::Duplicate(SLOT))
        );
    }

    #[test]
    fn missing_root_hash_and_blocks() {
        assert_eq!(
            Cmdline::parse("berth.slot=a berth.verity.data-blocks=1"),
            Err(CmdlineError::Missing(VERITY_ROOT))
        );
        assert_eq!(
            Cmdline::parse(&format!("berth.slot=a berth.verity.root={ROOT_HASH}")),
            Err(CmdlineError::Missing(VERITY_DATA_BLOCKS))
        );
    }

    #[test]
    fn reserved_words() {
        assert!(is_reserved("berth.slot=b"));
        assert!(is_reserved("berth.anything"));
        assert!(!is_reserved("panic=10"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn verity() -> impl Strategy<Value = Verity> {
            (
                "[0-9a-f]{64}",
                proptest::option::of("([0-9a-f]{2}){1,32}"),
                1u64..u64::MAX / 4096,
                0u64..1_000_000,
            )
                .prop_map(|(root_hash, salt, data_blocks, hash_start)| Verity {
                    root_hash,
                    salt,
                    data_blocks,
                    hash_start,
                })
        }

        proptest! {
            #[test]
            fn never_panics(line in "\\PC*") {
                let _ = Cmdline::parse(&line);
                let _ = slot(&line);
            }

            /// format -> parse gives every field back, among other words in any order.
            #[test]
            fn format_then_parse_round_trips(
                b in any::<bool>(),
                verity in verity(),
                noise in proptest::collection::vec("[a-z_.]{1,12}(=[a-z0-9,]{0,8})?", 0..6),
                at in 0usize..6,
            ) {
                let written = Cmdline { slot: if b { Slot::B } else { Slot::A }, verity };
                let mut words = noise.clone();
                words.insert(at.min(noise.len()), written.to_string());
                let line = words.join(" ");
                prop_assert_eq!(Cmdline::parse(&line), Ok(written.clone()));
                prop_assert_eq!(slot(&line), Ok(written.slot));
            }

            #[test]
            fn parameters_parse_in_any_order_with_defaults(
                b in any::<bool>(),
                root in "[0-9a-f]{64}",
                salt in proptest::option::of("([0-9a-f]{2}){1,32}"),
                blocks in 1u64..u64::MAX / 4096,
                start in proptest::option::of(0u64..1_000_000),
                noise in proptest::collection::vec("[a-z_.]{1,12}(=[a-z0-9,]{0,8})?", 0..6),
            ) {
                let mut words = noise.clone();
                words.push(format!("berth.slot={}", if b { "b" } else { "a" }));
                words.push(format!("berth.verity.root={root}"));
                words.push(format!("berth.verity.data-blocks={blocks}"));
                if let Some(s) = &salt {
                    words.push(format!("berth.verity.salt={s}"));
                }
                if let Some(s) = start {
                    words.push(format!("berth.verity.hash-start={s}"));
                }
                words.rotate_left(noise.len() / 2);
                let parsed = Cmdline::parse(&words.join(" ")).expect("valid");
                prop_assert_eq!(parsed.slot, if b { Slot::B } else { Slot::A });
                prop_assert_eq!(parsed.verity.root_hash, root);
                prop_assert_eq!(parsed.verity.salt, salt);
                prop_assert_eq!(parsed.verity.data_blocks, blocks);
                prop_assert_eq!(parsed.verity.hash_start, start.unwrap_or(DEFAULT_HASH_START));
            }
        }
    }
}
