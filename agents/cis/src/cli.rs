//! Command-line arguments of `cis-report`.

use crate::checks::Benchmark;
use crate::report::Format;
use clap::Parser;
use std::path::PathBuf;

/// Runs the CIS checks on this host and prints the report (exit 0 whatever the result).
#[derive(Debug, Parser)]
#[command(name = "cis-report", version)]
pub struct Args {
    /// Benchmark to run.
    #[arg(short = 't', long = "type", value_enum, default_value_t = Benchmark::Bottlerocket)]
    pub benchmark: Benchmark,
    /// Level: 1 runs Level 1 checks, 2 runs both levels.
    #[arg(short = 'l', long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub level: u8,
    /// Output format.
    #[arg(short = 'f', long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Root of the host tree to check.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_report_arguments() {
        let a = Args::try_parse_from(["cis-report"]).unwrap();
        assert_eq!(a.benchmark, Benchmark::Bottlerocket);
        assert_eq!(a.level, 1);
        assert_eq!(a.format, Format::Text);
        assert_eq!(a.root, PathBuf::from("/"));

        let a = Args::try_parse_from([
            "cis-report",
            "--type",
            "kubernetes",
            "-l",
            "2",
            "-f",
            "json",
            "--root",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(a.benchmark, Benchmark::Kubernetes);
        assert_eq!(a.level, 2);
        assert_eq!(a.format, Format::Json);
        assert_eq!(a.root, PathBuf::from("/tmp/x"));

        assert!(Args::try_parse_from(["cis-report", "-l", "3"]).is_err());
        assert!(Args::try_parse_from(["cis-report", "--type", "fips"]).is_err());
        assert!(Args::try_parse_from(["cis-report", "-f", "yaml"]).is_err());
    }
}
