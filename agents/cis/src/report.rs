//! Running a benchmark and rendering Bottlerocket's report shape (text or JSON).

use crate::checks::{Benchmark, CheckResult, Mode, CHECKS};
use crate::host::HostRoot;
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

/// Errors from rendering a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("failed to serialize the report as JSON")]
    Json(#[from] serde_json::Error),
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// Parses the `format` query parameter of `/report/cis`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" => Some(Format::Text),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Status of one check in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckStatus {
    Pass,
    Fail,
    Skip,
}

impl std::fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckStatus::Pass => "PASS",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "SKIP",
        })
    }
}

/// Overall status: FAIL when an automated check at or below the level failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
        })
    }
}

/// What the report says about the benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchmarkInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub url: &'static str,
}

impl BenchmarkInfo {
    /// Name, version and reference of a benchmark.
    pub fn of(benchmark: Benchmark) -> BenchmarkInfo {
        match benchmark {
            Benchmark::Bottlerocket => BenchmarkInfo {
                name: "CIS Bottlerocket Benchmark",
                version: "v1.0.0",
                url: "https://www.cisecurity.org/benchmark/bottlerocket",
            },
            Benchmark::Kubernetes => BenchmarkInfo {
                name: "CIS Kubernetes Benchmark (Worker Node)",
                version: "v1.8.0",
                url: "https://www.cisecurity.org/benchmark/kubernetes",
            },
        }
    }
}

/// A check as listed in a report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckMetadata {
    pub id: &'static str,
    pub title: &'static str,
    pub level: u8,
    pub mode: Mode,
}

/// The outcome of a check; `error` is the reason of a FAIL or SKIP (Bottlerocket's field name).
#[derive(Debug, Clone, Serialize)]
pub struct CheckOutcome {
    pub status: CheckStatus,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// One line of a report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub metadata: CheckMetadata,
    pub result: CheckOutcome,
}

/// A benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub metadata: BenchmarkInfo,
    pub level: u8,
    pub status: Status,
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Start time, RFC 3339 in UTC.
    pub timestamp: String,
    pub results: Vec<CheckReport>,
}

impl Report {
    /// Runs the checks of `benchmark` whose level is at most `level` against `host`.
    pub fn run(benchmark: Benchmark, level: u8, host: &HostRoot, start: SystemTime) -> Report {
        let results: Vec<CheckReport> = CHECKS
            .iter()
            .filter(|c| c.benchmark == benchmark && c.level <= level)
            .map(|c| {
                let (status, error) = match (c.run)(host) {
                    CheckResult::Pass => (CheckStatus::Pass, String::new()),
                    CheckResult::Fail(r) => (CheckStatus::Fail, r),
                    CheckResult::Skip(r) => (CheckStatus::Skip, r),
                };
                CheckReport {
                    metadata: CheckMetadata {
                        id: c.id,
                        title: c.title,
                        level: c.level,
                        mode: c.mode,
                    },
                    result: CheckOutcome { status, error },
                }
            })
            .collect();
        let count = |s: CheckStatus| results.iter().filter(|r| r.result.status == s).count();
        let automated_failure = results
            .iter()
            .any(|r| r.metadata.mode == Mode::Automated && r.result.status == CheckStatus::Fail);
        Report {
            metadata: BenchmarkInfo::of(benchmark),
            level,
            status: if automated_failure {
                Status::Fail
            } else {
                Status::Pass
            },
            total: results.len(),
            passed: count(CheckStatus::Pass),
            failed: count(CheckStatus::Fail),
            skipped: count(CheckStatus::Skip),
            timestamp: rfc3339(start),
            results,
        }
    }

    /// The report as text: header, counts, one line per check, then the reasons.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut line = |label: &str, value: &dyn std::fmt::Display| {
            let _ = writeln!(out, "{:17}{value}", format!("{label}:"));
        };
        line("Benchmark name", &self.metadata.name);
        line("Version", &self.metadata.version);
        line("Reference", &self.metadata.url);
        line("Benchmark level", &self.level);
        line("Start time", &self.timestamp);
        line("Status", &self.status);
        line("Total checks", &self.total);
        line("Passed", &self.passed);
        line("Failed", &self.failed);
        line("Skipped", &self.skipped);
        out.push('\n');
        for r in &self.results {
            let _ = writeln!(
                out,
                "[{}] {:9} {} (Level {} - {})",
                r.result.status, r.metadata.id, r.metadata.title, r.metadata.level, r.metadata.mode
            );
        }
        let reasons: Vec<&CheckReport> = self
            .results
            .iter()
            .filter(|r| !r.result.error.is_empty())
            .collect();
        if !reasons.is_empty() {
            out.push_str("\nReasons:\n");
            for r in reasons {
                let _ = writeln!(
                    out,
                    "  [{}] {}: {}",
                    r.result.status, r.metadata.id, r.result.error
                );
            }
        }
        out
    }

    /// The report as one line of JSON.
    pub fn json(&self) -> Result<String, ReportError> {
        Ok(serde_json::to_string(self)? + "\n")
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> Result<String, ReportError> {
        match format {
            Format::Text => Ok(self.text()),
            Format::Json => self.json(),
        }
    }
}

/// `2026-11-22T04:25:32Z` for a time after the epoch.
fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_321_532);
        assert_eq!(rfc3339(t), "2026-11-22T04:25:32Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
