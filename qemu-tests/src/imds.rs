//! An EC2 instance metadata service (IMDSv2) emulator on the host loopback, for tests.
//!
//! It implements what boot-config uses: `PUT /latest/api/token` (requires
//! `X-aws-ec2-metadata-token-ttl-seconds` between 1 and 21600, else 400; answers a token),
//! and `GET` of `/latest/user-data`, `/latest/meta-data/<item>` (and the listing
//! `/latest/meta-data/`) and `/latest/dynamic/instance-identity/document`, each requiring a
//! token it issued in `X-aws-ec2-metadata-token` (401 otherwise; IMDSv1 is off, as on
//! instances that require IMDSv2). Unknown paths are 404, as a missing user data is. It can
//! fail the first N requests (503) to exercise a client's retries, and it records every
//! request so a test can check the order (token PUT before the GETs).
//!
//! A QEMU guest reaches it through user networking: libslirp's `guestfwd` only forwards
//! addresses inside the virtual network, so the network is `169.254.0.0/16` and
//! `169.254.169.254:80` is forwarded, one relay process per connection
//! ([`Imds::guestfwd`]), to the emulator's port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::loopback::{lock, LoopbackServer};

pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// What the emulator serves.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// `/latest/user-data`; `None` answers 404.
    pub user_data: Option<String>,
    /// `/latest/meta-data/<item>` -> value (`instance-id`, `placement/region`, ...).
    pub meta_data: BTreeMap<String, String>,
    /// Answer this many requests with 503 before serving (retry tests).
    pub fail_first: usize,
}

impl Config {
    /// Facts of a plausible instance in `region`: instance-id, instance-type, hostnames,
    /// addresses, placement and mac.
    pub fn instance(region: &str) -> Config {
        let az = format!("{region}a");
        let meta_data = [
            ("ami-id", "ami-0123456789abcdef0".to_string()),
            ("instance-id", "i-0123456789abcdef0".to_string()),
            ("instance-type", "m5.large".to_string()),
            (
                "local-hostname",
                format!("ip-10-0-1-23.{region}.compute.internal"),
            ),
            (
                "hostname",
                format!("ip-10-0-1-23.{region}.compute.internal"),
            ),
            ("local-ipv4", "10.0.1.23".to_string()),
            ("mac", "02:00:0a:00:01:17".to_string()),
            ("placement/availability-zone", az),
            ("placement/region", region.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Config {
            user_data: None,
            meta_data,
            fail_first: 0,
        }
    }

    fn identity_document(&self) -> String {
        let get = |k: &str| self.meta_data.get(k).cloned().unwrap_or_default();
        serde_json::json!({
            "accountId": "123456789012",
            "architecture": "x86_64",
            "availabilityZone": get("placement/availability-zone"),
            "imageId": get("ami-id"),
            "instanceId": get("instance-id"),
            "instanceType": get("instance-type"),
            "privateIp": get("local-ipv4"),
            "region": get("placement/region"),
            "version": "2017-09-30",
        })
        .to_string()
    }
}

/// One request the emulator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Whether it carried a token the emulator issued.
    pub valid_token: bool,
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    config: Config,
    tokens: Vec<String>,
    log: Vec<Request>,
    served: usize,
}

/// A running emulator; stops accepting when dropped.
#[derive(Debug)]
pub struct Imds {
    server: LoopbackServer,
    state: Arc<Mutex<State>>,
}

impl Imds {
    /// Starts serving `config` on `127.0.0.1` (a free port).
    pub fn start(config: Config) -> std::io::Result<Imds> {
        let state = Arc::new(Mutex::new(State {
            config,
            ..State::default()
        }));
        let st = Arc::clone(&state);
        let server = LoopbackServer::start(move |conn| {
            let _ = serve(conn, &st);
        })?;
        Ok(Imds { server, state })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `host:port` for a client on the host.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.server.port())
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).log.clone()
    }

    /// QEMU `-netdev user` options that put the guest on `169.254.0.0/16` and forward
    /// `169.254.169.254:80` to this emulator through `relay` (the `tcp-relay` program of this
    /// crate: stdin/stdout <-> 127.0.0.1:port, one process per guest connection).
    pub fn guestfwd(&self, relay: &std::path::Path) -> Vec<String> {
        vec![
            "net=169.254.0.0/16".into(),
            "host=169.254.0.2".into(),
            "dhcpstart=169.254.0.15".into(),
            format!(
                "guestfwd=tcp:169.254.169.254:80-cmd:{} 127.0.0.1 {}",
                relay.display(),
                self.server.port()
            ),
        ]
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let (method, path) = (method.to_string(), path.to_string());
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let (status, answer) = answer(state, &method, &path, &headers);
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.len()
    )?;
    conn.write_all(answer.as_bytes())?;
    conn.flush()
}

fn answer(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
) -> (u16, String) {
    let mut st = lock(state);
    let valid_token = headers
        .get(TOKEN_HEADER)
        .is_some_and(|t| st.tokens.contains(t));
    let served = st.served;
    st.served += 1;
    let (status, body) = if served < st.config.fail_first {
        (503, String::new())
    } else if path == "/latest/api/token" {
        let ttl = headers.get(TTL_HEADER).and_then(|t| t.parse::<u32>().ok());
        match (method, ttl) {
            ("PUT", Some(1..=21600)) => {
                let token = format!("token-{}-{}", std::process::id(), st.tokens.len() + 1);
                st.tokens.push(token.clone());
                (200, token)
            }
            ("PUT", _) => (400, String::new()),
            _ => (405, String::new()),
        }
    } else if method != "GET" {
        (405, String::new())
    } else if !valid_token {
        (401, String::new())
    } else {
        match serve_get(&st.config, path) {
            Some(body) => (200, body),
            None => (404, String::new()),
        }
    };
    st.log.push(Request {
        method: method.to_string(),
        path: path.to_string(),
        valid_token,
        status,
    });
    (status, body)
}

fn serve_get(config: &Config, path: &str) -> Option<String> {
    match path {
        "/latest/user-data" => config.user_data.clone(),
        "/latest/dynamic/instance-identity/document" => Some(config.identity_document()),
        "/latest/meta-data" | "/latest/meta-data/" => {
            let mut top: Vec<String> = config
                .meta_data
                .keys()
                .map(|k| match k.split_once('/') {
                    Some((dir, _)) => format!("{dir}/"),
                    None => k.clone(),
                })
                .collect();
            top.dedup();
            Some(top.join("\n"))
        }
        _ => {
            let item = path.strip_prefix("/latest/meta-data/")?;
            config.meta_data.get(item.trim_end_matches('/')).cloned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(port: u16, req: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn tokens_are_required() {
        let mut config = Config::instance("eu-west-3");
        config.user_data = Some("[settings]\nmotd = \"hi\"\n".into());
        let imds = Imds::start(config).unwrap();
        let p = imds.port();
        let r = call(p, "GET /latest/user-data HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
        let r = call(p, "PUT /latest/api/token HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        let r = call(
            p,
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let token = r.split("\r\n\r\n").nth(1).unwrap().to_string();
        let get = |path: &str, token: &str| {
            call(
                p,
                &format!("GET {path} HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"),
            )
        };
        assert!(get("/latest/user-data", "forged").starts_with("HTTP/1.1 401"));
        assert!(get("/latest/user-data", &token).ends_with("motd = \"hi\"\n"));
        assert!(get("/latest/meta-data/placement/region", &token).ends_with("\r\n\r\neu-west-3"));
        assert!(get("/latest/meta-data/nothing", &token).starts_with("HTTP/1.1 404"));
        let listing = get("/latest/meta-data/", &token);
        assert!(listing.ends_with("\nmac\nplacement/"), "{listing}");
        let doc = get("/latest/dynamic/instance-identity/document", &token);
        assert!(doc.contains("\"region\":\"eu-west-3\""), "{doc}");
        let log = imds.requests();
        assert_eq!(log.len(), 9);
        assert_eq!(
            (log[0].status, log[2].method.as_str(), log[4].valid_token),
            (401, "PUT", true)
        );
    }

    #[test]
    fn the_first_requests_can_fail() {
        let imds = Imds::start(Config {
            fail_first: 2,
            ..Config::default()
        })
        .unwrap();
        let put =
            "PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        assert!(call(imds.port(), put).starts_with("HTTP/1.1 503"));
        assert!(call(imds.port(), put).starts_with("HTTP/1.1 503"));
        assert!(call(imds.port(), put).starts_with("HTTP/1.1 200"));
    }
}
