//! Client session tests: scripted server replies, and the client driven against the
//! crate's own server [`Session`] through in-memory buffers (no sockets).

use std::collections::VecDeque;

use super::*;
use crate::address::{Domain, ForwardPath, Mailbox, ReversePath};
use crate::command::{Body, MailParams, NotifyOn, RcptParams};
use crate::server::{Envelope, Event, Session, SessionConfig};

const NONE: [&str; 0] = [];

fn config() -> ClientConfig {
    ClientConfig {
        helo_name: "client.example".into(),
        lmtp: false,
        tls: TlsPolicy::None,
        auth: None,
    }
}

fn creds() -> Option<Credentials> {
    Some(Credentials {
        username: "bob".into(),
        password: "secret".into(),
    })
}

fn rcpt(address: &str) -> OutboundRecipient {
    OutboundRecipient {
        address: address.into(),
        notify: None,
        orcpt: None,
    }
}

fn msg(from: &str, to: &[&str], data: &[u8]) -> OutboundMessage {
    OutboundMessage {
        from: from.into(),
        recipients: to.iter().map(|a| rcpt(a)).collect(),
        size: data.len() as u64,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        require_tls: false,
    }
}

fn code(reply: &Reply) -> String {
    match reply.enhanced() {
        Some(e) => format!("{}/{e}", reply.code()),
        None => reply.code().to_string(),
    }
}

/// A compact rendering: `Delivered(b@y=A250/2.0.0 c@y=P550)`, `Failed(rcpt T 421)`.
fn show(event: &ClientEvent) -> String {
    match event {
        ClientEvent::StartTls => "StartTls".into(),
        ClientEvent::Ready => "Ready".into(),
        ClientEvent::Closed => "Closed".into(),
        ClientEvent::Delivered(outcomes) | ClientEvent::Unsupported(outcomes) => {
            let parts: Vec<String> = outcomes
                .iter()
                .map(|o| {
                    let kind = match &o.result {
                        RcptResult::Accepted(_) => "A",
                        RcptResult::Temporary(_) => "T",
                        RcptResult::Permanent(_) => "P",
                    };
                    format!("{}={kind}{}", o.recipient, code(o.result.reply()))
                })
                .collect();
            let name = if matches!(event, ClientEvent::Delivered(_)) {
                "Delivered"
            } else {
                "Unsupported"
            };
            format!("{name}({})", parts.join(" "))
        }
        ClientEvent::Failed(f) => {
            let kind = if f.permanent { "P" } else { "T" };
            format!("Failed({} {kind} {})", f.stage, code(&f.reply))
        }
    }
}

fn events(c: &mut ClientSession) -> Vec<String> {
    std::iter::from_fn(|| c.poll_event())
        .map(|e| show(&e))
        .collect()
}

fn feed(c: &mut ClientSession, input: &str) -> Vec<String> {
    c.feed(input.as_bytes());
    events(c)
}

fn out(c: &mut ClientSession) -> String {
    String::from_utf8(c.take_output()).unwrap()
}

const EHLO_FULL: &str = "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n\
    250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n";
const EHLO_PLAIN: &str = "250-mx.example\r\n250 SIZE 1000\r\n";

/// A session past greeting and EHLO (with `ehlo` as the reply), output drained.
fn ready(config: ClientConfig, ehlo: &str) -> ClientSession {
    let mut c = ClientSession::new(config);
    assert_eq!(feed(&mut c, "220 mx.example ESMTP\r\n"), NONE);
    assert!(out(&mut c).ends_with(" client.example\r\n"));
    assert_eq!(feed(&mut c, ehlo), ["Ready"]);
    assert_eq!(out(&mut c), "");
    c
}

// --- connection setup ------------------------------------------------------------

#[test]
fn plain_pipelined_delivery() {
    let mut c = ClientSession::new(config());
    assert_eq!(events(&mut c), NONE);
    assert_eq!(out(&mut c), "");
    assert_eq!(feed(&mut c, "220-mx.example ESMTP\r\n220 hi\r\n"), NONE);
    assert_eq!(out(&mut c), "EHLO client.example\r\n");
    assert_eq!(feed(&mut c, EHLO_FULL), ["Ready"]);
    let ext = c.extensions();
    assert!(ext.pipelining && ext.eight_bit_mime && ext.smtputf8 && ext.dsn);
    assert!(ext.enhanced_status_codes && !ext.starttls && !ext.chunking);
    assert_eq!(ext.size, Some(1000));
    assert!(!c.is_tls() && !c.is_closed());

    c.send(&msg("a@x", &["b@y", "c@y"], b"Hi\r\n"), b"Hi\r\n")
        .unwrap();
    assert!(c.in_transaction());
    assert_eq!(
        out(&mut c),
        "MAIL FROM:<a@x> SIZE=4\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n"
    );
    assert_eq!(
        feed(
            &mut c,
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 Unknown\r\n"
        ),
        NONE
    );
    assert_eq!(out(&mut c), "");
    assert_eq!(feed(&mut c, "354 Go ahead\r\n"), NONE);
    assert_eq!(out(&mut c), "Hi\r\n.\r\n");
    c.feed(b"250 2.0.0 Ok: queued as X1\r\n");
    let Some(ClientEvent::Delivered(outcomes)) = c.poll_event() else {
        panic!("no Delivered")
    };
    assert_eq!(outcomes.len(), 2);
    assert_eq!(outcomes[0].recipient, "b@y");
    assert_eq!(outcomes[0].result.reply().text(), "Ok: queued as X1");
    assert_eq!(
        show(&ClientEvent::Delivered(outcomes)),
        "Delivered(b@y=A250/2.0.0 c@y=P550/5.1.1)"
    );
    assert_eq!(events(&mut c), ["Ready"]);
    assert!(!c.in_transaction());

    c.quit();
    assert_eq!(out(&mut c), "QUIT\r\n");
    assert!(!c.is_closed());
    assert_eq!(feed(&mut c, "221 2.0.0 Bye\r\n"), ["Closed"]);
    assert!(c.is_closed());
    assert_eq!(feed(&mut c, "250 late\r\n"), NONE);
}

#[test]
fn non_pipelined_one_command_at_a_time() {
    let mut c = ready(config(), EHLO_PLAIN);
    c.send(&msg("", &["b@y", "c@y", "d@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<> SIZE=3\r\n");
    assert_eq!(feed(&mut c, "250 ok\r\n"), NONE);
    assert_eq!(out(&mut c), "RCPT TO:<b@y>\r\n");
    assert_eq!(feed(&mut c, "450 4.2.0 later\r\n"), NONE);
    assert_eq!(out(&mut c), "RCPT TO:<c@y>\r\n");
    assert_eq!(feed(&mut c, "250 ok\r\n"), NONE);
    assert_eq!(out(&mut c), "RCPT TO:<d@y>\r\n");
    assert_eq!(feed(&mut c, "550 no\r\n"), NONE);
    assert_eq!(out(&mut c), "DATA\r\n");
    assert_eq!(feed(&mut c, "354 go\r\n"), NONE);
    assert_eq!(out(&mut c), "x\r\n.\r\n");
    assert_eq!(
        feed(&mut c, "250 done\r\n"),
        ["Delivered(b@y=T450/4.2.0 c@y=A250 d@y=P550)", "Ready"]
    );
}

#[test]
fn greeting_failures() {
    for (greeting, expect, quit) in [
        (
            "554 5.7.1 go away\r\n",
            "Failed(greeting P 554/5.7.1)",
            true,
        ),
        ("450 busy\r\n", "Failed(greeting T 450)", true),
        (
            "421 4.3.2 shutting down\r\n",
            "Failed(greeting T 421/4.3.2)",
            false,
        ),
        ("250 hello?\r\n", "Failed(greeting T 421/4.5.0)", false),
        ("354 what\r\n", "Failed(greeting T 421/4.5.0)", false),
        ("hello\r\n", "Failed(greeting T 421/4.4.0)", false),
    ] {
        let mut c = ClientSession::new(config());
        assert_eq!(feed(&mut c, greeting), [expect, "Closed"], "{greeting}");
        assert!(c.is_closed());
        let expect_out = if quit { "QUIT\r\n" } else { "" };
        assert_eq!(out(&mut c), expect_out, "{greeting}");
    }
}

#[test]
fn ehlo_refusals_and_helo_fallback() {
    let mut c = ClientSession::new(config());
    feed(&mut c, "220 mx\r\n");
    out(&mut c);
    assert_eq!(feed(&mut c, "502 5.5.2 What?\r\n"), NONE);
    assert_eq!(out(&mut c), "HELO client.example\r\n");
    assert_eq!(feed(&mut c, "250 mx\r\n"), ["Ready"]);
    assert_eq!(c.extensions(), &Extensions::default());
    // No extensions: no parameters; 8-bit content cannot go.
    c.send(&msg("a@x", &["b@y"], b"x\r\n"), b"x\r\n").unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<a@x>\r\n");
    feed(&mut c, "250 ok\r\n");
    feed(&mut c, "250 ok\r\n");
    assert_eq!(out(&mut c), "RCPT TO:<b@y>\r\nDATA\r\n");
    feed(&mut c, "354 go\r\n");
    assert_eq!(feed(&mut c, "250 ok\r\n"), ["Delivered(b@y=A250)", "Ready"]);
    out(&mut c);
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.eight_bit = true;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(events(&mut c), ["Unsupported(b@y=P554/5.6.3)", "Ready"]);
    assert_eq!(out(&mut c), "");

    // HELO refused too.
    let mut c = ClientSession::new(config());
    feed(&mut c, "220 mx\r\n");
    feed(&mut c, "500 no\r\n");
    assert_eq!(
        feed(&mut c, "550 5.7.1 not you\r\n"),
        ["Failed(helo P 550/5.7.1)", "Closed"]
    );
    assert_eq!(
        out(&mut c),
        "EHLO client.example\r\nHELO client.example\r\nQUIT\r\n"
    );

    // 4xx to EHLO is no reason to try HELO.
    for (reply, expect, quit) in [
        (
            "451 4.3.0 later\r\n",
            "Failed(ehlo T 451/4.3.0)",
            "QUIT\r\n",
        ),
        ("421 4.4.2 bye\r\n", "Failed(ehlo T 421/4.4.2)", ""),
        ("354 odd\r\n", "Failed(ehlo T 421/4.5.0)", ""),
    ] {
        let mut c = ClientSession::new(config());
        feed(&mut c, "220 mx\r\n");
        out(&mut c);
        assert_eq!(feed(&mut c, reply), [expect, "Closed"]);
        assert_eq!(out(&mut c), quit);
    }
}

#[test]
fn helo_name_is_sanitized() {
    let mut c = ClientSession::new(ClientConfig {
        helo_name: "evil\r\nRSET x".into(),
        ..config()
    });
    feed(&mut c, "220 mx\r\n");
    assert_eq!(out(&mut c), "EHLO evilRSETx\r\n");
    let mut c = ClientSession::new(ClientConfig {
        helo_name: " \r\n".into(),
        ..config()
    });
    feed(&mut c, "220 mx\r\n");
    assert_eq!(out(&mut c), "EHLO localhost\r\n");
}

// --- STARTTLS and AUTH -------------------------------------------------------------

const EHLO_TLS: &str = "250-mx.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n";

fn to_starttls(tls: TlsPolicy, auth: Option<Credentials>) -> ClientSession {
    let mut c = ClientSession::new(ClientConfig {
        tls,
        auth,
        ..config()
    });
    feed(&mut c, "220 mx\r\n");
    out(&mut c);
    assert_eq!(feed(&mut c, EHLO_TLS), NONE);
    assert_eq!(out(&mut c), "STARTTLS\r\n");
    c
}

#[test]
fn starttls_required_and_offered() {
    let mut c = to_starttls(TlsPolicy::Require, None);
    assert_eq!(c.tls_established(), Err(Misuse::NoTlsPending));
    // Plaintext after the 220 is an injection attempt and must be dropped.
    assert_eq!(
        feed(&mut c, "220 2.0.0 Go ahead\r\n250-injected\r\n"),
        ["StartTls"]
    );
    assert_eq!(feed(&mut c, "250 injected too\r\n"), NONE);
    assert_eq!(out(&mut c), "");
    assert!(!c.is_tls());
    c.tls_established().unwrap();
    assert!(c.is_tls());
    assert_eq!(c.extensions(), &Extensions::default());
    assert_eq!(out(&mut c), "EHLO client.example\r\n");
    // STARTTLS is not advertised again by real servers; even if it is, no second one.
    assert_eq!(feed(&mut c, EHLO_TLS), ["Ready"]);
    assert_eq!(out(&mut c), "");
    assert!(c.extensions().pipelining);
    assert_eq!(c.tls_established(), Err(Misuse::NoTlsPending));
    // REQUIRETLS (RFC 8689): refused locally (5.7.30) unless this TLS server offers it.
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.require_tls = true;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(events(&mut c), ["Unsupported(b@y=P550/5.7.30)", "Ready"]);
    assert_eq!(out(&mut c), "");
}

#[test]
fn requiretls_is_sent_only_to_a_tls_server_that_offers_it() {
    let mut plain = ready(config(), "250-mx\r\n250 REQUIRETLS\r\n");
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.require_tls = true;
    plain.send(&m, b"x\r\n").unwrap();
    assert_eq!(
        events(&mut plain),
        ["Unsupported(b@y=P550/5.7.30)", "Ready"]
    );
    let mut c = to_starttls(TlsPolicy::Verify, None);
    feed(&mut c, "220 2.0.0 Go ahead\r\n");
    c.tls_established().unwrap();
    out(&mut c);
    assert_eq!(feed(&mut c, "250-mx\r\n250 REQUIRETLS\r\n"), ["Ready"]);
    c.send(&m, b"x\r\n").unwrap();
    assert!(out(&mut c).starts_with("MAIL FROM:<a@x> REQUIRETLS\r\n"));
}

#[test]
fn starttls_required_but_missing_or_refused() {
    for policy in [TlsPolicy::Require, TlsPolicy::Verify] {
        let mut c = ClientSession::new(ClientConfig {
            tls: policy,
            ..config()
        });
        feed(&mut c, "220 mx\r\n");
        out(&mut c);
        assert_eq!(
            feed(&mut c, EHLO_FULL),
            ["Failed(starttls T 421/4.7.5)", "Closed"],
            "{policy:?}"
        );
        assert_eq!(out(&mut c), "QUIT\r\n");

        let mut c = to_starttls(policy, None);
        c.feed(b"454 4.7.0 TLS not available\r\n");
        let Some(ClientEvent::Failed(f)) = c.poll_event() else {
            panic!()
        };
        assert_eq!(
            (f.stage, f.permanent, code(&f.reply)),
            ("starttls", false, "421/4.7.5".into())
        );
        assert!(f.reply.text().contains("454 4.7.0 TLS not available"));
        assert_eq!(events(&mut c), ["Closed"]);
        assert_eq!(out(&mut c), "QUIT\r\n");
    }

    // Opportunistic: plaintext goes on.
    let mut c = to_starttls(TlsPolicy::Opportunistic, None);
    assert_eq!(feed(&mut c, "454 4.7.0 no\r\n"), ["Ready"]);
    assert!(!c.is_tls());
    let mut c = ClientSession::new(ClientConfig {
        tls: TlsPolicy::Opportunistic,
        ..config()
    });
    feed(&mut c, "220 mx\r\n");
    assert_eq!(feed(&mut c, EHLO_FULL), ["Ready"]);
    // A server closing down is a failure in any mode.
    let mut c = to_starttls(TlsPolicy::Opportunistic, None);
    assert_eq!(
        feed(&mut c, "421 4.3.2 bye\r\n"),
        ["Failed(starttls T 421/4.3.2)", "Closed"]
    );
    assert_eq!(out(&mut c), "");
    // TlsPolicy::None never sends STARTTLS.
    let mut c = ready(config(), EHLO_TLS);
    assert!(c.extensions().starttls);
    assert_eq!(out(&mut c), "");
}

#[test]
fn auth_plain_after_tls() {
    let mut c = to_starttls(TlsPolicy::Require, creds());
    feed(&mut c, "220 go\r\n");
    c.tls_established().unwrap();
    out(&mut c);
    assert_eq!(feed(&mut c, "250-mx\r\n250 AUTH LOGIN PLAIN\r\n"), NONE);
    let b64 = STANDARD.encode(b"\0bob\0secret");
    assert_eq!(out(&mut c), format!("AUTH PLAIN {b64}\r\n"));
    assert_eq!(b64, "AGJvYgBzZWNyZXQ=");
    assert_eq!(
        feed(&mut c, "235 2.7.0 Authentication successful\r\n"),
        ["Ready"]
    );
    let text = format!("{c:?}");
    assert!(!text.contains("secret") && !text.contains(&b64), "{text}");
}

#[test]
fn auth_failures() {
    fn at_auth() -> ClientSession {
        let mut c = to_starttls(TlsPolicy::Opportunistic, creds());
        feed(&mut c, "220 go\r\n");
        c.tls_established().unwrap();
        feed(&mut c, "250-mx\r\n250 AUTH PLAIN\r\n");
        out(&mut c);
        c
    }
    let mut c = at_auth();
    assert_eq!(
        feed(&mut c, "535 5.7.8 bad credentials\r\n"),
        ["Failed(auth P 535/5.7.8)", "Closed"]
    );
    assert_eq!(out(&mut c), "QUIT\r\n");
    let mut c = at_auth();
    assert_eq!(
        feed(&mut c, "454 4.7.0 try later\r\n"),
        ["Failed(auth T 454/4.7.0)", "Closed"]
    );
    // A server that wants the response after an empty challenge gets it once.
    let mut c = at_auth();
    assert_eq!(feed(&mut c, "334 \r\n"), NONE);
    assert_eq!(out(&mut c), "AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(feed(&mut c, "235 ok\r\n"), ["Ready"]);
    let mut c = at_auth();
    feed(&mut c, "334 \r\n");
    assert_eq!(
        feed(&mut c, "334 again\r\n"),
        ["Failed(auth T 421/4.5.0)", "Closed"]
    );
    let mut c = at_auth();
    assert_eq!(
        feed(&mut c, "250 what\r\n"),
        ["Failed(auth T 421/4.5.0)", "Closed"]
    );

    // Never credentials in plaintext.
    for tls in [TlsPolicy::None, TlsPolicy::Opportunistic] {
        let mut c = ClientSession::new(ClientConfig {
            tls,
            auth: creds(),
            ..config()
        });
        feed(&mut c, "220 mx\r\n");
        out(&mut c);
        assert_eq!(
            feed(&mut c, "250-mx\r\n250 AUTH PLAIN LOGIN\r\n"),
            ["Failed(auth T 421/4.7.0)", "Closed"]
        );
        assert_eq!(out(&mut c), "QUIT\r\n");
    }
    // Opportunistic TLS refused: still no credentials.
    let mut c = to_starttls(TlsPolicy::Opportunistic, creds());
    assert_eq!(
        feed(&mut c, "454 no\r\n"),
        ["Failed(auth T 421/4.7.0)", "Closed"]
    );
    assert_eq!(out(&mut c), "QUIT\r\n");
    // PLAIN not offered.
    let mut c = to_starttls(TlsPolicy::Require, creds());
    feed(&mut c, "220 go\r\n");
    c.tls_established().unwrap();
    out(&mut c);
    assert_eq!(
        feed(&mut c, "250-mx\r\n250 AUTH LOGIN\r\n"),
        ["Failed(auth T 421/4.7.0)", "Closed"]
    );
    assert_eq!(out(&mut c), "QUIT\r\n");
}

// --- transactions --------------------------------------------------------------------

#[test]
fn needs_the_peer_cannot_meet_are_refused_locally() {
    let mut c = ready(config(), EHLO_PLAIN);
    let mut m = msg("a@x", &["b@y", "c@y"], b"x\r\n");
    m.smtputf8 = true;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(
        events(&mut c),
        ["Unsupported(b@y=P554/5.6.7 c@y=P554/5.6.7)", "Ready"]
    );
    // A non-ASCII address needs SMTPUTF8 even if the flag was forgotten.
    c.send(&msg("a@x", &["jörg@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    assert_eq!(events(&mut c), ["Unsupported(jörg@y=P554/5.6.7)", "Ready"]);
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.eight_bit = true;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(events(&mut c), ["Unsupported(b@y=P554/5.6.3)", "Ready"]);
    // 8-bit data without the flag is caught too.
    c.send(
        &msg("a@x", &["b@y"], b"caf\xc3\xa9\r\n"),
        b"caf\xc3\xa9\r\n",
    )
    .unwrap();
    assert_eq!(events(&mut c), ["Unsupported(b@y=P554/5.6.3)", "Ready"]);
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.size = 1001;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(events(&mut c), ["Unsupported(b@y=P552/5.3.4)", "Ready"]);
    assert_eq!(out(&mut c), "");
    // Still usable.
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.size = 1000;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(out(&mut c), "MAIL FROM:<a@x> SIZE=1000\r\n");

    // SIZE without a limit (or SIZE 0) means any size.
    let mut c = ready(config(), "250-mx\r\n250 SIZE 0\r\n");
    let mut m = msg("a@x", &["b@y"], b"x\r\n");
    m.size = u64::MAX;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(
        out(&mut c),
        format!("MAIL FROM:<a@x> SIZE={}\r\n", u64::MAX)
    );
}

#[test]
fn unsafe_addresses_are_never_sent() {
    let mut c = ready(config(), EHLO_FULL);
    c.send(
        &msg(
            "a@x",
            &["b@y>\r\nRSET", "c@y", "", "d@y> NOTIFY=NEVER"],
            b"x\r\n",
        ),
        b"x\r\n",
    )
    .unwrap();
    assert_eq!(
        out(&mut c),
        "MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<c@y>\r\nDATA\r\n"
    );
    feed(&mut c, "250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        feed(&mut c, "250 ok\r\n"),
        [
            "Delivered(b@y>\r\nRSET=P501/5.1.3 c@y=A250 =P501/5.1.3 d@y> NOTIFY=NEVER=P501/5.1.3)",
            "Ready"
        ]
    );
    out(&mut c);
    c.send(&msg("a@x\r\nRSET", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    assert_eq!(
        events(&mut c),
        ["Delivered(b@y=P501/5.1.7 c@y=P501/5.1.7)", "Ready"]
    );
    assert_eq!(out(&mut c), "");
}

#[test]
fn esmtp_parameters() {
    let mut c = ready(config(), EHLO_FULL);
    let mut m = msg("a@x", &["b@y", "c@y", "d@y"], b"x\r\n");
    m.eight_bit = true;
    m.smtputf8 = true;
    m.ret = Some(Ret::Hdrs);
    m.envid = Some("id+1=2 3".into());
    m.recipients[0].notify = Some(Notify::On(NotifyOn {
        success: true,
        failure: false,
        delay: true,
    }));
    m.recipients[0].orcpt = Some(("rfc822".into(), "B+x@y".into()));
    m.recipients[1].notify = Some(Notify::Never);
    m.recipients[2].notify = Some(Notify::On(NotifyOn::default()));
    m.recipients[2].orcpt = Some(("bad type".into(), "d@y".into()));
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(
        out(&mut c),
        "MAIL FROM:<a@x> SIZE=3 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+2B1+3D2+203\r\n\
         RCPT TO:<b@y> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B+2Bx@y\r\n\
         RCPT TO:<c@y> NOTIFY=NEVER\r\n\
         RCPT TO:<d@y>\r\n\
         DATA\r\n"
    );
    // Without DSN the DSN parameters are left out.
    let mut c = ready(config(), "250-mx\r\n250-8BITMIME\r\n250 PIPELINING\r\n");
    m.smtputf8 = false;
    c.send(&m, b"x\r\n").unwrap();
    assert_eq!(
        out(&mut c),
        "MAIL FROM:<a@x> BODY=8BITMIME\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\n\
         RCPT TO:<d@y>\r\nDATA\r\n"
    );
}

#[test]
fn mail_refused() {
    // Pipelined: the RCPT and DATA replies that follow are consumed; no RSET.
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    out(&mut c);
    assert_eq!(
        feed(
            &mut c,
            "451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n"
        ),
        NONE
    );
    assert_eq!(
        feed(&mut c, "503 5.5.1 no valid recipients\r\n"),
        ["Delivered(b@y=T451/4.3.0 c@y=T451/4.3.0)", "Ready"]
    );
    assert_eq!(out(&mut c), "");
    // Without pipelining, nothing follows the refused MAIL.
    let mut c = ready(config(), EHLO_PLAIN);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    out(&mut c);
    assert_eq!(
        feed(&mut c, "553 5.1.8 bad sender\r\n"),
        ["Delivered(b@y=P553/5.1.8 c@y=P553/5.1.8)", "Ready"]
    );
    assert_eq!(out(&mut c), "");
}

#[test]
fn no_recipient_accepted() {
    // Without pipelining: RSET instead of DATA; reported once RSET is answered.
    let mut c = ready(config(), EHLO_PLAIN);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    feed(&mut c, "250 ok\r\n550 5.1.1 no\r\n");
    assert_eq!(feed(&mut c, "451 4.7.1 greylisted\r\n"), NONE);
    assert_eq!(
        out(&mut c),
        "MAIL FROM:<a@x> SIZE=3\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nRSET\r\n"
    );
    assert_eq!(
        feed(&mut c, "250 2.0.0 ok\r\n"),
        ["Delivered(b@y=P550/5.1.1 c@y=T451/4.7.1)", "Ready"]
    );
    // Pipelined: DATA is refused, then RSET.
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y"], b"x\r\n"), b"x\r\n").unwrap();
    out(&mut c);
    assert_eq!(
        feed(
            &mut c,
            "250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"
        ),
        NONE
    );
    assert_eq!(out(&mut c), "RSET\r\n");
    assert_eq!(
        feed(&mut c, "250 ok\r\n"),
        ["Delivered(b@y=P550/5.1.1)", "Ready"]
    );
    // Pipelined, and the server says 354 anyway: an empty message closes DATA.
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y"], b"x\r\n"), b"x\r\n").unwrap();
    out(&mut c);
    assert_eq!(feed(&mut c, "250 ok\r\n550 5.1.1 no\r\n354 go\r\n"), NONE);
    assert_eq!(out(&mut c), ".\r\n");
    assert_eq!(
        feed(&mut c, "554 5.5.1 no recipients\r\n"),
        ["Delivered(b@y=P550/5.1.1)", "Ready"]
    );
    assert_eq!(out(&mut c), "");
}

#[test]
fn data_refused() {
    let mut c = ready(config(), EHLO_PLAIN);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    feed(&mut c, "250 ok\r\n250 ok\r\n550 no\r\n");
    assert_eq!(feed(&mut c, "451 4.3.0 busy\r\n"), NONE);
    assert!(out(&mut c).ends_with("DATA\r\nRSET\r\n"));
    assert_eq!(
        feed(&mut c, "250 ok\r\n"),
        ["Delivered(b@y=T451/4.3.0 c@y=P550)", "Ready"]
    );
    // The final reply applies to every accepted recipient.
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    feed(&mut c, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        feed(&mut c, "554 5.7.1 spam\r\n"),
        ["Delivered(b@y=P554/5.7.1 c@y=P554/5.7.1)", "Ready"]
    );
    // 250 to DATA is a protocol violation.
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y"], b"x\r\n"), b"x\r\n").unwrap();
    out(&mut c);
    assert_eq!(
        feed(&mut c, "250 ok\r\n250 ok\r\n250 ok\r\n"),
        ["Failed(data T 421/4.5.0)", "Closed"]
    );
    assert_eq!(out(&mut c), "");
}

#[test]
fn rset_refused() {
    let mut c = ready(config(), EHLO_PLAIN);
    c.send(&msg("a@x", &["b@y"], b"x\r\n"), b"x\r\n").unwrap();
    feed(&mut c, "250 ok\r\n");
    feed(&mut c, "550 no\r\n");
    out(&mut c);
    assert_eq!(
        feed(&mut c, "502 5.5.1 no RSET\r\n"),
        ["Delivered(b@y=P550)", "Failed(rset T 502/5.5.1)", "Closed"]
    );
    assert_eq!(out(&mut c), "QUIT\r\n");
}

#[test]
fn closing_421_mid_transaction() {
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    out(&mut c);
    assert_eq!(
        feed(&mut c, "250 ok\r\n550 no\r\n421 4.7.0 too many errors\r\n"),
        ["Failed(rcpt T 421/4.7.0)", "Closed"]
    );
    assert_eq!(out(&mut c), "");
    // After the data: the known outcomes first, so nothing is left in flight.
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    feed(&mut c, "250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        feed(&mut c, "421 4.4.2 timeout\r\n"),
        [
            "Delivered(b@y=P550 c@y=T421/4.4.2)",
            "Failed(data T 421/4.4.2)",
            "Closed"
        ]
    );
    // An idle connection closed by the server.
    let mut c = ready(config(), EHLO_FULL);
    assert_eq!(
        feed(&mut c, "421 4.4.2 idle timeout\r\n"),
        ["Failed(idle T 421/4.4.2)", "Closed"]
    );
    let mut c = ready(config(), EHLO_FULL);
    assert_eq!(
        feed(&mut c, "250 unsolicited\r\n"),
        ["Failed(idle T 421/4.5.0)", "Closed"]
    );
}

#[test]
fn lmtp_per_recipient_replies() {
    let lmtp = ClientConfig {
        lmtp: true,
        ..config()
    };
    let mut c = ClientSession::new(lmtp.clone());
    feed(&mut c, "220 lmtp\r\n");
    assert_eq!(out(&mut c), "LHLO client.example\r\n");
    assert_eq!(
        feed(
            &mut c,
            "250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
        ),
        ["Ready"]
    );
    c.send(
        &msg("a@x", &["b@y", "c@y", "d@y", "e@y"], b"x\r\n"),
        b"x\r\n",
    )
    .unwrap();
    out(&mut c);
    feed(
        &mut c,
        "250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n250 ok\r\n",
    );
    assert_eq!(feed(&mut c, "354 go\r\n"), NONE);
    assert_eq!(out(&mut c), "x\r\n.\r\n");
    assert_eq!(feed(&mut c, "250 2.0.0 b done\r\n"), NONE);
    assert_eq!(feed(&mut c, "452 4.2.2 d over quota\r\n"), NONE);
    assert_eq!(
        feed(&mut c, "552 5.2.2 e over quota\r\n"),
        [
            "Delivered(b@y=A250/2.0.0 c@y=P550/5.1.1 d@y=T452/4.2.2 e@y=P552/5.2.2)",
            "Ready"
        ]
    );
    // A connection lost halfway: delivered recipients stay delivered.
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    feed(
        &mut c,
        "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 b done\r\n",
    );
    c.peer_closed();
    assert_eq!(
        events(&mut c),
        [
            "Delivered(b@y=A250/2.0.0 c@y=T421/4.4.2)",
            "Failed(data T 421/4.4.2)",
            "Closed"
        ]
    );
    // No HELO fallback in LMTP.
    let mut c = ClientSession::new(lmtp);
    feed(&mut c, "220 lmtp\r\n");
    out(&mut c);
    assert_eq!(
        feed(&mut c, "500 5.5.1 what\r\n"),
        ["Failed(ehlo P 500/5.5.1)", "Closed"]
    );
    assert_eq!(out(&mut c), "QUIT\r\n");
}

#[test]
fn dot_stuffing_and_line_ends() {
    assert_eq!(encode_data(b""), b".\r\n");
    assert_eq!(encode_data(b"a\r\n"), b"a\r\n.\r\n");
    assert_eq!(encode_data(b"a"), b"a\r\n.\r\n");
    assert_eq!(
        encode_data(b".\r\n..x\r\nabc\r\n.end"),
        b"..\r\n...x\r\nabc\r\n..end\r\n.\r\n"
    );
    assert_eq!(encode_data(b"a.b\r\n .c\r\n"), b"a.b\r\n .c\r\n.\r\n");
    // Bare LF and bare CR become CRLF; nothing bare ever goes out.
    assert_eq!(
        encode_data(b"a\nb\rc\r\r\nd\r"),
        b"a\r\nb\r\nc\r\n\r\nd\r\n.\r\n"
    );
    assert_eq!(encode_data(b"a\n.b\r.c"), b"a\r\n..b\r\n..c\r\n.\r\n");
    let big: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let enc = encode_data(&big);
    for (i, &b) in enc.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(enc.get(i + 1), Some(&b'\n'));
        }
        if b == b'\n' {
            assert_eq!(enc.get(i.wrapping_sub(1)), Some(&b'\r'));
        }
    }

    let mut c = ready(config(), EHLO_FULL);
    let data = b".hidden\r\n.\r\nlast line";
    c.send(&msg("a@x", &["b@y"], data), data).unwrap();
    feed(&mut c, "250 ok\r\n250 ok\r\n");
    out(&mut c);
    feed(&mut c, "354 go\r\n");
    assert_eq!(out(&mut c), "..hidden\r\n..\r\nlast line\r\n.\r\n");
}

#[test]
fn two_messages_on_one_connection() {
    let mut c = ready(config(), EHLO_FULL);
    c.send(&msg("a@x", &["b@y"], b"one\r\n"), b"one\r\n")
        .unwrap();
    feed(&mut c, "250 ok\r\n250 ok\r\n354 go\r\n");
    c.feed(b"250 2.0.0 first\r\n");
    assert_eq!(
        c.poll_event().map(|e| show(&e)).as_deref(),
        Some("Delivered(b@y=A250/2.0.0)")
    );
    // Acting on Delivered right away drops the now stale Ready.
    c.send(&msg("a@x", &["c@y"], b"two\r\n"), b"two\r\n")
        .unwrap();
    assert_eq!(events(&mut c), NONE);
    feed(&mut c, "250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        feed(&mut c, "250 2.0.0 second\r\n"),
        ["Delivered(c@y=A250/2.0.0)", "Ready"]
    );
    assert_eq!(
        out(&mut c),
        "MAIL FROM:<a@x> SIZE=5\r\nRCPT TO:<b@y>\r\nDATA\r\none\r\n.\r\n\
         MAIL FROM:<a@x> SIZE=5\r\nRCPT TO:<c@y>\r\nDATA\r\ntwo\r\n.\r\n"
    );
}

#[test]
fn malformed_replies_fail_the_connection() {
    for bad in [
        "250-ok\r\n251 ok\r\n",
        "250ok\r\n",
        "2500 ok\r\n",
        "ok\r\n",
        "\r\n",
        "199 ok\r\n",
        "250\x00ok\r\n",
    ] {
        let mut c = ready(config(), EHLO_FULL);
        c.send(&msg("a@x", &["b@y"], b"x\r\n"), b"x\r\n").unwrap();
        out(&mut c);
        assert_eq!(
            feed(&mut c, bad),
            ["Failed(mail T 421/4.4.0)", "Closed"],
            "{bad:?}"
        );
        assert_eq!(out(&mut c), "");
        assert!(c.is_closed());
    }
    let mut c = ClientSession::new(config());
    c.feed(&vec![b'2'; MAX_LINE]);
    assert_eq!(events(&mut c), ["Failed(greeting T 421/4.4.0)", "Closed"]);
    // A garbled answer to QUIT still closes.
    let mut c = ready(config(), EHLO_FULL);
    c.quit();
    assert_eq!(feed(&mut c, "garbage\r\n"), ["Closed"]);
}

#[test]
fn misuse_and_quit_outside_ready() {
    let mut c = ClientSession::new(config());
    assert_eq!(
        c.send(&msg("a@x", &["b@y"], b""), b""),
        Err(Misuse::NotReady)
    );
    assert_eq!(c.tls_established(), Err(Misuse::NoTlsPending));
    c.quit();
    assert_eq!(events(&mut c), ["Closed"]);
    assert_eq!(out(&mut c), "");
    assert!(c.is_closed());
    c.quit();
    assert_eq!(events(&mut c), NONE);

    let mut c = ready(config(), EHLO_FULL);
    assert_eq!(
        c.send(&msg("a@x", &[], b""), b""),
        Err(Misuse::NoRecipients)
    );
    c.send(&msg("a@x", &["b@y"], b""), b"").unwrap();
    assert_eq!(
        c.send(&msg("a@x", &["b@y"], b""), b""),
        Err(Misuse::NotReady)
    );
    // Abandoning a transaction closes at once.
    out(&mut c);
    c.quit();
    assert_eq!(events(&mut c), ["Closed"]);
    assert_eq!(out(&mut c), "");
    // Quit while a StartTls event is still queued: the event is dropped.
    let mut c = to_starttls(TlsPolicy::Require, None);
    c.feed(b"220 go\r\n");
    c.quit();
    assert_eq!(events(&mut c), ["Closed"]);
}

#[test]
fn peer_closed_connection() {
    let mut c = ready(config(), EHLO_FULL);
    c.peer_closed();
    assert_eq!(events(&mut c), ["Failed(idle T 421/4.4.2)", "Closed"]);
    // Replies already received are processed first.
    let mut c = ClientSession::new(config());
    c.feed(b"554 5.7.1 no\r\n");
    c.peer_closed();
    assert_eq!(events(&mut c), ["Failed(greeting P 554/5.7.1)", "Closed"]);
    // After QUIT an EOF is the normal end.
    let mut c = ready(config(), EHLO_FULL);
    c.quit();
    c.peer_closed();
    assert_eq!(events(&mut c), ["Closed"]);
}

#[test]
fn timed_out_waiting_for_the_server() {
    let mut c = ready(config(), EHLO_FULL);
    c.timed_out();
    assert_eq!(events(&mut c), ["Failed(idle T 421/4.4.2)", "Closed"]);
    assert_eq!(out(&mut c), "", "no QUIT to an unresponsive server");
    // Complete replies already received are processed first; a partial one is dropped.
    let mut c = ClientSession::new(config());
    c.feed(b"220 mx\r\n250-mx\r\n250 PIPE");
    c.timed_out();
    assert_eq!(events(&mut c), ["Failed(ehlo T 421/4.4.2)", "Closed"]);
    // LMTP: recipients answered before the timeout keep their outcome.
    let lmtp = ClientConfig {
        lmtp: true,
        ..config()
    };
    let mut c = ready(
        lmtp,
        "250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n",
    );
    c.send(&msg("a@x", &["b@y", "c@y"], b"x\r\n"), b"x\r\n")
        .unwrap();
    out(&mut c);
    c.feed(b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 b done\r\n");
    c.timed_out();
    let got = events(&mut c);
    assert_eq!(
        got,
        [
            "Delivered(b@y=A250/2.0.0 c@y=T421/4.4.2)",
            "Failed(data T 421/4.4.2)",
            "Closed"
        ]
    );
    // After QUIT a timeout just closes.
    let mut c = ready(config(), EHLO_FULL);
    c.quit();
    c.timed_out();
    assert_eq!(events(&mut c), ["Closed"]);
    // The failure says what happened.
    let mut c = ready(config(), EHLO_FULL);
    c.timed_out();
    match c.poll_event() {
        Some(ClientEvent::Failed(f)) => assert!(f.reply.to_string().contains("Timed out")),
        other => panic!("{other:?}"),
    }
}

// --- split-input invariance ------------------------------------------------------------

/// Runs a scripted conversation: `transcript` is everything the server says, fed in
/// `chunks`; messages are sent on Ready, then QUIT. Returns events and output.
fn run_script(
    config: &ClientConfig,
    transcript: &[u8],
    messages: &[(OutboundMessage, Vec<u8>)],
    split: &[usize],
) -> (Vec<String>, Vec<u8>) {
    let mut c = ClientSession::new(config.clone());
    let mut todo: VecDeque<_> = messages.iter().collect();
    let mut seen = Vec::new();
    let mut output = Vec::new();
    let mut start = 0;
    for end in split.iter().copied().chain([transcript.len()]) {
        c.feed(&transcript[start..end]);
        start = end;
        while let Some(event) = c.poll_event() {
            if event == ClientEvent::Ready {
                match todo.pop_front() {
                    Some((m, data)) => c.send(m, data).unwrap(),
                    None => c.quit(),
                }
            }
            seen.push(show(&event));
        }
        output.extend(c.take_output());
    }
    (seen, output)
}

fn assert_split_invariant(
    config: &ClientConfig,
    transcript: &str,
    messages: &[(OutboundMessage, Vec<u8>)],
    expect: &[&str],
) {
    let transcript = transcript.as_bytes();
    let (whole, whole_out) = run_script(config, transcript, messages, &[]);
    assert_eq!(whole, expect);
    for k in 0..=transcript.len() {
        let split = run_script(config, transcript, messages, &[k]);
        assert_eq!(split, (whole.clone(), whole_out.clone()), "split at {k}");
    }
    let bytewise: Vec<usize> = (1..transcript.len()).collect();
    let split = run_script(config, transcript, messages, &bytewise);
    assert_eq!(split, (whole, whole_out), "byte by byte");
}

#[test]
fn split_input_at_every_byte() {
    let m1 = (msg("a@x", &["b@y", "c@y"], b"one\r\n"), b"one\r\n".to_vec());
    let m2 = (msg("a@x", &["d@y"], b".two"), b".two".to_vec());
    let pipelined = "220-mx ESMTP\r\n220 ready\r\n\
        250-mx\r\n250-PIPELINING\r\n250-SIZE 100\r\n250 ENHANCEDSTATUSCODES\r\n\
        250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no such\r\n550 5.1.1 user\r\n354 go\r\n\
        250 2.0.0 queued\r\n\
        250 2.1.0 ok\r\n450 4.2.0 later\r\n554 5.5.1 no recipients\r\n250 2.0.0 reset\r\n\
        221 2.0.0 bye\r\n";
    assert_split_invariant(
        &config(),
        pipelined,
        &[m1.clone(), m2.clone()],
        &[
            "Ready",
            "Delivered(b@y=A250/2.0.0 c@y=P550/5.1.1)",
            "Ready",
            "Delivered(d@y=T450/4.2.0)",
            "Ready",
            "Closed",
        ],
    );
    let plain = "220 mx\r\n500 what\r\n250 mx\r\n250 ok\r\n250 ok\r\n451 later\r\n\
        354 go\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n550 spam\r\n221 bye\r\n";
    assert_split_invariant(
        &config(),
        plain,
        &[m1.clone(), m2.clone()],
        &[
            "Ready",
            "Delivered(b@y=A250 c@y=T451)",
            "Ready",
            "Delivered(d@y=P550)",
            "Ready",
            "Closed",
        ],
    );
    let lmtp = ClientConfig {
        lmtp: true,
        ..config()
    };
    let script = "220 lmtp\r\n250-lmtp\r\n250 PIPELINING\r\n\
        250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 b ok\r\n452 c full\r\n\
        250 ok\r\n250 ok\r\n354 go\r\n250 d ok\r\n221 bye\r\n";
    assert_split_invariant(
        &lmtp,
        script,
        &[m1, m2],
        &[
            "Ready",
            "Delivered(b@y=A250 c@y=T452)",
            "Ready",
            "Delivered(d@y=A250)",
            "Ready",
            "Closed",
        ],
    );
}

// --- against the crate's own server ------------------------------------------------------

type Decide = Box<dyn FnMut(&Event) -> Option<Reply>>;

/// A client and a server [`Session`] connected by in-memory buffers.
struct Pair {
    client: ClientSession,
    server: Session,
    todo: VecDeque<(OutboundMessage, Vec<u8>)>,
    events: Vec<String>,
    envelopes: Vec<Envelope>,
    decide: Decide,
    /// Octets per feed in both directions.
    chunk: usize,
}

impl Pair {
    fn new(server: SessionConfig, client: ClientConfig) -> Self {
        let mut server = Session::new(server, false);
        server.greet();
        Self {
            client: ClientSession::new(client),
            server,
            todo: VecDeque::new(),
            events: Vec::new(),
            envelopes: Vec::new(),
            decide: Box::new(|_| None),
            chunk: usize::MAX,
        }
    }

    fn decide(mut self, decide: impl FnMut(&Event) -> Option<Reply> + 'static) -> Self {
        self.decide = Box::new(decide);
        self
    }

    fn message(mut self, m: OutboundMessage, data: &[u8]) -> Self {
        self.todo.push_back((m, data.to_vec()));
        self
    }

    fn client_events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::Ready => match self.todo.pop_front() {
                    Some((m, data)) => self.client.send(&m, &data).unwrap(),
                    None => self.client.quit(),
                },
                ClientEvent::StartTls => self.client.tls_established().unwrap(),
                _ => {}
            }
            self.events.push(show(&event));
        }
    }

    fn server_events(&mut self) {
        while let Some(event) = self.server.poll_event() {
            match ((self.decide)(&event), event) {
                (_, Event::Close) => {}
                (_, Event::StartTls) => self.server.tls_established().unwrap(),
                (Some(reply), _) => self.server.reject(reply).unwrap(),
                (None, Event::Message(envelope)) => {
                    self.envelopes.push(*envelope);
                    self.server.queued("Q1").unwrap();
                }
                (
                    None,
                    Event::Auth {
                        username, password, ..
                    },
                ) => {
                    if password == "secret" {
                        self.server.auth_succeeded(&username).unwrap();
                    } else {
                        let r = Reply::new(535, Some(EnhancedCode::new(5, 7, 8)), "Bad");
                        self.server.reject(r.unwrap()).unwrap();
                    }
                }
                (None, _) => self.server.accept().unwrap(),
            }
        }
    }

    fn run(mut self) -> Self {
        self.server_events();
        for _ in 0..10_000 {
            let to_client = self.server.take_output();
            for piece in to_client.chunks(self.chunk) {
                self.client.feed(piece);
                self.client_events();
            }
            self.client_events();
            let to_server = self.client.take_output();
            for piece in to_server.chunks(self.chunk) {
                self.server.feed(piece);
                self.server_events();
            }
            if to_client.is_empty() && to_server.is_empty() {
                return self;
            }
        }
        panic!("conversation does not end");
    }
}

fn mailbox(s: &str) -> Mailbox {
    let (local, domain) = s.split_once('@').unwrap();
    Mailbox::new(local, Domain::Name(domain.into()))
}

fn reply(c: u16, e: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(c, Some(EnhancedCode::new(e.0, e.1, e.2)), text).unwrap()
}

#[test]
fn against_server_full_delivery() {
    let data = b"Subject: t\r\n\r\n.leading dot\n.\r\ncaf\xc3\xa9\rend";
    let canonical = b"Subject: t\r\n\r\n.leading dot\r\n.\r\ncaf\xc3\xa9\r\nend\r\n";
    let mut m = msg("a@x.example", &["b@y.example", "c@y.example"], data);
    m.size = canonical.len() as u64;
    m.ret = Some(Ret::Full);
    m.envid = Some("env 1+".into());
    m.recipients[0].notify = Some(Notify::Never);
    m.recipients[1].orcpt = Some(("rfc822".into(), "orig+c@y.example".into()));
    for chunk in [usize::MAX, 1, 2, 3, 7] {
        let mut pair = Pair::new(SessionConfig::default(), config()).message(m.clone(), data);
        pair.chunk = chunk;
        let pair = pair.run();
        assert_eq!(
            pair.events,
            [
                "Ready",
                "Delivered(b@y.example=A250/2.0.0 c@y.example=A250/2.0.0)",
                "Ready",
                "Closed"
            ],
            "chunk {chunk}"
        );
        assert!(pair.client.is_closed() && pair.server.is_closed());
        let [envelope] = pair.envelopes.as_slice() else {
            panic!("one message expected")
        };
        assert_eq!(envelope.data, canonical);
        assert_eq!(envelope.from, ReversePath::Mailbox(mailbox("a@x.example")));
        assert_eq!(
            envelope.mail_params,
            MailParams {
                size: Some(canonical.len() as u64),
                body: Some(Body::EightBitMime),
                smtputf8: false,
                ret: Some(Ret::Full),
                envid: Some("env 1+".into()),
                auth: None,
                require_tls: false,
            }
        );
        assert_eq!(
            envelope.recipients,
            [
                (
                    ForwardPath::Mailbox(mailbox("b@y.example")),
                    RcptParams {
                        notify: Some(Notify::Never),
                        orcpt: None
                    }
                ),
                (
                    ForwardPath::Mailbox(mailbox("c@y.example")),
                    RcptParams {
                        notify: None,
                        orcpt: Some(("rfc822".into(), "orig+c@y.example".into()))
                    }
                ),
            ]
        );
    }
}

#[test]
fn against_server_rejections_and_two_messages() {
    let pair = Pair::new(
        SessionConfig {
            max_message_size: 40,
            ..SessionConfig::default()
        },
        config(),
    )
    .decide(|event| match event {
        Event::RcptTo { to, .. } if to.to_string().starts_with("<bad") => {
            Some(reply(550, (5, 1, 1), "No such user"))
        }
        Event::MailFrom { from, .. } if from.to_string() == "<spammer@x.example>" => {
            Some(reply(554, (5, 7, 1), "Go away"))
        }
        _ => None,
    })
    .message(
        msg(
            "a@x.example",
            &["ok@y.example", "bad@y.example"],
            b"one\r\n",
        ),
        b"one\r\n",
    )
    .message(
        msg(
            "a@x.example",
            &["bad1@y.example", "bad2@y.example"],
            b"x\r\n",
        ),
        b"x\r\n",
    )
    .message(
        msg("spammer@x.example", &["ok@y.example"], b"x\r\n"),
        b"x\r\n",
    )
    .message(
        msg("a@x.example", &["ok@y.example"], &[b'x'; 41]),
        &[b'x'; 41],
    )
    .message(msg("", &["ok2@y.example"], b"two\r\n"), b"two\r\n")
    .run();
    assert_eq!(
        pair.events,
        [
            "Ready",
            "Delivered(ok@y.example=A250/2.0.0 bad@y.example=P550/5.1.1)",
            "Ready",
            "Delivered(bad1@y.example=P550/5.1.1 bad2@y.example=P550/5.1.1)",
            "Ready",
            "Delivered(ok@y.example=P554/5.7.1)",
            "Ready",
            "Unsupported(ok@y.example=P552/5.3.4)",
            "Ready",
            "Delivered(ok2@y.example=A250/2.0.0)",
            "Ready",
            "Closed"
        ]
    );
    assert_eq!(pair.envelopes.len(), 2);
    assert_eq!(pair.envelopes[0].data, b"one\r\n");
    assert_eq!(pair.envelopes[1].from, ReversePath::Null);
    assert_eq!(pair.envelopes[1].data, b"two\r\n");
}

#[test]
fn against_server_starttls_and_auth() {
    let server = SessionConfig {
        starttls: true,
        auth: true,
        ..SessionConfig::default()
    };
    let client = ClientConfig {
        tls: TlsPolicy::Require,
        auth: creds(),
        ..config()
    };
    let pair = Pair::new(server.clone(), client.clone())
        .message(msg("a@x.example", &["b@y.example"], b"hi\r\n"), b"hi\r\n")
        .run();
    assert_eq!(
        pair.events,
        [
            "StartTls",
            "Ready",
            "Delivered(b@y.example=A250/2.0.0)",
            "Ready",
            "Closed"
        ]
    );
    assert!(pair.client.is_tls() && pair.server.tls());
    assert_eq!(pair.server.authenticated(), Some("bob"));
    assert!(pair.client.extensions().offers_auth("PLAIN"));
    assert!(!pair.client.extensions().starttls);

    let wrong = ClientConfig {
        auth: Some(Credentials {
            username: "bob".into(),
            password: "wrong".into(),
        }),
        ..client
    };
    let pair = Pair::new(server.clone(), wrong).run();
    assert_eq!(
        pair.events,
        ["StartTls", "Failed(auth P 535/5.7.8)", "Closed"]
    );
    assert!(pair.server.is_closed());

    // Opportunistic TLS against a server without STARTTLS.
    let pair = Pair::new(
        SessionConfig::default(),
        ClientConfig {
            tls: TlsPolicy::Opportunistic,
            ..config()
        },
    )
    .run();
    assert_eq!(pair.events, ["Ready", "Closed"]);
    assert!(!pair.client.is_tls());
    // Required TLS against it.
    let pair = Pair::new(
        SessionConfig::default(),
        ClientConfig {
            tls: TlsPolicy::Require,
            ..config()
        },
    )
    .run();
    assert_eq!(pair.events, ["Failed(starttls T 421/4.7.5)", "Closed"]);
    assert!(pair.server.is_closed());
}

#[test]
fn against_server_helo_fallback() {
    let pair = Pair::new(SessionConfig::default(), config())
        .decide(|event| match event {
            Event::Helo { extended: true, .. } => {
                Some(reply(502, (5, 5, 1), "EHLO not implemented"))
            }
            _ => None,
        })
        .message(msg("a@x.example", &["b@y.example"], b"hi\r\n"), b"hi\r\n")
        .run();
    assert_eq!(
        pair.events,
        [
            "Ready",
            "Delivered(b@y.example=A250/2.0.0)",
            "Ready",
            "Closed"
        ]
    );
    assert!(pair.envelopes[0].mail_params.is_empty());
    assert_eq!(pair.client.extensions(), &Extensions::default());
}
