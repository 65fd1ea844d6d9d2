//! EC2 instance metadata service, version 2 (session tokens).
//!
//! A session starts with `PUT /latest/api/token` carrying
//! `X-aws-ec2-metadata-token-ttl-seconds`; every `GET` then carries the token in
//! `X-aws-ec2-metadata-token`. A 401 means the token expired: a new one is fetched once. A 404
//! means the item does not exist (no user data, say). Connection failures and 5xx answers are
//! retried with exponential backoff until a total deadline: at boot the network may not be up
//! yet when the first request goes out.
//!
//! The client is a small synchronous HTTP/1.1 client over `std::net::TcpStream` (one request
//! per connection, `Connection: close`): the metadata service is plain HTTP on a link-local
//! address, and boot-config runs once at boot, so neither TLS nor an async runtime is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The metadata service's address on EC2.
pub const DEFAULT_ENDPOINT: &str = "169.254.169.254:80";
/// Token lifetime asked for; boot-config needs it for seconds only.
const TOKEN_TTL_SECONDS: u32 = 21600;
const TOKEN_TTL_HEADER: &str = "X-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "X-aws-ec2-metadata-token";
/// Largest answer accepted (EC2 user data is at most 16 KiB; identity documents are small).
const MAX_RESPONSE: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("invalid metadata service address {0} (expected host:port)")]
    Endpoint(String),
    #[error("no answer from the metadata service at {endpoint} for {path} within {seconds:.0} s (last error: {last})")]
    Deadline {
        endpoint: String,
        path: String,
        seconds: f64,
        last: String,
    },
    #[error("metadata service refused {method} {path}: HTTP {status}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
    },
    #[error("metadata service answered {path} with text that is not UTF-8")]
    NotUtf8 { path: String },
}

/// How hard to try: per-request timeout, backoff and the total deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Connect and read timeout of one attempt.
    pub request_timeout: Duration,
    /// Pause after the first failed attempt; doubled after each further failure.
    pub first_backoff: Duration,
    /// Longest pause between two attempts.
    pub max_backoff: Duration,
    /// No new attempt starts after this much time since the first.
    pub total: Duration,
}

impl Default for Retry {
    /// At boot DHCP may take a while; two minutes covers a slow start without hanging forever.
    fn default() -> Self {
        Retry {
            request_timeout: Duration::from_secs(2),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            total: Duration::from_secs(120),
        }
    }
}

impl Retry {
    /// The pause before attempt `n + 1` after `n` failures (`n >= 1`).
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.first_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// An IMDSv2 session.
#[derive(Debug)]
pub struct Imds {
    endpoint: String,
    addr: SocketAddr,
    retry: Retry,
    token: Option<String>,
}

impl Imds {
    /// A client for `endpoint` (`host:port`, as `169.254.169.254:80`).
    pub fn new(endpoint: &str, retry: Retry) -> Result<Imds, ImdsError> {
        let addr = endpoint
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ImdsError::Endpoint(endpoint.to_string()))?;
        Ok(Imds {
            endpoint: endpoint.to_string(),
            addr,
            retry,
            token: None,
        })
    }

    /// The instance's user data; `None` when it has none (404).
    pub fn user_data(&mut self) -> Result<Option<Vec<u8>>, ImdsError> {
        self.get("/latest/user-data")
    }

    /// A meta-data item as text (`instance-id`, `placement/region`, ...); `None` on 404.
    pub fn meta_data(&mut self, item: &str) -> Result<Option<String>, ImdsError> {
        let path = format!("/latest/meta-data/{item}");
        self.get_text(&path)
    }

    /// The instance identity document (JSON); `None` on 404.
    pub fn identity_document(&mut self) -> Result<Option<serde_json::Value>, ImdsError> {
        let path = "/latest/dynamic/instance-identity/document";
        match self.get_text(path)? {
            None => Ok(None),
            Some(text) => Ok(serde_json::from_str(&text).ok()),
        }
    }

    fn get_text(&mut self, path: &str) -> Result<Option<String>, ImdsError> {
        match self.get(path)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|_| ImdsError::NotUtf8 {
                    path: path.to_string(),
                }),
        }
    }

    /// GET `path` with the session token; a 401 renews the token once.
    fn get(&mut self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        for renewed in [false, true] {
            let token = self.token()?;
            let headers = [(TOKEN_HEADER, token.as_str())];
            let r = self.request("GET", path, &headers)?;
            match r.status {
                200 => return Ok(Some(r.body)),
                404 => return Ok(None),
                401 if !renewed => {
                    tracing::info!("metadata session token refused; fetching a new one");
                    self.token = None;
                }
                status => {
                    return Err(ImdsError::Status {
                        method: "GET",
                        path: path.to_string(),
                        status,
                    })
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    fn token(&mut self) -> Result<String, ImdsError> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let path = "/latest/api/token";
        let ttl = TOKEN_TTL_SECONDS.to_string();
        let r = self.request("PUT", path, &[(TOKEN_TTL_HEADER, ttl.as_str())])?;
        if r.status != 200 {
            return Err(ImdsError::Status {
                method: "PUT",
                path: path.to_string(),
                status: r.status,
            });
        }
        let token = String::from_utf8(r.body)
            .map_err(|_| ImdsError::NotUtf8 {
                path: path.to_string(),
            })?
            .trim()
            .to_string();
        self.token = Some(token.clone());
        Ok(token)
    }

    /// One request, retried on connection errors and 5xx answers until the deadline.
    fn request(
        &self,
        method: &'static str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, ImdsError> {
        let start = Instant::now();
        let mut failures = 0u32;
        loop {
            let last = match self.attempt(method, path, headers) {
                Ok(r) if r.status < 500 => return Ok(r),
                Ok(r) => format!("HTTP {}", r.status),
                Err(e) => e.to_string(),
            };
            failures += 1;
            let pause = self.retry.backoff(failures);
            if start.elapsed() + pause >= self.retry.total {
                return Err(ImdsError::Deadline {
                    endpoint: self.endpoint.clone(),
                    path: path.to_string(),
                    seconds: self.retry.total.as_secs_f64(),
                    last,
                });
            }
            tracing::debug!(%method, %path, failures, error = %last, ?pause, "metadata request failed; retrying");
            std::thread::sleep(pause);
        }
    }

    fn attempt(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<Response> {
        let timeout = self.retry.request_timeout;
        let mut stream = TcpStream::connect_timeout(&self.addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n",
            self.addr.ip()
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut raw)?;
        parse_response(&raw)
    }
}

/// Parses an HTTP/1.x answer read to the end of the connection.
fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("incomplete HTTP header"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("HTTP header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(bad("no HTTP status line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1 answer"));
    }
    let status: u16 = code.parse().map_err(|_| bad("bad HTTP status code"))?;
    let mut body = raw[end + 4..].to_vec();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len: usize = value.parse().map_err(|_| bad("bad Content-Length"))?;
            if body.len() < len {
                return Err(bad("answer shorter than its Content-Length"));
            }
            body.truncate(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.eq_ignore_ascii_case("chunked")
        {
            body = dechunk(&body).ok_or_else(|| bad("bad chunked encoding"))?;
        }
    }
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = Retry {
            request_timeout: Duration::from_secs(1),
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            total: Duration::from_secs(10),
        };
        let got: Vec<u64> = (1..=6).map(|n| r.backoff(n).as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(r.backoff(100), Duration::from_secs(1));
    }

    #[test]
    fn parses_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(r.status, 404);
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn bad_endpoint_is_named() {
        let e = Imds::new("not an address", Retry::default()).unwrap_err();
        assert!(e.to_string().contains("not an address"), "{e}");
    }
}
