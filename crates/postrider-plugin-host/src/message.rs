//! The message a data-stage plugin reads on demand, backed by mail-parser on the host, so a
//! plugin that reads one header copies nothing else into its memory.

use std::sync::{Arc, OnceLock};

use mail_parser::{MessageParser, MimeHeaders};

use crate::bindings::postrider::plugin::message::{Attachment, Authentication};
use crate::bindings::postrider::plugin::types::AuthResult;
use crate::edits;

/// Body changes one plugin's call asked for through its `message` (`set-body`, `append-text`),
/// checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyChanges {
    /// The body to put in place of the message's (CRLF line ends).
    pub body: Option<Vec<u8>>,
    /// Texts to append as text/plain parts, in order.
    pub texts: Vec<String>,
}

/// Longest text `append-text` takes.
pub const MAX_APPENDED_TEXT: usize = 64 * 1024;
/// Most `append-text` calls per plugin per data stage.
pub const MAX_APPENDED_TEXTS: usize = 8;

/// The host side of the `message` resource: the raw bytes, shared, plus verification results,
/// and the body changes of the call it is lent to.
#[derive(Debug, Clone)]
pub struct MessageView {
    raw: Arc<[u8]>,
    /// The parsed header list, shared by the clones lent to each plugin: parsed once per
    /// message however many plugins and calls ask.
    headers: Arc<OnceLock<Vec<(String, String)>>>,
    auth: Authentication,
    /// The largest body `set-body` takes (the message size limit).
    max_size: u64,
    changes: BodyChanges,
}

impl MessageView {
    /// The same view taking bodies of at most `max` octets (default: 64 MiB).
    pub fn with_max_size(mut self, max: u64) -> MessageView {
        self.max_size = max;
        self
    }

    /// `set-body`: checks and keeps `body` (CRLF line ends) for when the stage is over.
    pub fn set_body(&mut self, body: &[u8]) -> Result<(), String> {
        // Refused before it is copied when it cannot fit even before CRLF conversion.
        if body.len() as u64 > self.max_size {
            return Err(format!("a body over {} octets", self.max_size));
        }
        self.changes.body = Some(edits::checked_body(&self.raw, body, self.max_size)?);
        Ok(())
    }

    /// `append-text`: checks and keeps `text` for when the stage is over.
    pub fn append_text(&mut self, text: &str) -> Result<(), String> {
        if text.len() > MAX_APPENDED_TEXT || text.contains('\0') {
            return Err(format!(
                "a text over {MAX_APPENDED_TEXT} octets or with a NUL"
            ));
        }
        if self.changes.texts.len() >= MAX_APPENDED_TEXTS {
            return Err(format!("more than {MAX_APPENDED_TEXTS} texts"));
        }
        if text
            .split('\n')
            .any(|line| line.trim_end_matches('\r').len() > 998)
        {
            return Err("a text line over 998 octets".to_owned());
        }
        // A line that is the message's boundary would end its part (or the message) early.
        if let Some(boundary) = edits::message_boundary(&self.raw) {
            let delimiter = format!("--{boundary}");
            if text
                .split('\n')
                .any(|line| line.trim_end().starts_with(&delimiter))
            {
                return Err("a text holding the message's MIME boundary".to_owned());
            }
        }
        self.changes.texts.push(text.to_owned());
        Ok(())
    }

    /// The body changes asked for so far, taken.
    pub fn take_changes(&mut self) -> BodyChanges {
        std::mem::take(&mut self.changes)
    }

    /// The whole message.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.raw
    }

    /// A view of `raw` (the message as received, CRLF line ends).
    pub fn new(raw: Arc<[u8]>) -> MessageView {
        MessageView {
            raw,
            headers: Arc::default(),
            auth: Authentication {
                dkim: Vec::new(),
                dmarc: AuthResult::None,
                arc: AuthResult::None,
            },
            max_size: 64 << 20,
            changes: BodyChanges::default(),
        }
    }

    /// The same view with these DKIM, DMARC and ARC results, as the relay verified them.
    pub fn with_authentication(mut self, auth: Authentication) -> MessageView {
        self.auth = auth;
        self
    }

    /// Size in octets.
    pub fn size(&self) -> u64 {
        self.raw.len() as u64
    }

    /// Every header, in order, unfolded and RFC 2047-decoded.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.parsed_headers().to_vec()
    }

    /// Values of the headers called `name` (case-insensitive), in order.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.parsed_headers()
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn parsed_headers(&self) -> &[(String, String)] {
        self.headers.get_or_init(|| {
            let Some(msg) = MessageParser::new().parse_headers(&self.raw[..]) else {
                return Vec::new();
            };
            msg.headers()
                .iter()
                .map(|h| {
                    let raw = &self.raw[h.offset_start() as usize..h.offset_end() as usize];
                    (h.name().to_owned(), unfold(raw))
                })
                .collect()
        })
    }

    /// The decoded body text (text/plain, or HTML reduced to text), cut at `max` bytes on a
    /// character boundary.
    pub fn text(&self, max: u32) -> String {
        let Some(msg) = MessageParser::default().parse(&self.raw[..]) else {
            return String::new();
        };
        let text = msg.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
        truncate(text, max as usize)
    }

    /// The attachments: file name, content type, decoded size.
    pub fn attachments(&self) -> Vec<Attachment> {
        let Some(msg) = MessageParser::default().parse(&self.raw[..]) else {
            return Vec::new();
        };
        msg.attachments()
            .map(|part| Attachment {
                name: part.attachment_name().map(str::to_owned),
                content_type: part
                    .content_type()
                    .map(|ct| match ct.subtype() {
                        Some(sub) => format!("{}/{}", ct.ctype(), sub),
                        None => ct.ctype().to_owned(),
                    })
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                size: part.contents().len() as u64,
            })
            .collect()
    }

    /// At most `len` raw bytes from `offset` (empty past the end).
    pub fn raw(&self, offset: u64, len: u32) -> Vec<u8> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.raw.len());
        let end = start.saturating_add(len as usize).min(self.raw.len());
        self.raw[start..end].to_vec()
    }

    /// DKIM, DMARC and ARC results (none until the authentication stage fills them in).
    pub fn authentication(&self) -> Authentication {
        self.auth.clone()
    }
}

/// A raw header value without its folding and surrounding white space, decoded per RFC 2047
/// where it is an encoded word.
fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let unfolded: String = text
        .split("\r\n")
        .map(|l| l.trim_end_matches('\n'))
        .collect::<Vec<_>>()
        .join("");
    let trimmed = unfolded.trim();
    if trimmed.contains("=?") {
        // Parsed as an unstructured field (like Subject), which decodes encoded words.
        let header = format!("Subject: {trimmed}\r\n\r\n");
        if let Some(msg) = MessageParser::new().parse_headers(header.as_bytes())
            && let Some(value) = msg.subject()
        {
            return value.to_owned();
        }
    }
    trimmed.to_owned()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\nX-Folded: one\r\n two\r\nTo: a@b.test\r\nx-folded: three\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello world\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n";

    fn view() -> MessageView {
        MessageView::new(Arc::from(MSG))
    }

    #[test]
    fn headers_in_order_unfolded_and_decoded() {
        let headers = view().headers();
        assert_eq!(headers[0], ("Subject".to_owned(), "Grüße".to_owned()));
        assert_eq!(headers[1], ("X-Folded".to_owned(), "one two".to_owned()));
        assert_eq!(view().header("X-FOLDED"), ["one two", "three"]);
        assert!(view().header("Missing").is_empty());
    }

    #[test]
    fn body_text_attachments_raw() {
        let v = view();
        assert_eq!(v.text(1000).trim(), "hello world");
        assert_eq!(v.text(5), "hello");
        let atts = v.attachments();
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0].name.as_deref(), Some("r.pdf"));
        assert_eq!(atts[0].content_type, "application/pdf");
        assert_eq!(atts[0].size, 3);
        assert_eq!(v.raw(0, 8), b"Subject:");
        assert!(v.raw(10_000, 8).is_empty());
        assert_eq!(v.raw(u64::MAX, u32::MAX).len(), 0);
        assert_eq!(v.size(), MSG.len() as u64);
    }

    #[test]
    fn garbage_does_not_panic() {
        let v = MessageView::new(Arc::from(&b"\xff\xfe\r\n\r\n:::"[..]));
        let _ = (v.headers(), v.text(10), v.attachments());
    }
}
