//! No open relay: unauthenticated clients outside relay_networks reach local domains only.

use crate::harness::{Relay, config};

const FORMS: [&str; 12] = [
    "<user@elsewhere.test>",
    "<user%elsewhere.test@relay.test>",
    "<\"user@elsewhere.test\"@relay.test>",
    "<user@elsewhere.test@relay.test>",
    "<@relay.test:user@elsewhere.test>",
    "<@relay.test:user@relay.test>",
    "<elsewhere.test!user>",
    "<elsewhere.test!user@relay.test>",
    "<\"elsewhere.test!user\"@relay.test>",
    "<user%elsewhere.test@[127.0.0.1]>",
    "<user@[127.0.0.1]>",
    "<\"user%elsewhere.test\"@relay.test>",
];

#[test]
fn relay_test_forms_are_refused() {
    let mut relay = Relay::builder(&config("[relay]\nlocal_domains = [\"relay.test\"]\n")).start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    for form in FORMS {
        let (code, enhanced) = c.cmd(&format!("RCPT TO:{form}"));
        assert!(
            code >= 500,
            "{form}: expected refusal, got {code} {enhanced}"
        );
        if code == 554 {
            assert_eq!(enhanced, "5.7.1", "{form}");
        }
    }
    assert_eq!(c.cmd("DATA").0, 554, "no recipient was accepted");
    drop(c);
    assert!(relay.stop_and_read_spool().is_empty());
}

#[test]
fn relay_networks_may_relay() {
    let mut relay = Relay::builder(&config(
        "[relay]\nlocal_domains = [\"relay.test\"]\nrelay_networks = [\"127.0.0.0/8\"]\n",
    ))
    .start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<user@elsewhere.test>"),
        (250, "2.1.5".into())
    );
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(relay.stop_and_read_spool().len(), 1);
}
