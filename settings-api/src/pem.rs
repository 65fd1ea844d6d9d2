//! Base64 decoding and PEM certificate bundles: `settings.pki.<name>.data` is checked when it
//! is PATCHed, and the renderer decodes it into the CA bundle.

/// Errors decoding base64 or PEM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("not base64: {0}")]
    Base64(String),
    #[error("decoded data is not UTF-8 text (expected PEM)")]
    NotText,
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) in the data")]
    NoCertificate,
    #[error("PEM certificate {index}: {reason}")]
    Block { index: usize, reason: String },
}

fn sextet(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes standard base64 (RFC 4648 alphabet, `=` padding optional); ASCII whitespace and
/// line breaks between characters are ignored, as in PEM bodies and wrapped user data.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, PemError> {
    let chars: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let body_len = chars.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let padding = chars.len() - body_len;
    if padding > 2 || (padding > 0 && chars.len() % 4 != 0) {
        return Err(PemError::Base64("misplaced '=' padding".to_string()));
    }
    if body_len % 4 == 1 {
        return Err(PemError::Base64(format!(
            "{body_len} characters cannot be base64 (a length of 4n+1 is impossible)"
        )));
    }
    let mut out = Vec::with_capacity(body_len * 3 / 4);
    for chunk in chars[..body_len].chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = sextet(c).ok_or_else(|| {
                PemError::Base64(format!("character '{}' is not in the alphabet", c as char))
            })?;
            acc |= v << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

/// Encodes standard base64 with padding (the inverse of [`decode_base64`]).
pub fn encode_base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// Checks that `data` (base64) decodes to PEM text holding at least one certificate, each
/// with a base64 body; text outside the blocks (comments) is allowed, as OpenSSL allows it.
/// Returns the PEM text.
pub fn decode_certificates(data: &str) -> Result<String, PemError> {
    let bytes = decode_base64(data)?;
    let text = String::from_utf8(bytes).map_err(|_| PemError::NotText)?;
    let mut count = 0;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "-----BEGIN CERTIFICATE-----" {
            continue;
        }
        count += 1;
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            if line.trim() == "-----END CERTIFICATE-----" {
                ended = true;
                break;
            }
            body.push_str(line.trim());
        }
        let fail = |reason: &str| PemError::Block {
            index: count,
            reason: reason.to_string(),
        };
        if !ended {
            return Err(fail("no -----END CERTIFICATE----- line"));
        }
        let der = decode_base64(&body).map_err(|e| fail(&format!("body {e}")))?;
        // A DER certificate is a SEQUENCE (0x30).
        if der.first() != Some(&0x30) {
            return Err(fail("body is not a DER certificate (no ASN.1 SEQUENCE)"));
        }
    }
    if count == 0 {
        return Err(PemError::NoCertificate);
    }
    Ok(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// base64 of [`CERT`].
    pub(crate) const CERT_B64: &str = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJzekNDQVZtZ0F3SUJBZ0lVQnc9PQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==";

    #[test]
    fn decodes_base64_with_and_without_padding() {
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64("aGVs\nbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("a").is_err());
        assert!(decode_base64("aG!k").is_err());
        assert!(decode_base64("a===").is_err());
        for data in [&b""[..], b"h", b"hi", b"hey", b"\x00\xff\x10\x80"] {
            assert_eq!(decode_base64(&encode_base64(data)).unwrap(), data);
        }
    }

    pub(crate) const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUBw==\n-----END CERTIFICATE-----\n";

    fn b64(s: &str) -> String {
        encode_base64(s.as_bytes())
    }

    #[test]
    fn accepts_pem_certificates_and_rejects_the_rest() {
        assert_eq!(decode_certificates(&b64(CERT)).unwrap(), CERT);
        let two = format!("# corp CA\n{CERT}{CERT}");
        assert!(decode_certificates(&b64(&two)).is_ok());
        assert_eq!(
            decode_certificates(&b64("hello")),
            Err(PemError::NoCertificate)
        );
        assert!(matches!(
            decode_certificates(&b64("-----BEGIN CERTIFICATE-----\nMIIB\n")),
            Err(PemError::Block { index: 1, .. })
        ));
        assert!(matches!(
            decode_certificates(&b64(
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"
            )),
            Err(PemError::Block { index: 1, .. })
        ));
        assert!(matches!(
            decode_certificates("not base64!"),
            Err(PemError::Base64(_))
        ));
    }
}
