//! The plugin chain in the real relay: verdicts, header edits, failure containment, warm
//! instances (`reuse`) across transactions, connections and reloads.

use crate::harness::{Client, Relay, config, plugin, reload};

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
    let mut relay = Relay::builder(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{plugins}"
    )))
    .start();
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
    let mut relay = Relay::builder(&config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{plugins}"
    )))
    .start();
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

/// A relay config with the `misbehave` fixture in `count` mode (every RCPT answers
/// `550 5.7.1 calls C inits I seen S` of the instance that served it) and `extra` plugins.
fn counting_config(plugin_extra: &str, extra: &str) -> String {
    let counting = plugin(
        "count",
        "misbehave",
        &format!("config = {{ mode = \"count\" }}\n{plugin_extra}"),
    );
    config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{counting}{extra}"
    ))
}

/// RCPT TO in the open transaction: the count fixture's reply text.
fn counted(c: &mut Client) -> String {
    c.send(b"RCPT TO:<a@relay.test>\r\n");
    let (code, lines) = c.reply();
    assert_eq!(code, 550, "{lines:?}");
    lines[0].trim_start_matches("5.7.1 ").to_owned()
}

/// A new transaction (RSET, MAIL FROM) on `c`.
fn mail(c: &mut Client) {
    assert_eq!(c.cmd("RSET").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<s@client.test>").0, 250);
}

#[test]
fn warm_instances_serve_reuse_transactions_across_connections_and_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("postrider.toml");
    let mut relay = Relay::builder(&counting_config("reuse = 3\npool_idle = 2", ""))
        .in_tmp(tmp)
        .args(&["--no-watch"])
        .start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    mail(&mut c);
    // One transaction, one instance and one plugin value.
    assert_eq!(counted(&mut c), "calls 1 inits 1 seen 1");
    assert_eq!(counted(&mut c), "calls 2 inits 1 seen 2");
    // RSET ends it: the next transaction reuses the instance after a new init.
    mail(&mut c);
    assert_eq!(counted(&mut c), "calls 3 inits 2 seen 1");
    mail(&mut c);
    assert_eq!(counted(&mut c), "calls 4 inits 3 seen 1");
    // Third use done: recycled.
    mail(&mut c);
    assert_eq!(counted(&mut c), "calls 1 inits 1 seen 1");
    assert_eq!(c.cmd("QUIT").0, 221);
    // The pool outlives the connection.
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    mail(&mut c);
    assert_eq!(counted(&mut c), "calls 2 inits 2 seen 1");
    assert_eq!(c.cmd("QUIT").0, 221);

    // A reload that leaves the plugin as it is keeps its warm instance...
    std::fs::write(
        &conf,
        counting_config(
            "reuse = 3\npool_idle = 2",
            "[limits]\nmax_recipients = 500\n",
        ),
    )
    .unwrap();
    reload(&conf);
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    mail(&mut c);
    assert_eq!(counted(&mut c), "calls 3 inits 3 seen 1");
    mail(&mut c);
    assert_eq!(
        counted(&mut c),
        "calls 1 inits 1 seen 1",
        "third use ended the instance"
    );
    assert_eq!(c.cmd("QUIT").0, 221);
    // ...a reload that changes it starts from a fresh one.
    std::fs::write(&conf, counting_config("reuse = 4\npool_idle = 2", "")).unwrap();
    reload(&conf);
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    mail(&mut c);
    assert_eq!(counted(&mut c), "calls 1 inits 1 seen 1");
    assert_eq!(c.cmd("QUIT").0, 221);
    let logs = relay.stop_and_logs();
    assert!(logs.contains("plugin unchanged, reused"), "{logs}");
}

/// A plugin's refusal is logged with the plugin's name and the reply, at MAIL FROM and at
/// RCPT; `log_level` on one plugin shows its debug lines at the relay's default level, or
/// silences its info lines.
#[test]
fn refusals_name_the_plugin_and_log_level_is_per_plugin() {
    let run = |level: &str| {
        let limit = plugin(
            "rl",
            "rate-limit",
            "config = { per_client_ip = { limit = 2, window_seconds = 3600 } }",
        );
        let greylist = plugin(
            "grey",
            "greylist",
            &format!("log_level = \"{level}\"\nconfig = {{ delay_seconds = 300 }}"),
        );
        let cfg = config(&format!(
            "[relay]\nlocal_domains = [\"relay.test\"]\n{limit}{greylist}"
        ));
        let mut relay = Relay::builder(&cfg).env("POSTRIDER_LOG", "info").start();
        for _ in 0..2 {
            let mut c = relay.client();
            assert_eq!(c.cmd("EHLO client.test").0, 250);
            assert_eq!(c.cmd("MAIL FROM:<alice@sender.test>").0, 250);
            assert_eq!(c.cmd("RCPT TO:<bob@relay.test>").0, 451);
            c.cmd("QUIT");
        }
        let mut c = relay.client();
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        assert_eq!(c.cmd("MAIL FROM:<alice@sender.test>").0, 450);
        c.cmd("QUIT");
        relay.stop_and_logs()
    };
    let logs = run("debug");
    let line = |stage: &str| {
        logs.lines()
            .find(|l| l.contains("refused by plugin") && l.contains(stage))
            .unwrap_or_else(|| panic!("no refusal line at {stage}:\n{logs}"))
            .to_owned()
    };
    let rcpt = line("stage=\"rcpt\"");
    for part in [
        "plugin=\"grey\"",
        "subject=\"bob@relay.test\"",
        "verdict=\"tempfail\"",
        "reply=451 4.7.1",
    ] {
        assert!(rcpt.contains(part), "{part}: {rcpt}");
    }
    let mail = line("stage=\"mail-from\"");
    for part in [
        "plugin=\"rl\"",
        "subject=\"alice@sender.test\"",
        "verdict=\"tempfail\"",
        "reply=450 4.7.1 Rate limit exceeded",
    ] {
        assert!(mail.contains(part), "{part}: {mail}");
    }
    assert!(logs.contains("greylist: new triplet"), "{logs}");
    let early = logs
        .lines()
        .find(|l| l.contains("greylist: early retry"))
        .unwrap_or_else(|| panic!("the debug line does not show:\n{logs}"));
    assert!(
        early.contains(" INFO ") && early.contains("plugin_level=\"debug\""),
        "{early}"
    );
    let logs = run("warn");
    assert!(!logs.contains("greylist: "), "{logs}");
    assert!(logs.contains("refused by plugin"), "{logs}");
}

/// `postrider kv` shows and removes a plugin's entries, through the running relay and in
/// the store itself once it stopped.
#[test]
fn kv_lists_and_deletes_a_plugins_entries_online_and_offline() {
    let greylist = plugin("grey", "greylist", "config = { delay_seconds = 300 }");
    let cfg = config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n{greylist}"
    ));
    let mut relay = Relay::builder(&cfg).start();
    for rcpt in ["bob", "carol"] {
        let mut c = relay.client();
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<alice@sender.test>");
        assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}@relay.test>")).0, 451);
        c.cmd("QUIT");
    }
    let dir = relay.dir.clone();
    let kv = |args: &[&str]| crate::harness::command(&dir, "kv", args);
    let bob = "t:127.0.0.0/24|alice@sender.test|bob@relay.test";
    let (ok, out) = kv(&["list", "grey"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("KEY "), "{out}");
    assert!(
        out.contains(bob) && out.contains("carol@relay.test"),
        "{out}"
    );
    let (ok, out) = kv(&["list", "grey", "--json", "--prefix", bob]);
    assert!(ok, "{out}");
    let entries: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(entries[0]["key"], bob);
    assert!(
        entries[0]["value"].as_str().unwrap().starts_with("w:"),
        "{out}"
    );
    assert!(entries[0]["expires_at"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(kv(&["delete", "grey", bob]), (true, "deleted\n".to_owned()));
    assert_eq!(
        kv(&["delete", "grey", bob]),
        (true, "no such entry\n".to_owned())
    );
    relay.stop_and_logs();
    // Stopped: the embedded store is read directly.
    let (ok, out) = kv(&["list", "grey"]);
    assert!(ok, "{out}");
    assert!(
        !out.contains(bob) && out.contains("carol@relay.test"),
        "{out}"
    );
    let (ok, out) = kv(&["list", "nobody"]);
    assert!(
        !ok && out.contains("no plugin \"nobody\"") && out.contains("(its plugins: grey)"),
        "{out}"
    );
    let (ok, out) = kv(&["list", "grey", "--prefix", "nothing-like-this"]);
    assert_eq!((ok, out.as_str()), (true, "no entries\n"));
}
