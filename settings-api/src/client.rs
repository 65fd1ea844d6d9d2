//! The API client: HTTP/1.1 over the Unix socket, and the `apiclient` commands.

use crate::cli::{ClientArgs, ClientCommand, ReportArgs, ReportCommand, UpdateCommand};
use crate::key::{split_key_value, Key};
use crate::server::percent_encode;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use serde_json::{Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Errors from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "failed to connect to the API socket {path} (is apiserver running? use --socket-path)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP exchange with {target} failed")]
    Http {
        target: String,
        source: hyper::Error,
    },
    #[error("failed to build the request for {uri}")]
    Request {
        uri: String,
        source: hyper::http::Error,
    },
    /// The server answered with an error status.
    #[error("{message} ({method} {uri}: {status})")]
    Status {
        method: String,
        uri: String,
        status: StatusCode,
        message: String,
        key: Option<String>,
    },
    #[error(
        "'{arg}' is not key=value; quote keys with dots: 'kubernetes.node-labels.\"a.b/c\"=v'"
    )]
    NotKeyValue { arg: String },
    #[error("invalid setting key '{arg}'")]
    Key {
        arg: String,
        source: crate::key::KeyError,
    },
    #[error("--json value is not a JSON object")]
    Json { source: Option<serde_json::Error> },
    #[error("failed to read {input}")]
    Input {
        input: String,
        source: std::io::Error,
    },
    #[error("{input} is neither JSON nor TOML: {reason}")]
    Parse { input: String, reason: String },
    #[error("{input} has no top-level 'settings' table (expected [settings] as in user data)")]
    NoSettings { input: String },
    #[error(
        "cannot fetch '{url}': only http:// URLs are supported; download it and pass the file"
    )]
    Url { url: String },
    #[error("fetching {url} returned {status}")]
    Fetch { url: String, status: StatusCode },
    #[error("failed to write output")]
    Output(#[source] std::io::Error),
    /// One step of `apiclient update` failed; the steps before it took effect.
    #[error("update step '{step}' failed")]
    UpdateStep {
        step: &'static str,
        #[source]
        source: Box<ClientError>,
    },
}

/// A response: status and body.
#[derive(Debug)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends one request over the Unix socket.
pub async fn request(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<ApiResponse, ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    exchange(
        stream,
        "localhost",
        method,
        uri,
        body,
        socket.display().to_string(),
    )
    .await
}

async fn exchange<S>(
    stream: S,
    host: &str,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
    target: String,
) -> Result<ApiResponse, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |source| ClientError::Http {
        target: target.clone(),
        source,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http_err)?;
    tokio::spawn(async move {
        // The connection ends when the response is read; its error is the request's error.
        let _ = conn.await;
    });
    let has_body = body.is_some();
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, host);
    if has_body {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|source| ClientError::Request {
            uri: uri.to_string(),
            source,
        })?;
    let resp = sender.send_request(req).await.map_err(http_err)?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(http_err)?
        .to_bytes();
    Ok(ApiResponse { status, body })
}

/// Sends a request and turns an error status into [`ClientError::Status`].
pub async fn call(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, ClientError> {
    let resp = request(socket, method, uri, body).await?;
    if resp.status.is_success() {
        return Ok(resp.body);
    }
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).into_owned());
    let key = parsed
        .as_ref()
        .and_then(|v| v.get("key"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Err(ClientError::Status {
        method: method.to_string(),
        uri: uri.to_string(),
        status: resp.status,
        message,
        key,
    })
}

/// Fetches an `http://` URL (no TLS: user data comes from link-local or local sources).
pub async fn fetch_http(url: &str) -> Result<Bytes, ClientError> {
    let bad = || ClientError::Url {
        url: url.to_string(),
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|source| ClientError::Input {
            input: url.to_string(),
            source,
        })?;
    let resp = exchange(stream, authority, "GET", path, None, url.to_string()).await?;
    if !resp.status.is_success() {
        return Err(ClientError::Fetch {
            url: url.to_string(),
            status: resp.status,
        });
    }
    Ok(resp.body)
}

/// A fresh transaction name, so concurrent clients never share one.
pub fn random_tx(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// The full model key of an `apiclient get` argument: `os`, `services` and
/// `configuration-files` name those parts of the model; anything else is a setting, with or
/// without its `settings.` prefix.
pub fn model_key(arg: &str) -> Result<Key, ClientError> {
    let key = Key::parse(arg).map_err(|source| ClientError::Key {
        arg: arg.to_string(),
        source,
    })?;
    let first = key.segments()[0].as_str();
    if matches!(
        first,
        "settings" | "os" | "services" | "configuration-files"
    ) {
        Ok(key)
    } else {
        let mut segments = vec!["settings".to_string()];
        segments.extend(key.segments().iter().cloned());
        Ok(Key::from_segments(segments).unwrap_or(key))
    }
}

/// Builds the keypair body of `apiclient set k=v ...`.
pub fn keypair_body(args: &[String]) -> Result<Value, ClientError> {
    let mut map = Map::new();
    for arg in args {
        let (k, v) =
            split_key_value(arg).ok_or_else(|| ClientError::NotKeyValue { arg: arg.clone() })?;
        let key = Key::parse_setting(k).map_err(|source| ClientError::Key {
            arg: k.to_string(),
            source,
        })?;
        map.insert(key.to_string(), Value::String(v.to_string()));
    }
    Ok(Value::Object(map))
}

/// Parses one `apply` input (JSON or TOML) and returns its `settings` table.
pub fn parse_apply_input(input: &str, text: &str) -> Result<Value, ClientError> {
    let doc: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ClientError::Parse {
            input: input.to_string(),
            reason: e.to_string(),
        })?
    } else {
        toml::from_str(text).map_err(|e| ClientError::Parse {
            input: input.to_string(),
            reason: e.to_string(),
        })?
    };
    match doc {
        Value::Object(mut top) => top.remove("settings").ok_or(ClientError::NoSettings {
            input: input.to_string(),
        }),
        _ => Err(ClientError::NoSettings {
            input: input.to_string(),
        }),
    }
}

async fn read_input(input: &str) -> Result<String, ClientError> {
    let io_err = |source| ClientError::Input {
        input: input.to_string(),
        source,
    };
    let bytes = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(io_err)?;
        Bytes::from(buf)
    } else if input.contains("://") {
        fetch_http(input).await?
    } else {
        Bytes::from(std::fs::read(input).map_err(io_err)?)
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| ClientError::Parse {
        input: input.to_string(),
        reason: "not UTF-8".to_string(),
    })
}

fn print(out: &mut impl Write, body: &[u8]) -> Result<(), ClientError> {
    // Pretty-print JSON; pass anything else through.
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let text = serde_json::to_string_pretty(&v).unwrap_or_default();
            writeln!(out, "{text}").map_err(ClientError::Output)
        }
        Err(_) if body.is_empty() => Ok(()),
        Err(_) => {
            out.write_all(body).map_err(ClientError::Output)?;
            if !body.ends_with(b"\n") {
                writeln!(out).map_err(ClientError::Output)?;
            }
            Ok(())
        }
    }
}

/// Stages `patch` with `method`/`path` in a fresh transaction, then commits and applies it.
async fn stage_and_commit(
    socket: &Path,
    path: &str,
    patch: &Value,
    tx_prefix: &str,
) -> Result<(), ClientError> {
    let tx = random_tx(tx_prefix);
    let body = serde_json::to_vec(patch).unwrap_or_default();
    call(socket, "PATCH", &format!("{path}?tx={tx}"), Some(body)).await?;
    call(
        socket,
        "POST",
        &format!("/tx/commit_and_apply?tx={tx}"),
        None,
    )
    .await?;
    Ok(())
}

/// `/report/cis?type=...&level=...&format=...`, as Bottlerocket's apiclient asks for it.
fn report_uri(benchmark: &str, args: &ReportArgs) -> String {
    let mut q = vec![format!("type={benchmark}")];
    if let Some(l) = args.level {
        q.push(format!("level={l}"));
    }
    if let Some(f) = &args.format {
        q.push(format!("format={}", percent_encode(f)));
    }
    format!("/report/cis?{}", q.join("&"))
}

/// The requests of an `apiclient update` command, in order, each with the step name its
/// error is reported under. Each request waits for its updater command to finish (a prepare
/// may take many minutes under emulation: the client sets no timeout). The status is printed
/// before a reboot is requested, while the server still answers.
pub fn update_steps(cmd: &UpdateCommand) -> Vec<(&'static str, &'static str, &'static str)> {
    const CHECK: (&str, &str, &str) = ("check", "POST", "/actions/refresh-updates");
    const STATUS: (&str, &str, &str) = ("status", "GET", "/updates/status");
    match *cmd {
        UpdateCommand::Check => vec![CHECK, STATUS],
        UpdateCommand::Apply { check, reboot } => {
            let mut steps = Vec::new();
            if check {
                steps.push(CHECK);
            }
            steps.push(("prepare", "POST", "/actions/prepare-update"));
            steps.push(("activate", "POST", "/actions/activate-update"));
            steps.push(STATUS);
            if reboot {
                steps.push(("reboot", "POST", "/actions/reboot"));
            }
            steps
        }
        UpdateCommand::Cancel => vec![("cancel", "POST", "/actions/deactivate-update"), STATUS],
        UpdateCommand::ResetClock => vec![
            ("reset-clock", "POST", "/actions/reset-update-clock"),
            STATUS,
        ],
        UpdateCommand::Rollback { reboot } => {
            let mut steps = vec![
                ("rollback", "POST", "/actions/rollback-to-inactive"),
                STATUS,
            ];
            if reboot {
                steps.push(("reboot", "POST", "/actions/reboot"));
            }
            steps
        }
    }
}

/// Runs one `apiclient` command, writing results to `out`.
pub async fn run(args: ClientArgs, out: &mut impl Write) -> Result<(), ClientError> {
    let socket = args.socket_path.as_path();
    match args.command {
        ClientCommand::Get { prefixes } => {
            let mut merged = Value::Object(Map::new());
            if prefixes.is_empty() {
                let settings: Value =
                    serde_json::from_slice(&call(socket, "GET", "/settings", None).await?)
                        .unwrap_or_default();
                merged = serde_json::json!({ "settings": settings });
            }
            for prefix in &prefixes {
                let key = model_key(prefix)?;
                let uri = format!("/?prefix={}", percent_encode(&key.to_string()));
                let part: Value = serde_json::from_slice(&call(socket, "GET", &uri, None).await?)
                    .unwrap_or_default();
                crate::datastore::merge(&mut merged, &part);
            }
            if merged.get("settings").is_none()
                && prefixes
                    .iter()
                    .all(|p| model_key(p).is_ok_and(|k| k.segments()[0] == "settings"))
            {
                merged["settings"] = Value::Object(Map::new());
            }
            print(out, &serde_json::to_vec(&merged).unwrap_or_default())
        }
        ClientCommand::Set { json, settings } => {
            if let Some(json) = json {
                let patch: Value = serde_json::from_str(&json)
                    .map_err(|e| ClientError::Json { source: Some(e) })?;
                // Accept both {"motd": ..} and {"settings": {"motd": ..}}.
                let patch = match patch {
                    Value::Object(mut m) if m.len() == 1 && m.contains_key("settings") => {
                        m.remove("settings").unwrap_or_default()
                    }
                    Value::Object(m) => Value::Object(m),
                    _ => return Err(ClientError::Json { source: None }),
                };
                stage_and_commit(socket, "/settings", &patch, "apiclient-set").await
            } else {
                let body = keypair_body(&settings)?;
                stage_and_commit(socket, "/settings/keypair", &body, "apiclient-set").await
            }
        }
        ClientCommand::Apply { from_file } => {
            let inputs = if from_file.is_empty() {
                vec!["-".to_string()]
            } else {
                from_file
            };
            let mut merged = Value::Object(Map::new());
            for input in &inputs {
                let text = read_input(input).await?;
                let settings = parse_apply_input(input, &text)?;
                crate::datastore::merge(&mut merged, &settings);
            }
            stage_and_commit(socket, "/settings", &merged, "apiclient-apply").await
        }
        ClientCommand::Raw(raw) => {
            let body = raw.data.map(String::into_bytes);
            let resp = request(socket, &raw.method.to_ascii_uppercase(), &raw.uri, body).await?;
            print(out, &resp.body)?;
            if resp.status.is_success() {
                Ok(())
            } else {
                Err(ClientError::Status {
                    method: raw.method,
                    uri: raw.uri,
                    status: resp.status,
                    message: String::from_utf8_lossy(&resp.body).into_owned(),
                    key: None,
                })
            }
        }
        ClientCommand::Update(cmd) => {
            for (step, method, uri) in update_steps(&cmd) {
                let body =
                    call(socket, method, uri, None)
                        .await
                        .map_err(|e| ClientError::UpdateStep {
                            step,
                            source: Box::new(e),
                        })?;
                if step == "status" {
                    print(out, &body)?;
                }
            }
            Ok(())
        }
        ClientCommand::Reboot => {
            call(socket, "POST", "/actions/reboot", None).await?;
            Ok(())
        }
        ClientCommand::Report(cmd) => {
            let uri = match &cmd {
                ReportCommand::Cis(a) => report_uri("bottlerocket", a),
                ReportCommand::CisK8s(a) => report_uri("kubernetes", a),
            };
            let body = call(socket, "GET", &uri, None).await?;
            print(out, &body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn report_commands_ask_for_the_benchmark_by_type() {
        let args = ReportArgs {
            level: Some(2),
            format: Some("json".to_string()),
        };
        assert_eq!(
            report_uri("kubernetes", &args),
            "/report/cis?type=kubernetes&level=2&format=json"
        );
        let args = ReportArgs {
            level: None,
            format: None,
        };
        assert_eq!(
            report_uri("bottlerocket", &args),
            "/report/cis?type=bottlerocket"
        );
    }

    #[test]
    fn update_commands_run_their_steps_in_order() {
        let names = |cmd| {
            update_steps(&cmd)
                .into_iter()
                .map(|(step, _, _)| step)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(UpdateCommand::Check), ["check", "status"]);
        assert_eq!(
            names(UpdateCommand::Apply {
                check: true,
                reboot: true
            }),
            ["check", "prepare", "activate", "status", "reboot"]
        );
        assert_eq!(
            names(UpdateCommand::Apply {
                check: false,
                reboot: false
            }),
            ["prepare", "activate", "status"]
        );
        assert_eq!(names(UpdateCommand::Cancel), ["cancel", "status"]);
        let steps = update_steps(&UpdateCommand::Cancel);
        assert_eq!(
            (steps[0].1, steps[0].2),
            ("POST", "/actions/deactivate-update")
        );
        assert_eq!(
            names(UpdateCommand::Rollback { reboot: true }),
            ["rollback", "status", "reboot"]
        );
        assert_eq!(
            update_steps(&UpdateCommand::Rollback { reboot: false })[0].2,
            "/actions/rollback-to-inactive"
        );
    }

    #[test]
    fn keypair_body_normalizes_keys() {
        let body = keypair_body(&[
            "settings.motd=a=b".to_string(),
            r#"kubernetes.node-labels."x.io/y"=z"#.to_string(),
        ])
        .unwrap();
        assert_eq!(
            body,
            json!({"motd": "a=b", r#"kubernetes.node-labels."x.io/y""#: "z"})
        );
        assert!(matches!(
            keypair_body(&["motd".to_string()]),
            Err(ClientError::NotKeyValue { .. })
        ));
    }

    #[test]
    fn get_arguments_map_to_model_keys() {
        let k = |s| model_key(s).unwrap().to_string();
        assert_eq!(k("motd"), "settings.motd");
        assert_eq!(k("settings.kubernetes"), "settings.kubernetes");
        assert_eq!(k("os"), "os");
        assert_eq!(k("services.chronyd"), "services.chronyd");
        assert!(model_key("a..b").is_err());
    }

    #[test]
    fn apply_inputs_need_a_settings_table() {
        let v = parse_apply_input("t", "[settings]\nmotd = \"x\"\n").unwrap();
        assert_eq!(v, json!({"motd": "x"}));
        let v = parse_apply_input("t", r#"{"settings": {"motd": "y"}}"#).unwrap();
        assert_eq!(v, json!({"motd": "y"}));
        assert!(matches!(
            parse_apply_input("t", "motd = \"x\"\n"),
            Err(ClientError::NoSettings { .. })
        ));
        assert!(matches!(
            parse_apply_input("t", "[settings\n"),
            Err(ClientError::Parse { .. })
        ));
    }
}
