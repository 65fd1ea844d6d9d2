//! What containerd's CRI plugin, the runtime kubelet talks to, reports about itself: its
//! effective configuration (`Status` with `verbose`: the `config` entry, JSON) and whether an
//! image is in its store (`ImageStatus`; the CRI store is containerd's `k8s.io` namespace).
//!
//! A minimal unary gRPC client over HTTP/2 cleartext on the Unix socket, written for the
//! probe: no gRPC or HTTP/2 library is in the image, and these two calls need only the
//! framing below. It sends literal (unindexed, non-Huffman) HPACK headers, one DATA frame,
//! acknowledges the server's SETTINGS, and collects the response's DATA frames until the
//! stream ends; response header blocks are skipped, so a gRPC error shows as "no message".

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// The one stream a unary call needs (client streams are odd).
const STREAM: u32 = 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small frames");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK string literal, not Huffman-coded (names and values here are short).
fn hpack_string(out: &mut Vec<u8>, s: &str) {
    let len = u8::try_from(s.len())
        .ok()
        .filter(|l| *l < 127)
        .expect("header strings are short");
    out.push(len);
    out.extend_from_slice(s.as_bytes());
}

/// A header block of "literal header field without indexing, new name" entries.
fn header_block(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        out.push(0);
        hpack_string(&mut out, name);
        hpack_string(&mut out, value);
    }
    out
}

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A protobuf length-delimited field.
pub fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, u64::from(field) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One decoded protobuf field: a varint or a length-delimited value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of a protobuf message, in order; `None` if it is malformed.
pub fn fields(buf: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3).ok()?;
        match key & 7 {
            0 => out.push((number, Field::Varint(read_varint(buf, &mut pos)?))),
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let value = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                out.push((number, Field::Bytes(value)));
            }
            1 => pos += 8,
            5 => pos += 4,
            _ => return None,
        }
    }
    (pos == buf.len()).then_some(out)
}

fn text(field: &Field<'_>) -> Option<String> {
    match field {
        Field::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Field::Varint(_) => None,
    }
}

/// One unary call: `message` (protobuf) to `path` (`/package.Service/Method`); the
/// response message.
pub fn call(socket: &Path, path: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| e.to_string())?;
    let timeout = Some(Duration::from_secs(10));
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let mut grpc = vec![0];
    grpc.extend_from_slice(
        &u32::try_from(message.len())
            .map_err(|_| "message too long")?
            .to_be_bytes(),
    );
    grpc.extend_from_slice(message);
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(frame(HEADERS, END_HEADERS, STREAM, &header_block(path)));
    out.extend(frame(DATA, END_STREAM, STREAM, &grpc));
    s.write_all(&out).map_err(|e| e.to_string())?;

    let mut body = Vec::new();
    loop {
        let mut header = [0u8; 9];
        s.read_exact(&mut header)
            .map_err(|e| format!("reading a frame: {e}"))?;
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)
            .map_err(|e| format!("reading a frame: {e}"))?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .map_err(|e| e.to_string())?;
            }
            DATA if stream == STREAM => {
                let data = if flags & PADDED != 0 {
                    let pad = usize::from(*payload.first().ok_or("empty padded frame")?);
                    payload
                        .get(1..payload.len().saturating_sub(pad))
                        .ok_or("bad padding")?
                } else {
                    &payload[..]
                };
                body.extend_from_slice(data);
            }
            RST_STREAM | GOAWAY => {
                return Err(format!("the server ended the call (frame type {kind})"))
            }
            _ => {}
        }
        if stream == STREAM && matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 {
            break;
        }
    }
    if body.len() < 5 {
        return Err("no response message (a gRPC error status)".into());
    }
    if body[0] != 0 {
        return Err("compressed response".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "truncated response message".into())
}

/// The `info` map of `runtime.v1.RuntimeService/Status` with `verbose` set.
pub fn status_info(socket: &Path) -> Result<BTreeMap<String, String>, String> {
    // StatusRequest { verbose = true }
    let response = call(socket, "/runtime.v1.RuntimeService/Status", &[0x08, 0x01])?;
    let mut info = BTreeMap::new();
    // StatusResponse { status = 1; map<string, string> info = 2 }
    for (number, field) in fields(&response).ok_or("malformed StatusResponse")? {
        if let (2, Field::Bytes(entry)) = (number, field) {
            let entry = fields(entry).ok_or("malformed info entry")?;
            let get = |n| entry.iter().find(|f| f.0 == n).and_then(|f| text(&f.1));
            info.insert(get(1).unwrap_or_default(), get(2).unwrap_or_default());
        }
    }
    Ok(info)
}

/// An image in the CRI store: its tags and whether the runtime pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub tags: Vec<String>,
    pub pinned: bool,
}

/// `runtime.v1.ImageService/ImageStatus` of `image`; `None` when the store lacks it.
pub fn image_status(socket: &Path, image: &str) -> Result<Option<Image>, String> {
    // ImageStatusRequest { ImageSpec image = 1 { string image = 1 } }
    let mut spec = Vec::new();
    bytes_field(&mut spec, 1, image.as_bytes());
    let mut request = Vec::new();
    bytes_field(&mut request, 1, &spec);
    let response = call(socket, "/runtime.v1.ImageService/ImageStatus", &request)?;
    let top = fields(&response).ok_or("malformed ImageStatusResponse")?;
    let Some((_, Field::Bytes(found))) = top.iter().find(|f| f.0 == 1) else {
        return Ok(None);
    };
    // Image { id = 1; repeated repo_tags = 2; ...; bool pinned = 8 }
    let image = fields(found).ok_or("malformed Image")?;
    Ok(Some(Image {
        tags: image
            .iter()
            .filter(|f| f.0 == 2)
            .filter_map(|f| text(&f.1))
            .collect(),
        pinned: image.iter().any(|f| f.0 == 8 && f.1 == Field::Varint(1)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_round_trip() {
        let mut m = Vec::new();
        bytes_field(&mut m, 2, b"tag");
        varint(&mut m, 8 << 3);
        varint(&mut m, 1);
        bytes_field(&mut m, 1, &[b'x'; 300]);
        let f = fields(&m).unwrap();
        assert_eq!(f[0], (2, Field::Bytes(b"tag")));
        assert_eq!(f[1], (8, Field::Varint(1)));
        assert_eq!(f[2].0, 1);
        assert!(matches!(f[2].1, Field::Bytes(b) if b.len() == 300));
        assert_eq!(fields(&[0x0a, 0x05, b'a']), None, "truncated");
    }

    /// A stand-in gRPC server: checks the client's preface and frames, then answers with
    /// SETTINGS, response headers, a padded DATA frame and trailers, as grpc-go does.
    fn serve(listener: std::os::unix::net::UnixListener, response: Vec<u8>) -> Vec<u8> {
        let (mut c, _) = listener.accept().unwrap();
        let mut preface = [0u8; 24];
        c.read_exact(&mut preface).unwrap();
        assert_eq!(&preface[..], PREFACE);
        let mut seen = Vec::new();
        let mut request = Vec::new();
        while !seen.contains(&DATA) {
            let mut h = [0u8; 9];
            c.read_exact(&mut h).unwrap();
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let mut p = vec![0u8; len];
            c.read_exact(&mut p).unwrap();
            if h[3] == HEADERS {
                let block = String::from_utf8_lossy(&p).into_owned();
                assert!(block.contains(":path"), "{block}");
                assert!(block.contains("application/grpc"), "{block}");
            }
            if h[3] == DATA {
                request = p[5..].to_vec();
            }
            seen.push(h[3]);
        }
        assert_eq!(seen, [SETTINGS, HEADERS, DATA]);
        let mut grpc = vec![0];
        grpc.extend_from_slice(&(response.len() as u32).to_be_bytes());
        grpc.extend_from_slice(&response);
        let mut padded = vec![3];
        padded.extend_from_slice(&grpc);
        padded.extend_from_slice(&[0, 0, 0]);
        let mut out = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
        out.extend(frame(HEADERS, END_HEADERS, STREAM, &[0x88]));
        out.extend(frame(DATA, PADDED, STREAM, &padded));
        out.extend(frame(HEADERS, END_HEADERS | END_STREAM, STREAM, &[0x40]));
        c.write_all(&out).unwrap();
        // The client acknowledges the server's SETTINGS.
        let mut ack = [0u8; 9];
        c.read_exact(&mut ack).unwrap();
        assert_eq!((ack[3], ack[4]), (SETTINGS, ACK));
        request
    }

    #[test]
    fn status_info_over_a_stand_in_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cri.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut entry = Vec::new();
        bytes_field(&mut entry, 1, b"config");
        bytes_field(
            &mut entry,
            2,
            br#"{"sandboxImage":"localhost/berth/pause:1"}"#,
        );
        let mut response = Vec::new();
        bytes_field(&mut response, 1, b"");
        bytes_field(&mut response, 2, &entry);
        let server = std::thread::spawn(move || serve(listener, response));
        let info = status_info(&sock).unwrap();
        assert_eq!(
            info["config"],
            r#"{"sandboxImage":"localhost/berth/pause:1"}"#
        );
        assert_eq!(server.join().unwrap(), [0x08, 0x01], "verbose = true");
    }

    #[test]
    fn image_status_reads_tags_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cri.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut image = Vec::new();
        bytes_field(&mut image, 1, b"sha256:abc");
        bytes_field(&mut image, 2, b"localhost/berth/pause:1");
        varint(&mut image, 8 << 3);
        varint(&mut image, 1);
        let mut response = Vec::new();
        bytes_field(&mut response, 1, &image);
        let server = std::thread::spawn(move || serve(listener, response));
        let got = image_status(&sock, "localhost/berth/pause:1").unwrap();
        assert_eq!(
            got,
            Some(Image {
                tags: vec!["localhost/berth/pause:1".into()],
                pinned: true
            })
        );
        let request = server.join().unwrap();
        let outer = fields(&request).unwrap();
        let Field::Bytes(spec) = outer[0].1 else {
            panic!("{outer:?}")
        };
        assert_eq!(
            fields(spec).unwrap()[0].1,
            Field::Bytes(b"localhost/berth/pause:1")
        );
    }

    #[test]
    fn an_absent_image_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cri.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || serve(listener, Vec::new()));
        assert_eq!(image_status(&sock, "nope:1").unwrap(), None);
        server.join().unwrap();
    }
}
