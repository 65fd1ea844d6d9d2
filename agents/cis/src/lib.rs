//! CIS checks for Berth hosts: the CIS Bottlerocket Benchmark (Level 1 and 2, plus Berth's own
//! `B.` checks) and the worker-node section of the CIS Kubernetes Benchmark.
//!
//! Every check is a row of [`checks::CHECKS`]: an id, a title, a level, a mode and a function
//! over a [`host::HostRoot`]. [`report::Report::run`] runs the checks of one benchmark up to a
//! level and renders Bottlerocket's text or JSON report. The `cis-report` binary and the API
//! server's `/report/cis` both call it.

pub mod checks;
pub mod cli;
pub mod host;
pub mod paths;
pub mod platform;
pub mod report;

pub use checks::{Benchmark, Check, CheckResult, Mode, CHECKS};
pub use host::HostRoot;
pub use report::{Format, Report};
