//! The serial console: a reader thread splits QEMU's serial output into lines, stamps each
//! line with the host time its first byte arrived, appends it to the log file and wakes
//! anyone waiting for a line.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Position in the console output, from 0.
    pub index: usize,
    /// Host time from the VM's start to the arrival of the line's first byte.
    pub elapsed: Duration,
    /// The text, without the line end and without terminal escape sequences.
    pub text: String,
}

impl Line {
    /// The line as the serial log shows it: `[  12.345] text`.
    pub fn to_log(&self) -> String {
        format!("[{:>9.3}] {}", self.elapsed.as_secs_f64(), self.text)
    }
}

/// How long an unfinished line must stay unchanged before waits treat it as a prompt.
pub(crate) const PARTIAL_QUIET: Duration = Duration::from_millis(300);
/// How often waits look again without console output (so a quiet prompt is noticed).
const RECHECK: Duration = Duration::from_millis(100);

/// What the reader has seen so far.
#[derive(Debug, Default)]
pub(crate) struct ConsoleState {
    /// Complete lines.
    pub(crate) lines: Vec<Line>,
    /// Text after the last line end (a prompt such as `Shell> ` never gets one).
    pub(crate) partial: Option<Line>,
    /// When `partial` last changed: a partial line that has been quiet for a while is a
    /// prompt; one that changed a moment ago is a line still being written.
    pub(crate) partial_changed: Option<Instant>,
    /// QEMU closed the console: it exited.
    pub(crate) closed: bool,
}

pub(crate) enum WaitOutcome<T> {
    Found(T),
    TimedOut,
    Closed,
}

#[derive(Debug)]
pub(crate) struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
    start: Instant,
}

impl ConsoleState {
    /// The unfinished line, once it has been quiet for [`PARTIAL_QUIET`]: a prompt waiting
    /// for input, not the first bytes of a line whose end is still on its way.
    pub(crate) fn quiet_partial(&self) -> Option<&Line> {
        let changed = self.partial_changed?;
        (changed.elapsed() >= PARTIAL_QUIET)
            .then_some(self.partial.as_ref())
            .flatten()
    }
}

impl Console {
    pub(crate) fn new(start: Instant) -> Self {
        Console {
            state: Mutex::new(ConsoleState::default()),
            changed: Condvar::new(),
            start,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A panic in a waiter's predicate must not hide the console from the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `found` on every change of the console until it returns a value, QEMU closes
    /// the console, or `timeout` passes.
    pub(crate) fn wait_until<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&ConsoleState) -> Option<T>,
    ) -> WaitOutcome<T> {
        let until = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if let Some(value) = found(&state) {
                return WaitOutcome::Found(value);
            }
            if state.closed {
                return WaitOutcome::Closed;
            }
            let now = Instant::now();
            if now >= until {
                return WaitOutcome::TimedOut;
            }
            state = self
                .changed
                .wait_timeout(state, (until - now).min(RECHECK))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The last `n` lines (and any unfinished line) as the log shows them.
    pub(crate) fn tail(&self, n: usize) -> String {
        let state = self.lock();
        let skip = state.lines.len().saturating_sub(n);
        let mut out: Vec<String> = state.lines[skip..].iter().map(Line::to_log).collect();
        if let Some(partial) = &state.partial {
            out.push(partial.to_log());
        }
        if out.is_empty() {
            "(no serial output)".to_owned()
        } else {
            out.join("\n")
        }
    }

    /// Reads `source` until end of file. Runs on the reader thread.
    pub(crate) fn read_from(&self, mut source: impl Read, mut log: Option<File>) {
        let mut decoder = LineDecoder::default();
        let mut buf = [0u8; 8192];
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the serial console failed");
                    break;
                }
            };
            let now = Instant::now();
            let done = decoder.feed(&buf[..n], now);
            let partial = decoder.partial();
            self.publish(done, partial, false, &mut log);
        }
        let rest = decoder.finish();
        self.publish(rest.into_iter().collect(), None, true, &mut log);
    }

    fn publish(
        &self,
        done: Vec<(Instant, String)>,
        partial: Option<(Instant, String)>,
        closed: bool,
        log: &mut Option<File>,
    ) {
        let mut state = self.lock();
        for (at, text) in done {
            let line = Line {
                index: state.lines.len(),
                elapsed: at.saturating_duration_since(self.start),
                text,
            };
            tracing::debug!(target: "serial", "{}", line.to_log());
            if let Some(file) = log.as_mut() {
                if let Err(e) = writeln!(file, "{}", line.to_log()) {
                    tracing::warn!(error = %e, "writing the serial log failed; not logging any more");
                    *log = None;
                }
            }
            state.lines.push(line);
        }
        let index = state.lines.len();
        let partial = partial.map(|(at, text)| Line {
            index,
            elapsed: at.saturating_duration_since(self.start),
            text,
        });
        if partial != state.partial {
            state.partial_changed = partial.as_ref().map(|_| Instant::now());
            state.partial = partial;
        }
        state.closed |= closed;
        drop(state);
        self.changed.notify_all();
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Escape {
    #[default]
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [` ... final byte.
    Csi,
    /// After `ESC (`-like intermediates: one more byte.
    Charset,
    /// Inside `ESC ]` ... BEL or ESC \.
    Osc,
}

/// Splits console bytes into lines and drops terminal control sequences, so that patterns
/// match what a person would read. A cursor move or screen clear ends the current line
/// (the firmware redraws its countdown in place that way).
#[derive(Debug, Default)]
pub(crate) struct LineDecoder {
    escape: Escape,
    current: Vec<u8>,
    started: Option<Instant>,
}

impl LineDecoder {
    pub(crate) fn feed(&mut self, bytes: &[u8], now: Instant) -> Vec<(Instant, String)> {
        let mut done = Vec::new();
        for &b in bytes {
            match self.escape {
                Escape::Start => {
                    self.escape = match b {
                        b'[' => Escape::Csi,
                        b']' => Escape::Osc,
                        0x20..=0x2f => Escape::Charset,
                        _ => Escape::None,
                    };
                }
                Escape::Csi => {
                    if (0x40..=0x7e).contains(&b) {
                        self.escape = Escape::None;
                        if matches!(b, b'H' | b'f' | b'J') {
                            self.end_line(&mut done);
                        }
                    }
                }
                Escape::Charset => self.escape = Escape::None,
                Escape::Osc => match b {
                    0x07 => self.escape = Escape::None,
                    0x1b => self.escape = Escape::Start,
                    _ => {}
                },
                Escape::None => match b {
                    0x1b => self.escape = Escape::Start,
                    b'\n' => self.end_line(&mut done),
                    b'\t' => self.push(b, now),
                    0..=0x1f | 0x7f => {}
                    _ => self.push(b, now),
                },
            }
        }
        done
    }

    fn push(&mut self, b: u8, now: Instant) {
        self.started.get_or_insert(now);
        self.current.push(b);
    }

    fn end_line(&mut self, done: &mut Vec<(Instant, String)>) {
        if let Some(at) = self.started.take() {
            let text = String::from_utf8_lossy(&self.current).trim_end().to_owned();
            done.push((at, text));
        }
        self.current.clear();
    }

    /// The unfinished line, if any.
    pub(crate) fn partial(&self) -> Option<(Instant, String)> {
        self.started
            .map(|at| (at, String::from_utf8_lossy(&self.current).into_owned()))
    }

    /// Ends the unfinished line at end of file.
    pub(crate) fn finish(&mut self) -> Option<(Instant, String)> {
        let mut done = Vec::new();
        self.end_line(&mut done);
        done.pop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: Vec<(Instant, String)>) -> Vec<String> {
        lines.into_iter().map(|(_, t)| t).collect()
    }

    #[test]
    fn splits_lines_and_drops_carriage_returns() {
        let mut d = LineDecoder::default();
        let now = Instant::now();
        let lines = d.feed(b"BdsDxe: loading Boot0001\r\nsecond\r\nthi", now);
        assert_eq!(texts(lines), ["BdsDxe: loading Boot0001", "second"]);
        assert_eq!(d.partial().map(|(_, t)| t), Some("thi".to_owned()));
        let lines = d.feed(b"rd\n", now);
        assert_eq!(texts(lines), ["third"]);
        assert_eq!(d.partial(), None);
    }

    #[test]
    fn strips_colours_and_breaks_on_cursor_moves() {
        let mut d = LineDecoder::default();
        let now = Instant::now();
        let raw = b"\x1b[2J\x1b[01;01H\x1b[=3hPress \x1b[1m\x1b[37m\x1b[40mESC\x1b[0m in 5\
                    \x1b[05;01HPress ESC in 4\r\n\x1b[06;01H\x1b[1m\x1b[33mShell> \x1b[0m";
        let lines = d.feed(raw, now);
        assert_eq!(texts(lines), ["Press ESC in 5", "Press ESC in 4"]);
        assert_eq!(d.partial().map(|(_, t)| t), Some("Shell> ".to_owned()));
        assert_eq!(d.finish().map(|(_, t)| t), Some("Shell>".to_owned()));
    }

    #[test]
    fn systemd_status_line_keeps_its_words() {
        let mut d = LineDecoder::default();
        let raw = b"[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mmulti-user.target\x1b[0m - Multi-User System.\r\n";
        let lines = texts(d.feed(raw, Instant::now()));
        assert_eq!(
            lines,
            ["[  OK  ] Reached target multi-user.target - Multi-User System."]
        );
        let re = regex::Regex::new(crate::markers::MULTI_USER).expect("marker is valid");
        assert!(re.is_match(&lines[0]));
    }

    #[test]
    fn line_time_is_the_arrival_of_its_first_byte() {
        let mut d = LineDecoder::default();
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(3);
        assert!(d.feed(b"early-init: mou", t0).is_empty());
        let lines = d.feed(b"nting\n", t1);
        assert_eq!(lines, [(t0, "early-init: mounting".to_owned())]);
    }

    #[test]
    fn reader_logs_timestamped_lines_and_closes() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let log_path = dir.path().join("serial.log");
        let console = Console::new(Instant::now());
        let input: &[u8] = b"one\r\ntwo\nShell> ";
        console.read_from(input, Some(File::create(&log_path)?));
        let state = console.lock();
        assert!(state.closed);
        let texts: Vec<&str> = state.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "Shell>"]);
        drop(state);
        let log = std::fs::read_to_string(&log_path)?;
        let re = regex::Regex::new(r"^\[ *\d+\.\d{3}\] one\n\[ *\d+\.\d{3}\] two\n")?;
        assert!(re.is_match(&log), "log: {log:?}");
        Ok(())
    }
}
