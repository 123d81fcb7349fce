//! Plugins that reach policy services by grant, against the real daemons from Debian:
//! postgrey through the policy-delegation plugin (Postfix's policy protocol over TCP) and
//! rspamd through the rspamd plugin (HTTP /checkv2).

use std::time::Duration;

use crate::harness::{Relay, config, plugin, reload, scrape, send_message, value};
use crate::peers::{postgrey, rspamd};

/// postgrey's verdict for one RCPT (a fresh connection and transaction each time).
fn rcpt(relay: &Relay) -> (u16, String) {
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<sender@client.test>").0, 250);
    let (code, lines) = {
        c.send(b"RCPT TO:<alice@relay.test>\r\n");
        c.reply()
    };
    assert_eq!(c.cmd("QUIT").0, 221);
    (code, lines.join(" "))
}

#[test]
fn postgrey_greylists_through_the_policy_delegation_plugin_once_granted() {
    let tmp = tempfile::tempdir().unwrap();
    let (_postgrey, addr) = postgrey(&tmp.path().join("postgrey"), 2);
    let relay_config = |grant: &str| {
        config(&format!(
            "[relay]\nlocal_domains = [\"relay.test\"]\n[admin]\nhttp = \"127.0.0.1:0\"\n{}",
            plugin(
                "postgrey",
                "policy-delegation",
                &format!("allow_connect = [\"{grant}\"]\nconfig = {{ server = \"{addr}\" }}"),
            )
        ))
    };
    let conf = tmp.path().join("relay/postrider.toml");
    std::fs::create_dir_all(tmp.path().join("relay")).unwrap();
    // Granted another port: the connection is refused by the host, the plugin tempfails.
    let wrong = format!("127.0.0.1:{}", addr.port() + 1);
    let mut relay = Relay::builder(&relay_config(&wrong))
        .in_dir(&tmp.path().join("relay"))
        .args(&["--no-watch"])
        .start();
    let (code, text) = rcpt(&relay);
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("4.3.5"), "{text}");

    // The grant, added by a reload: greylisted first, accepted after the delay.
    std::fs::write(&conf, relay_config(&addr.to_string())).unwrap();
    reload(&conf);
    let (code, text) = rcpt(&relay);
    assert_eq!(code, 450, "{text}");
    assert!(
        text.contains("4.7.1") && text.contains("Greylisted"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let (code, text) = rcpt(&relay);
    assert_eq!(code, 250, "{text}");

    let samples = scrape(&relay);
    let series = |grant: &str, result: &str| {
        format!(
            "postrider_plugin_network_total{{plugin=\"postgrey\",kind=\"tcp\",grant=\"{grant}\",result=\"{result}\"}}"
        )
    };
    assert_eq!(value(&samples, &series("-", "denied")), 1.0);
    assert_eq!(value(&samples, &series(&addr.to_string(), "allowed")), 2.0);
    let logs = relay.stop_and_logs();
    assert!(logs.contains("plugin network access denied"), "{logs}");
}

/// GTUBE: every spam filter rejects a message with this line.
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

#[test]
fn rspamd_rejects_gtube_and_scores_a_clean_message_through_the_rspamd_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let (_rspamd, http, _milter) = rspamd(tmp.path());
    let mut relay = Relay::builder(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{}",
        plugin(
            "rspamd",
            "rspamd",
            &format!(
                "allow_http = [\"http://{http}\"]\ntimeout_ms = 20000\nconfig = {{ url = \"http://{http}\" }}"
            ),
        )
    )))
    .start();
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "sender@client.test",
        &["alice@relay.test"],
        &format!("Subject: offer\r\nFrom: <sender@client.test>\r\n\r\n{GTUBE}\r\n"),
    );
    assert_eq!(code, 550, "{lines:?}");
    assert!(lines[0].starts_with("5.7.1"), "{lines:?}");
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "sender@client.test",
        &["alice@relay.test"],
        "Subject: lunch\r\nFrom: <sender@client.test>\r\nTo: <alice@relay.test>\r\n\r\nAt noon?\r\n",
    );
    assert_eq!(code, 250, "{lines:?}");
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    let text = String::from_utf8_lossy(&spool[0].1).into_owned();
    assert!(text.contains("\r\nX-Spam-Score: "), "{text}");
    assert!(text.contains("\r\nX-Spam-Action: "), "{text}");
    assert!(text.contains("Subject: lunch"), "{text}");
}

#[test]
fn a_policy_daemon_that_never_answers_costs_only_its_own_sessions_the_deadline() {
    // Connections complete in the kernel's backlog, the request fits the socket buffer, and
    // no answer ever comes: the plugin blocks in its read until the call's deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let mut relay = Relay::builder(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{}",
        plugin(
            "policy",
            "policy-delegation",
            &format!(
                "allow_connect = [\"{addr}\"]\ntimeout_ms = 1500\nconfig = {{ server = \"{addr}\" }}"
            ),
        )
    )))
    .start();
    let mut stuck = relay.client();
    assert_eq!(stuck.cmd("EHLO client.test").0, 250);
    assert_eq!(stuck.cmd("MAIL FROM:<sender@client.test>").0, 250);
    stuck.send(b"RCPT TO:<alice@relay.test>\r\n");
    // Meanwhile another session is served in full, and the stuck one still waits.
    let mut other = relay.client();
    assert_eq!(other.cmd("EHLO other.test").0, 250);
    assert_eq!(other.cmd("MAIL FROM:<x@other.test>").0, 250);
    assert_eq!(other.cmd("RSET").0, 250);
    assert_eq!(other.cmd("NOOP").0, 250);
    assert!(
        !stuck.has_data(),
        "the stuck RCPT was answered before the deadline"
    );
    assert_eq!(other.cmd("QUIT").0, 221);
    // At the deadline the call fails and the failure policy (tempfail) answers.
    let (code, lines) = stuck.reply();
    assert_eq!(code, 451, "{lines:?}");
    assert!(lines[0].starts_with("4.3.0"), "{lines:?}");
    assert_eq!(stuck.cmd("QUIT").0, 221);
    let logs = relay.stop_and_logs();
    assert!(logs.contains("timed out after 1500 ms"), "{logs}");
    drop(silent);
}
