//! The `berth.*` parameters of the kernel command line (docs/boot.md).

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error("missing {0}= on the kernel command line")]
    Missing(&'static str),
    #[error("bad {key}={value:?} on the kernel command line: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{0} given twice on the kernel command line")]
    Duplicate(&'static str),
}

/// Boot slot of this UKI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

/// dm-verity parameters of the slot's root image.
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    pub slot: Slot,
    pub verity: Verity,
}

const SLOT: &str = "berth.slot";
const ROOT: &str = "berth.verity.root";
const SALT: &str = "berth.verity.salt";
const DATA_BLOCKS: &str = "berth.verity.data-blocks";
const HASH_START: &str = "berth.verity.hash-start";

/// Splits a command line into words the way the kernel does: whitespace separates, double
/// quotes group (and are removed).
fn words(line: &str) -> Vec<String> {
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

fn set<'a>(
    slot: &mut Option<&'a str>,
    key: &'static str,
    value: &'a str,
) -> Result<(), CmdlineError> {
    if slot.replace(value).is_some() {
        return Err(CmdlineError::Duplicate(key));
    }
    Ok(())
}

fn number(key: &'static str, value: &str) -> Result<u64, CmdlineError> {
    value.parse().map_err(|_| CmdlineError::Invalid {
        key,
        value: value.to_string(),
        reason: "not a decimal number",
    })
}

/// Parses the contents of `/proc/cmdline`. Parameters other than `berth.*` are ignored.
pub fn parse(line: &str) -> Result<Cmdline, CmdlineError> {
    let words = words(line);
    let (mut slot, mut root, mut salt, mut blocks, mut start) = (None, None, None, None, None);
    for w in &words {
        let Some((key, value)) = w.split_once('=') else {
            continue;
        };
        match key {
            SLOT => set(&mut slot, SLOT, value)?,
            ROOT => set(&mut root, ROOT, value)?,
            SALT => set(&mut salt, SALT, value)?,
            DATA_BLOCKS => set(&mut blocks, DATA_BLOCKS, value)?,
            HASH_START => set(&mut start, HASH_START, value)?,
            _ => {}
        }
    }

    let slot = match slot.ok_or(CmdlineError::Missing(SLOT))? {
        "a" => Slot::A,
        "b" => Slot::B,
        other => {
            return Err(CmdlineError::Invalid {
                key: SLOT,
                value: other.to_string(),
                reason: "must be a or b",
            })
        }
    };
    let root = root.ok_or(CmdlineError::Missing(ROOT))?;
    if root.len() != 64 || !is_hex(root) {
        return Err(CmdlineError::Invalid {
            key: ROOT,
            value: root.to_string(),
            reason: "must be 64 hex digits (sha256)",
        });
    }
    let salt = match salt.unwrap_or("-") {
        "-" | "" => None,
        s if is_hex(s) && s.len() % 2 == 0 && s.len() <= 512 => Some(s.to_ascii_lowercase()),
        s => {
            return Err(CmdlineError::Invalid {
                key: SALT,
                value: s.to_string(),
                reason: "must be an even number of hex digits, or -",
            })
        }
    };
    let data_blocks = number(
        DATA_BLOCKS,
        blocks.ok_or(CmdlineError::Missing(DATA_BLOCKS))?,
    )?;
    if data_blocks == 0 {
        return Err(CmdlineError::Invalid {
            key: DATA_BLOCKS,
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    let hash_start = match start {
        Some(v) => number(HASH_START, v)?,
        None => 1,
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

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_HASH: &str = "4c6f1a0b3c9d2e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f";

    fn line(extra: &str) -> String {
        format!(
            "console=ttyS0 berth.slot=b berth.verity.root={ROOT_HASH} berth.verity.salt=00ff \
             berth.verity.data-blocks=1234 berth.verity.hash-start=1 panic=10 {extra}"
        )
    }

    #[test]
    fn parses_a_full_command_line() {
        let c = parse(&line("quiet")).expect("valid");
        assert_eq!(c.slot, Slot::B);
        assert_eq!(c.verity.root_hash, ROOT_HASH);
        assert_eq!(c.verity.salt.as_deref(), Some("00ff"));
        assert_eq!(c.verity.data_blocks, 1234);
        assert_eq!(c.verity.hash_start, 1);
        assert_eq!(c.slot.to_string(), "b");
    }

    #[test]
    fn salt_dash_and_default_hash_start() {
        let c = parse(&format!(
            "berth.slot=a berth.verity.root={ROOT_HASH} berth.verity.salt=- berth.verity.data-blocks=8\n"
        ))
        .expect("valid");
        assert_eq!(c.verity.salt, None);
        assert_eq!(c.verity.hash_start, 1);
    }

    #[test]
    fn quoted_words_are_grouped() {
        let c = parse(&format!(
            "foo=\"a b c\" berth.slot=\"a\" berth.verity.root={ROOT_HASH} berth.verity.data-blocks=8"
        ))
        .expect("valid");
        assert_eq!(c.slot, Slot::A);
        assert_eq!(words("x=\"a b\" y"), vec!["x=a b", "y"]);
    }

    #[test]
    fn missing_slot_is_reported() {
        let err = parse(&format!(
            "berth.verity.root={ROOT_HASH} berth.verity.data-blocks=8"
        ))
        .expect_err("no slot");
        assert_eq!(err, CmdlineError::Missing(SLOT));
        assert_eq!(
            err.to_string(),
            "missing berth.slot= on the kernel command line"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = [
            (line("").replace("slot=b", "slot=c"), SLOT),
            (line("").replace(ROOT_HASH, "abc"), ROOT),
            (line("").replace(ROOT_HASH, &"g".repeat(64)), ROOT),
            (line("").replace("salt=00ff", "salt=0ff"), SALT),
            (
                line("").replace("data-blocks=1234", "data-blocks=12x"),
                DATA_BLOCKS,
            ),
            (
                line("").replace("data-blocks=1234", "data-blocks=0"),
                DATA_BLOCKS,
            ),
            (
                line("").replace("hash-start=1", "hash-start=-1"),
                HASH_START,
            ),
        ];
        for (l, key) in bad {
            match parse(&l) {
                Err(CmdlineError::Invalid { key: k, .. }) => assert_eq!(k, key, "{l}"),
                other => panic!("{l}: expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn duplicates_are_rejected() {
        assert_eq!(
            parse(&line("berth.slot=a")),
            Err(CmdlineError::Duplicate(SLOT))
        );
    }

    #[test]
    fn missing_root_hash_and_blocks() {
        assert_eq!(
            parse("berth.slot=a berth.verity.data-blocks=1"),
            Err(CmdlineError::Missing(ROOT))
        );
        assert_eq!(
            parse(&format!("berth.slot=a berth.verity.root={ROOT_HASH}")),
            Err(CmdlineError::Missing(DATA_BLOCKS))
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(line in "\\PC*") {
                let _ = parse(&line);
            }

            #[test]
            fn valid_parameters_parse_back_among_other_words(
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
                let parsed = parse(&words.join(" ")).expect("valid");
                prop_assert_eq!(parsed.slot, if b { Slot::B } else { Slot::A });
                prop_assert_eq!(parsed.verity.root_hash, root);
                prop_assert_eq!(parsed.verity.salt, salt);
                prop_assert_eq!(parsed.verity.data_blocks, blocks);
                prop_assert_eq!(parsed.verity.hash_start, start.unwrap_or(1));
            }
        }
    }
}
