//! The driver without plugins, against a scripted policy: what the relay's own checks decide,
//! what is stored, and what the route stage reads back.

use std::net::{IpAddr, Ipv4Addr};

use postrider_plugin_host::{AuthResult, ConnInfo, SpfCheck, TlsInfo};
use postrider_queue::Envelope;
use postrider_smtp::address::{ForwardPath, ReversePath};
use postrider_smtp::reply::Reply;
use postrider_smtp::server::{self as smtp, Session, SessionConfig};

use super::*;

/// A policy whose answers the test sets.
#[derive(Default)]
struct Script {
    refuse_rcpt: Option<String>,
    spf: Option<SpfCheck>,
    refuse_message: Option<(String, Reply)>,
    quarantine: Option<String>,
    store_fails: bool,
    stored: Vec<(String, Envelope, Vec<u8>)>,
}

impl Policy for Script {
    fn check_recipient(&self, _: &Session, to: &ForwardPath, _: bool) -> Result<(), Reply> {
        match &self.refuse_rcpt {
            Some(r) if to.address() == *r => {
                Err(Reply::local(554, (5, 7, 1), "Relay access denied"))
            }
            _ => Ok(()),
        }
    }

    async fn check_sender(&mut self, _: &Session, _: &ReversePath) -> Option<SpfCheck> {
        self.spf.clone()
    }

    async fn authenticate(&mut self, _: Credentials<'_>) -> Result<String, Reply> {
        Err(Reply::local(535, (5, 7, 8), "no"))
    }

    async fn verify(&mut self, _: &Session, _: &mut smtp::Envelope) -> Verified {
        Verified {
            trace: "Authentication-Results: test; none\r\n".into(),
            authentication: None,
            refuse: self.refuse_message.clone(),
            quarantine: self.quarantine.clone(),
        }
    }

    fn finish(&mut self, _: &Session, message: Vec<u8>) -> Vec<u8> {
        let mut signed = b"X-Signed: yes\r\n".to_vec();
        signed.extend(message);
        signed
    }

    fn queue_id(&mut self) -> String {
        "Q1".into()
    }

    async fn store(&mut self, id: &str, envelope: Envelope, message: Vec<u8>) -> Result<(), Reply> {
        if self.store_fails {
            return Err(Reply::local(451, (4, 3, 0), "could not queue"));
        }
        self.stored.push((id.to_owned(), envelope, message));
        Ok(())
    }
}

fn conn() -> ConnInfo {
    ConnInfo {
        id: "c-1".into(),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        client_port: 40_001,
        client_name: None,
        listener: "mx".into(),
        server_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        server_port: 25,
        helo: None,
        tls: Some(TlsInfo {
            protocol: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            sni: Some("mx.example.org".into()),
        }),
        auth_user: None,
    }
}

/// Feeds `input` and answers every event; returns the replies and the message reports.
async fn play(policy: &mut Script, input: &str) -> (String, Vec<MessageReport>, Driver) {
    let config = SessionConfig {
        hostname: "mx.example.org".into(),
        ..SessionConfig::default()
    };
    let mut session = Session::new(config, true);
    let mut driver = Driver::new(None, conn(), "mx.example.org");
    driver.connect(&mut session).await.unwrap();
    session.feed(input.as_bytes());
    let mut reports = Vec::new();
    while let Some(event) = session.poll_event() {
        if let Handled::Message(r) = driver.handle(&mut session, event, policy).await.unwrap() {
            reports.push(*r);
        }
    }
    let out = String::from_utf8(session.take_output()).unwrap();
    (out, reports, driver)
}

const TRANSACTION: &str = "EHLO client.example\r\nMAIL FROM:<a@example.org> BODY=8BITMIME RET=HDRS ENVID=e1\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net> NOTIFY=FAILURE\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n";

#[tokio::test]
async fn a_message_is_stored_under_the_policy_id_with_our_headers() {
    let mut policy = Script {
        spf: Some(SpfCheck {
            result: AuthResult::Softfail,
            domain: "example.org".into(),
        }),
        refuse_rcpt: Some("b@example.net".into()),
        ..Script::default()
    };
    let (out, reports, driver) = play(&mut policy, TRANSACTION).await;
    assert!(out.contains("554 5.7.1 Relay access denied"), "{out}");
    assert!(out.contains("250 2.0.0 Ok: queued as Q1"), "{out}");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].result, MessageResult::Queued("Q1".into()));
    assert_eq!(driver.verdicts(), ["builtin@rcpt=reject"]);
    let (id, envelope, message) = &policy.stored[0];
    assert_eq!(id, "Q1");
    let text = String::from_utf8_lossy(message);
    assert!(
        text.starts_with("X-Signed: yes\r\nReceived: from client.example ([192.0.2.7])"),
        "{text}"
    );
    assert!(text.contains("with ESMTPS"), "{text}");
    assert!(text.contains("for <c@example.net>"), "{text}");
    assert!(
        text.contains("Authentication-Results: test; none\r\nSubject: x\r\n"),
        "{text}"
    );
    assert_eq!(envelope.recipients.len(), 1);
    assert_eq!(envelope.client.session.as_deref(), Some("c-1"));
    assert_eq!(envelope.client.sni.as_deref(), Some("mx.example.org"));
    assert_eq!(
        envelope.spf.as_ref().map(|s| s.result.as_str()),
        Some("softfail")
    );
    assert_eq!(reports[0].size, message.len());
}

#[tokio::test]
async fn the_route_stage_reads_back_what_the_session_saw() {
    let mut policy = Script::default();
    let (_, _, _) = play(&mut policy, TRANSACTION).await;
    let (id, envelope, _) = &policy.stored[0];
    let (route_conn, env) = route_inputs(id, envelope);
    let expected = ConnInfo {
        helo: Some("client.example".into()),
        ..conn()
    };
    assert_eq!(route_conn, expected);
    assert_eq!(env.queue_id.as_deref(), Some("Q1"));
    assert_eq!(env.mail_from, "a@example.org");
    assert_eq!(
        env.mail_params,
        [
            ("BODY".to_owned(), Some("8BITMIME".to_owned())),
            ("RET".to_owned(), Some("HDRS".to_owned())),
            ("ENVID".to_owned(), Some("e1".to_owned())),
        ]
    );
    assert_eq!(env.recipients, ["b@example.net", "c@example.net"]);
    assert_eq!(env.spf, None);
}

#[tokio::test]
async fn a_built_in_refusal_or_a_spool_failure_answers_the_message() {
    let mut policy = Script {
        refuse_message: Some((
            "dmarc".into(),
            Reply::local(550, (5, 7, 1), "DMARC says no"),
        )),
        ..Script::default()
    };
    let (out, reports, driver) = play(&mut policy, TRANSACTION).await;
    assert!(out.contains("550 5.7.1 DMARC says no"), "{out}");
    assert_eq!(reports[0].result, MessageResult::Rejected);
    assert_eq!(driver.verdicts(), ["dmarc@data=reject"]);
    assert!(policy.stored.is_empty());

    let mut policy = Script {
        store_fails: true,
        quarantine: Some("dmarc quarantine".into()),
        ..Script::default()
    };
    let (out, reports, _) = play(&mut policy, TRANSACTION).await;
    assert!(out.contains("451 4.3.0 could not queue"), "{out}");
    assert_eq!(reports[0].result, MessageResult::Tempfailed);
    assert_eq!(
        reports[0].envelope.quarantine.as_deref(),
        Some("dmarc quarantine")
    );
}

#[tokio::test]
async fn starttls_forgets_the_helo_until_the_client_greets_again() {
    let config = SessionConfig {
        starttls: true,
        ..SessionConfig::default()
    };
    let mut session = Session::new(config, false);
    let mut driver = Driver::new(
        None,
        ConnInfo {
            tls: None,
            ..conn()
        },
        "mx",
    );
    let mut policy = Script::default();
    driver.connect(&mut session).await.unwrap();
    session.feed(b"EHLO first.example\r\nSTARTTLS\r\n");
    while let Some(event) = session.poll_event() {
        if let Handled::StartTls = driver
            .handle(&mut session, event, &mut policy)
            .await
            .unwrap()
        {
            assert_eq!(driver.conn().helo.as_deref(), Some("first.example"));
            let tls = conn().tls.unwrap();
            driver.tls_established(&mut session, tls).unwrap();
        }
    }
    assert_eq!(driver.conn().helo, None);
    assert!(driver.conn().tls.is_some());
}
