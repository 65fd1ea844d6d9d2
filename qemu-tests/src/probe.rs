//! The guest probe's report: `berth-probe: key=value` console lines up to
//! `berth-probe: end` (docs/boot.md, "Guest probe").

use std::fmt;

use regex::Regex;

use crate::markers;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("the console has no berth-probe lines; is berth-probe.service in the image and the fw_cfg file opt/org.berth/probe given?")]
    NoReport,
    #[error("the berth-probe report has no `berth-probe: end` line after {facts} facts")]
    NoEnd { facts: usize },
    #[error("berth-probe line is not key=value: {line}")]
    Malformed { line: String },
}

/// The facts of one probe run, in the order printed. A key may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeReport {
    facts: Vec<(String, String)>,
}

impl ProbeReport {
    /// Parses the first complete report among `lines`. Probe lines may carry a prefix
    /// (a timestamp, `berth-probe[pid]: ` from journald's console forwarding).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self, ProbeError> {
        // The marker is a fixed, valid expression.
        #[allow(clippy::expect_used)]
        let re = Regex::new(markers::PROBE_LINE).expect("PROBE_LINE is a valid regex");
        let mut report = ProbeReport::default();
        let mut seen = false;
        for line in lines {
            let Some(body) = re.captures(line).and_then(|c| c.get(1)) else {
                continue;
            };
            seen = true;
            let body = body.as_str().trim();
            if body == "end" {
                return Ok(report);
            }
            let Some((key, value)) = body.split_once('=') else {
                return Err(ProbeError::Malformed {
                    line: line.to_owned(),
                });
            };
            report
                .facts
                .push((key.trim().to_owned(), value.trim().to_owned()));
        }
        if seen {
            Err(ProbeError::NoEnd {
                facts: report.facts.len(),
            })
        } else {
            Err(ProbeError::NoReport)
        }
    }

    /// The last value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.facts
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.facts.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.facts {
            writeln!(f, "  {k}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_facts_up_to_end() -> anyhow::Result<()> {
        let lines = [
            "[    3.100] systemd[1]: Starting berth-probe.service",
            "berth-probe: root-dm-target=verity",
            "[   12.5] berth-probe[312]: root-ro=true",
            "[   12.6] berth-probe[312]: berth-probe: etc-fstype=tmpfs",
            "berth-probe: loader-entry=berth-0.1.0.efi",
            "berth-probe: mount=/ erofs",
            "berth-probe: mount=/etc tmpfs",
            "[   12.9] berth-probe[312]: berth-probe: end",
            "berth-probe: after=ignored",
        ];
        let report = ProbeReport::parse(lines)?;
        assert_eq!(report.len(), 6);
        assert_eq!(report.get("etc-fstype"), Some("tmpfs"));
        assert_eq!(report.get("root-dm-target"), Some("verity"));
        assert_eq!(report.get("root-ro"), Some("true"));
        assert_eq!(report.get("loader-entry"), Some("berth-0.1.0.efi"));
        assert_eq!(report.get("mount"), Some("/etc tmpfs"));
        assert_eq!(
            report.get_all("mount").collect::<Vec<_>>(),
            ["/ erofs", "/etc tmpfs"]
        );
        assert_eq!(report.get("after"), None);
        Ok(())
    }

    #[test]
    fn value_may_hold_equal_signs() -> anyhow::Result<()> {
        let report = ProbeReport::parse(["berth-probe: cmdline=a=1 b=2", "berth-probe: end"])?;
        assert_eq!(report.get("cmdline"), Some("a=1 b=2"));
        Ok(())
    }

    #[test]
    fn incomplete_or_absent_report_is_an_error() {
        assert_eq!(
            ProbeReport::parse(["berth-probe: slot=a"]),
            Err(ProbeError::NoEnd { facts: 1 })
        );
        assert_eq!(
            ProbeReport::parse(["nothing here"]),
            Err(ProbeError::NoReport)
        );
        assert!(matches!(
            ProbeReport::parse(["berth-probe: oops"]),
            Err(ProbeError::Malformed { .. })
        ));
    }
}
