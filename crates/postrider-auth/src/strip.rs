//! Removal of forged `Authentication-Results` headers (RFC 8601 §5).

use std::borrow::Cow;
use std::ops::Range;

const NAME: &[u8] = b"Authentication-Results";

/// Removes every `Authentication-Results` header whose authserv-id equals ours
/// (case-insensitively, RFC 8601 §5: a sender must not be able to forge our verdict), folded
/// ones included. Only the header block is touched; every other byte, the body included, stays
/// as it was. Borrows `raw` when there is nothing to remove.
pub fn strip_forged_results<'a>(raw: &'a [u8], authserv_id: &str) -> Cow<'a, [u8]> {
    let mut remove: Vec<Range<usize>> = Vec::new();
    let mut pos = 0;
    while pos < raw.len() && !starts_blank_line(&raw[pos..]) {
        let start = pos;
        let mut end = line_end(raw, pos);
        // Continuation lines start with a space or a tab (RFC 5322 §2.2.3).
        while end < raw.len() && matches!(raw[end], b' ' | b'\t') {
            end = line_end(raw, end);
        }
        if is_our_results(&raw[start..end], authserv_id) {
            remove.push(start..end);
        }
        pos = end;
    }
    if remove.is_empty() {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut kept_from = 0;
    for range in remove {
        out.extend_from_slice(&raw[kept_from..range.start]);
        kept_from = range.end;
    }
    out.extend_from_slice(&raw[kept_from..]);
    Cow::Owned(out)
}

fn starts_blank_line(rest: &[u8]) -> bool {
    rest.starts_with(b"\r\n") || rest.starts_with(b"\n")
}

/// The index just past the line feed ending the line that starts at `pos` (or the end).
fn line_end(raw: &[u8], pos: usize) -> usize {
    raw[pos..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(raw.len(), |i| pos + i + 1)
}

fn is_our_results(field: &[u8], authserv_id: &str) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = field[..colon].trim_ascii_end();
    if !name.eq_ignore_ascii_case(NAME) {
        return false;
    }
    authserv_id_of(&field[colon + 1..])
        .is_some_and(|id| id.eq_ignore_ascii_case(authserv_id.as_bytes()))
}

/// The authserv-id at the start of an `Authentication-Results` value: a token or a quoted
/// string, after any folding white space and comments.
fn authserv_id_of(value: &[u8]) -> Option<Vec<u8>> {
    let rest = skip_cfws(value);
    match rest.first()? {
        b'"' => {
            let mut id = Vec::new();
            let mut bytes = rest[1..].iter();
            while let Some(&b) = bytes.next() {
                match b {
                    b'"' => return Some(id),
                    b'\\' => id.push(*bytes.next()?),
                    b'\r' | b'\n' => {}
                    _ => id.push(b),
                }
            }
            None
        }
        _ => {
            let len = rest
                .iter()
                .position(|&b| b.is_ascii_whitespace() || b == b';' || b == b'(')
                .unwrap_or(rest.len());
            (len > 0).then(|| rest[..len].to_vec())
        }
    }
}

/// Skips white space (folding included) and comments, which may nest and hold quoted pairs.
fn skip_cfws(mut rest: &[u8]) -> &[u8] {
    loop {
        rest = rest.trim_ascii_start();
        if rest.first() != Some(&b'(') {
            return rest;
        }
        let mut depth = 0usize;
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'\\' => i += 1,
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        rest = rest.get(i + 1..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(raw: &str, id: &str) -> String {
        String::from_utf8(strip_forged_results(raw.as_bytes(), id).into_owned()).unwrap_or_default()
    }

    #[test]
    fn removes_ours_keeps_others() {
        let raw = "Received: from a\r\n\
                   Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=a@b.example\r\n\
                   Authentication-Results: other.example; dkim=pass\r\n\
                   Subject: hi\r\n\
                   \r\n\
                   Authentication-Results: mx.example.org; in the body stays\r\n";
        assert_eq!(
            strip(raw, "mx.example.org"),
            "Received: from a\r\n\
             Authentication-Results: other.example; dkim=pass\r\n\
             Subject: hi\r\n\
             \r\n\
             Authentication-Results: mx.example.org; in the body stays\r\n"
        );
    }

    #[test]
    fn folded_and_case_insensitive() {
        let raw = "authentication-results :\r\n\t MX.Example.ORG;\r\n\tspf=pass\r\n\
                   AUTHENTICATION-RESULTS: (forged) mx.example.org (really); dkim=pass\r\n\
                   From: a@b.example\r\n\r\nbody\r\n";
        assert_eq!(
            strip(raw, "mx.example.org"),
            "From: a@b.example\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn quoted_id_and_prefix_ids() {
        let raw = "Authentication-Results: \"mx.example.org\"; none\r\n\
                   Authentication-Results: mx.example.org.evil; none\r\n\
                   Authentication-Results: mx.example; none\r\n\
                   X-Authentication-Results: mx.example.org; none\r\n\r\n";
        assert_eq!(
            strip(raw, "mx.example.org"),
            "Authentication-Results: mx.example.org.evil; none\r\n\
             Authentication-Results: mx.example; none\r\n\
             X-Authentication-Results: mx.example.org; none\r\n\r\n"
        );
    }

    #[test]
    fn untouched_message_is_borrowed() {
        let raw = b"Authentication-Results: other.example; none\r\nSubject: x\r\n\r\nbody";
        assert!(matches!(
            strip_forged_results(raw, "mx.example.org"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn last_header_without_body_and_lf_only() {
        assert_eq!(
            strip(
                "Subject: x\nAuthentication-Results: mx.example.org; none",
                "mx.example.org"
            ),
            "Subject: x\n"
        );
        assert_eq!(
            strip(
                "Authentication-Results: mx.example.org; none\n\nbody\n",
                "mx.example.org"
            ),
            "\nbody\n"
        );
    }

    #[test]
    fn authserv_id_parsing() {
        assert_eq!(
            authserv_id_of(b" example.org; spf=pass"),
            Some(b"example.org".to_vec())
        );
        assert_eq!(
            authserv_id_of(b" example.org 1; none"),
            Some(b"example.org".to_vec())
        );
        assert_eq!(
            authserv_id_of(b"(c (nested) \\) ) x.org;"),
            Some(b"x.org".to_vec())
        );
        assert_eq!(authserv_id_of(b" \"a\\\"b\";"), Some(b"a\"b".to_vec()));
        assert_eq!(authserv_id_of(b"   "), None);
    }
}
