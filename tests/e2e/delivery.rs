//! Outbound delivery against real peers: dnsmasq for MX and A records, Postfix's smtp-sink
//! as the receiving MTA, and a scripted receiver for 451-then-250.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Relay, config_dns, python, queue_id, send_message};
use crate::peers::{Proc, Receiver, Script, dnsmasq, free_port_on, smtp_sink, sunk, wait_for};

/// dnsmasq records: dest.test has MX mx1 (10, 127.0.0.2) and mx2 (20, 127.0.0.3);
/// sender.test has MX 127.0.0.4 (where DSNs go); nullmx.test has a null MX (RFC 7505) and
/// gone.test does not exist (NXDOMAIN).
fn records() -> Vec<String> {
    [
        "--mx-host=dest.test,mx1.dest.test,10",
        "--mx-host=dest.test,mx2.dest.test,20",
        "--host-record=mx1.dest.test,127.0.0.2",
        "--host-record=mx2.dest.test,127.0.0.3",
        "--mx-host=sender.test,mx.sender.test,10",
        "--host-record=mx.sender.test,127.0.0.4",
        "--mx-host=nullmx.test,.,0",
        "--local=/gone.test/",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn relay_config(dns: SocketAddr, port: u16) -> String {
    relay_config_with(dns, port, "")
}

/// [`relay_config`] with more `[delivery]` settings.
fn relay_config_with(dns: SocketAddr, port: u16, delivery: &str) -> String {
    config_dns(
        &dns.to_string(),
        &format!(
            "[relay]\nlocal_domains = [\"relay.test\"]\nrelay_networks = [\"127.0.0.0/8\"]\n\
             [delivery]\nsmtp_port = {port}\nretry_intervals = [1]\nconnect_timeout = 2\nreply_timeout = 10\n{delivery}"
        ),
    )
}

/// A relay whose dest.test MX rejects every message (550 5.1.1); DSNs reach an smtp-sink,
/// sender.test's MX, that stores them in `dsn_dir`. Keep the peers alive with the relay.
fn bouncing_relay(dsn_dir: &Path) -> (Relay, (Proc, Receiver, Proc)) {
    let (dns_proc, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let rejecter = Receiver::start(
        addr("127.0.0.2", port),
        Script(vec!["550 5.1.1 no such user here"]),
    );
    let sender_mx = smtp_sink(addr("127.0.0.4", port), dsn_dir);
    let relay = Relay::builder(&relay_config(dns, port)).start();
    (relay, (dns_proc, rejecter, sender_mx))
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

#[test]
fn delivers_to_the_mx_via_smtp_sink_and_empties_the_spool() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let _sink = smtp_sink(addr("127.0.0.2", port), &tmp.path().join("sink"));
    let mut relay = Relay::builder(&relay_config(dns, port)).start();
    let mut c = relay.client();
    let (code, _) = send_message(
        &mut c,
        "alice@sender.test",
        &["bob@dest.test", "carol@dest.test"],
        "Subject: out\r\n\r\nhello MX\r\n..leading dot",
    );
    assert_eq!(code, 250);
    wait_for("delivery to smtp-sink", Duration::from_secs(20), || {
        !sunk(&tmp.path().join("sink")).is_empty()
    });
    let messages = sunk(&tmp.path().join("sink"));
    assert_eq!(messages.len(), 1, "one transaction for both recipients");
    // The client dot-stuffed ".leading dot"; we stored it unstuffed and stuffed it again.
    assert!(
        messages[0].contains("hello MX\n.leading dot")
            || messages[0].contains("hello MX\r\n.leading dot"),
        "{}",
        messages[0]
    );
    assert!(
        messages[0].contains("X-Rcpt-Args: <bob@dest.test>")
            && messages[0].contains("X-Rcpt-Args: <carol@dest.test>"),
        "{}",
        messages[0]
    );
    wait_for("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    });
    let logs = relay.stop_and_logs();
    assert_eq!(
        logs.matches("delivered").count(),
        2,
        "one delivery log line per recipient:\n{logs}"
    );
}

#[test]
fn dead_first_mx_falls_back_to_the_second() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    // Nothing listens on mx1 (127.0.0.2); smtp-sink on mx2.
    let _sink = smtp_sink(addr("127.0.0.3", port), &tmp.path().join("sink"));
    let relay = Relay::builder(&relay_config(dns, port)).start();
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@sender.test",
            &["bob@dest.test"],
            "Subject: fallback\r\n\r\nx"
        )
        .0,
        250
    );
    wait_for(
        "delivery via the second MX",
        Duration::from_secs(20),
        || sunk(&tmp.path().join("sink")).len() == 1,
    );
}

#[test]
fn temporary_failure_is_retried_and_delivered_once() {
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let receiver = Receiver::start(
        addr("127.0.0.2", port),
        Script(vec!["451 4.3.0 try later", "250 2.0.0 Ok"]),
    );
    let relay = Relay::builder(&relay_config(dns, port)).start();
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@sender.test",
            &["bob@dest.test"],
            "Subject: retry\r\n\r\nx"
        )
        .0,
        250
    );
    wait_for("the retry", Duration::from_secs(30), || {
        receiver.accepted.lock().unwrap().len() == 1
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        receiver.accepted.lock().unwrap().len(),
        1,
        "delivered exactly once"
    );
    assert_eq!(
        *receiver.transactions.lock().unwrap(),
        2,
        "one 451, then one 250"
    );
}

#[test]
fn permanent_failure_sends_a_parseable_dsn_to_the_sender() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, _peers) = bouncing_relay(&tmp.path().join("dsn"));
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<alice@sender.test> RET=HDRS ENVID=env+2D42")
            .0,
        250
    );
    assert_eq!(
        c.cmd("RCPT TO:<nobody@dest.test> ORCPT=rfc822;nobody@dest.test")
            .0,
        250
    );
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: will bounce\r\nMessage-ID: <b1@sender.test>\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    wait_for(
        "the DSN at the sender's MX",
        Duration::from_secs(30),
        || sunk(&tmp.path().join("dsn")).len() == 1,
    );
    let dsn = sunk(&tmp.path().join("dsn")).remove(0);
    let path = tmp.path().join("dsn.eml");
    std::fs::write(&path, dsn.as_bytes()).unwrap();
    python(
        r#"
import email, sys
raw = open(sys.argv[1], "rb").read()
# smtp-sink stores the envelope first; the message starts at the first header line.
start = raw.find(b"\nFrom:")
msg = email.message_from_bytes(raw[raw.find(b"\n", 0) + 1:] if start < 0 else raw)
parts = [p for p in msg.walk()]
report = [p for p in parts if p.get_content_type() == "multipart/report"]
assert report, [p.get_content_type() for p in parts]
status = [p for p in parts if p.get_content_type() == "message/delivery-status"]
assert status, [p.get_content_type() for p in parts]
text = status[0].as_string()
assert "Action: failed" in text, text
assert "Status: 5.1.1" in text, text
assert "nobody@dest.test" in text, text
assert "Original-Envelope-Id: env-42" in text or "env+2D42" in text, text
assert any(p.get_content_type() == "text/rfc822-headers" for p in parts), "RET=HDRS returns headers only"
print("ok")
"#,
        &[path.to_str().unwrap()],
    );
}

#[test]
fn null_mx_and_missing_domains_bounce_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.4"]);
    let _sender_mx = smtp_sink(addr("127.0.0.4", port), &tmp.path().join("dsn"));
    // Retries an hour apart: a DSN within the test means no retry was waited for.
    let relay = Relay::builder(
        &relay_config(dns, port).replace("retry_intervals = [1]", "retry_intervals = [3600]"),
    )
    .start();
    let mut c = relay.client();
    let (code, _) = send_message(
        &mut c,
        "alice@sender.test",
        &["nobody@nullmx.test", "nobody@gone.test"],
        "Subject: nowhere\r\n\r\nbody",
    );
    assert_eq!(code, 250);
    let dsns = || sunk(&tmp.path().join("dsn")).concat();
    wait_for("DSNs for both recipients", Duration::from_secs(30), || {
        let all = dsns();
        all.contains("Status: 5.1.10") && all.contains("Status: 5.1.2")
    });
    let all = dsns();
    assert!(
        all.contains("nobody@nullmx.test") && all.contains("null MX"),
        "{all}"
    );
    assert!(
        all.contains("nobody@gone.test") && all.contains("not found"),
        "{all}"
    );
    wait_for("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    });
}

#[test]
fn notify_never_leaves_a_recipient_out_of_the_dsn() {
    let tmp = tempfile::tempdir().unwrap();
    let (relay, _peers) = bouncing_relay(&tmp.path().join("dsn"));
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@sender.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<quiet@dest.test> NOTIFY=NEVER").0, 250);
    assert_eq!(c.cmd("RCPT TO:<loud@dest.test> NOTIFY=FAILURE").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: two bounces\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    wait_for("the DSN", Duration::from_secs(30), || {
        sunk(&tmp.path().join("dsn")).len() == 1
    });
    wait_for("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    });
    let dsns = sunk(&tmp.path().join("dsn"));
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    assert!(dsns[0].contains("loud@dest.test"), "{}", dsns[0]);
    assert!(!dsns[0].contains("quiet@dest.test"), "{}", dsns[0]);
}

#[test]
fn temporary_failures_warn_then_expire_with_a_dsn_and_leave_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let full = Receiver::start(
        addr("127.0.0.2", port),
        Script(vec!["452 4.2.2 mailbox full"]),
    );
    let _sender_mx = smtp_sink(addr("127.0.0.4", port), &tmp.path().join("dsn"));
    let mut relay = Relay::builder(&relay_config_with(
        dns,
        port,
        "delay_warning = 1\nmax_age = 5\n",
    ))
    .start();
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "alice@sender.test",
        &["full@dest.test"],
        "Subject: never fits\r\nMessage-ID: <e1@sender.test>\r\n\r\nbody",
    );
    assert_eq!(code, 250);
    let id = queue_id(&lines);
    wait_for(
        "the delay warning, then the failure DSN",
        Duration::from_secs(40),
        || sunk(&tmp.path().join("dsn")).len() == 2,
    );
    let dsns = sunk(&tmp.path().join("dsn"));
    let [delayed] = dsns
        .iter()
        .filter(|d| d.contains("Action: delayed"))
        .collect::<Vec<_>>()[..]
    else {
        panic!("one delay warning: {dsns:?}")
    };
    assert!(delayed.contains("Status: 4.2.2"), "{delayed}");
    let [failed] = dsns
        .iter()
        .filter(|d| d.contains("Action: failed"))
        .collect::<Vec<_>>()[..]
    else {
        panic!("one failure DSN: {dsns:?}")
    };
    // The last temporary reason, reported as the permanent failure it has become.
    assert!(failed.contains("Status: 5.2.2"), "{failed}");
    assert!(
        failed.contains("full@dest.test") && failed.contains("mailbox full"),
        "{failed}"
    );
    assert!(
        *full.transactions.lock().unwrap() >= 2,
        "retried before giving up"
    );
    wait_for("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    });
    let logs = relay.stop_and_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains(" expired ") || l.ends_with(" expired"))
            && logs.contains(&format!("queue_id={id}"))
            && logs.contains("dsn=5.2.2"),
        "an expired delivery line: {logs}"
    );
    assert!(relay.stop_and_read_spool().is_empty());
}

#[test]
fn restart_with_a_full_queue_delivers_everything_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let cfg = relay_config(dns, port).replace("retry_intervals = [1]", "retry_intervals = [3]");
    {
        // No receiver yet: every message is deferred; the relay dies before the retry.
        let relay = Relay::builder(&cfg).in_dir(tmp.path()).start();
        for i in 0..5 {
            let mut c = relay.client();
            assert_eq!(
                send_message(
                    &mut c,
                    "alice@sender.test",
                    &["bob@dest.test"],
                    &format!("Subject: {i}\r\n\r\nqueued {i}")
                )
                .0,
                250
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        relay.signal("KILL");
    }
    let receiver = Receiver::start(addr("127.0.0.2", port), Script(vec!["250 2.0.0 Ok"]));
    let _relay = Relay::builder(&cfg).in_dir(tmp.path()).start();
    wait_for("all five after restart", Duration::from_secs(30), || {
        receiver.accepted.lock().unwrap().len() == 5
    });
    std::thread::sleep(Duration::from_secs(2));
    let accepted = receiver.accepted.lock().unwrap();
    assert_eq!(accepted.len(), 5, "none twice");
    let mut subjects: Vec<_> = accepted
        .iter()
        .map(|(_, _, d)| {
            d.lines()
                .find(|l| l.starts_with("Subject:"))
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 5);
}

#[test]
fn several_messages_share_one_outbound_connection() {
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.3"]);
    let receiver = Receiver::start(addr("127.0.0.2", port), Script(vec!["250 2.0.0 Ok"]));
    let cfg = relay_config(dns, port).replace("[delivery]\n", "[delivery]\nper_destination = 1\n");
    let relay = Relay::builder(&cfg).start();
    let mut c = relay.client();
    for i in 0..5 {
        assert_eq!(
            send_message(
                &mut c,
                "alice@sender.test",
                &["bob@dest.test"],
                &format!("Subject: {i}\r\n\r\nx")
            )
            .0,
            250
        );
    }
    wait_for("five deliveries", Duration::from_secs(20), || {
        receiver.accepted.lock().unwrap().len() == 5
    });
    let hellos = receiver.hellos.lock().unwrap().len();
    assert!(
        hellos < 5,
        "each message opened its own connection ({hellos} EHLOs for 5 messages)"
    );
}
