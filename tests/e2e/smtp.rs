//! Accepting mail: real clients, pipelining, the spooled envelope.

use std::process::Command;

use crate::harness::{Relay, config, python, queue_id, send_message};

const LOCAL: &str = "[relay]\nlocal_domains = [\"relay.test\"]\n";

#[test]
fn raw_client_message_is_spooled_with_envelope_and_received_header() {
    let mut relay = Relay::builder(&config(LOCAL)).start();
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "sender@client.test",
        &["alice@relay.test", "bob@relay.test"],
        "Subject: hi\r\n\r\nhello\r\n..dot",
    );
    assert_eq!(code, 250);
    let id = queue_id(&lines);
    assert_eq!(c.cmd("QUIT").0, 221);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    let (env, msg) = &spool[0];
    assert_eq!(env.mail_from, "sender@client.test");
    let rcpts: Vec<_> = env.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["alice@relay.test", "bob@relay.test"]);
    assert_eq!(env.client.ip.to_string(), "127.0.0.1");
    assert_eq!(env.client.helo, "client.test");
    assert_eq!(env.client.listener, "smtp");
    let msg = String::from_utf8(msg.clone()).unwrap();
    assert!(
        msg.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.relay.test (Postrider) with ESMTP;"
        ),
        "{msg}"
    );
    assert!(
        msg.ends_with("Subject: hi\r\n\r\nhello\r\n.dot\r\n"),
        "dot-unstuffed body: {msg:?}"
    );
    assert!(!id.is_empty());
}

#[test]
fn pipelined_commands_get_replies_in_order() {
    let mut relay = Relay::builder(&config(LOCAL)).start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    c.send(b"MAIL FROM:<a@client.test> SIZE=100\r\nRCPT TO:<x@relay.test>\r\nRCPT TO:<y@elsewhere.test>\r\nRCPT TO:<z@relay.test>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..5).map(|_| c.reply().0).collect();
    assert_eq!(codes, [250, 250, 554, 250, 354]);
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<b@client.test>\r\nRCPT TO:<x@relay.test>\r\nDATA\r\n");
    let codes: Vec<u16> = (0..4).map(|_| c.reply().0).collect();
    assert_eq!(codes, [250, 250, 250, 354]);
    c.send(b"second\r\n.\r\nQUIT\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 221);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 2);
    let mut rcpts: Vec<_> = spool.iter().map(|(e, _)| e.recipients.len()).collect();
    rcpts.sort();
    assert_eq!(rcpts, [1, 2]);
}

#[test]
fn bdat_chunks_are_assembled() {
    let mut relay = Relay::builder(&config(LOCAL)).start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test> BODY=8BITMIME").0, 250);
    assert_eq!(
        c.cmd("RCPT TO:<x@relay.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x+40relay.test")
            .0,
        250
    );
    c.send(b"BDAT 14\r\nSubject: b\r\n\r\nBDAT 7 LAST\r\nbody\r\n.");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.reply().0, 250);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    let (env, msg) = &spool[0];
    assert!(msg.ends_with(b"Subject: b\r\n\r\nbody\r\n."));
    assert_eq!(env.body.map(|b| b.keyword()), Some("8BITMIME"));
    assert_eq!(
        env.recipients[0].notify.map(|n| n.keywords()),
        Some(vec!["SUCCESS", "FAILURE"])
    );
    assert_eq!(
        env.recipients[0].orcpt.as_deref(),
        Some("rfc822;x@relay.test")
    );
}

#[test]
fn swaks_delivers_a_message() {
    let mut relay = Relay::builder(&config(LOCAL)).start();
    let addr = relay.addr("smtp");
    let out = Command::new("swaks")
        .args([
            "--server",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args([
            "--from",
            "swaks@client.test",
            "--to",
            "carol@relay.test",
            "--helo",
            "swaks.test",
        ])
        .args(["--header", "Subject: from swaks", "--body", "swaks body"])
        .output()
        .expect("swaks must be installed (apt-get install swaks)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{text}");
    assert!(text.contains("<-  250 2.0.0 Ok: queued as "), "{text}");
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    assert_eq!(spool[0].0.recipients[0].address, "carol@relay.test");
    assert!(String::from_utf8_lossy(&spool[0].1).contains("Subject: from swaks"));
}

#[test]
fn python_smtplib_sends_utf8_and_8bit_mail() {
    let mut relay = Relay::builder(&config(
        "[relay]\nlocal_domains = [\"relay.test\", \"bücher.test\"]\n",
    ))
    .start();
    let addr = relay.addr("smtp");
    python(
        r#"
import email.policy, smtplib, sys
from email.message import EmailMessage
host, port = sys.argv[1], int(sys.argv[2])
m = EmailMessage()
m["From"] = "smtplib@client.test"
m["To"] = "dave@relay.test"
m["Subject"] = "Grüße"
m.set_content("naïve café\n", cte="8bit")
with smtplib.SMTP(host, port, local_hostname="py.test", timeout=20) as s:
    refused = s.send_message(m)
    assert refused == {}, refused
    refused = s.sendmail("jörg@client.test", ["jürgen@bücher.test"], m.as_bytes(policy=email.policy.SMTPUTF8), mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    assert refused == {}, refused
    try:
        s.sendmail("a@client.test", ["x@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
        raise SystemExit("relay to elsewhere.test was accepted")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["x@elsewhere.test"][0] == 554, e.recipients
print("ok")
"#,
        &[&addr.ip().to_string(), &addr.port().to_string()],
    );
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 2);
    let utf8 = spool
        .iter()
        .find(|(e, _)| e.smtputf8)
        .expect("the SMTPUTF8 message");
    assert_eq!(utf8.0.mail_from, "jörg@client.test");
    assert_eq!(utf8.0.recipients[0].address, "jürgen@bücher.test");
}
