//! Decoding of SASL responses for AUTH PLAIN (RFC 4616) and LOGIN.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::reply::Reply;

/// Maximum SASL response line, CRLF included (RFC 4954 §4 allows 12288 octets).
pub(crate) const MAX_SASL_LINE: usize = 12288;

/// Why a SASL exchange was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaslError {
    /// The client sent `*` (RFC 4954 §4): 501 5.0.0.
    Cancelled,
    /// The response is not valid base64: 501 5.5.2.
    BadBase64,
    /// The decoded response does not have the mechanism's shape: 501 5.5.2.
    Malformed,
}

impl SaslError {
    /// The reply ending the exchange.
    pub(crate) fn reply(self) -> Reply {
        let (e, text) = match self {
            Self::Cancelled => ((5, 0, 0), "Authentication cancelled"),
            Self::BadBase64 => ((5, 5, 2), "Invalid base64 data"),
            Self::Malformed => ((5, 5, 2), "Malformed authentication data"),
        };
        Reply::local(501, e, text)
    }
}

/// Decodes one response; `=` stands for an empty initial response (RFC 4954 §4).
pub(crate) fn decode_response(text: &str) -> Result<Vec<u8>, SaslError> {
    match text {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        _ => STANDARD.decode(text).map_err(|_| SaslError::BadBase64),
    }
}

/// Decodes a text field (authzid, username or password), which must be UTF-8 without
/// any control character (NUL, CR, LF, ESC, DEL, C1, ...): such characters would reach
/// logs and credential back ends. PLAIN's NUL separators are split off before this.
pub(crate) fn utf8(bytes: Vec<u8>) -> Result<String, SaslError> {
    let text = String::from_utf8(bytes).map_err(|_| SaslError::Malformed)?;
    if text.chars().any(char::is_control) {
        return Err(SaslError::Malformed);
    }
    Ok(text)
}

/// Splits a PLAIN message `authzid NUL authcid NUL passwd` (RFC 4616 §2).
pub(crate) fn parse_plain(message: &[u8]) -> Result<(String, String, String), SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || passwd.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok((
        utf8(authzid.to_vec())?,
        utf8(authcid.to_vec())?,
        utf8(passwd.to_vec())?,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        assert_eq!(
            parse_plain(b"\0bob\0pw"),
            Ok((String::new(), "bob".into(), "pw".into()))
        );
        assert_eq!(
            parse_plain(b"admin\0bob\0pw"),
            Ok(("admin".into(), "bob".into(), "pw".into()))
        );
        for bad in [
            &b"bob\0pw"[..],
            b"\0\0pw",
            b"\0bob\0",
            b"a\0b\0c\0d",
            b"\0b\xff\0pw",
            b"\0bob\0pw\r\n",
            b"\0bob\npw\0pw",
            b"\0bob\x1b[0m\0pw",
            b"ad\rmin\0bob\0pw",
            b"\0bob\0p\x7fw",
            "\0bob\0p\u{85}w".as_bytes(),
        ] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn text_fields_refuse_control_characters() {
        assert_eq!(utf8(b"bob".to_vec()), Ok("bob".into()));
        assert_eq!(
            utf8("j\u{f6}rg".as_bytes().to_vec()),
            Ok("j\u{f6}rg".into())
        );
        for bad in [&b"b\0b"[..], b"b\rb", b"b\nb", b"b\x1bb", b"b\tb", b"b\x7f"] {
            assert_eq!(utf8(bad.to_vec()), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("="), Ok(Vec::new()));
        assert_eq!(decode_response(""), Ok(Vec::new()));
        assert_eq!(decode_response("Ym9i"), Ok(b"bob".to_vec()));
        assert_eq!(decode_response("Ym9"), Err(SaslError::BadBase64));
        assert_eq!(decode_response("Ym9i!"), Err(SaslError::BadBase64));
    }
}
