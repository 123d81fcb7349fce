//! Everything a plugin returns is checked here before it can reach the SMTP session, the
//! message or the queue: reply codes in the class of the verdict, no CR/LF/NUL anywhere,
//! bounded sizes.

use postrider_smtp::address::{self, Domain};
use postrider_smtp::reply::{EnhancedCode, Reply};

use crate::bindings::postrider::plugin::types as wit;
use crate::{Decision, HeaderEdit, RouteDecision, TlsPolicy};

/// Longest reply text a plugin may give.
pub const MAX_REPLY_TEXT: usize = 400;
/// Most header edits one plugin may return at one data stage.
pub const MAX_EDITS: usize = 64;
/// Longest header name.
pub const MAX_HEADER_NAME: usize = 76;
/// Longest header value (the header line, unfolded, must fit in 998 octets).
pub const MAX_HEADER_VALUE: usize = 900;

#[derive(Clone, Copy)]
enum Kind {
    Reject,
    Tempfail,
    Disconnect,
}

fn reply(r: &wit::Reply, kind: Kind) -> Result<Reply, String> {
    let code_ok = match kind {
        Kind::Reject => (500..=599).contains(&r.code),
        Kind::Tempfail => (400..=499).contains(&r.code) && r.code != 421,
        Kind::Disconnect => r.code == 421 || r.code == 554,
    };
    if !code_ok {
        return Err(format!("reply code {} does not fit the verdict", r.code));
    }
    if r.text.len() > MAX_REPLY_TEXT {
        return Err(format!("reply text longer than {MAX_REPLY_TEXT} bytes"));
    }
    let class = (r.code / 100) as u8;
    let enhanced = match &r.enhanced {
        Some(e) => {
            let parsed: EnhancedCode = e.parse().map_err(|_| format!("bad enhanced code {e:?}"))?;
            if parsed.class != class {
                return Err(format!(
                    "enhanced code {e} does not match reply code {}",
                    r.code
                ));
            }
            parsed
        }
        None => EnhancedCode {
            class,
            subject: 7,
            detail: if class == 5 { 1 } else { 0 },
        },
    };
    let text = if r.text.is_empty() {
        "Refused by policy"
    } else {
        &r.text
    };
    Reply::new(r.code, Some(enhanced), text).map_err(|e| format!("bad reply text: {e}"))
}

/// Checks a verdict and turns it into a decision.
pub fn verdict(v: &wit::Verdict) -> Result<Decision, String> {
    Ok(match v {
        wit::Verdict::Continue => Decision::Continue,
        wit::Verdict::Accept => Decision::Accept,
        wit::Verdict::Reject(r) => Decision::Reject(reply(r, Kind::Reject)?),
        wit::Verdict::Tempfail(r) => Decision::Tempfail(reply(r, Kind::Tempfail)?),
        wit::Verdict::Disconnect(r) => Decision::Disconnect(reply(r, Kind::Disconnect)?),
    })
}

/// Checks a recipient rewrite: it must be a valid mailbox (UTF-8 only when allowed).
pub fn rewrite(addr: &str, smtputf8: bool) -> Result<String, String> {
    match address::parse_forward_path(&format!("<{addr}>"), smtputf8) {
        Ok(parsed) if !parsed.had_source_route => Ok(addr.to_owned()),
        _ => Err(format!("recipient rewrite {addr:?} is not a valid address")),
    }
}

pub(crate) fn header_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_HEADER_NAME
        && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!("bad header name {name:?}"))
    }
}

fn header_value(value: &str) -> Result<String, String> {
    if value.len() > MAX_HEADER_VALUE || value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("header value too long or holds control characters".to_owned());
    }
    Ok(value.to_owned())
}

/// Longest header value a milter may give, folded (a 4096-bit DKIM signature is ~1 KiB).
pub const MAX_MILTER_HEADER_VALUE: usize = 16 * 1024;

/// A milter's header value, as the field body to write: its line breaks (milters fold with a
/// bare LF) become CRLF, a continuation line that does not start with white space gets a tab
/// (so it cannot start a header of its own), and no line may exceed 998 octets.
pub(crate) fn milter_header_value(value: &str) -> Result<String, String> {
    if value.len() > MAX_MILTER_HEADER_VALUE
        || value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
    {
        return Err("header value too long or holds control characters".to_owned());
    }
    let mut out = String::with_capacity(value.len() + 16);
    for (i, line) in value.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.contains('\r') || line.len() > 998 {
            return Err("header value holds a bare CR or a line over 998 octets".to_owned());
        }
        if i > 0 {
            out.push_str("\r\n");
            if !line.starts_with([' ', '\t']) {
                out.push('\t');
            }
        }
        out.push_str(line);
    }
    Ok(out)
}

/// Checks a plugin's header edits.
pub fn edits(edits: &[wit::HeaderEdit]) -> Result<Vec<HeaderEdit>, String> {
    if edits.len() > MAX_EDITS {
        return Err(format!("more than {MAX_EDITS} header edits"));
    }
    edits
        .iter()
        .map(|e| {
            Ok(match e {
                wit::HeaderEdit::Prepend(h) => HeaderEdit::Prepend {
                    name: header_name(&h.name)?,
                    value: header_value(&h.value)?,
                },
                wit::HeaderEdit::Append(h) => HeaderEdit::Append {
                    name: header_name(&h.name)?,
                    value: header_value(&h.value)?,
                },
                wit::HeaderEdit::Remove(n) => HeaderEdit::Remove {
                    name: header_name(n)?,
                },
                wit::HeaderEdit::Replace(r) => HeaderEdit::Replace {
                    name: header_name(&r.name)?,
                    index: r.index,
                    value: header_value(&r.value)?,
                },
            })
        })
        .collect()
}

/// Checks a quarantine reason (one line of text).
pub fn reason(text: &str) -> Result<String, String> {
    if text.len() > MAX_REPLY_TEXT || text.chars().any(char::is_control) {
        return Err("reason too long or holds control characters".to_owned());
    }
    Ok(text.to_owned())
}

fn host(host: &str) -> Result<String, String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(host.to_owned());
    }
    match address::parse_domain(host, false) {
        Ok(Domain::Name(_)) => Ok(host.to_owned()),
        _ => Err(format!("bad relay host {host:?}")),
    }
}

/// Checks a route.
pub fn route(r: &wit::Route) -> Result<RouteDecision, String> {
    Ok(match r {
        wit::Route::Mx => RouteDecision::Mx,
        wit::Route::Relay(hop) => {
            if hop.port == 0 {
                return Err("relay port 0".to_owned());
            }
            let tls = match hop.tls {
                wit::TlsPolicy::None => TlsPolicy::None,
                wit::TlsPolicy::Opportunistic => TlsPolicy::Opportunistic,
                wit::TlsPolicy::Require => TlsPolicy::Require,
            };
            RouteDecision::Relay {
                host: host(&hop.host)?,
                port: hop.port,
                tls,
            }
        }
        wit::Route::Lmtp(target) => {
            let ok = match target.strip_prefix("unix:") {
                Some(path) => path.starts_with('/') && !path.contains('\0'),
                None => target.rsplit_once(':').is_some_and(|(h, p)| {
                    host(h.trim_matches(['[', ']'])).is_ok()
                        && p.parse::<u16>().is_ok_and(|p| p != 0)
                }),
            };
            if !ok {
                return Err(format!("bad LMTP target {target:?}"));
            }
            RouteDecision::Lmtp(target.clone())
        }
        wit::Route::Hold(why) => RouteDecision::Hold(reason(why)?),
        wit::Route::Discard => RouteDecision::Discard,
        wit::Route::Bounce(rep) => RouteDecision::Bounce(reply(rep, Kind::Reject)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, enhanced: Option<&str>, text: &str) -> wit::Reply {
        wit::Reply {
            code,
            enhanced: enhanced.map(str::to_owned),
            text: text.to_owned(),
        }
    }

    #[test]
    fn reply_codes_must_fit_the_verdict() {
        assert!(verdict(&wit::Verdict::Reject(r(550, Some("5.7.1"), "no"))).is_ok());
        assert!(verdict(&wit::Verdict::Reject(r(250, None, "ok"))).is_err());
        assert!(verdict(&wit::Verdict::Reject(r(450, None, "x"))).is_err());
        assert!(verdict(&wit::Verdict::Tempfail(r(451, None, "later"))).is_ok());
        assert!(verdict(&wit::Verdict::Tempfail(r(421, None, "bye"))).is_err());
        assert!(verdict(&wit::Verdict::Tempfail(r(550, None, "x"))).is_err());
        assert!(verdict(&wit::Verdict::Disconnect(r(421, None, "bye"))).is_ok());
        assert!(verdict(&wit::Verdict::Disconnect(r(450, None, "bye"))).is_err());
        assert!(verdict(&wit::Verdict::Reject(r(550, Some("4.7.1"), "x"))).is_err());
        assert!(verdict(&wit::Verdict::Reject(r(550, Some("5.x"), "x"))).is_err());
    }

    #[test]
    fn reply_text_cannot_break_the_protocol() {
        for text in [
            "a\r\n250 ok",
            "a\nb",
            "a\rb",
            "nul\0",
            &"x".repeat(MAX_REPLY_TEXT + 1),
        ] {
            assert!(
                verdict(&wit::Verdict::Reject(r(550, None, text))).is_err(),
                "{text:?}"
            );
        }
        match verdict(&wit::Verdict::Tempfail(r(451, None, ""))).unwrap() {
            Decision::Tempfail(reply) => assert_eq!(
                reply.enhanced().map(|e| e.to_string()).as_deref(),
                Some("4.7.0")
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn header_edits_are_checked() {
        let h = |n: &str, v: &str| {
            wit::HeaderEdit::Append(wit::Header {
                name: n.into(),
                value: v.into(),
            })
        };
        assert!(edits(&[h("X-Ok", "fine\tvalue")]).is_ok());
        assert!(edits(&[h("X Bad", "v")]).is_err());
        assert!(edits(&[h("X:Bad", "v")]).is_err());
        assert!(edits(&[h("X-Inject", "v\r\nBcc: victim@x")]).is_err());
        assert!(edits(&[h("", "v")]).is_err());
        assert!(edits(&vec![h("X-A", "v"); MAX_EDITS + 1]).is_err());
    }

    #[test]
    fn routes_are_checked() {
        let relay = |host: &str, port| {
            wit::Route::Relay(wit::NextHop {
                host: host.into(),
                port,
                tls: wit::TlsPolicy::Require,
            })
        };
        assert!(route(&relay("smtp.example.org", 25)).is_ok());
        assert!(route(&relay("127.0.0.1", 2525)).is_ok());
        assert!(route(&relay("bad host", 25)).is_err());
        assert!(route(&relay("x.org", 0)).is_err());
        assert!(route(&wit::Route::Lmtp("127.0.0.1:24".into())).is_ok());
        assert!(route(&wit::Route::Lmtp("unix:/run/dovecot/lmtp".into())).is_ok());
        assert!(route(&wit::Route::Lmtp("unix:relative".into())).is_err());
        assert!(route(&wit::Route::Lmtp("host".into())).is_err());
        assert!(route(&wit::Route::Bounce(r(250, None, "x"))).is_err());
        assert!(route(&wit::Route::Hold("a\nb".into())).is_err());
    }

    #[test]
    fn rewrites_must_be_addresses() {
        assert!(rewrite("user@example.org", false).is_ok());
        assert!(rewrite("user", false).is_err());
        assert!(rewrite("a@b>\r\nRCPT TO:<c@d", false).is_err());
        assert!(rewrite("jörg@example.org", false).is_err());
        assert!(rewrite("jörg@example.org", true).is_ok());
    }
}
