//! Go duration strings (`30s`, `1m30s`, `12h`), the format kubelet and the ECS agent parse.
//! Checked here so a bad value fails at render time with its key, not when the daemon starts.

/// Checks that `s` is a Go `time.ParseDuration` string: one or more `<number><unit>` with
/// unit `ns`, `us`, `µs`, `ms`, `s`, `m` or `h`; `0` alone is also valid.
pub fn check(s: &str) -> Result<(), String> {
    let err = || format!("'{s}' is not a duration such as 30s, 1m30s or 12h");
    if s == "0" {
        return Ok(());
    }
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        rest = &rest[num_end..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            // Longest first matters: "ms" before "m", "ns"/"us" before "s".
            .find(|u| rest.starts_with(u))
            .ok_or_else(err)?;
        rest = &rest[unit.len()..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn accepts_go_durations() {
        for s in [
            "0", "30s", "1m30s", "12h", "1.5h", "300ms", "2h45m", "10us", "5µs",
        ] {
            assert_eq!(check(s), Ok(()), "{s}");
        }
    }

    #[test]
    fn rejects_other_text() {
        for s in ["", "30", "s", "1d", "1m 30s", "-5s", "1..5s", "abc"] {
            assert!(check(s).is_err(), "{s}");
        }
    }
}
