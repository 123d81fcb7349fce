//! Applies data-stage header edits to a message's header block, and body replacements.

use crate::HeaderEdit;

/// One header field: its name and its raw lines (with continuation lines and CRLFs).
struct Field<'a> {
    name: &'a str,
    raw: Vec<u8>,
}

/// Returns `message` with `edits` applied in order. Only the header block (up to the first
/// empty line) changes; the body is copied unchanged. Values were validated (plugins: one
/// line; milters: folded with CRLF and white space).
pub fn apply_edits(message: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    if edits.is_empty() {
        return message.to_vec();
    }
    let (head, body) = split(message);
    let mut fields = split_fields(head);
    for edit in edits {
        match edit {
            HeaderEdit::Prepend { name, value } => fields.insert(0, field(name, value)),
            HeaderEdit::Append { name, value } => fields.push(field(name, value)),
            HeaderEdit::Insert { index, name, value } => {
                let at = (*index as usize).min(fields.len());
                fields.insert(at, field(name, value));
            }
            HeaderEdit::Change { name, index, value } => {
                match fields
                    .iter_mut()
                    .filter(|f| f.name.eq_ignore_ascii_case(name))
                    .nth(*index as usize)
                {
                    Some(f) => f.raw = field(f.name, value).raw,
                    None => fields.push(field(name, value)),
                }
            }
            HeaderEdit::Delete { name, index } => {
                if let Some(at) = fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name.eq_ignore_ascii_case(name))
                    .nth(*index as usize)
                    .map(|(i, _)| i)
                {
                    fields.remove(at);
                }
            }
            HeaderEdit::Remove { name } => fields.retain(|f| !f.name.eq_ignore_ascii_case(name)),
            HeaderEdit::Replace { name, index, value } => {
                if let Some(f) = fields
                    .iter_mut()
                    .filter(|f| f.name.eq_ignore_ascii_case(name))
                    .nth(*index as usize)
                {
                    f.raw = field(f.name, value).raw;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(message.len() + 256);
    for f in &fields {
        out.extend_from_slice(&f.raw);
    }
    out.extend_from_slice(body);
    out
}

fn field<'a>(name: &'a str, value: &str) -> Field<'a> {
    let gap = if value.starts_with([' ', '\t']) {
        ""
    } else {
        " "
    };
    Field {
        name,
        raw: format!("{name}:{gap}{value}\r\n").into_bytes(),
    }
}

/// The header block (with its last CRLF, without the empty line) and the body (from the
/// empty line on).
fn split(message: &[u8]) -> (&[u8], &[u8]) {
    match find(message, b"\r\n\r\n") {
        Some(i) => (&message[..i + 2], &message[i + 2..]),
        None if message.starts_with(b"\r\n") => (&message[..0], message),
        None => (message, &b""[..]),
    }
}

/// Returns `message` with its body (after the empty line) replaced by `body`; a message
/// without one gets the empty line.
pub fn replace_body(message: &[u8], body: &[u8]) -> Vec<u8> {
    let (head, _) = split(message);
    let mut out = Vec::with_capacity(head.len() + 4 + body.len());
    out.extend_from_slice(head);
    // A header block whose last line has no CRLF (a BDAT message may end so) gets one.
    if !head.is_empty() && !head.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The header fields of `message` as (name, everything after the colon without the last
/// CRLF, continuation lines included), and the body after the empty line.
pub(crate) fn fields(message: &[u8]) -> (Vec<(&str, Vec<u8>)>, &[u8]) {
    let (head, rest) = split(message);
    let body = rest.get(2..).unwrap_or_default();
    let out = split_fields(head)
        .into_iter()
        .map(|f| {
            let value = f
                .raw
                .iter()
                .position(|&b| b == b':')
                .map_or(&f.raw[..0], |i| &f.raw[i + 1..]);
            let value = value.strip_suffix(b"\r\n").unwrap_or(value).to_vec();
            (f.name, value)
        })
        .collect();
    (out, body)
}

/// The boundary of `message`'s top-level multipart Content-Type, if it has one.
pub(crate) fn message_boundary(message: &[u8]) -> Option<String> {
    let (fields, _) = fields(message);
    let (_, value) = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Type"))?;
    boundary(&String::from_utf8_lossy(value).replace("\r\n", ""))
}

/// A new body for `message`, as it will be stored: CRLF line ends, at most `max` octets, no
/// NUL, no line over 998 octets, and when the message is multipart (its headers stay) the
/// closing line of its boundary. The error says what is wrong.
pub(crate) fn checked_body(message: &[u8], body: &[u8], max: u64) -> Result<Vec<u8>, String> {
    let body = crlf(body);
    if body.len() as u64 > max {
        return Err(format!("a body over {max} octets"));
    }
    if body.contains(&0) {
        return Err("a body with a NUL".to_owned());
    }
    if body.split(|&b| b == b'\n').any(|line| line.len() > 999) {
        return Err("a body line over 998 octets".to_owned());
    }
    if let Some(boundary) = message_boundary(message) {
        let close = format!("--{boundary}--");
        let closes = body
            .split(|&b| b == b'\n')
            .any(|line| line.trim_ascii_end() == close.as_bytes());
        if !closes {
            return Err(format!(
                "the message is multipart: the body must close its boundary ({close})"
            ));
        }
    }
    Ok(body)
}

/// `body` with every line ending CRLF (a bare CR or LF becomes one), ending with one.
pub(crate) fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = postrider_smtp::to_crlf(body);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The `boundary` parameter of a multipart Content-Type value (unfolded), if it has one.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty() && value.len() <= 70).then(|| value.to_owned())
    })
}

/// Returns `message` with `text` appended as a text/plain part: one more part of a
/// multipart/mixed message (before its closing boundary), or else the message becomes
/// multipart/mixed with its body, under its own Content-* headers, as the first part. The
/// bytes of the existing parts are not changed.
pub fn append_text_part(message: &[u8], text: &str) -> Vec<u8> {
    let (head, rest) = split(message);
    let body = rest.get(2..).unwrap_or_default();
    let fields = split_fields(head);
    let unfolded = |f: &Field<'_>| {
        let raw = String::from_utf8_lossy(&f.raw).replace("\r\n", "");
        raw.split_once(':').map(|(_, v)| v.trim().to_owned())
    };
    let content_type = fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("Content-Type"))
        .and_then(unfolded)
        .unwrap_or_default();
    let text = crlf(text.as_bytes());
    let encoding = if text.is_ascii() { "7bit" } else { "8bit" };
    let mut part = format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n"
    )
    .into_bytes();
    part.extend_from_slice(text.strip_suffix(b"\r\n").unwrap_or(&text));
    let mixed = content_type
        .to_ascii_lowercase()
        .starts_with("multipart/mixed");
    if let Some(b) = boundary(&content_type).filter(|_| mixed) {
        let close = format!("\r\n--{b}--");
        if let Some(at) = rfind(body, close.as_bytes()) {
            let mut out = Vec::with_capacity(message.len() + part.len() + b.len() + 8);
            out.extend_from_slice(&message[..message.len() - body.len() + at]);
            out.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
            out.extend_from_slice(&part);
            out.extend_from_slice(&body[at..]);
            return out;
        }
    }
    // A boundary found nowhere in the message.
    let mut boundary = format!("=_postrider_{:016x}", fnv(message));
    while find(message, boundary.as_bytes()).is_some() || find(&part, boundary.as_bytes()).is_some()
    {
        boundary.push('_');
    }
    let mut out = Vec::with_capacity(message.len() + part.len() + 256);
    let mut inner = Vec::new();
    let mut has_version = false;
    for f in &fields {
        if f.name
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("Content-"))
        {
            inner.extend_from_slice(&f.raw);
        } else {
            has_version |= f.name.eq_ignore_ascii_case("MIME-Version");
            out.extend_from_slice(&f.raw);
        }
    }
    if !has_version {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(&inner);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    out.extend_from_slice(&part);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// FNV-1a of `bytes`: a boundary that differs from message to message.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_fields(head: &[u8]) -> Vec<Field<'_>> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut rest = head;
    while !rest.is_empty() {
        let end = find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let line = &rest[..end];
        rest = &rest[end..];
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(last) if continuation => last.raw.extend_from_slice(line),
            _ => {
                let name = line
                    .iter()
                    .position(|&b| b == b':')
                    .and_then(|i| std::str::from_utf8(&line[..i]).ok())
                    .map_or("", str::trim);
                fields.push(Field {
                    name,
                    raw: line.to_vec(),
                });
            }
        }
    }
    // A last line without CRLF (a BDAT message may end so) gets one: a field added after it
    // must not run on in it.
    if let Some(last) = fields.last_mut()
        && !last.raw.ends_with(b"\r\n")
    {
        last.raw.extend_from_slice(b"\r\n");
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from a\r\n\tby b\r\nSubject: hi\r\nX-Spam: yes\r\nx-spam: also\r\n\r\nbody\r\nX-Spam: not a header\r\n";

    fn apply(edits: &[HeaderEdit]) -> String {
        String::from_utf8(apply_edits(MSG, edits)).unwrap()
    }

    #[test]
    fn prepend_append_remove_replace() {
        let out = apply(&[
            HeaderEdit::Prepend {
                name: "X-First".into(),
                value: "1".into(),
            },
            HeaderEdit::Append {
                name: "X-Last".into(),
                value: "2".into(),
            },
            HeaderEdit::Remove {
                name: "x-SPAM".into(),
            },
            HeaderEdit::Replace {
                name: "subject".into(),
                index: 0,
                value: "changed".into(),
            },
        ]);
        assert_eq!(
            out,
            "X-First: 1\r\nReceived: from a\r\n\tby b\r\nSubject: changed\r\nX-Last: 2\r\n\r\nbody\r\nX-Spam: not a header\r\n"
        );
    }

    #[test]
    fn replace_out_of_range_changes_nothing() {
        let out = apply(&[HeaderEdit::Replace {
            name: "X-Spam".into(),
            index: 5,
            value: "v".into(),
        }]);
        assert_eq!(out.as_bytes(), MSG);
        let out = apply(&[HeaderEdit::Replace {
            name: "X-Spam".into(),
            index: 1,
            value: "v".into(),
        }]);
        assert!(out.contains("X-Spam: yes\r\nx-spam: v\r\n\r\n"), "{out}");
    }

    #[test]
    fn insert_and_delete_by_position() {
        let out = apply(&[
            HeaderEdit::Insert {
                index: 1,
                name: "X-Second".into(),
                value: " folded\r\n\tvalue".into(),
            },
            HeaderEdit::Delete {
                name: "X-SPAM".into(),
                index: 1,
            },
            HeaderEdit::Insert {
                index: 99,
                name: "X-End".into(),
                value: "e".into(),
            },
        ]);
        assert_eq!(
            out,
            "Received: from a\r\n\tby b\r\nX-Second: folded\r\n\tvalue\r\nSubject: hi\r\nX-Spam: yes\r\nX-End: e\r\n\r\nbody\r\nX-Spam: not a header\r\n"
        );
    }

    #[test]
    fn a_header_block_without_its_last_crlf_is_not_run_into() {
        let edits = [HeaderEdit::Append {
            name: "X-Spam-Status".into(),
            value: "yes".into(),
        }];
        assert_eq!(
            apply_edits(b"Subject: buy now", &edits),
            b"Subject: buy now\r\nX-Spam-Status: yes\r\n"
        );
        assert_eq!(
            replace_body(b"Subject: x", b"new\r\n"),
            b"Subject: x\r\n\r\nnew\r\n"
        );
        let out = append_text_part(b"Subject: x", "footer");
        assert!(
            out.starts_with(b"Subject: x\r\nMIME-Version: 1.0\r\n"),
            "{out:?}"
        );
        // A milter's change past the last header of that name adds one.
        let out = apply_edits(
            b"Subject: x\r\n\r\nb\r\n",
            &[HeaderEdit::Change {
                name: "X-Spam".into(),
                index: 0,
                value: "no".into(),
            }],
        );
        assert_eq!(out, b"Subject: x\r\nX-Spam: no\r\n\r\nb\r\n");
    }

    #[test]
    fn bodies_are_replaced_and_lines_end_with_crlf() {
        assert_eq!(
            replace_body(MSG, b"new\r\n"),
            b"Received: from a\r\n\tby b\r\nSubject: hi\r\nX-Spam: yes\r\nx-spam: also\r\n\r\nnew\r\n"
        );
        assert_eq!(
            replace_body(b"Subject: x\r\n", b"b\r\n"),
            b"Subject: x\r\n\r\nb\r\n"
        );
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(crlf(b""), b"");
        assert_eq!(crlf(b"x\r\n"), b"x\r\n");
    }

    #[test]
    fn boundaries_are_read_from_multipart_types_only() {
        assert_eq!(
            boundary("multipart/mixed; boundary=\"a b\""),
            Some("a b".into())
        );
        assert_eq!(
            boundary("Multipart/Alternative; charset=x; BOUNDARY=xyz"),
            Some("xyz".into())
        );
        assert_eq!(boundary("text/plain; boundary=xyz"), None);
        assert_eq!(boundary("multipart/mixed"), None);
        assert_eq!(boundary("multipart/mixed; boundary=\"\""), None);
    }

    fn parts(message: &[u8]) -> Vec<(String, String)> {
        use mail_parser::MimeHeaders;
        let parsed = mail_parser::MessageParser::default()
            .parse(message)
            .unwrap();
        parsed
            .parts
            .iter()
            .filter(|p| !matches!(p.body, mail_parser::PartType::Multipart(_)))
            .map(|p| {
                let ct = p
                    .content_type()
                    .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or("")))
                    .unwrap_or_default();
                let text = match &p.body {
                    mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => {
                        t.to_string()
                    }
                    other => format!("{other:?}"),
                };
                (ct, text)
            })
            .collect()
    }

    #[test]
    fn a_text_part_wraps_a_single_part_message() {
        let message = b"From: a@b.test\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\nSubject: s\r\n\r\n<p>caf=C3=A9</p>\r\n";
        let out = append_text_part(message, "-- \nSent through Postrider \u{2709}");
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("From: a@b.test\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\""), "{text}");
        // The original body's bytes are untouched, under its own headers.
        assert!(text.contains("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>caf=C3=A9</p>\r\n\r\n--"), "{text}");
        assert_eq!(
            parts(&out),
            [
                ("text/html".into(), "<p>café</p>\r\n".into()),
                (
                    "text/plain".into(),
                    "-- \r\nSent through Postrider \u{2709}".into()
                )
            ]
        );
        // A message without headers about content: its part has none either (text/plain by
        // default, RFC 2046 section 5.1).
        let out = append_text_part(b"Subject: s\r\n\r\nhello\r\n", "footer");
        assert_eq!(
            parts(&out),
            [
                ("".into(), "hello\r\n".into()),
                ("text/plain".into(), "footer".into())
            ]
        );
    }

    #[test]
    fn a_text_part_joins_a_mixed_message_before_its_closing_boundary() {
        let message = b"Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\none\r\n--XX--\r\nepilogue\r\n";
        let out = append_text_part(message, "two");
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\none\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\ntwo\r\n--XX--\r\nepilogue\r\n"
        );
        assert_eq!(
            parts(&out),
            [
                ("text/plain".into(), "one".into()),
                ("text/plain".into(), "two".into())
            ]
        );
    }

    #[test]
    fn message_without_body_or_headers() {
        let edits = [HeaderEdit::Append {
            name: "X-A".into(),
            value: "1".into(),
        }];
        assert_eq!(
            apply_edits(b"Subject: x\r\n", &edits),
            b"Subject: x\r\nX-A: 1\r\n"
        );
        assert_eq!(
            apply_edits(b"\r\nbody\r\n", &edits),
            b"X-A: 1\r\n\r\nbody\r\n"
        );
    }
}
