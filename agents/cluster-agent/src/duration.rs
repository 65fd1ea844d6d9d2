//! Go duration strings (`30s`, `1m30s`, `12h`), the format kubelet and the ECS agent parse.
//! Checked here so a bad value fails at render time with its key, not when the daemon starts.

/// Checks that `s` is a Go `time.ParseDuration` string: one or more `<number><unit>` with
/// unit `ns`, `us`, `µs`, `ms`, `s`, `m` or `h`; `0` alone is also valid.
pub fn check(s: &str) -> Result<(), String> {
    parse(s).map(drop)
}

/// The length of the Go duration `s`, in nanoseconds (for comparing two settings).
pub fn parse(s: &str) -> Result<u128, String> {
    let err = || format!("'{s}' is not a duration such as 30s, 1m30s or 12h");
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s;
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let num = &rest[..num_end];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let value: f64 = num.parse().map_err(|_| err())?;
        rest = &rest[num_end..];
        let (unit, nanos) = [
            ("ns", 1f64),
            ("us", 1e3),
            ("µs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ]
        .into_iter()
        // Longest first matters: "ms" before "m", "ns"/"us" before "s".
        .find(|(u, _)| rest.starts_with(u))
        .ok_or_else(err)?;
        total += value * nanos;
        rest = &rest[unit.len()..];
    }
    // Whole nanoseconds, as Go keeps them; a value this large is no real grace period.
    Ok(total.round() as u128)
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
    fn parses_to_nanoseconds() {
        assert_eq!(super::parse("2m30s"), Ok(150_000_000_000));
        assert_eq!(super::parse("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(super::parse("300ms"), Ok(300_000_000));
        assert_eq!(super::parse("0"), Ok(0));
    }

    #[test]
    fn rejects_other_text() {
        for s in ["", "30", "s", "1d", "1m 30s", "-5s", "1..5s", "abc"] {
            assert!(check(s).is_err(), "{s}");
        }
    }
}
