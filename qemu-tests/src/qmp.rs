//! A minimal QMP client: one connection per command, which is all the harness needs
//! (power-down, quit) and keeps no state across QEMU's single-client socket.

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("connect to the QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talk to QEMU over QMP")]
    Io(#[from] io::Error),
    #[error("QEMU sent a line that is not JSON: {line}")]
    Json {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("QEMU rejected the command: {class}: {desc}")]
    Rejected { class: String, desc: String },
    #[error("QEMU closed the QMP connection")]
    Closed,
}

pub(crate) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and negotiates capabilities, retrying while QEMU has not made the socket yet.
    pub(crate) fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let until = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                        && Instant::now() < until =>
                {
                    thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(QmpError::Connect {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let writer = stream.try_clone()?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        // The greeting: {"QMP": {...}}.
        loop {
            let msg = qmp.read()?;
            if msg.get("QMP").is_some() {
                break;
            }
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|source| QmpError::Json {
            line: line.trim_end().to_owned(),
            source,
        })
    }

    /// Runs one command and returns its `return` value. Events in between are skipped.
    pub(crate) fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut text = request.to_string();
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        loop {
            let msg = self.read()?;
            if let Some(value) = msg.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = msg.get("error") {
                let field = |name: &str| {
                    error
                        .get(name)
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                        .to_owned()
                };
                return Err(QmpError::Rejected {
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            if let Some(event) = msg.get("event") {
                tracing::debug!(%event, "QMP event");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QMP server that answers like QEMU does, with an event in between.
    #[test]
    fn negotiates_and_skips_events() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path)?;
        let server = thread::spawn(move || -> anyhow::Result<Vec<String>> {
            let (stream, _) = listener.accept()?;
            let mut out = stream.try_clone()?;
            let mut lines = BufReader::new(stream).lines();
            let mut seen = Vec::new();
            writeln!(out, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#)?;
            seen.push(lines.next().transpose()?.unwrap_or_default());
            writeln!(out, r#"{{"return": {{}}}}"#)?;
            seen.push(lines.next().transpose()?.unwrap_or_default());
            writeln!(out, r#"{{"event": "POWERDOWN", "timestamp": {{}}}}"#)?;
            writeln!(out, r#"{{"return": {{}}}}"#)?;
            seen.push(lines.next().transpose()?.unwrap_or_default());
            writeln!(
                out,
                r#"{{"error": {{"class": "CommandNotFound", "desc": "no such thing"}}}}"#
            )?;
            Ok(seen)
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5))?;
        assert_eq!(qmp.execute("system_powerdown", None)?, json!({}));
        let err = qmp
            .execute("nope", Some(json!({"a": 1})))
            .expect_err("the fake rejects it");
        assert_eq!(
            err.to_string(),
            "QEMU rejected the command: CommandNotFound: no such thing"
        );
        let seen = server.join().expect("fake server thread")?;
        let seen: Vec<Value> = seen
            .iter()
            .map(|l| serde_json::from_str(l))
            .collect::<Result<_, _>>()?;
        assert_eq!(
            seen,
            [
                json!({"execute": "qmp_capabilities"}),
                json!({"execute": "system_powerdown"}),
                json!({"execute": "nope", "arguments": {"a": 1}}),
            ]
        );
        Ok(())
    }
}
