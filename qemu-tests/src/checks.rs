//! Named checks for scenario tests: each prints what it checks and whether it held, and
//! the test fails at the end with every failed check, not only the first.

use std::fmt;

#[derive(Debug, Default)]
pub struct Checks {
    failed: Vec<String>,
    passed: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{} of {} checks failed:\n{}", .failed.len(), .total, .failed.join("\n"))]
pub struct ChecksFailed {
    pub failed: Vec<String>,
    pub total: usize,
}

impl Checks {
    pub fn new() -> Self {
        Checks::default()
    }

    /// Records and prints one check.
    pub fn check(&mut self, what: impl fmt::Display, ok: bool, detail: impl fmt::Display) {
        if ok {
            println!("  ok      {what} ({detail})");
            self.passed += 1;
        } else {
            println!("  FAILED  {what} ({detail})");
            self.failed.push(format!("{what} ({detail})"));
        }
    }

    /// Checks that `found` equals `expected`.
    pub fn equal(&mut self, what: impl fmt::Display, found: Option<&str>, expected: &str) {
        let ok = found == Some(expected);
        let detail = match found {
            Some(found) => format!("expected {expected}, found {found}"),
            None => format!("expected {expected}, found nothing"),
        };
        self.check(what, ok, detail);
    }

    /// Ok if every check passed.
    pub fn finish(self) -> Result<(), ChecksFailed> {
        if self.failed.is_empty() {
            Ok(())
        } else {
            Err(ChecksFailed {
                total: self.passed + self.failed.len(),
                failed: self.failed,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_failure() {
        let mut c = Checks::new();
        c.equal("root-ro", Some("true"), "true");
        c.equal("slot", Some("b"), "a");
        c.equal("etc-fstype", None, "tmpfs");
        let err = c.finish().expect_err("two failed");
        assert_eq!(
            err.to_string(),
            "2 of 3 checks failed:\nslot (expected a, found b)\netc-fstype (expected tmpfs, found nothing)"
        );
    }
}
