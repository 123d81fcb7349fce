//! SMTP replies (RFC 5321 §4.2) with optional enhanced status codes (RFC 3463).

use std::fmt;
use std::str::FromStr;

/// Maximum length of one reply line, including the code and CRLF (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// An enhanced mail system status code such as `5.7.1` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// Class: 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// Subject sub-code (0..=999).
    pub subject: u16,
    /// Detail sub-code (0..=999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code without validation; used for the crate's static replies.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self {
            class,
            subject,
            detail,
        }
    }

    fn is_valid(&self) -> bool {
        matches!(self.class, 2 | 4 | 5) && self.subject <= 999 && self.detail <= 999
    }
}

impl FromStr for EnhancedCode {
    type Err = ReplyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn number(part: Option<&str>) -> Result<u16, ReplyError> {
            match part {
                Some(p) if (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()) => {
                    p.parse().map_err(|_| ReplyError::BadEnhancedCode)
                }
                _ => Err(ReplyError::BadEnhancedCode),
            }
        }
        let mut parts = s.split('.');
        let class = parts.next().filter(|c| c.len() == 1);
        let class = number(class)?;
        let subject = number(parts.next())?;
        let detail = number(parts.next())?;
        if parts.next().is_some() {
            return Err(ReplyError::BadEnhancedCode);
        }
        let class = u8::try_from(class).map_err(|_| ReplyError::BadEnhancedCode)?;
        let code = Self::new(class, subject, detail);
        if code.is_valid() {
            Ok(code)
        } else {
            Err(ReplyError::BadEnhancedCode)
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// Why a reply could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The reply code is outside 200..=599.
    #[error("reply code {0} is outside 200..=599")]
    CodeOutOfRange(u16),
    /// The enhanced code is malformed or its class is not 2, 4 or 5.
    #[error("malformed enhanced status code")]
    BadEnhancedCode,
    /// The enhanced code class does not match the reply code class.
    #[error("enhanced code class does not match reply code {0}")]
    ClassMismatch(u16),
    /// The text contains CR, LF, NUL or another control character.
    #[error("reply text contains a control character")]
    ControlCharacter,
    /// A line would exceed 512 octets on the wire.
    #[error("reply line exceeds 512 octets")]
    LineTooLong,
    /// A multiline reply was built with no lines.
    #[error("reply has no lines")]
    NoLines,
}

/// One SMTP reply, possibly multiline, ready to be serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// Builds a validated single-line reply (the text is never split).
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Result<Self, ReplyError> {
        Self::multiline(code, enhanced, vec![text.to_owned()])
    }

    /// Builds a validated multiline reply; every line carries the code and enhanced code.
    pub fn multiline(
        code: u16,
        enhanced: Option<EnhancedCode>,
        lines: Vec<String>,
    ) -> Result<Self, ReplyError> {
        if !(200..=599).contains(&code) {
            return Err(ReplyError::CodeOutOfRange(code));
        }
        if let Some(e) = enhanced {
            if !e.is_valid() {
                return Err(ReplyError::BadEnhancedCode);
            }
            if u16::from(e.class) != code / 100 {
                return Err(ReplyError::ClassMismatch(code));
            }
        }
        if lines.is_empty() {
            return Err(ReplyError::NoLines);
        }
        let reply = Self {
            code,
            enhanced,
            lines,
        };
        for line in &reply.lines {
            if line.chars().any(char::is_control) {
                return Err(ReplyError::ControlCharacter);
            }
            if reply.wire_len(line) > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
        }
        Ok(reply)
    }

    /// Infallible constructor for the crate's own replies, whose parts are known valid.
    pub(crate) fn fixed(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        debug_assert!(
            Self::new(code, enhanced, text).is_ok(),
            "invalid fixed reply"
        );
        Self {
            code,
            enhanced,
            lines: vec![text.to_owned()],
        }
    }

    /// A reply made by this relay (not received from a peer or a plugin). The text is
    /// cleaned of control characters and cut to fit, so the result is always valid.
    pub fn local(code: u16, enhanced: (u8, u16, u16), text: &str) -> Self {
        debug_assert!((200..=599).contains(&code) && u16::from(enhanced.0) == code / 100);
        Self::sanitized(
            code,
            Some(EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)),
            text,
        )
    }

    /// Infallible constructor for replies embedding outside text (host names, queue ids):
    /// control characters become `?` and the line is truncated to fit 512 octets.
    pub(crate) fn sanitized(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        let mut reply = Self {
            code,
            enhanced,
            lines: vec![String::new()],
        };
        let budget = MAX_REPLY_LINE - reply.wire_len("");
        let mut clean = String::with_capacity(text.len().min(budget));
        for c in text.chars() {
            let c = if c.is_control() { '?' } else { c };
            if clean.len() + c.len_utf8() > budget {
                break;
            }
            clean.push(c);
        }
        reply.lines = vec![clean];
        reply
    }

    /// Builds a multiline reply from the crate's own trusted lines.
    pub(crate) fn fixed_lines(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines,
        }
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The text of the first line (see [`Reply::lines`] for multiline replies).
    pub fn text(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// All text lines, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// True for 2xx and 3xx replies.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// True for 4xx (transient negative) replies.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// True for 5xx (permanent negative) replies.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (`250-a\r\n250 b\r\n`) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        let enhanced = self.enhanced.map(|e| e.to_string());
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(self.code.to_string().as_bytes());
            let mut rest = enhanced.clone().unwrap_or_default();
            if !line.is_empty() {
                if !rest.is_empty() {
                    rest.push(' ');
                }
                rest.push_str(line);
            }
            if i != last {
                out.push(b'-');
            } else if !rest.is_empty() {
                out.push(b' ');
            }
            out.extend_from_slice(rest.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Octets this line occupies on the wire, including the code and CRLF.
    fn wire_len(&self, line: &str) -> usize {
        let enhanced = self.enhanced.map_or(0, |e| e.to_string().len() + 1);
        4 + enhanced + line.len() + 2
    }
}

impl fmt::Display for Reply {
    /// Renders the first line as it appears on the wire, without CRLF (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn enhanced_code_parse_and_display() {
        let e: EnhancedCode = "5.7.1".parse().unwrap();
        assert_eq!(e, EnhancedCode::new(5, 7, 1));
        assert_eq!(e.to_string(), "5.7.1");
        assert_eq!(
            "4.999.999".parse::<EnhancedCode>().unwrap().to_string(),
            "4.999.999"
        );
        for bad in [
            "", "5", "5.7", "5.7.1.1", "3.0.0", "6.0.0", "5.1000.0", "5..1", "5.a.1", "05.7.1",
            "+5.7.1",
        ] {
            assert_eq!(
                bad.parse::<EnhancedCode>(),
                Err(ReplyError::BadEnhancedCode),
                "{bad}"
            );
        }
    }

    #[test]
    fn validation() {
        let e = |s: &str| Some(s.parse::<EnhancedCode>().unwrap());
        assert!(Reply::new(550, e("5.7.1"), "Denied").is_ok());
        assert_eq!(
            Reply::new(199, None, "x"),
            Err(ReplyError::CodeOutOfRange(199))
        );
        assert_eq!(
            Reply::new(600, None, "x"),
            Err(ReplyError::CodeOutOfRange(600))
        );
        assert_eq!(
            Reply::new(550, e("4.7.1"), "x"),
            Err(ReplyError::ClassMismatch(550))
        );
        assert_eq!(
            Reply::new(354, e("2.0.0"), "x"),
            Err(ReplyError::ClassMismatch(354))
        );
        assert_eq!(
            Reply::new(550, Some(EnhancedCode::new(3, 0, 0)), "x"),
            Err(ReplyError::BadEnhancedCode)
        );
        for bad in [
            "a\r\nb", "a\nb", "a\rb", "a\0b", "a\tb", "a\u{7f}b", "a\u{85}b",
        ] {
            assert_eq!(
                Reply::new(550, None, bad),
                Err(ReplyError::ControlCharacter),
                "{bad:?}"
            );
        }
        assert_eq!(
            Reply::multiline(250, None, Vec::new()),
            Err(ReplyError::NoLines)
        );
    }

    #[test]
    fn line_length_boundary() {
        // "250 " + text + CRLF <= 512.
        assert!(Reply::new(250, None, &"x".repeat(506)).is_ok());
        assert_eq!(
            Reply::new(250, None, &"x".repeat(507)),
            Err(ReplyError::LineTooLong)
        );
        // "250 2.0.0 " + text + CRLF <= 512.
        let e = Some(EnhancedCode::new(2, 0, 0));
        assert!(Reply::new(250, e, &"x".repeat(500)).is_ok());
        assert_eq!(
            Reply::new(250, e, &"x".repeat(501)),
            Err(ReplyError::LineTooLong)
        );
    }

    #[test]
    fn serialisation() {
        let r = Reply::new(550, Some(EnhancedCode::new(5, 7, 1)), "Relay denied").unwrap();
        assert_eq!(wire(&r), "550 5.7.1 Relay denied\r\n");
        assert_eq!(r.to_string(), "550 5.7.1 Relay denied");
        let r = Reply::multiline(
            250,
            Some(EnhancedCode::new(2, 0, 0)),
            vec!["first".into(), "second".into()],
        )
        .unwrap();
        assert_eq!(wire(&r), "250-2.0.0 first\r\n250 2.0.0 second\r\n");
        assert_eq!(r.text(), "first");
        assert_eq!(r.lines().len(), 2);
        assert_eq!(wire(&Reply::new(250, None, "").unwrap()), "250\r\n");
        assert_eq!(wire(&Reply::new(354, None, "Go").unwrap()), "354 Go\r\n");
    }

    #[test]
    fn classification() {
        let r = |c| Reply::new(c, None, "x").unwrap();
        assert!(r(250).is_positive() && r(354).is_positive());
        assert!(r(451).is_transient() && !r(451).is_permanent() && !r(451).is_positive());
        assert!(r(554).is_permanent() && !r(554).is_transient());
        assert_eq!(r(421).code(), 421);
        assert_eq!(r(421).enhanced(), None);
    }

    #[test]
    fn sanitized_replies_are_safe() {
        let r = Reply::sanitized(250, None, "id\r\n250 injected");
        assert_eq!(wire(&r), "250 id??250 injected\r\n");
        let r = Reply::sanitized(250, Some(EnhancedCode::new(2, 0, 0)), &"é".repeat(400));
        assert!(wire(&r).len() <= MAX_REPLY_LINE);
    }
}
