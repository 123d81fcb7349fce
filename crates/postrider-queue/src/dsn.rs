//! Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report).
//!
//! A DSN is a `multipart/report; report-type=delivery-status` with three parts: a
//! text/plain explanation, the `message/delivery-status`, and the original message. A
//! failure DSN returns the original in full as `message/rfc822`, unless `RET=HDRS` or it is
//! larger than [`DsnOptions::max_returned_len`], in which case it returns the header
//! section as `text/rfc822-headers`. A delay DSN always returns headers only: `RET`
//! governs failure DSNs (RFC 3461 §4.3), and a warning needs no copy of the whole message.
//!
//! Built by hand rather than with a MIME builder: every part here needs exact control (a
//! `message/rfc822` body must not be transfer-encoded, delivery-status fields have their
//! own syntax, SMTPUTF8 addresses must stay raw UTF-8), leaving a builder only the
//! boundary to do.
//!
//! The output uses CRLF line ends only, and no line exceeds 998 octets: long fields are
//! folded at white space, and lines of the returned message that are too long are broken
//! (header lines with a folding space). Bare CR or LF in the returned message become CRLF.
//!
//! Internationalized mail (RFC 6531/6533): when a delivery-status field would hold
//! non-ASCII text (an SMTPUTF8 address, a UTF-8 reply), that part is sent as
//! `message/global-delivery-status`, with `utf-8;` as the address type of non-ASCII
//! addresses; a returned message whose header section is not ASCII is sent as
//! `message/global` (or `message/global-headers`). Such a DSN needs an SMTPUTF8 transaction:
//! see [`dsn_needs_smtputf8`]. Any DSN with a non-ASCII byte (`!dsn.is_ascii()`) needs at
//! least 8BITMIME.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use postrider_smtp::command::{Notify, Ret};

use crate::{Envelope, Recipient, RetryPolicy};

/// The longest line allowed by RFC 5322, without its CRLF.
const MAX_LINE: usize = 998;

/// Where a long token is cut when it must be, leaving room for a folding space.
const HARD_WRAP: usize = 990;

/// The preferred line width of generated fields and text (RFC 5322's 78, minus a margin).
const SOFT_WRAP: usize = 76;

/// The default for [`DsnOptions::max_returned_len`]: larger originals are returned as headers only.
pub const DEFAULT_MAX_RETURNED_LEN: usize = 1024 * 1024;

/// Which kind of delivery status notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DsnKind {
    /// Delivery failed permanently, or the message expired (`Action: failed`).
    Failure,
    /// Delivery is still being retried (`Action: delayed`).
    Delay,
}

/// One recipient reported in a DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient from the envelope (address, NOTIFY, ORCPT).
    pub recipient: Recipient,
    /// The enhanced status code (RFC 3463), e.g. `"5.1.1"` or `"4.4.1"`.
    pub status: String,
    /// The remote reply, e.g. `"550 5.1.1 no such user"`, if there was one.
    pub diagnostic: Option<String>,
    /// The host name of the remote MTA that gave the reply, if known.
    pub remote_mta: Option<String>,
}

/// Settings of [`build_dsn_with`] that [`build_dsn`] leaves at their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnOptions {
    /// The `Will-Retry-Until` of a delay DSN; `None` means arrival plus the default
    /// [`RetryPolicy::max_age`] (pass the configured deadline, see [`RetryPolicy::deadline_ms`]).
    pub will_retry_until: Option<SystemTime>,
    /// Above this size a failure DSN returns only the original's header section.
    pub max_returned_len: usize,
}

impl Default for DsnOptions {
    fn default() -> Self {
        Self {
            will_retry_until: None,
            max_returned_len: DEFAULT_MAX_RETURNED_LEN,
        }
    }
}

/// Whether a DSN of `kind` should go to the sender for this recipient: never for the null
/// sender; NOTIFY=NEVER → no; an explicit NOTIFY list must contain FAILURE/DELAY; no NOTIFY → yes.
pub fn wants_dsn(envelope: &Envelope, recipient: &Recipient, kind: DsnKind) -> bool {
    if is_null_sender(&envelope.mail_from) {
        return false;
    }
    match recipient.notify {
        None => true,
        Some(Notify::Never) => false,
        Some(Notify::On(on)) => match kind {
            DsnKind::Failure => on.failure,
            DsnKind::Delay => on.delay,
        },
    }
}

/// Whether the DSN for these recipients must be sent with SMTPUTF8 (RFC 6531): the sender
/// or a reported field is non-ASCII, or the original's header section is.
pub fn dsn_needs_smtputf8(
    envelope: &Envelope,
    original: &[u8],
    recipients: &[DsnRecipient],
) -> bool {
    !envelope.mail_from.is_ascii()
        || !header_section(original).is_ascii()
        || recipients.iter().any(|r| {
            !r.recipient.address.is_ascii()
                || r.recipient.orcpt.as_deref().is_some_and(|o| !o.is_ascii())
                || r.diagnostic.as_deref().is_some_and(|d| !d.is_ascii())
                || r.remote_mta.as_deref().is_some_and(|m| !m.is_ascii())
                || !r.status.is_ascii()
        })
        || envelope.envid.as_deref().is_some_and(|e| !e.is_ascii())
}

/// Builds the DSN (see the module docs for its layout) from `MAILER-DAEMON@<reporting_mta>`
/// to the original sender, with default [`DsnOptions`].
pub fn build_dsn(
    reporting_mta: &str,
    envelope: &Envelope,
    original: &[u8],
    recipients: &[DsnRecipient],
    kind: DsnKind,
    now: SystemTime,
) -> Vec<u8> {
    build_dsn_with(
        reporting_mta,
        envelope,
        original,
        recipients,
        kind,
        now,
        &DsnOptions::default(),
    )
}

/// Like [`build_dsn`], with explicit [`DsnOptions`].
pub fn build_dsn_with(
    reporting_mta: &str,
    envelope: &Envelope,
    original: &[u8],
    recipients: &[DsnRecipient],
    kind: DsnKind,
    now: SystemTime,
    options: &DsnOptions,
) -> Vec<u8> {
    let host = sanitize(reporting_mta);
    let arrival = envelope.received_at_unix_ms;
    let retry_until = options
        .will_retry_until
        .map_or_else(|| RetryPolicy::default().deadline_ms(arrival), unix_ms);

    // Part 3 first, so the explanation can say what was attached.
    let headers_only_wanted = kind == DsnKind::Delay || envelope.ret == Some(Ret::Hdrs);
    let too_large = !headers_only_wanted && original.len() > options.max_returned_len;
    let headers = header_section(original);
    let global_original = !headers.is_ascii();
    let (original_type, original_body) = if headers_only_wanted || too_large {
        let ct = if global_original {
            "message/global-headers"
        } else {
            "text/rfc822-headers"
        };
        (ct, normalize(headers, headers.len()))
    } else {
        let ct = if global_original {
            "message/global"
        } else {
            "message/rfc822"
        };
        (ct, normalize(original, headers.len()))
    };

    let text = human_text(&host, envelope, recipients, kind, retry_until, too_large);
    let status = delivery_status(&host, envelope, recipients, kind, arrival, retry_until);
    let status_type = if status.is_ascii() {
        "message/delivery-status"
    } else {
        "message/global-delivery-status"
    };

    let parts: [(String, &[u8]); 3] = [
        (
            format!(
                "Content-Type: text/plain; charset={}\r\n\
                 Content-Description: Notification\r\n\
                 Content-Transfer-Encoding: {}\r\n",
                if text.is_ascii() { "us-ascii" } else { "utf-8" },
                cte(text.as_bytes()),
            ),
            text.as_bytes(),
        ),
        (
            format!(
                "Content-Type: {status_type}\r\n\
                 Content-Description: Delivery report\r\n\
                 Content-Transfer-Encoding: {}\r\n",
                cte(status.as_bytes()),
            ),
            status.as_bytes(),
        ),
        (
            format!(
                "Content-Type: {original_type}\r\n\
                 Content-Description: {}\r\n\
                 Content-Transfer-Encoding: {}\r\n",
                if original_type.ends_with("headers") {
                    "Undelivered Message Headers"
                } else {
                    "Undelivered Message"
                },
                cte(&original_body),
            ),
            &original_body,
        ),
    ];

    let boundary = unique_token(|candidate| {
        parts
            .iter()
            .all(|(_, body)| !contains(body, candidate.as_bytes()))
    });
    let (subject, action_word) = match kind {
        DsnKind::Failure => ("Undelivered Mail Returned to Sender", "failure"),
        DsnKind::Delay => ("Delayed Mail (still being retried)", "delay"),
    };
    let eight_bit = parts.iter().any(|(_, body)| !body.is_ascii());

    let mut out = String::new();
    push_field(
        &mut out,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    push_field(
        &mut out,
        "To",
        &format!("<{}>", sanitize(&envelope.mail_from)),
    );
    push_field(&mut out, "Subject", subject);
    push_field(&mut out, "Date", &rfc5322_date(unix_ms(now)));
    push_field(
        &mut out,
        "Message-ID",
        &format!("<{}.{action_word}@{host}>", unique_token(|_| true)),
    );
    push_field(
        &mut out,
        "Auto-Submitted",
        "auto-replied (delivery status notification)",
    );
    push_field(&mut out, "MIME-Version", "1.0");
    push_field(
        &mut out,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    push_field(
        &mut out,
        "Content-Transfer-Encoding",
        if eight_bit { "8bit" } else { "7bit" },
    );
    out.push_str("\r\nThis is a MIME-encapsulated message.\r\n");

    let mut bytes = out.into_bytes();
    for (head, body) in &parts {
        bytes.extend_from_slice(b"\r\n--");
        bytes.extend_from_slice(boundary.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(head.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        // Every part body ends with CRLF; the delimiter's CRLF belongs to the delimiter.
    }
    bytes.extend_from_slice(b"\r\n--");
    bytes.extend_from_slice(boundary.as_bytes());
    bytes.extend_from_slice(b"--\r\n");
    bytes
}

/// The text/plain part: what happened, in words.
fn human_text(
    host: &str,
    envelope: &Envelope,
    recipients: &[DsnRecipient],
    kind: DsnKind,
    retry_until: u64,
    too_large: bool,
) -> String {
    let mut paragraphs: Vec<String> = vec![format!("This is the mail system at host {host}.")];
    match kind {
        DsnKind::Failure => {
            paragraphs.push(
                "I'm sorry to have to inform you that your message could not be delivered \
                 to one or more recipients."
                    .to_owned(),
            );
            paragraphs.push(if too_large {
                "The message was too large to return in full; its header section is attached \
                 below."
                    .to_owned()
            } else {
                "It is attached below.".to_owned()
            });
        }
        DsnKind::Delay => {
            paragraphs
                .push("THIS IS A WARNING ONLY. YOU DO NOT NEED TO RESEND YOUR MESSAGE.".to_owned());
            paragraphs.push(format!(
                "Your message, received {}, could not be delivered yet to one or more \
                 recipients. The mail system will keep trying until {}.",
                rfc5322_date(envelope.received_at_unix_ms),
                rfc5322_date(retry_until),
            ));
        }
    }
    paragraphs.push(
        "For further assistance, please contact your postmaster, and include this \
         problem report."
            .to_owned(),
    );
    for r in recipients {
        let reason = match (&r.diagnostic, &r.remote_mta) {
            (Some(d), Some(m)) => format!("host {m} said: {d}"),
            (Some(d), None) => d.clone(),
            (None, _) => format!("status {}", r.status),
        };
        paragraphs.push(format!("<{}>: {}", r.recipient.address, reason));
    }

    let mut text = String::new();
    for (i, paragraph) in paragraphs.iter().enumerate() {
        if i > 0 {
            text.push_str("\r\n");
        }
        for line in wrap(&sanitize(paragraph), "") {
            text.push_str(&line);
            text.push_str("\r\n");
        }
    }
    text
}

/// The message/delivery-status body (RFC 3464 §2).
fn delivery_status(
    host: &str,
    envelope: &Envelope,
    recipients: &[DsnRecipient],
    kind: DsnKind,
    arrival: u64,
    retry_until: u64,
) -> String {
    let mut out = String::new();
    push_field(&mut out, "Reporting-MTA", &format!("dns; {host}"));
    if let Some(envid) = &envelope.envid {
        push_field(&mut out, "Original-Envelope-Id", envid);
    }
    push_field(&mut out, "Arrival-Date", &rfc5322_date(arrival));
    for r in recipients {
        out.push_str("\r\n");
        if let Some(orcpt) = &r.recipient.orcpt {
            push_field(&mut out, "Original-Recipient", &typed_address(orcpt));
        }
        let address = &r.recipient.address;
        let addr_type = if address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        push_field(
            &mut out,
            "Final-Recipient",
            &format!("{addr_type}; {address}"),
        );
        let action = match kind {
            DsnKind::Failure => "failed",
            DsnKind::Delay => "delayed",
        };
        push_field(&mut out, "Action", action);
        push_field(&mut out, "Status", &r.status);
        if let Some(mta) = &r.remote_mta {
            push_field(&mut out, "Remote-MTA", &format!("dns; {mta}"));
        }
        if let Some(diagnostic) = &r.diagnostic {
            push_field(&mut out, "Diagnostic-Code", &format!("smtp; {diagnostic}"));
        }
        if kind == DsnKind::Delay {
            push_field(&mut out, "Will-Retry-Until", &rfc5322_date(retry_until));
        }
    }
    out
}

/// An ORCPT value as stored (`type;address`) written as `type; address`.
fn typed_address(orcpt: &str) -> String {
    match orcpt.split_once(';') {
        Some((addr_type, address)) => format!("{}; {}", addr_type.trim(), address.trim()),
        None => format!("rfc822; {orcpt}"),
    }
}

/// Whether `mail_from` is the null reverse-path.
fn is_null_sender(mail_from: &str) -> bool {
    let trimmed = mail_from.trim();
    trimmed.is_empty() || trimmed == "<>"
}

/// The header section of a message: everything before the first empty line, including
/// the last header line's line end (the whole message if it has no body).
fn header_section(message: &[u8]) -> &[u8] {
    let mut line_start = 0;
    while line_start < message.len() {
        let rest = &message[line_start..];
        if rest.starts_with(b"\r\n") || rest.starts_with(b"\n") {
            return &message[..line_start];
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(end) => line_start += end + 1,
            None => break,
        }
    }
    message
}

/// Copies `data` with CRLF line ends only and no line over 998 octets; a line ending
/// without CRLF is terminated. Long lines in the first `header_len` bytes are folded
/// (continued with a space), later ones broken.
fn normalize(data: &[u8], header_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 2);
    let mut col = 0usize;
    let mut i = 0;
    while let Some(&b) = data.get(i) {
        match b {
            b'\r' => {
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
                col = 0;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                col = 0;
            }
            _ => {
                // Break before a new character once past HARD_WRAP (never inside a UTF-8
                // sequence unless the line runs out entirely).
                let continuation = (0x80..0xC0).contains(&b);
                if col >= MAX_LINE || (col >= HARD_WRAP && !continuation) {
                    out.extend_from_slice(b"\r\n");
                    col = 0;
                    if i < header_len {
                        out.push(b' ');
                        col = 1;
                    }
                }
                out.push(b);
                col += 1;
            }
        }
        i += 1;
    }
    if col > 0 {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Replaces control characters (CR, LF, TAB, …) with spaces, so text cannot break lines.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Appends `Name: value` folded at white space (preferably within 76 columns, always
/// within 998 octets), after replacing control characters.
fn push_field(out: &mut String, name: &str, value: &str) {
    let value = sanitize(value);
    let lines = wrap(&format!("{name}: {}", value.trim()), " ");
    for line in lines {
        out.push_str(&line);
        out.push_str("\r\n");
    }
}

/// Splits `text` at spaces into lines of at most [`SOFT_WRAP`] octets where possible;
/// words longer than [`HARD_WRAP`] are cut. Lines after the first start with `indent`.
fn wrap(text: &str, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    // Whether `line` holds a word yet (besides the indent).
    let mut has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for chunk in chunks(word, HARD_WRAP - indent.len()) {
            if has_word && line.len() + 1 + chunk.len() > SOFT_WRAP {
                lines.push(std::mem::take(&mut line));
                line.push_str(indent);
                has_word = false;
            }
            if has_word {
                line.push(' ');
            }
            line.push_str(chunk);
            has_word = true;
        }
    }
    if has_word {
        lines.push(line);
    }
    lines
}

/// Splits `word` into pieces of at most `max` bytes on character boundaries.
fn chunks(mut word: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    while word.len() > max {
        let mut cut = max;
        while !word.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = word.split_at(cut);
        out.push(head);
        word = tail;
    }
    out.push(word);
    out
}

/// The Content-Transfer-Encoding label for a body that is never encoded.
fn cte(body: &[u8]) -> &'static str {
    if body.is_ascii() { "7bit" } else { "8bit" }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A process-unique random token (for boundaries and Message-IDs) that satisfies `ok`.
fn unique_token(ok: impl Fn(&str) -> bool) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    loop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(seq);
        let token = format!("{nanos:x}.{:016x}", hasher.finish());
        if ok(&token) {
            return token;
        }
    }
}

/// A `SystemTime` in milliseconds since the Unix epoch (0 before it, saturating).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An RFC 5322 date-time in UTC, e.g. `Tue, 14 Nov 2023 22:13:20 +0000` (clamped to
/// the latest date chrono can represent).
fn rfc5322_date(unix_ms: u64) -> String {
    let date = i64::try_from(unix_ms)
        .ok()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    date.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
