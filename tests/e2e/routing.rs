//! Routing in the real relay against real peers: static `[[route]]` relay routes, the
//! route-by-domain plugin (relay, discard, bounce), LMTP over TCP and a unix socket with
//! per-recipient replies, and mail loop detection by Received headers (a smarthost with
//! STARTTLS and AUTH is in outbound_tls.rs).

use std::net::SocketAddr;
use std::time::Duration;

use postrider_testkit::plugin_wasm;

use crate::harness::{Relay, config, config_dns, list_json, queue, queue_id, send_message};
use crate::peers::{
    RcptScript, Receiver, Script, dnsmasq, free_port_on, smtp_sink, sunk, wait_for,
};

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// dnsmasq records: dest.test has MX 127.0.0.2; sender.test has MX 127.0.0.4 (DSNs go there).
fn records() -> Vec<String> {
    [
        "--mx-host=dest.test,mx.dest.test,10",
        "--host-record=mx.dest.test,127.0.0.2",
        "--mx-host=sender.test,mx.sender.test,10",
        "--host-record=mx.sender.test,127.0.0.4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `[relay]` and `[delivery]` for fast retries; `delivery_extra` goes into `[delivery]`,
/// `rest` (routes, plugins) after it.
fn settings(local_domains: &[&str], delivery_extra: &str, rest: &str) -> String {
    let locals: Vec<String> = local_domains.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[relay]\nlocal_domains = [{}]\nrelay_networks = [\"127.0.0.0/8\"]\n\
         [delivery]\nretry_intervals = [1]\nconnect_timeout = 2\nreply_timeout = 10\n{delivery_extra}\n{rest}",
        locals.join(", ")
    )
}

#[test]
fn static_relay_route_delivers_a_local_domain_that_would_be_held() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port_on(&["127.0.0.5"]);
    let _sink = smtp_sink(addr("127.0.0.5", port), &tmp.path().join("sink"));
    let route = format!(
        "[[route]]\ndomains = [\"relay.test\"]\nrelay = \"127.0.0.5:{port}\"\ntls = \"none\"\n"
    );
    let mut relay =
        Relay::builder(&config(&settings(&["relay.test", "held.test"], "", &route))).start();
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@client.test",
            &["bob@relay.test"],
            "Subject: routed\r\n\r\nvia the static route"
        )
        .0,
        250
    );
    // Control: a local domain without a route is held, not delivered.
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@client.test",
            &["carol@held.test"],
            "Subject: held\r\n\r\nno route"
        )
        .0,
        250
    );
    wait_for(
        "delivery over the static route",
        Duration::from_secs(20),
        || !sunk(&tmp.path().join("sink")).is_empty(),
    );
    wait_for(
        "the routed message to leave the spool",
        Duration::from_secs(10),
        || relay.queued() == 1,
    );
    std::thread::sleep(Duration::from_secs(2));
    let messages = sunk(&tmp.path().join("sink"));
    assert_eq!(messages.len(), 1, "only the routed message: {messages:?}");
    assert!(
        messages[0].contains("X-Rcpt-Args: <bob@relay.test>")
            && messages[0].contains("Subject: routed")
            && messages[0].contains("via the static route"),
        "{}",
        messages[0]
    );
    let logs = relay.stop_and_logs();
    let spool = crate::harness::read_spool(&relay.dir.join("spool"));
    assert_eq!(spool.len(), 1, "{logs}");
    assert_eq!(spool[0].0.recipients[0].address, "carol@held.test");
    assert!(
        logs.lines()
            .any(|l| l.contains("no route for local domain") && l.contains("carol@held.test")),
        "{logs}"
    );
}

#[test]
fn a_route_hold_waits_for_release_then_takes_the_mx() {
    let (_dns, dns) = dnsmasq(&[
        "--mx-host=review.test,mx.review.test,10".to_owned(),
        "--host-record=mx.review.test,127.0.0.6".to_owned(),
    ]);
    let port = free_port_on(&["127.0.0.6"]);
    let mx = Receiver::start(addr("127.0.0.6", port), Script(vec!["250 2.0.0 Ok"]));
    let plugin = format!(
        "[[plugin]]\nname = \"routes\"\npath = \"{}\"\n\
         config = {{ routes = {{ \"review.test\" = {{ type = \"hold\", reason = \"manual review\" }} }} }}\n",
        plugin_wasm("route-by-domain").display()
    );
    let relay = Relay::builder(&config_dns(
        &dns.to_string(),
        &settings(&[], &format!("smtp_port = {port}"), &plugin),
    ))
    .start();
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "alice@sender.test",
        &["ann@review.test"],
        "Subject: review me\r\n\r\nx",
    );
    assert_eq!(code, 250);
    let id = queue_id(&lines);
    wait_for("the route hold", Duration::from_secs(20), || {
        list_json(&relay.dir)["entries"][0]["state"] == "held"
    });
    // Retry intervals pass; the hold stays, and `retry` does not undo it.
    std::thread::sleep(Duration::from_secs(2));
    assert!(queue(&relay.dir, &["retry", &id]).0);
    std::thread::sleep(Duration::from_secs(1));
    assert!(mx.accepted.lock().unwrap().is_empty());
    let (_, shown) = queue(&relay.dir, &["show", &id]);
    assert!(shown.contains("manual review"), "{shown}");

    let (ok, out) = queue(&relay.dir, &["release", &id]);
    assert!(ok, "{out}");
    wait_for("delivery to the MX", Duration::from_secs(20), || {
        mx.accepted.lock().unwrap().len() == 1
    });
    assert!(
        mx.accepted.lock().unwrap()[0]
            .2
            .contains("Subject: review me")
    );
    wait_for("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    });
}

#[test]
fn route_by_domain_plugin_relays_discards_and_bounces() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.4", "127.0.0.6"]);
    let _sender_mx = smtp_sink(addr("127.0.0.4", port), &tmp.path().join("dsn"));
    let corp = Receiver::start(addr("127.0.0.6", port), Script(vec!["250 2.0.0 Ok"]));
    let plugin = format!(
        "[[plugin]]\nname = \"routes\"\npath = \"{}\"\n\
         config = {{ routes = {{ \"*.corp.test\" = {{ type = \"relay\", host = \"127.0.0.6\", port = {port}, tls = \"none\" }}, \
         \"sink.test\" = {{ type = \"discard\" }}, \
         \"old.test\" = {{ type = \"bounce\", code = 550, enhanced = \"5.1.6\", text = \"Domain moved\" }} }} }}\n",
        plugin_wasm("route-by-domain").display()
    );
    let mut relay = Relay::builder(&config_dns(
        &dns.to_string(),
        &settings(&["relay.test"], &format!("smtp_port = {port}"), &plugin),
    ))
    .start();
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@sender.test",
            &[
                "bob@a.corp.test",
                "carol@b.eng.corp.test",
                "x@sink.test",
                "y@old.test"
            ],
            "Subject: mixed routes\r\n\r\nx"
        )
        .0,
        250
    );
    // Discard only: leaves the spool with nothing delivered and no DSN.
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@sender.test",
            &["z@sink.test"],
            "Subject: discard me\r\n\r\nx"
        )
        .0,
        250
    );
    wait_for("the corp relay", Duration::from_secs(30), || {
        corp.accepted.lock().unwrap().len() == 1
    });
    wait_for(
        "the DSN at the sender's MX",
        Duration::from_secs(30),
        || sunk(&tmp.path().join("dsn")).len() == 1,
    );
    wait_for("the spool to empty", Duration::from_secs(20), || {
        relay.queued() == 0
    });
    std::thread::sleep(Duration::from_secs(2));

    assert_eq!(*corp.transactions.lock().unwrap(), 1, "one transaction");
    let (from, rcpts, data) = corp.accepted.lock().unwrap()[0].clone();
    assert_eq!(from, "<alice@sender.test>");
    assert_eq!(rcpts, ["<bob@a.corp.test>", "<carol@b.eng.corp.test>"]);
    assert!(data.contains("Subject: mixed routes"), "{data}");

    let dsns = sunk(&tmp.path().join("dsn"));
    assert_eq!(dsns.len(), 1, "one DSN, for the bounced recipient only");
    let dsn = &dsns[0];
    assert!(dsn.contains("Final-Recipient: rfc822; y@old.test"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.6"), "{dsn}");
    assert!(dsn.contains("Domain moved"), "{dsn}");
    for other in ["x@sink.test", "z@sink.test", "bob@a.corp.test"] {
        assert!(
            !dsn.contains(&format!("Final-Recipient: rfc822; {other}")),
            "{other} in the DSN:\n{dsn}"
        );
    }
    let logs = relay.stop_and_logs();
    assert_eq!(
        logs.matches("discarded by route").count(),
        2,
        "x@sink.test and z@sink.test:\n{logs}"
    );
}

/// bob is accepted at once, carol gets 452 and then 250 on the retry, dave gets 550.
fn lmtp_script() -> RcptScript {
    RcptScript(vec![
        ("bob@lmtp.test", vec!["250 2.1.5 bob delivered"]),
        (
            "carol@lmtp.test",
            vec!["452 4.2.2 Mailbox full", "250 2.1.5 carol delivered"],
        ),
        ("dave@lmtp.test", vec!["550 5.1.1 No such user"]),
    ])
}

/// Sends one message to bob, carol and dave at lmtp.test routed to `target`, and checks the
/// per-recipient results: bob and carol delivered exactly once each, carol on the retry,
/// dave bounced (null sender: no DSN), and the spool empty.
fn lmtp_delivers_per_recipient(target: &str, lmtp: &Receiver) {
    let route = format!("[[route]]\ndomains = [\"lmtp.test\"]\nlmtp = \"{target}\"\n");
    let mut relay = Relay::builder(&config(&settings(&["lmtp.test"], "", &route))).start();
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "",
            &["bob@lmtp.test", "carol@lmtp.test", "dave@lmtp.test"],
            "Subject: lmtp\r\n\r\nper recipient"
        )
        .0,
        250
    );
    wait_for("carol on the retry", Duration::from_secs(30), || {
        lmtp.accepted_rcpts().len() >= 2
    });
    wait_for("the spool to empty", Duration::from_secs(20), || {
        relay.queued() == 0
    });
    // Any further (wrong) retry would come within a second.
    std::thread::sleep(Duration::from_secs(3));
    let mut delivered = lmtp.accepted_rcpts();
    delivered.sort();
    assert_eq!(
        delivered,
        ["<bob@lmtp.test>", "<carol@lmtp.test>"],
        "each delivered exactly once"
    );
    assert_eq!(
        *lmtp.rcpts_per_transaction.lock().unwrap(),
        [
            vec![
                "<bob@lmtp.test>".to_owned(),
                "<carol@lmtp.test>".to_owned(),
                "<dave@lmtp.test>".to_owned()
            ],
            vec!["<carol@lmtp.test>".to_owned()],
        ],
        "the retry carries only the recipient that got 452"
    );
    let hellos = lmtp.hellos.lock().unwrap().clone();
    assert!(
        !hellos.is_empty() && hellos.iter().all(|h| h == "LHLO"),
        "{hellos:?}"
    );
    let logs = relay.stop_and_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("bounced") && l.contains("dave@lmtp.test") && l.contains("5.1.1")),
        "{logs}"
    );
    assert_eq!(
        logs.lines()
            .filter(|l| l.contains("delivered") && l.contains("rcpt=bob@lmtp.test"))
            .count(),
        1,
        "{logs}"
    );
}

#[test]
fn lmtp_over_tcp_replies_per_recipient_and_retries_only_the_deferred() {
    let port = free_port_on(&["127.0.0.7"]);
    let lmtp = Receiver::start_lmtp(addr("127.0.0.7", port), lmtp_script());
    lmtp_delivers_per_recipient(&format!("127.0.0.7:{port}"), &lmtp);
}

#[test]
fn lmtp_over_a_unix_socket_replies_per_recipient_and_retries_only_the_deferred() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lmtp.sock");
    let lmtp = Receiver::start_lmtp_unix(&path, lmtp_script());
    lmtp_delivers_per_recipient(&format!("unix:{}", path.display()), &lmtp);
}

#[test]
fn too_many_received_headers_bounce_as_a_mail_loop() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dns, dns) = dnsmasq(&records());
    let port = free_port_on(&["127.0.0.2", "127.0.0.4"]);
    let dest = Receiver::start(addr("127.0.0.2", port), Script(vec!["250 2.0.0 Ok"]));
    let _sender_mx = smtp_sink(addr("127.0.0.4", port), &tmp.path().join("dsn"));
    let relay = Relay::builder(&config_dns(
        &dns.to_string(),
        &settings(
            &["relay.test"],
            &format!("smtp_port = {port}\nmax_hops = 3"),
            "",
        ),
    ))
    .start();
    let received = |n: usize| -> String {
        (0..n)
            .map(|i| {
                format!(
                    "Received: from hop{i}.test (hop{i}.test [192.0.2.{i}])\r\n\tby hop{}.test with ESMTP; Mon, 1 Jan 2024 00:00:0{i} +0000\r\n",
                    i + 1
                )
            })
            .collect()
    };
    // 4 Received headers, plus ours: 5 > 3.
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@sender.test",
            &["bob@dest.test"],
            &format!("{}Subject: looping\r\n\r\nround and round", received(4))
        )
        .0,
        250
    );
    // Control: 2 Received headers, plus ours: 3, not more than 3.
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "alice@sender.test",
            &["carol@dest.test"],
            &format!("{}Subject: fine\r\n\r\nat the limit", received(2))
        )
        .0,
        250
    );
    wait_for(
        "the DSN at the sender's MX",
        Duration::from_secs(30),
        || sunk(&tmp.path().join("dsn")).len() == 1,
    );
    wait_for("the control message", Duration::from_secs(30), || {
        dest.accepted.lock().unwrap().len() == 1
    });
    wait_for("the spool to empty", Duration::from_secs(20), || {
        relay.queued() == 0
    });
    std::thread::sleep(Duration::from_secs(2));
    let accepted = dest.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1, "the looping message is not delivered");
    assert_eq!(accepted[0].1, ["<carol@dest.test>"]);
    assert!(accepted[0].2.contains("Subject: fine"), "{}", accepted[0].2);
    let dsns = sunk(&tmp.path().join("dsn"));
    assert_eq!(dsns.len(), 1);
    let dsn = &dsns[0];
    assert!(
        dsn.contains("Final-Recipient: rfc822; bob@dest.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Status: 5.4.6"), "{dsn}");
    assert!(!dsn.contains("carol@dest.test"), "{dsn}");
}
