//! Reading server replies (RFC 5321 §4.2): strict multiline framing, enhanced status
//! codes (RFC 3463) and the EHLO keyword list.

use crate::reply::{EnhancedCode, MAX_REPLY_LINE, Reply};

use super::Extensions;

/// Longest reply line accepted, terminator included. RFC 5321 allows 512 octets;
/// real servers exceed it, so this is only a bound on buffering.
pub const MAX_LINE: usize = 4096;

/// Most lines accepted in one multiline reply.
pub const MAX_LINES: usize = 256;

/// Why the server's bytes are not a well-formed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplySyntaxError {
    /// A line exceeded [`MAX_LINE`] octets.
    #[error("reply line longer than {MAX_LINE} octets")]
    LineTooLong,
    /// A multiline reply exceeded [`MAX_LINES`] lines.
    #[error("reply with more than {MAX_LINES} lines")]
    TooManyLines,
    /// A line does not start with a three-digit code in 200..=559.
    #[error("reply line does not start with a valid reply code")]
    BadCode,
    /// The code is followed by something other than SP, `-` or the line end.
    #[error("reply code not followed by SP or '-'")]
    BadSeparator,
    /// The lines of one multiline reply carry different codes.
    #[error("reply code changes within a multiline reply")]
    InconsistentCode,
}

/// Incremental reader turning received octets into [`Reply`] values.
///
/// Lines end in CRLF; a bare LF is tolerated as a line end (as Postfix does), since
/// it cannot confuse the framing of replies.
#[derive(Debug, Default)]
pub(super) struct ReplyReader {
    buf: Vec<u8>,
    pos: usize,
    code: Option<u16>,
    lines: Vec<Vec<u8>>,
}

impl ReplyReader {
    /// Appends received octets.
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Forgets everything buffered, including a partial multiline reply.
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Octets received but not yet consumed (for tests).
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() - self.pos + self.lines.iter().map(Vec::len).sum::<usize>()
    }

    /// The next complete reply; `Ok(None)` if more input is needed.
    pub(super) fn next_reply(&mut self) -> Result<Option<Reply>, ReplySyntaxError> {
        loop {
            let rest = self.buf.get(self.pos..).unwrap_or_default();
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() >= MAX_LINE {
                    return Err(ReplySyntaxError::LineTooLong);
                }
                return Ok(None);
            };
            if lf + 1 > MAX_LINE {
                return Err(ReplySyntaxError::LineTooLong);
            }
            let raw = rest.get(..lf).unwrap_or_default();
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let (code, last, text) = split_line(line)?;
            let text = text.to_vec();
            self.pos += lf + 1;
            if self.code.is_some_and(|c| c != code) {
                return Err(ReplySyntaxError::InconsistentCode);
            }
            self.code = Some(code);
            self.lines.push(text);
            if self.lines.len() > MAX_LINES {
                return Err(ReplySyntaxError::TooManyLines);
            }
            if last {
                self.code = None;
                let lines = std::mem::take(&mut self.lines);
                return build_reply(code, &lines).map(Some);
            }
        }
    }
}

/// Splits `250-text` into (250, false, "text"); `250 text` and `250` are last lines.
fn split_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplySyntaxError> {
    let (digits, rest) = line.split_at_checked(3).ok_or(ReplySyntaxError::BadCode)?;
    let [a, b, c] = digits else {
        return Err(ReplySyntaxError::BadCode);
    };
    if !(b'2'..=b'5').contains(a) || !(b'0'..=b'5').contains(b) || !c.is_ascii_digit() {
        return Err(ReplySyntaxError::BadCode);
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    match rest.split_first() {
        None => Ok((code, true, rest)),
        Some((b' ', text)) => Ok((code, true, text)),
        Some((b'-', text)) => Ok((code, false, text)),
        Some(_) => Err(ReplySyntaxError::BadSeparator),
    }
}

/// Builds a [`Reply`] from received lines: the enhanced code of the first line (if
/// its class matches) is split off every line that repeats it; control characters
/// become `?` (tab a space) and lines are cut to fit 512 octets on the wire.
fn build_reply(code: u16, raw: &[Vec<u8>]) -> Result<Reply, ReplySyntaxError> {
    let texts: Vec<String> = raw
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let enhanced = texts.first().and_then(|first| {
        let word = first.split(' ').next().unwrap_or_default();
        word.parse::<EnhancedCode>()
            .ok()
            .filter(|e| u16::from(e.class) == code / 100)
    });
    let prefix = enhanced.map(|e| e.to_string());
    let budget = MAX_REPLY_LINE - 6 - prefix.as_ref().map_or(0, |p| p.len() + 1);
    let lines = texts
        .iter()
        .map(|text| {
            let text = match &prefix {
                Some(p) => strip_code(text, p),
                None => text.as_str(),
            };
            clean(text, budget)
        })
        .collect();
    Reply::multiline(code, enhanced, lines).map_err(|_| ReplySyntaxError::BadCode)
}

/// Removes a leading enhanced code `prefix` followed by SP or the end of the text.
fn strip_code<'a>(text: &'a str, prefix: &str) -> &'a str {
    match text.strip_prefix(prefix) {
        Some("") => "",
        Some(rest) => rest.strip_prefix(' ').unwrap_or(text),
        None => text,
    }
}

/// Replaces control characters and truncates to `budget` octets on a char boundary.
fn clean(text: &str, budget: usize) -> String {
    let mut out = String::with_capacity(text.len().min(budget));
    for c in text.chars() {
        let c = match c {
            '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        };
        if out.len() + c.len_utf8() > budget {
            break;
        }
        out.push(c);
    }
    out
}

/// Reads the extensions of a positive EHLO/LHLO reply (RFC 5321 §4.1.1.1): every
/// line after the first is `keyword [params]`. Unknown keywords are ignored.
pub(super) fn parse_ehlo(reply: &Reply) -> Extensions {
    let mut ext = Extensions::default();
    for line in reply.lines().iter().skip(1) {
        let mut words = line.split([' ', '=']).filter(|w| !w.is_empty());
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => ext.pipelining = true,
            // RFC 1870: no number or 0 means SIZE is supported without a fixed limit.
            "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "8BITMIME" => ext.eight_bit_mime = true,
            "SMTPUTF8" => ext.smtputf8 = true,
            "DSN" => ext.dsn = true,
            "STARTTLS" => ext.starttls = true,
            "CHUNKING" => ext.chunking = true,
            "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
            "REQUIRETLS" => ext.require_tls = true,
            // Also the pre-standard `AUTH=PLAIN LOGIN` form.
            "AUTH" => {
                for mechanism in words {
                    let mechanism = mechanism.to_ascii_uppercase();
                    if !ext.auth_mechanisms.contains(&mechanism) {
                        ext.auth_mechanisms.push(mechanism);
                    }
                }
            }
            _ => {}
        }
    }
    ext
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> Result<Option<Reply>, ReplySyntaxError> {
        let mut r = ReplyReader::default();
        r.feed(input);
        r.next_reply()
    }

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_and_multiline() {
        let r = read(b"250 ok\r\n").unwrap().unwrap();
        assert_eq!((r.code(), r.text(), r.enhanced()), (250, "ok", None));
        let r = read(b"250\r\n").unwrap().unwrap();
        assert_eq!((r.code(), r.text()), (250, ""));
        let r = read(b"250-a\r\n250-b\r\n250 c\r\n").unwrap().unwrap();
        assert_eq!(r.lines(), ["a", "b", "c"]);
        // A bare LF ends a line too.
        let r = read(b"250-a\n250 b\n").unwrap().unwrap();
        assert_eq!(r.lines(), ["a", "b"]);
        assert_eq!(read(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(read(b"").unwrap(), None);
    }

    #[test]
    fn several_replies_in_one_buffer() {
        let mut r = ReplyReader::default();
        r.feed(b"250 a\r\n550 5.1.1 b\r\n354 c\r\n");
        assert_eq!(r.next_reply().unwrap().unwrap().code(), 250);
        assert_eq!(r.next_reply().unwrap().unwrap().code(), 550);
        assert_eq!(r.next_reply().unwrap().unwrap().code(), 354);
        assert_eq!(r.next_reply().unwrap(), None);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn enhanced_codes() {
        let r = read(b"550-5.1.1 no such\r\n550 5.1.1 user\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.enhanced(), Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(r.lines(), ["no such", "user"]);
        assert_eq!(wire(&r), "550-5.1.1 no such\r\n550 5.1.1 user\r\n");
        // Class mismatch: kept as text.
        let r = read(b"250 5.1.1 odd\r\n").unwrap().unwrap();
        assert_eq!((r.enhanced(), r.text()), (None, "5.1.1 odd"));
        let r = read(b"250 2.0.0\r\n").unwrap().unwrap();
        assert_eq!(
            (r.enhanced(), r.text()),
            (Some(EnhancedCode::new(2, 0, 0)), "")
        );
        let r = read(b"250 2.0.0x\r\n").unwrap().unwrap();
        assert_eq!((r.enhanced(), r.text()), (None, "2.0.0x"));
    }

    #[test]
    fn malformed() {
        for (bad, err) in [
            (&b"25 ok\r\n"[..], ReplySyntaxError::BadCode),
            (b"\r\n", ReplySyntaxError::BadCode),
            (b"abc ok\r\n", ReplySyntaxError::BadCode),
            (b"199 ok\r\n", ReplySyntaxError::BadCode),
            (b"600 ok\r\n", ReplySyntaxError::BadCode),
            (b"260 ok\r\n", ReplySyntaxError::BadCode),
            (b"250ok\r\n", ReplySyntaxError::BadSeparator),
            (b"250\tok\r\n", ReplySyntaxError::BadSeparator),
            (b"250-a\r\n251 b\r\n", ReplySyntaxError::InconsistentCode),
            (b"250-a\r\nxyz\r\n", ReplySyntaxError::BadCode),
        ] {
            assert_eq!(read(bad), Err(err), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = format!("250 {}", "x".repeat(MAX_LINE));
        assert_eq!(read(long.as_bytes()), Err(ReplySyntaxError::LineTooLong));
        let many = "250-x\r\n".repeat(MAX_LINES + 1);
        assert_eq!(read(many.as_bytes()), Err(ReplySyntaxError::TooManyLines));
    }

    #[test]
    fn text_is_sanitized() {
        let r = read(b"550 a\x00b\x1bc\td\xffe\r\n").unwrap().unwrap();
        assert_eq!(r.text(), "a?b?c d\u{fffd}e");
        let long = format!("250 {}\r\n", "é".repeat(1000));
        let r = read(long.as_bytes()).unwrap().unwrap();
        assert!(wire(&r).len() <= MAX_REPLY_LINE);
    }

    #[test]
    fn ehlo_keywords() {
        let r = read(
            b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8bitmime\r\n\
              250-SMTPUTF8\r\n250-DSN\r\n250-STARTTLS\r\n250-CHUNKING\r\n\
              250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN login\r\n250-AUTH=PLAIN XOAUTH2\r\n\
              250-X-UNKNOWN foo\r\n250-REQUIRETLS\r\n250 \r\n",
        )
        .unwrap()
        .unwrap();
        let ext = parse_ehlo(&r);
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                size: Some(1000),
                eight_bit_mime: true,
                smtputf8: true,
                dsn: true,
                starttls: true,
                chunking: true,
                enhanced_status_codes: true,
                auth_mechanisms: vec!["PLAIN".into(), "LOGIN".into(), "XOAUTH2".into()],
                require_tls: true,
            }
        );
        assert!(ext.offers_auth("plain"));
        let r = read(b"250-mx\r\n250 SIZE\r\n").unwrap().unwrap();
        assert_eq!(parse_ehlo(&r).size, Some(0));
        let r = read(b"250 mx SIZE 10\r\n").unwrap().unwrap();
        assert_eq!(parse_ehlo(&r), Extensions::default());
    }
}
