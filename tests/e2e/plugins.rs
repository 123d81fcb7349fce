//! The plugin chain in the real relay: verdicts, header edits, failure containment.

use crate::harness::{Relay, config, plugin};

#[test]
fn allowlist_and_stamp_shape_what_is_accepted_and_stored() {
    let plugins = format!(
        "{}{}",
        plugin(
            "allow",
            "rcpt-allowlist",
            "config = { domains = { \"relay.test\" = [\"alice\"] } }"
        ),
        plugin(
            "stamp",
            "header-stamp",
            "config = { header = \"X-Stamp\", value = \"e2e\", report = [\"message-id\"] }"
        ),
    );
    let mut relay = Relay::start(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{plugins}"
    )));
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<s@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<alice@relay.test>"), (250, "2.1.5".into()));
    assert_eq!(c.cmd("RCPT TO:<mallory@relay.test>"), (550, "5.1.1".into()));
    // Built-in relay control still runs first.
    assert_eq!(c.cmd("RCPT TO:<x@elsewhere.test>"), (554, "5.7.1".into()));
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: hi\r\nX-Stamp: forged\r\n\r\nbody\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    let spool = relay.stop_and_read_spool();
    assert_eq!(spool.len(), 1);
    let text = String::from_utf8_lossy(&spool[0].1).into_owned();
    assert!(
        text.contains("X-Stamp: e2e; message-id=missing\r\n"),
        "{text}"
    );
    assert!(!text.contains("forged"), "{text}");
    assert_eq!(spool[0].0.recipients.len(), 1);
}

#[test]
fn a_trapping_plugin_tempfails_and_the_relay_keeps_serving() {
    let plugins = plugin("bad", "misbehave", "config = { mode = \"trap\" }");
    let mut relay = Relay::start(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{plugins}"
    )));
    for _ in 0..3 {
        let mut c = relay.client();
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        assert_eq!(c.cmd("MAIL FROM:<s@client.test>").0, 250);
        assert_eq!(c.cmd("RCPT TO:<alice@relay.test>"), (451, "4.3.0".into()));
        assert_eq!(c.cmd("QUIT").0, 221);
    }
    let logs = relay.stop_and_logs();
    assert!(logs.contains("plugin call failed"), "{logs}");
}

#[test]
fn a_plugin_that_fails_init_stops_the_start_with_its_reason() {
    let plugins = plugin("bad", "misbehave", "config = { mode = \"init-fail\" }");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.toml");
    std::fs::write(&path, config(&plugins)).unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plugin bad: init failed: init-fail asked for"),
        "{err}"
    );
}
