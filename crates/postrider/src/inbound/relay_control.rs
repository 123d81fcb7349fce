//! Built-in relay control: which recipients a client may send to, before any plugin runs.
//!
//! Mail for a local domain is accepted from anyone; mail for any other domain only from a
//! trusted client (in `relay_networks`, or authenticated). Untrusted clients never get the
//! old routing forms through (`user%host@`, `host!user@`, quoted `"user@host"@`, source
//! routes), so a forwarding hop further on cannot turn us into an open relay.

use postrider_config::Relay;
use postrider_smtp::address::{Domain, ForwardPath};
use postrider_smtp::reply::Reply;

/// The reply for every refused relay attempt: 554 5.7.1.
pub fn relay_denied() -> Reply {
    Reply::local(554, (5, 7, 1), "Relay access denied")
}

/// Decides whether a client may send to `to`: `Ok` to accept, or the refusal reply.
pub fn check_recipient(
    to: &ForwardPath,
    source_route: bool,
    trusted: bool,
    relay: &Relay,
) -> Result<(), Reply> {
    let mailbox = match to {
        ForwardPath::Postmaster => return Ok(()),
        ForwardPath::Mailbox(m) => m,
    };
    if trusted {
        return Ok(());
    }
    let routing_chars = mailbox.local_part.contains(['%', '!', '@']);
    if source_route || routing_chars {
        return Err(relay_denied());
    }
    match &mailbox.domain {
        Domain::Name(name) if relay.is_local_domain(name) => Ok(()),
        _ => Err(relay_denied()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_smtp::command::Command;

    fn relay() -> Relay {
        Relay {
            local_domains: vec!["relay.test".into(), "localhost".into()],
            relay_networks: vec!["192.0.2.0/24".parse().unwrap()],
            passwords: None,
        }
    }

    /// Parses `RCPT TO:<...>` the way the session does and applies the relay check.
    fn check(rcpt: &str, trusted: bool) -> Result<(), u16> {
        match Command::parse(format!("RCPT TO:{rcpt}").as_bytes()) {
            Ok(Command::Rcpt {
                to, source_route, ..
            }) => check_recipient(&to, source_route, trusted, &relay()).map_err(|r| r.code()),
            Ok(other) => panic!("parsed as {other:?}"),
            Err(e) => Err(Reply::from(e).code()),
        }
    }

    #[test]
    fn local_domain_accepted_from_anyone() {
        assert_eq!(check("<user@relay.test>", false), Ok(()));
        assert_eq!(check("<User@RELAY.TEST>", false), Ok(()));
        assert_eq!(check("<postmaster>", false), Ok(()));
    }

    #[test]
    fn other_domains_need_trust() {
        assert_eq!(check("<user@elsewhere.test>", false), Err(554));
        assert_eq!(check("<user@elsewhere.test>", true), Ok(()));
        assert_eq!(check("<user@[192.0.2.1]>", false), Err(554));
    }

    #[test]
    fn classic_relay_test_forms_never_relay_untrusted() {
        let forms = [
            "<user%elsewhere.test@relay.test>",
            "<\"user@elsewhere.test\"@relay.test>",
            "<elsewhere.test!user@relay.test>",
            "<@relay.test:user@elsewhere.test>",
            "<@relay.test,@other.test:user@relay.test>",
            "<user%elsewhere.test@[127.0.0.1]>",
            "<\"user%elsewhere.test\"@relay.test>",
            "<user@elsewhere.test@relay.test>",
            "<elsewhere.test!user>",
            "<user@elsewhere.test.>",
            "<user@relay.test.elsewhere.test>",
        ];
        for form in forms {
            let result = check(form, false);
            assert!(
                matches!(result, Err(code) if code >= 500),
                "{form} must be refused, got {result:?}"
            );
        }
    }
}
