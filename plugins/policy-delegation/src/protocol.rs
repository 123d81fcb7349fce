//! The Postfix SMTP access policy delegation protocol (Postfix's SMTPD_POLICY_README),
//! sans-IO: the request the client writes and the answer it reads.
//!
//! A request is `name=value` lines ended by an empty line; the answer is `action=VALUE`
//! (other attributes ignored) ended by an empty line. The action is an access(5) action:
//! `OK`, `DUNNO`, `REJECT text`, `DEFER text`, `DEFER_IF_PERMIT text`, `NNN text`, ...

/// Longest answer read before giving up on the server.
pub const MAX_ANSWER: usize = 8 * 1024;

/// What the plugin does with an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Let the next plugin decide (`OK`, `DUNNO`, and actions with no SMTP meaning here).
    Continue,
    /// Refuse permanently: code, enhanced status, text.
    Reject(u16, String, String),
    /// Refuse for now: code, enhanced status, text.
    Defer(u16, String, String),
}

/// An answer that is not the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// The request for one recipient: `attrs` are (name, value) pairs; values lose any CR/LF
/// (they end a line in this protocol).
pub fn request(attrs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    for (name, value) in attrs {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend(value.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// True once `buf` holds a whole answer (an empty line ends it).
pub fn complete(buf: &[u8]) -> bool {
    buf.starts_with(b"\n") || buf.windows(2).any(|w| w == b"\n\n")
}

/// Reads the action from a whole answer.
pub fn parse_answer(buf: &[u8]) -> Result<Action, ProtocolError> {
    let text = std::str::from_utf8(buf).map_err(|_| ProtocolError("answer is not UTF-8".into()))?;
    let action = text
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix("action="))
        .ok_or_else(|| ProtocolError("answer has no action= attribute".into()))?;
    Ok(decide(action.trim()))
}

/// Keeps printable ASCII, so a server cannot smuggle lines into the SMTP reply.
fn clean(text: &str, default: &str) -> String {
    let t: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(400)
        .collect();
    if t.trim().is_empty() {
        default.to_owned()
    } else {
        t.trim().to_owned()
    }
}

/// The access(5) action `action` as a verdict.
pub fn decide(action: &str) -> Action {
    let (word, text) = match action.split_once([' ', '\t']) {
        Some((w, t)) => (w, t.trim()),
        None => (action, ""),
    };
    // NNN [x.y.z] text: a 4xx or 5xx reply of the server's choosing.
    if word.len() == 3 && word.bytes().all(|b| b.is_ascii_digit()) {
        let code: u16 = word.parse().unwrap_or(0);
        let (enhanced, rest) = match text.split_once(' ') {
            Some((e, r)) if enhanced_code(e, code) => (e.to_owned(), r),
            _ if enhanced_code(text, code) => (text.to_owned(), ""),
            _ => (format!("{}.7.1", code / 100), text),
        };
        return match code {
            400..=499 => Action::Defer(code, enhanced, clean(rest, "Try again later")),
            500..=599 => Action::Reject(code, enhanced, clean(rest, "Access denied")),
            _ => Action::Continue,
        };
    }
    match word.to_ascii_uppercase().as_str() {
        "REJECT" => Action::Reject(550, "5.7.1".into(), clean(text, "Access denied")),
        // DEFER_IF_PERMIT (postgrey's greylisting) is deferred at once: no later Postfix
        // restriction here could turn the permit into a reject.
        "DEFER" | "DEFER_IF_PERMIT" | "DEFER_IF_REJECT" => {
            Action::Defer(450, "4.7.1".into(), clean(text, "Try again later"))
        }
        _ => Action::Continue,
    }
}

fn enhanced_code(s: &str, code: u16) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0] == (code / 100).to_string()
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_lines_ending_with_an_empty_one() {
        let r = request(&[("request", "smtpd_access_policy"), ("sender", "a\r\n@b")]);
        assert_eq!(r, b"request=smtpd_access_policy\nsender=a@b\n\n");
    }

    #[test]
    fn answers_complete_at_the_empty_line() {
        assert!(!complete(b"action=DUNNO\n"));
        assert!(complete(b"action=DUNNO\n\n"));
        assert!(complete(b"\n"));
    }

    #[test]
    fn actions_map_to_verdicts() {
        assert_eq!(parse_answer(b"action=DUNNO\n\n"), Ok(Action::Continue));
        assert_eq!(parse_answer(b"action=OK\n\n"), Ok(Action::Continue));
        assert_eq!(
            parse_answer(b"action=PREPEND X-Greylist: no\n\n"),
            Ok(Action::Continue)
        );
        assert_eq!(
            parse_answer(b"action=DEFER_IF_PERMIT Greylisted, see http://postgrey/\n\n"),
            Ok(Action::Defer(
                450,
                "4.7.1".into(),
                "Greylisted, see http://postgrey/".into()
            ))
        );
        assert_eq!(
            decide("reject"),
            Action::Reject(550, "5.7.1".into(), "Access denied".into())
        );
        assert_eq!(
            decide("554 5.7.1 Listed\r\nEHLO"),
            Action::Reject(554, "5.7.1".into(), "ListedEHLO".into())
        );
        assert_eq!(
            decide("451 try later"),
            Action::Defer(451, "4.7.1".into(), "try later".into())
        );
        assert_eq!(
            decide("421 4.3.2"),
            Action::Defer(421, "4.3.2".into(), "Try again later".into())
        );
        // An enhanced code of the wrong class is text.
        assert_eq!(
            decide("550 4.1.1 no"),
            Action::Reject(550, "5.7.1".into(), "4.1.1 no".into())
        );
        assert_eq!(decide("250 fine"), Action::Continue);
        assert_eq!(decide("HOLD"), Action::Continue);
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(parse_answer(b"hello\n\n").is_err());
        assert!(parse_answer(b"\xff\xfe\n\n").is_err());
        // action= after the empty line belongs to no answer.
        assert!(parse_answer(b"x=1\n\naction=REJECT\n\n").is_err());
    }
}
