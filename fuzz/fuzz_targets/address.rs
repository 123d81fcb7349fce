//! Address parsing: paths, mailboxes and domains, with and without SMTPUTF8.
//!
//! Properties checked:
//! - SMTPUTF8 only widens: without it a parse gives what it gives with it, or refuses non-ASCII.
//! - A parsed mailbox's text (`address()` / `Display`) parses again to the same local part and
//!   domain, and that text is a fixed point; a domain's text parses to the same domain.
//! - A path's `Display` parses again to the same path (source route and needless quoting
//!   dropped) when it fits in a path's 256 octets (an IPv6 literal's canonical form can be
//!   longer than the form received).
//!
//! Input: one octet selecting the parser, then the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_smtp::address::{
    self, AddressError, Domain, ForwardPath, Mailbox, ReversePath, parse_domain,
    parse_forward_path, parse_mailbox, parse_reverse_path,
};

fuzz_target!(|input: &[u8]| {
    let Some((&selector, text)) = input.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    // Every parser sees every input; the selector only adds the angle brackets a path needs,
    // so the fuzzer need not find them.
    let text = if selector & 1 == 1 {
        format!("<{text}>")
    } else {
        text.to_owned()
    };
    let text = text.as_str();

    for utf8 in [false, true] {
        if let Ok(p) = parse_reverse_path(text, utf8) {
            let _ = (p.path.is_ascii(), p.had_source_route);
            match &p.path {
                ReversePath::Null => assert_eq!(p.path.address(), ""),
                ReversePath::Mailbox(m) => {
                    assert_eq!(p.path.address(), m.to_string());
                    mailbox_round_trip(m, utf8);
                }
            }
            let shown = p.path.to_string();
            if shown.len() <= address::MAX_PATH {
                let again = parse_reverse_path(&shown, utf8)
                    .unwrap_or_else(|e| panic!("{shown:?} from {text:?}: {e:?}"));
                assert!(!again.had_source_route);
                assert_eq!(plain_reverse(again.path), plain_reverse(p.path));
            }
        }
        if let Ok(p) = parse_forward_path(text, utf8) {
            let _ = (p.path.is_ascii(), p.had_source_route);
            match &p.path {
                ForwardPath::Postmaster => assert_eq!(p.path.address(), "postmaster"),
                ForwardPath::Mailbox(m) => {
                    assert_eq!(p.path.address(), m.to_string());
                    mailbox_round_trip(m, utf8);
                }
            }
            let shown = p.path.to_string();
            if shown.len() <= address::MAX_PATH {
                let again = parse_forward_path(&shown, utf8)
                    .unwrap_or_else(|e| panic!("{shown:?} from {text:?}: {e:?}"));
                assert!(!again.had_source_route);
                assert_eq!(plain_forward(again.path), plain_forward(p.path));
            }
        }
        if let Ok(m) = parse_mailbox(text, utf8) {
            // The raw local part is the text before the `@` that ends it.
            let raw = m.local_part_raw();
            assert!(text.starts_with(raw) && text[raw.len()..].starts_with('@'));
            mailbox_round_trip(&m, utf8);
        }
        if let Ok(d) = parse_domain(text, utf8) {
            domain_round_trip(&d, utf8);
        }
    }

    // SMTPUTF8 only widens what is accepted.
    let same = |a: Result<String, AddressError>, b: Result<String, AddressError>| {
        if a != Err(AddressError::NonAsciiWithoutSmtputf8) {
            assert_eq!(a, b, "SMTPUTF8 changed the result for {text:?}");
        }
        if text.is_ascii() {
            assert_eq!(a, b, "SMTPUTF8 changed the result for ASCII {text:?}");
        }
    };
    same(
        parse_reverse_path(text, false).map(|p| format!("{p:?}")),
        parse_reverse_path(text, true).map(|p| format!("{p:?}")),
    );
    same(
        parse_forward_path(text, false).map(|p| format!("{p:?}")),
        parse_forward_path(text, true).map(|p| format!("{p:?}")),
    );
    same(
        parse_mailbox(text, false).map(|m| format!("{m:?}")),
        parse_mailbox(text, true).map(|m| format!("{m:?}")),
    );
    same(
        parse_domain(text, false).map(|d| format!("{d:?}")),
        parse_domain(text, true).map(|d| format!("{d:?}")),
    );
});

fn mailbox_round_trip(m: &Mailbox, utf8: bool) {
    let _ = (m.is_quoted(), m.is_ascii(), m.local_part_raw());
    assert!(m.local_part_raw().len() <= address::MAX_LOCAL_PART);
    let shown = m.to_string();
    let again = parse_mailbox(&shown, utf8).unwrap_or_else(|e| panic!("{shown:?} of {m:?}: {e:?}"));
    assert_eq!(again.local_part, m.local_part, "local part of {shown:?}");
    assert_eq!(again.domain, m.domain, "domain of {shown:?}");
    assert_eq!(again.to_string(), shown, "not a fixed point");
    assert_eq!(again.is_ascii(), m.is_ascii());
    domain_round_trip(&m.domain, utf8);
}

fn domain_round_trip(d: &Domain, utf8: bool) {
    let _ = d.is_ascii();
    let shown = d.to_string();
    let again = parse_domain(&shown, utf8).unwrap_or_else(|e| panic!("{shown:?} of {d:?}: {e:?}"));
    assert_eq!(&again, d, "domain {shown:?}");
}

/// A mailbox without the memory of how its local part was quoted.
fn plain(m: Mailbox) -> Mailbox {
    Mailbox::new(m.local_part, m.domain)
}

fn plain_reverse(p: ReversePath) -> ReversePath {
    match p {
        ReversePath::Mailbox(m) => ReversePath::Mailbox(plain(m)),
        ReversePath::Null => ReversePath::Null,
    }
}

fn plain_forward(p: ForwardPath) -> ForwardPath {
    match p {
        ForwardPath::Mailbox(m) => ForwardPath::Mailbox(plain(m)),
        ForwardPath::Postmaster => ForwardPath::Postmaster,
    }
}
