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
    let mut out = Vec::with_capacity(head.len() + 2 + body.len());
    out.extend_from_slice(head);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The header fields of `message` as (name, everything after the colon without the last
/// CRLF, continuation lines included), and the body after the empty line.
pub(crate) fn fields(message: &[u8]) -> (Vec<(&str, &[u8])>, &[u8]) {
    let (head, rest) = split(message);
    let body = rest.get(2..).unwrap_or_default();
    let mut out = Vec::new();
    let mut offset = 0;
    for f in split_fields(head) {
        let len = f.raw.len();
        let raw = &head[offset..offset + len];
        offset += len;
        let value = raw
            .iter()
            .position(|&b| b == b':')
            .map_or(&raw[..0], |i| &raw[i + 1..]);
        out.push((f.name, value.strip_suffix(b"\r\n").unwrap_or(value)));
    }
    (out, body)
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
