//! Setting keys: dotted paths such as `kubernetes.node-labels."example.com/role"`.
//!
//! A segment is either bare (ASCII letters, digits, `-`, `_`, `/`, `:`) or quoted with double
//! quotes, in which case it may hold any character; `\"` and `\\` escape a quote and a
//! backslash. The optional leading `settings` segment (Bottlerocket's full key names) is
//! removed by [`Key::parse_setting`].

use std::fmt;

/// Errors from parsing a setting key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("empty setting key")]
    Empty,
    #[error("empty segment at byte {pos} of setting key '{key}'")]
    EmptySegment { key: String, pos: usize },
    #[error("invalid character '{ch}' at byte {pos} of setting key '{key}'; quote segments that hold it")]
    InvalidChar { key: String, ch: char, pos: usize },
    #[error("unterminated quote in setting key '{key}'")]
    UnterminatedQuote { key: String },
}

/// A parsed setting key: a non-empty list of segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    segments: Vec<String>,
}

/// Whether `c` may appear in an unquoted key segment.
pub(crate) fn is_bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | ':')
}

impl Key {
    /// Builds a key from segments. Returns `None` when `segments` is empty.
    pub fn from_segments<I, S>(segments: I) -> Option<Key>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        if segments.is_empty() {
            None
        } else {
            Some(Key { segments })
        }
    }

    /// Parses a dotted key exactly as written.
    pub fn parse(input: &str) -> Result<Key, KeyError> {
        if input.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut segments = Vec::new();
        let mut chars = input.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).unwrap_or(input.len());
            let mut seg = String::new();
            match chars.peek() {
                Some((_, '"')) => {
                    chars.next();
                    let mut closed = false;
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '"' => {
                                closed = true;
                                break;
                            }
                            '\\' => match chars.next() {
                                Some((_, e)) => seg.push(e),
                                None => break,
                            },
                            c => seg.push(c),
                        }
                    }
                    if !closed {
                        return Err(KeyError::UnterminatedQuote {
                            key: input.to_string(),
                        });
                    }
                    if seg.is_empty() {
                        return Err(KeyError::EmptySegment {
                            key: input.to_string(),
                            pos: start,
                        });
                    }
                    // After a quoted segment comes a dot or the end.
                    match chars.next() {
                        None => {
                            segments.push(seg);
                            break;
                        }
                        Some((_, '.')) => {
                            segments.push(seg);
                            if chars.peek().is_none() {
                                return Err(KeyError::EmptySegment {
                                    key: input.to_string(),
                                    pos: input.len(),
                                });
                            }
                        }
                        Some((pos, ch)) => {
                            return Err(KeyError::InvalidChar {
                                key: input.to_string(),
                                ch,
                                pos,
                            })
                        }
                    }
                }
                _ => {
                    let mut ended = true;
                    for (pos, c) in chars.by_ref() {
                        if c == '.' {
                            ended = false;
                            break;
                        }
                        if !is_bare_char(c) {
                            return Err(KeyError::InvalidChar {
                                key: input.to_string(),
                                ch: c,
                                pos,
                            });
                        }
                        seg.push(c);
                    }
                    if seg.is_empty() {
                        return Err(KeyError::EmptySegment {
                            key: input.to_string(),
                            pos: start,
                        });
                    }
                    segments.push(seg);
                    if ended {
                        break;
                    }
                    if chars.peek().is_none() {
                        return Err(KeyError::EmptySegment {
                            key: input.to_string(),
                            pos: input.len(),
                        });
                    }
                }
            }
        }
        Ok(Key { segments })
    }

    /// Parses a setting key, dropping an optional leading `settings` segment.
    pub fn parse_setting(input: &str) -> Result<Key, KeyError> {
        let key = Key::parse(input)?;
        if key.segments.len() > 1 && key.segments[0] == "settings" {
            Ok(Key {
                segments: key.segments[1..].to_vec(),
            })
        } else {
            Ok(key)
        }
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Whether `self` equals `other` or is one of its ancestors.
    pub fn is_prefix_of(&self, other: &Key) -> bool {
        other.segments.len() >= self.segments.len()
            && other.segments[..self.segments.len()] == self.segments[..]
    }

    /// A new key with `seg` appended.
    pub fn child(&self, seg: impl Into<String>) -> Key {
        let mut segments = self.segments.clone();
        segments.push(seg.into());
        Key { segments }
    }

    /// The key with Bottlerocket's `settings.` prefix, as the API returns changed keys.
    pub fn with_settings_prefix(&self) -> String {
        format!("settings.{self}")
    }

    /// Wraps `value` in nested objects along this key: `a.b` + `1` -> `{"a": {"b": 1}}`.
    pub fn nest(&self, value: serde_json::Value) -> serde_json::Value {
        self.segments.iter().rev().fold(value, |acc, seg| {
            let mut map = serde_json::Map::new();
            map.insert(seg.clone(), acc);
            serde_json::Value::Object(map)
        })
    }

    /// The value at this key inside `root`, if any.
    pub fn lookup<'a>(&self, root: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
        self.segments
            .iter()
            .try_fold(root, |node, seg| node.as_object()?.get(seg))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            if !seg.is_empty() && seg.chars().all(is_bare_char) {
                f.write_str(seg)?;
            } else {
                f.write_str("\"")?;
                for c in seg.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")?;
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s)
    }
}

/// Splits a comma-separated list of keys, ignoring commas inside quoted segments.
pub fn split_key_list(input: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quote = false;
    let mut escaped = false;
    for c in input.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => {
                escaped = true;
                cur.push(c);
            }
            '"' => {
                in_quote = !in_quote;
                cur.push(c);
            }
            ',' if !in_quote => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits a `key=value` argument at the first `=` outside a quoted key segment.
pub fn split_key_value(arg: &str) -> Option<(&str, &str)> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in arg.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '=' if !in_quote => return Some((&arg[..i], &arg[i + 1..])),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_plain_and_quoted_segments() {
        let k = Key::parse(r#"kubernetes.node-labels."example.com/role""#).unwrap();
        assert_eq!(
            k.segments(),
            ["kubernetes", "node-labels", "example.com/role"]
        );
        assert_eq!(
            k.to_string(),
            r#"kubernetes.node-labels."example.com/role""#
        );
        let k = Key::parse_setting("settings.motd").unwrap();
        assert_eq!(k.segments(), ["motd"]);
        assert_eq!(
            Key::parse_setting("settings").unwrap().segments(),
            ["settings"]
        );
    }

    #[test]
    fn rejects_malformed_keys() {
        assert_eq!(Key::parse(""), Err(KeyError::Empty));
        assert!(matches!(
            Key::parse("a..b"),
            Err(KeyError::EmptySegment { .. })
        ));
        assert!(matches!(
            Key::parse("a."),
            Err(KeyError::EmptySegment { .. })
        ));
        assert!(matches!(
            Key::parse("a b"),
            Err(KeyError::InvalidChar { .. })
        ));
        assert!(matches!(
            Key::parse("\"a"),
            Err(KeyError::UnterminatedQuote { .. })
        ));
        assert!(matches!(
            Key::parse("\"a\"b"),
            Err(KeyError::InvalidChar { .. })
        ));
    }

    #[test]
    fn splits_key_value_outside_quotes() {
        assert_eq!(
            split_key_value(r#"kubernetes.node-labels."a=b"=v=w"#),
            Some((r#"kubernetes.node-labels."a=b""#, "v=w"))
        );
        assert_eq!(split_key_value("motd"), None);
        assert_eq!(
            split_key_list(r#"motd,kubernetes.node-labels."a,b",x"#),
            vec!["motd", r#"kubernetes.node-labels."a,b""#, "x"]
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{1,12}",
            "[a-zA-Z0-9./_:=,\"\\\\ -]{1,16}",
            any::<String>().prop_filter("non-empty", |s| !s.is_empty()),
        ]
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(segs in prop::collection::vec(segment(), 1..6)) {
            let key = Key::from_segments(segs.clone()).unwrap();
            let text = key.to_string();
            let parsed = Key::parse(&text).unwrap();
            prop_assert_eq!(parsed.segments(), &segs[..]);
            // And as the key of a key=value argument, the first unquoted '=' is ours.
            let arg = format!("{text}=v=1");
            prop_assert_eq!(split_key_value(&arg), Some((text.as_str(), "v=1")));
            // A list of keys survives the comma split.
            let list = format!("{text},motd");
            prop_assert_eq!(split_key_list(&list), vec![text.clone(), "motd".to_string()]);
        }

        #[test]
        fn parse_never_panics(s in any::<String>()) {
            if let Ok(k) = Key::parse(&s) {
                prop_assert!(!k.segments().is_empty());
                prop_assert!(k.segments().iter().all(|s| !s.is_empty()));
            }
        }
    }
}
