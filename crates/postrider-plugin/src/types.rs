//! Constructors and helpers on the generated contract types.

use crate::{
    Connection, DataOutcome, Envelope, Header, HeaderEdit, HeaderReplacement, Message, NextHop,
    RcptOutcome, Reply, Route, TlsPolicy, Verdict,
};
use std::net::IpAddr;

/// Longest reply text [`Reply::new`] keeps, in bytes. With the code, the enhanced code and the
/// separators this stays well inside SMTP's 512-byte reply line.
pub const MAX_REPLY_TEXT: usize = 400;

impl Reply {
    /// A reply with an RFC 3463 enhanced status code, e.g.
    /// `Reply::new(550, "5.7.1", "Relaying denied")`.
    ///
    /// An empty `enhanced` means "none" (the host then supplies one). The text is made safe
    /// for an SMTP reply line: CR, LF and TAB become spaces, other control characters `?`, and
    /// it is cut to [`MAX_REPLY_TEXT`] bytes on a character boundary. The code must fit the
    /// verdict it is used with (4xx tempfail, 5xx reject, 421 or 554 disconnect); the host
    /// checks.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        let enhanced = enhanced.trim();
        Reply {
            code,
            enhanced: (!enhanced.is_empty()).then(|| enhanced.to_owned()),
            text: sanitize_reply_text(&text.into()),
        }
    }
}

/// Makes `text` one printable line of at most [`MAX_REPLY_TEXT`] bytes (see [`Reply::new`]).
pub(crate) fn sanitize_reply_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_REPLY_TEXT));
    for c in text.chars() {
        let c = match c {
            '\r' | '\n' | '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        };
        if out.len() + c.len_utf8() > MAX_REPLY_TEXT {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// `Verdict::Reject(Reply::new(code, enhanced, text))`: refuse permanently (5xx), e.g.
/// `reject(550, "5.7.1", "Message refused")`.
pub fn reject(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
    Verdict::Reject(Reply::new(code, enhanced, text))
}

/// `Verdict::Tempfail(Reply::new(code, enhanced, text))`: refuse temporarily (4xx) so the
/// client retries, e.g. `tempfail(451, "4.7.1", "Try again later")`.
pub fn tempfail(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
    Verdict::Tempfail(Reply::new(code, enhanced, text))
}

/// `Verdict::Disconnect(Reply::new(code, enhanced, text))`: send the reply (421 or 554) and
/// close the connection.
pub fn disconnect(code: u16, enhanced: &str, text: impl Into<String>) -> Verdict {
    Verdict::Disconnect(Reply::new(code, enhanced, text))
}

impl Default for Verdict {
    /// [`Verdict::Continue`]: no opinion.
    fn default() -> Self {
        Verdict::Continue
    }
}

impl Verdict {
    /// True for [`Verdict::Continue`].
    pub fn is_continue(&self) -> bool {
        matches!(self, Verdict::Continue)
    }

    /// The reply of a reject, tempfail or disconnect.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Verdict::Reject(r) | Verdict::Tempfail(r) | Verdict::Disconnect(r) => Some(r),
            Verdict::Continue | Verdict::Accept => None,
        }
    }
}

impl Default for RcptOutcome {
    /// Continue, no rewrite.
    fn default() -> Self {
        RcptOutcome {
            verdict: Verdict::Continue,
            rewrite: None,
        }
    }
}

impl From<Verdict> for RcptOutcome {
    /// The verdict, no rewrite.
    fn from(verdict: Verdict) -> Self {
        RcptOutcome {
            verdict,
            rewrite: None,
        }
    }
}

impl RcptOutcome {
    /// Continue with the recipient replaced by `address` (e.g. an alias expansion).
    pub fn rewrite(address: impl Into<String>) -> Self {
        RcptOutcome {
            verdict: Verdict::Continue,
            rewrite: Some(address.into()),
        }
    }
}

impl Default for DataOutcome {
    /// Continue, no header edits, no quarantine.
    fn default() -> Self {
        DataOutcome {
            verdict: Verdict::Continue,
            edits: Vec::new(),
            quarantine: None,
        }
    }
}

impl From<Verdict> for DataOutcome {
    /// The verdict, no edits, no quarantine.
    fn from(verdict: Verdict) -> Self {
        DataOutcome {
            verdict,
            edits: Vec::new(),
            quarantine: None,
        }
    }
}

impl DataOutcome {
    /// Continue with these header edits (applied in order).
    pub fn edits(edits: Vec<HeaderEdit>) -> Self {
        DataOutcome {
            verdict: Verdict::Continue,
            edits,
            quarantine: None,
        }
    }

    /// Accept the message but hold it in quarantine with this reason.
    pub fn quarantine(reason: impl Into<String>) -> Self {
        DataOutcome {
            verdict: Verdict::Continue,
            edits: Vec::new(),
            quarantine: Some(reason.into()),
        }
    }
}

impl Header {
    /// A header from name and value.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl HeaderEdit {
    /// Insert `name: value` at the top of the header block (trace position).
    pub fn prepend(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderEdit::Prepend(Header::new(name, value))
    }

    /// Add `name: value` at the end of the header block.
    pub fn append(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderEdit::Append(Header::new(name, value))
    }

    /// Remove every header called `name`.
    pub fn remove(name: impl Into<String>) -> Self {
        HeaderEdit::Remove(name.into())
    }

    /// Replace the value of the `index`-th (0-based) header called `name`.
    pub fn replace(name: impl Into<String>, index: u32, value: impl Into<String>) -> Self {
        HeaderEdit::Replace(HeaderReplacement {
            name: name.into(),
            index,
            value: value.into(),
        })
    }
}

impl Default for Route {
    /// [`Route::Mx`]: the recipient domain's MX hosts.
    fn default() -> Self {
        Route::Mx
    }
}

impl Route {
    /// `Route::Relay` to `host:port` with the given TLS policy.
    pub fn relay(host: impl Into<String>, port: u16, tls: TlsPolicy) -> Self {
        Route::Relay(NextHop {
            host: host.into(),
            port,
            tls,
        })
    }
}

impl Connection {
    /// The client address parsed (IPv4-mapped IPv6 reads as IPv4); `None` if the host sent
    /// something unparsable.
    pub fn client_addr(&self) -> Option<IpAddr> {
        crate::net::parse_ip(&self.client_ip)
    }

    /// True after a successful SMTP AUTH.
    pub fn is_authenticated(&self) -> bool {
        self.auth_user.as_deref().is_some_and(|u| !u.is_empty())
    }
}

impl Envelope {
    /// True for the null reverse path `<>` (bounces, DSNs).
    pub fn is_null_sender(&self) -> bool {
        self.mail_from.is_empty()
    }

    /// The value of a MAIL FROM parameter, by name (case-insensitive): `None` if absent,
    /// `Some(None)` if present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.mail_params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }
}

impl Message {
    /// The first header of this name (case-insensitive), if any.
    pub fn first_header(&self, name: &str) -> Option<String> {
        self.header(name).into_iter().next()
    }

    /// True if at least one header of this name is present.
    pub fn has_header(&self, name: &str) -> bool {
        !self.header(name).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_text_is_sanitized() {
        let r = Reply::new(550, "5.7.1", "a\r\nb\0c\td ");
        assert_eq!(r.text, "a  b?c d");
        assert_eq!(r.enhanced.as_deref(), Some("5.7.1"));
        assert_eq!(Reply::new(451, "", "x").enhanced, None);
        let long = "é".repeat(300);
        let r = Reply::new(550, "5.7.1", long);
        assert!(r.text.len() <= MAX_REPLY_TEXT);
        assert!(r.text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn helpers() {
        assert_eq!(
            reject(554, "5.7.1", "no").reply().map(|r| r.code),
            Some(554)
        );
        assert!(Verdict::default().is_continue());
        assert_eq!(
            RcptOutcome::from(tempfail(451, "4.7.1", "later")).rewrite,
            None
        );
        assert_eq!(Route::default(), Route::Mx);
        let env = Envelope {
            queue_id: None,
            mail_from: String::new(),
            mail_params: vec![
                ("SIZE".into(), Some("10".into())),
                ("SMTPUTF8".into(), None),
            ],
            recipients: vec![],
            spf: None,
        };
        assert!(env.is_null_sender());
        assert_eq!(env.param("size"), Some(Some("10")));
        assert_eq!(env.param("smtputf8"), Some(None));
        assert_eq!(env.param("body"), None);
    }
}
