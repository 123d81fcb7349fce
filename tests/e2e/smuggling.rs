//! SMTP smuggling: only <CRLF>.<CRLF> ends DATA; nothing after a fake end runs as commands.

use crate::harness::{Relay, config};

const SEQUENCES: [&[u8]; 10] = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r",
    b"\r\n.\x00\r\n",
];

const SMUGGLED: &[u8] = b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@relay.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled";

/// Sends one message whose body holds `seq` and a smuggled transaction; returns the replies
/// seen after the real end of data.
fn smuggle(relay: &Relay, seq: &[u8]) -> Vec<u16> {
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<user@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    let mut data = b"Subject: carrier\r\n\r\nfirst".to_vec();
    data.extend_from_slice(seq);
    data.extend_from_slice(SMUGGLED);
    data.extend_from_slice(b"\r\n.\r\n");
    c.send(&data);
    let mut codes = vec![c.reply().0];
    // Had the smuggled commands run, their replies would come before the NOOP's 2.0.0.
    loop {
        if codes.len() == 1 {
            c.send(b"NOOP\r\n");
        }
        let (code, lines) = c.reply();
        codes.push(code);
        if crate::harness::enhanced(&lines[0]) == "2.0.0" || codes.len() > 6 {
            break;
        }
    }
    codes
}

#[test]
fn no_sequence_smuggles_a_second_message() {
    let mut relay = Relay::builder(&config("[relay]\nlocal_domains = [\"relay.test\"]\n")).start();
    for seq in SEQUENCES {
        let codes = smuggle(&relay, seq);
        // One reply for the whole message (refused: it contains a bare CR/LF or NUL), then NOOP.
        assert_eq!(codes.len(), 2, "{seq:?}: replies {codes:?}");
        assert!(
            (500..600).contains(&codes[0]),
            "{seq:?}: message must be refused, got {codes:?}"
        );
    }
    let spool = relay.stop_and_read_spool();
    assert!(
        spool
            .iter()
            .all(|(e, _)| e.mail_from != "evil@attacker.test"),
        "smuggled message in spool"
    );
    assert_eq!(
        spool.len(),
        0,
        "every carrier message had a bare CR/LF or NUL and must be refused"
    );
}

#[test]
fn normalize_mode_keeps_one_message_per_sequence() {
    let mut relay = Relay::builder(&config(
        "[relay]\nlocal_domains = [\"relay.test\"]\n[limits]\nline_endings = \"normalize\"\n",
    ))
    .start();
    for seq in SEQUENCES {
        let codes = smuggle(&relay, seq);
        assert_eq!(codes.len(), 2, "{seq:?}: replies {codes:?}");
    }
    let spool = relay.stop_and_read_spool();
    assert!(
        spool
            .iter()
            .all(|(e, _)| e.mail_from == "sender@client.test"),
        "smuggled message in spool"
    );
    // The two sequences with a NUL are refused in any mode; the other eight are kept whole.
    assert_eq!(spool.len(), 8);
    for (_, msg) in &spool {
        let body = String::from_utf8_lossy(msg);
        for (i, b) in msg.iter().enumerate() {
            if *b == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF stored: {body:?}");
            }
            if *b == b'\r' {
                assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR stored: {body:?}");
            }
        }
    }
}
