//! The message view plugins read (`MessageView`) and the header edits applied for them
//! (`apply_edits`) on arbitrary message bytes.
//!
//! Properties checked: accessors never panic and stay within their bounds (`raw`, `text`);
//! `header(name)` is the case-insensitive selection of `headers()`; edits leave the body (from
//! the first empty line on) untouched, no edits leave the message untouched, a last Prepend
//! or Append puts its field first or last in the header block, and after a Remove no field
//! of that name is left. Body changes: a body `set_body` accepts has CRLF line ends only and
//! `replace_body` keeps the header block; `append_text_part` never panics and the text is in
//! its result, which parses again.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use postrider_fuzz::Rng;
use postrider_plugin_host::HeaderEdit;
use postrider_plugin_host::{MessageView, append_text_part, apply_edits, replace_body};

fuzz_target!(|raw: &[u8]| {
    let view = MessageView::new(Arc::from(raw));
    assert_eq!(view.size(), raw.len() as u64);

    let headers = view.headers();
    let mut names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    names.extend(["subject", "From", "X-Missing", ""]);
    for name in names {
        let want: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(view.header(name), want, "header({name:?})");
    }
    for max in [0, 1, 7, 64, u32::MAX] {
        assert!(view.text(max).len() <= max as usize);
    }
    for a in view.attachments() {
        let _ = (a.name, a.content_type, a.size);
    }
    let mut rng = Rng(raw.iter().fold(0x9e37_79b9_7f4a_7c15, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1);
    for _ in 0..4 {
        let offset = rng.below(raw.len() + 8) as u64;
        let len = rng.below(raw.len() + 8) as u32;
        let got = view.raw(offset, len);
        let start = (offset as usize).min(raw.len());
        let end = start.saturating_add(len as usize).min(raw.len());
        assert_eq!(got, &raw[start..end]);
    }
    assert!(view.raw(u64::MAX, u32::MAX).is_empty());
    let _ = view.authentication();

    // Header edits, with names and values a plugin could pass validation with.
    assert_eq!(apply_edits(raw, &[]), raw);
    let body = body(raw);
    let mut names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| valid_name(n))
        .collect();
    names.extend(["X-Fuzz".to_owned(), "subject".to_owned()]);
    let value = headers
        .first()
        .map(|(_, v)| v.clone())
        .filter(|v| valid_value(v))
        .unwrap_or_else(|| "fuzzed; value".to_owned());
    let mut edits = Vec::new();
    for _ in 0..1 + rng.below(6) {
        let name = names[rng.below(names.len())].clone();
        edits.push(match rng.below(4) {
            0 => HeaderEdit::Prepend {
                name,
                value: value.clone(),
            },
            1 => HeaderEdit::Append {
                name,
                value: value.clone(),
            },
            2 => HeaderEdit::Remove { name },
            _ => HeaderEdit::Replace {
                name,
                index: rng.below(3) as u32,
                value: value.clone(),
            },
        });
    }
    let out = apply_edits(raw, &edits);
    assert!(out.ends_with(body), "body changed by {edits:?}");
    let head = &out[..out.len() - body.len()];
    match edits.last() {
        Some(HeaderEdit::Prepend { name, value }) => {
            assert!(head.starts_with(field(name, value).as_bytes()));
        }
        Some(HeaderEdit::Append { name, value }) => {
            assert!(head.ends_with(field(name, value).as_bytes()));
        }
        Some(HeaderEdit::Remove { name }) => {
            // Fields as apply_edits sees them: CRLF-ended lines, continued by lines that
            // start with white space.
            let mut first = true;
            for line in crlf_lines(head) {
                let continuation = !first && matches!(line.first(), Some(b' ' | b'\t'));
                first = false;
                if continuation {
                    continue;
                }
                let field = line
                    .iter()
                    .position(|&b| b == b':')
                    .and_then(|i| std::str::from_utf8(&line[..i]).ok())
                    .map_or("", str::trim);
                assert!(
                    !field.eq_ignore_ascii_case(name),
                    "{name} left after its removal: {edits:?}"
                );
            }
        }
        _ => {}
    }
    let _ = MessageView::new(Arc::from(out)).headers();

    // Body changes, the message's own bytes as the new body and as the text.
    let mut view = MessageView::new(Arc::from(raw)).with_max_size(1 << 20);
    if view.set_body(raw).is_ok() {
        let new = view.take_changes().body.unwrap_or_default();
        assert!(!new.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
        assert!(
            !new.iter()
                .enumerate()
                .any(|(i, &b)| b == b'\r' && new.get(i + 1) != Some(&b'\n'))
        );
        let replaced = replace_body(raw, &new);
        assert!(replaced.ends_with(&new));
    }
    let text = String::from_utf8_lossy(raw).replace('\0', " ");
    let text = if text.trim().is_empty() {
        "fuzz footer".to_owned()
    } else {
        text
    };
    let out = append_text_part(raw, &text);
    let first_line = text.split(['\r', '\n']).next().unwrap_or_default();
    assert!(
        out.windows(first_line.len().max(1))
            .any(|w| w == first_line.as_bytes())
            || first_line.is_empty(),
        "the text is not in the result"
    );
    let _ = MessageView::new(Arc::from(out)).headers();
});

/// The field text `apply_edits` writes: a value starting with white space after the colon.
fn field(name: &str, value: &str) -> String {
    let gap = if value.starts_with([' ', '\t']) {
        ""
    } else {
        " "
    };
    format!("{name}:{gap}{value}\r\n")
}

/// What `apply_edits` must copy unchanged: from the CRLF that ends the header block on.
fn body(raw: &[u8]) -> &[u8] {
    match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &raw[i + 2..],
        None if raw.starts_with(b"\r\n") => raw,
        None => &[],
    }
}

/// Lines ended by CRLF (a bare CR or LF does not end one); the last may have no CRLF.
fn crlf_lines(mut text: &[u8]) -> Vec<&[u8]> {
    let mut lines = Vec::new();
    while !text.is_empty() {
        let end = text
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(text.len(), |i| i + 2);
        lines.push(&text[..end]);
        text = &text[end..];
    }
    lines
}

/// A header name a plugin's edit may carry (the host's validation rules).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// A header value a plugin's edit may carry (the host's validation rules).
fn valid_value(value: &str) -> bool {
    value.len() <= 900 && !value.chars().any(|c| c.is_control() && c != '\t')
}
