//! How the updater fetches the repository's files: a `tough` transport for http(s) that has no
//! total deadline but an idle one, resumes an interrupted body where it stopped, and keeps
//! trying as long as bytes keep coming. `file://` URLs go to tough's own file transport.
//!
//! tough's own HTTP transport gives every request a fixed total timeout (30 s) and resumes only
//! when the server advertises `Accept-Ranges`, so a large image on a slow link never finishes
//! (a target trickled at 4 KiB/s was cut at 30.8 s). Here:
//!
//! - a request may take as long as it needs while bytes arrive; it fails over when no byte
//!   came for `idle_timeout` (reqwest's read timeout, reset by every read);
//! - after an error it asks again for the rest (`Range: bytes=N-`); a server that answers the
//!   whole file instead (200) has its first N bytes skipped, so the bytes handed to tough are
//!   the file's, in order, whatever the server supports;
//! - `tries` counts consecutive failures without progress: a try that brought bytes resets it,
//!   with a pause that doubles from `first_backoff` up to `max_backoff` in between.
//!
//! tough checks the length and sha256 of what it reads, so resuming cannot smuggle bytes in.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use tough::{FilesystemTransport, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

/// How patient a download is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patience {
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// A request fails over when no byte arrived for this long.
    pub idle_timeout: Duration,
    /// Consecutive failures (tries that brought no byte) before the download gives up.
    pub tries: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            // 1 + 2 + 4 + 8 + 16 + 30 + 30 s of pauses: a repository may be away for about
            // two minutes before a download gives up.
            tries: 8,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The updater's transport (see the module documentation).
#[derive(Debug, Clone)]
pub struct ResumingTransport {
    patience: Patience,
    client: reqwest::Client,
}

impl ResumingTransport {
    pub fn new(patience: Patience) -> Result<ResumingTransport, reqwest::Error> {
        // reqwest is built without a TLS provider of its own (as tough builds it): install
        // aws-lc-rs, the provider tough and the rest of the updater use. Only the first
        // install in a process wins; later ones change nothing.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .connect_timeout(patience.connect_timeout)
            .read_timeout(patience.idle_timeout)
            .build()?;
        Ok(ResumingTransport { patience, client })
    }
}

#[async_trait]
impl Transport for ResumingTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                // A task feeds a small channel: tough wants a `Send + Sync` stream, and the
                // task stops as soon as tough drops the stream (the send fails).
                let (tx, mut rx) = tokio::sync::mpsc::channel(4);
                let (client, patience) = (self.client.clone(), self.patience.clone());
                tokio::spawn(download(client, patience, url, tx));
                Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
                    rx.poll_recv(cx)
                })))
            }
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}

type Sender = tokio::sync::mpsc::Sender<Result<Bytes, TransportError>>;

/// Why one try ended.
enum Stop {
    /// The whole body arrived.
    Done,
    /// Worth another try (connection, timeout, server error, cut body).
    Retry(Box<dyn std::error::Error + Send + Sync>),
    /// Not worth another try.
    Fatal(TransportError),
    /// tough dropped the stream.
    Gone,
}

async fn download(client: reqwest::Client, patience: Patience, url: Url, tx: Sender) {
    let mut offset: u64 = 0;
    let mut failures: u32 = 0;
    let mut backoff = patience.first_backoff;
    loop {
        let before = offset;
        let stop = one_try(&client, &url, &mut offset, &tx).await;
        if offset > before {
            failures = 0;
            backoff = patience.first_backoff;
        }
        let cause = match stop {
            Stop::Done | Stop::Gone => return,
            Stop::Fatal(err) => {
                let _ = tx.send(Err(err)).await;
                return;
            }
            Stop::Retry(cause) => cause,
        };
        failures += 1;
        if failures >= patience.tries {
            let err = TransportError::new_with_cause(TransportErrorKind::Other, &url, cause);
            let _ = tx.send(Err(err)).await;
            return;
        }
        tracing::warn!(%url, offset, failures, error = %cause, pause_ms = backoff.as_millis() as u64, "download interrupted; asking for the rest");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(patience.max_backoff);
    }
}

/// One request for the bytes from `offset` on; every byte handed on advances `offset`.
async fn one_try(client: &reqwest::Client, url: &Url, offset: &mut u64, tx: &Sender) -> Stop {
    let mut request = client.get(url.clone());
    if *offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => return Stop::Retry(Box::new(e)),
    };
    let status = response.status();
    // Bytes of this answer that tough already has.
    let mut skip: u64 = match status {
        StatusCode::PARTIAL_CONTENT => match range_start(&response) {
            Some(start) if start <= *offset => *offset - start,
            other => {
                return Stop::Retry(
                    format!("asked for bytes {offset}- and got a range starting at {other:?}")
                        .into(),
                )
            }
        },
        s if s.is_success() => *offset,
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE => {
            return Stop::Fatal(TransportError::new_with_cause(
                TransportErrorKind::FileNotFound,
                url,
                format!("HTTP {status}"),
            ))
        }
        s if s.is_server_error()
            || s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS =>
        {
            return Stop::Retry(format!("HTTP {status}").into())
        }
        _ => {
            return Stop::Fatal(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                format!("HTTP {status}"),
            ))
        }
    };
    loop {
        match response.chunk().await {
            Ok(Some(mut bytes)) => {
                if skip > 0 {
                    let drop = skip.min(bytes.len() as u64);
                    skip -= drop;
                    let _ = bytes.split_to(drop as usize);
                    if bytes.is_empty() {
                        continue;
                    }
                }
                *offset += bytes.len() as u64;
                if tx.send(Ok(bytes)).await.is_err() {
                    return Stop::Gone;
                }
            }
            Ok(None) if skip > 0 => {
                return Stop::Retry("the answer ended before the bytes already read".into())
            }
            Ok(None) => return Stop::Done,
            Err(e) => return Stop::Retry(Box::new(e)),
        }
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` answer.
fn range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}
