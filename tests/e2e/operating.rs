//! Operating the relay: `/metrics` scraped after real traffic (client → relay → smtp-sink),
//! `/health` and `/ready`, reload counters, `postrider status`, sd_notify, and the JSON log
//! lines that follow one message from acceptance to delivery by its queue id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::harness::{
    ADMIN, BIN, Relay, config, config_dns, http, plugin, queue_id, scrape, send_message, value,
};
use crate::peers::{dnsmasq, free_port_on, smtp_sink, sunk, wait_for};

/// A relay delivering dest.test to smtp-sink (MX 127.0.0.2 via dnsmasq), trusting loopback
/// clients, with the admin listener and `extra` TOML.
fn delivering_relay(
    sink_dir: &std::path::Path,
    extra: &str,
    args: &[&str],
) -> (Relay, crate::peers::Proc, crate::peers::Proc) {
    let (dns_proc, dns) = dnsmasq(&[
        "--mx-host=dest.test,mx.dest.test,10".to_owned(),
        "--host-record=mx.dest.test,127.0.0.2".to_owned(),
    ]);
    let port = free_port_on(&["127.0.0.2"]);
    let sink = smtp_sink(
        format!("127.0.0.2:{port}").parse::<SocketAddr>().unwrap(),
        sink_dir,
    );
    let cfg = config_dns(
        &dns.to_string(),
        &format!(
            "{ADMIN}[relay]\nlocal_domains = [\"relay.test\"]\nrelay_networks = [\"127.0.0.0/8\"]\n\
             [delivery]\nsmtp_port = {port}\nretry_intervals = [1]\nconnect_timeout = 2\nreply_timeout = 10\n{extra}"
        ),
    );
    let relay = Relay::builder(&cfg)
        .in_tmp(tempfile::tempdir().unwrap())
        .args(args)
        .start();
    (relay, dns_proc, sink)
}

#[test]
fn metrics_count_real_traffic_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let sink_dir = tmp.path().join("sink");
    let allow = plugin(
        "allow",
        "rcpt-allowlist",
        "config = { domains = { \"dest.test\" = [\"bob\"] } }",
    );
    let (relay, _dns, _sink) = delivering_relay(&sink_dir, &allow, &[]);
    let admin = relay.admin_http.unwrap();
    assert_eq!(http(admin, "GET", "/health"), (200, "ok\n".into()));
    assert_eq!(http(admin, "GET", "/ready"), (200, "ready\n".into()));
    assert_eq!(http(admin, "GET", "/nothing").0, 404);
    assert_eq!(http(admin, "POST", "/metrics").0, 405);

    let before = scrape(&relay);
    for i in 0..3 {
        let mut c = relay.client();
        let (code, _) = send_message(
            &mut c,
            "alice@sender.test",
            &["bob@dest.test"],
            &format!("Subject: m{i}\r\n\r\nhello"),
        );
        assert_eq!(code, 250);
        assert_eq!(c.cmd("QUIT").0, 221);
    }
    // A fourth session whose only recipient the plugin refuses: no message.
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@sender.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<mallory@dest.test>"), (550, "5.1.1".into()));
    assert_eq!(c.cmd("QUIT").0, 221);

    let delivered = "postrider_deliveries_total{result=\"delivered\",domain=\"dest.test\"}";
    wait_for("three deliveries", Duration::from_secs(30), || {
        value(&scrape(&relay), delivered) == 3.0
    });
    wait_for("an empty queue", Duration::from_secs(10), || {
        let m = scrape(&relay);
        ["queued", "deferred", "held", "quarantined"]
            .iter()
            .all(|s| value(&m, &format!("postrider_queue_messages{{state=\"{s}\"}}")) == 0.0)
    });
    assert_eq!(sunk(&sink_dir).len(), 3);
    let after = scrape(&relay);
    let delta = |series: &str| value(&after, series) - value(&before, series);
    let exact = [
        ("postrider_connections_total{listener=\"smtp\"}", 4.0),
        (
            "postrider_transactions_total{listener=\"smtp\",result=\"accepted\"}",
            3.0,
        ),
        ("postrider_message_size_bytes_count", 3.0),
        (
            "postrider_verdicts_total{stage=\"rcpt\",plugin=\"allow\",verdict=\"continue\"}",
            3.0,
        ),
        (
            "postrider_verdicts_total{stage=\"rcpt\",plugin=\"allow\",verdict=\"reject\"}",
            1.0,
        ),
        (
            "postrider_plugin_call_duration_seconds_count{stage=\"rcpt\",plugin=\"allow\"}",
            4.0,
        ),
        // One fresh instance per transaction (reuse = 1, the default), none from a pool.
        (
            "postrider_plugin_instances_total{plugin=\"allow\",source=\"fresh\"}",
            4.0,
        ),
        (
            "postrider_plugin_instances_total{plugin=\"allow\",source=\"warm\"}",
            0.0,
        ),
        (delivered, 3.0),
    ];
    for (series, want) in exact {
        assert_eq!(delta(series), want, "{series}");
    }
    // Each accepted message was synced (group commit: at most one sync per message here, as
    // they came one after another) and removed after delivery.
    assert_eq!(
        delta("postrider_spool_fsync_duration_seconds_count{op=\"commit\"}"),
        3.0
    );
    assert_eq!(
        delta("postrider_spool_fsync_duration_seconds_count{op=\"remove\"}"),
        3.0
    );
    assert!(delta("postrider_delivery_attempt_duration_seconds_count") >= 1.0);
    assert_eq!(
        value(&after, "postrider_connections_open{listener=\"smtp\"}"),
        0.0
    );
    for (series, v) in &after {
        assert!(
            !series.contains("plugin_failures") && !series.contains("result=\"deferred\""),
            "nothing failed: {series} {v}"
        );
    }
}

/// Runs the binary with `args`: success and stdout+stderr.
fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reloads_are_counted_and_status_shows_the_relay() {
    let stamp = plugin(
        "stamp",
        "header-stamp",
        "config = { header = \"X-Stamp\", value = \"1\" }",
    );
    let cfg = config(&format!(
        "{ADMIN}[relay]\nlocal_domains = [\"relay.test\"]\n{stamp}"
    ));
    let relay = Relay::builder(&cfg)
        .in_tmp(tempfile::tempdir().unwrap())
        .args(&["--no-watch"])
        .start();
    let file = relay.dir.join("postrider.toml");
    let file = file.to_str().unwrap();
    let reloads = |m: &HashMap<String, f64>| {
        (
            value(m, "postrider_reloads_total"),
            value(m, "postrider_reload_failures_total"),
            value(m, "postrider_config_generation"),
        )
    };
    assert_eq!(reloads(&scrape(&relay)), (0.0, 0.0, 1.0));

    let (ok, out, err) = run(&["reload", "--config", file]);
    assert!(ok, "{out}{err}");
    assert_eq!(reloads(&scrape(&relay)), (1.0, 0.0, 2.0));

    // A plugin that cannot be loaded: the reload fails, the running setup stays.
    std::fs::write(
        relay.dir.join("postrider.toml"),
        cfg.replace("header_stamp.wasm", "missing.wasm"),
    )
    .unwrap();
    // `postrider reload` reads the file for the socket path: keep that part valid.
    let (ok, out, err) = run(&["reload", "--config", file]);
    assert!(!ok, "{out}{err}");
    assert_eq!(reloads(&scrape(&relay)), (2.0, 1.0, 2.0));
    // Status says the files on disk are not what runs, and why, until a reload succeeds.
    let (ok, out, err) = run(&["status", "--config", file]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("LAST RELOAD FAILED at ")
            && out.contains("(admin socket): the files on disk are not what runs; generation 2")
            && out.contains("missing.wasm"),
        "{out}"
    );
    let (_, out, _) = run(&["status", "--config", file, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["reload_failure"]["trigger"], "admin socket");
    std::fs::write(relay.dir.join("postrider.toml"), &cfg).unwrap();
    let (ok, out, err) = run(&["reload", "--config", file]);
    assert!(ok, "{out}{err}");
    assert_eq!(reloads(&scrape(&relay)), (3.0, 1.0, 3.0));
    let (_, out, _) = run(&["status", "--config", file]);
    assert!(!out.contains("RELOAD FAILED"), "{out}");

    let (ok, out, err) = run(&["status", "--config", file, "--json"]);
    assert!(ok, "{out}{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["ready"], true);
    assert_eq!(status["generation"], 3);
    assert_eq!(status["reload_failure"], serde_json::Value::Null);
    assert_eq!(
        status["admin_http"],
        relay.admin_http.unwrap().to_string().as_str()
    );
    assert_eq!(status["listeners"][0]["name"], "smtp");
    assert_eq!(
        status["listeners"][0]["address"],
        relay.addr("smtp").to_string().as_str()
    );
    let plugin = &status["plugins"][0];
    assert_eq!(plugin["name"], "stamp");
    let hash = plugin["hash"].as_str().unwrap();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{hash}"
    );
    assert_eq!(plugin["stages"], serde_json::json!(["data"]));
    assert!(plugin["loaded_at"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(status["queue"]["queued"], 0);

    let (ok, out, err) = run(&["status", "--config", file]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(": ready (pid "), "{out}");
    assert!(out.contains("generation 3"), "{out}");
    assert!(out.contains(&format!("sha256:{}", &hash[..16])), "{out}");
    assert!(out.contains("queue: 0 message(s)"), "{out}");
}

#[test]
fn a_second_relay_needs_its_own_admin_port_and_status_fails_without_a_relay() {
    let first = Relay::builder(&config(ADMIN)).start();
    let taken = first.admin_http.unwrap();
    // The same port for a second relay: it refuses to start and says which key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.toml");
    std::fs::write(&path, config(&format!("[admin]\nhttp = \"{taken}\"\n"))).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.http") && err.contains(&taken.to_string()),
        "{err}"
    );
    // Another port works: both serve metrics side by side.
    let second = Relay::builder(&config(ADMIN)).start();
    assert_ne!(second.admin_http, first.admin_http);
    assert_eq!(http(second.admin_http.unwrap(), "GET", "/health").0, 200);
    // No relay on this config's admin socket.
    let (ok, _, err) = run(&["status", "--config", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no relay answering"), "{err}");
}

#[test]
fn ready_turns_503_while_draining_and_health_stays_200() {
    let relay = Relay::builder(&config(&format!(
        "{ADMIN}[timeouts]\nshutdown_grace = 10\n"
    )))
    .start();
    let admin = relay.admin_http.unwrap();
    assert_eq!(http(admin, "GET", "/ready").0, 200);
    // An open session keeps the relay draining after SIGTERM.
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    relay.signal("TERM");
    wait_for("/ready to say 503", Duration::from_secs(10), || {
        http(admin, "GET", "/ready").0 == 503
    });
    assert_eq!(http(admin, "GET", "/health").0, 200);
    assert_eq!(c.cmd("QUIT").0, 221);
}

#[test]
fn json_logs_follow_one_message_by_queue_id() {
    let tmp = tempfile::tempdir().unwrap();
    let sink_dir = tmp.path().join("sink");
    let (mut relay, _dns, _sink) = delivering_relay(&sink_dir, "", &["--log-json"]);
    let mut c = relay.client();
    let (code, lines) = send_message(
        &mut c,
        "alice@sender.test",
        &["bob@dest.test", "carol@dest.test"],
        "Subject: logs\r\n\r\nfollow me",
    );
    assert_eq!(code, 250);
    let id = queue_id(&lines);
    assert_eq!(c.cmd("QUIT").0, 221);
    wait_for("the delivery", Duration::from_secs(30), || {
        sunk(&sink_dir).len() == 1
    });
    wait_for("the spool to empty", Duration::from_secs(10), || {
        relay.queued() == 0
    });
    let logs = relay.stop_and_logs();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let of_message: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["fields"]["queue_id"] == id.as_str() && e["level"] == "INFO")
        .collect();
    let messages: Vec<&str> = of_message
        .iter()
        .map(|e| e["fields"]["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["queued", "delivered", "delivered", "removed"],
        "{logs}"
    );
    let queued = &of_message[0]["fields"];
    assert_eq!(queued["from"], "alice@sender.test");
    assert_eq!(queued["to"], "bob@dest.test,carol@dest.test");
    assert_eq!(queued["nrcpt"], 2);
    assert!(queued["size"].as_u64().unwrap() > 20, "{queued}");
    assert_eq!(queued["tls"], "none");
    assert_eq!(queued["helo"], "client.test");
    let span = &of_message[0]["span"];
    assert!(
        span["client"]
            .as_str()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{span}"
    );
    assert_eq!(span["listener"], "smtp");
    let mut rcpts = Vec::new();
    for delivered in &of_message[1..3] {
        let f = &delivered["fields"];
        rcpts.push(f["rcpt"].as_str().unwrap().to_owned());
        assert!(f["relay"].as_str().unwrap().contains("127.0.0.2"), "{f}");
        assert_eq!(f["dsn"], "2.0.0");
        assert!(f["reply"].as_str().unwrap().starts_with("250"), "{f}");
        assert!(f["delay"].as_f64().unwrap() >= 0.0, "{f}");
        assert_eq!(f["attempts"], 1);
    }
    rcpts.sort();
    assert_eq!(rcpts, ["bob@dest.test", "carol@dest.test"]);
}

#[test]
fn every_subcommand_has_a_useful_help() {
    let subcommands: &[&[&str]] = &[
        &["serve"],
        &["reload"],
        &["status"],
        &["check-config"],
        &["hash-password"],
        &["dkim-records"],
        &["queue"],
        &["queue", "list"],
        &["queue", "show"],
        &["queue", "retry"],
        &["queue", "delete"],
        &["queue", "hold"],
        &["queue", "release"],
        &["kv"],
        &["kv", "list"],
        &["kv", "delete"],
    ];
    for sub in subcommands {
        let mut args = sub.to_vec();
        args.push("--help");
        let (ok, out, err) = run(&args);
        assert!(ok, "{args:?}: {err}");
        let usage = format!("Usage: postrider {}", sub.join(" "));
        assert!(out.contains(&usage), "{args:?}: {out}");
        // A sentence of description before the usage line.
        let description = out.split("Usage:").next().unwrap().trim();
        assert!(description.len() > 30, "{args:?}: {out}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    // .ci/run installs systemd (for systemd-analyze); without it this test fails, not skips.
    let out = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    assert!(out.status.success());
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/postrider.service"),
    )
    .unwrap();
    for key in [
        "Type=notify",
        "ExecReload=/usr/local/bin/postrider reload",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/spool/postrider",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "User=postrider",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "missing {key}");
    }
    // verify checks that the commands exist: point them at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postrider.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/postrider", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    // The service manager's end of sd_notify: a datagram socket named by NOTIFY_SOCKET.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::builder(&config(""))
        .in_dir(dir.path())
        .env("NOTIFY_SOCKET", &path)
        .start();
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.contains("STATUS=accepting mail (config generation 1)"),
        "{ready}"
    );
    // Ready means ready: the listener takes mail now.
    assert_eq!(relay.client().cmd("EHLO client.test").0, 250);

    relay.signal("HUP");
    let reloading = next();
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let reloaded = next();
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded}");
    assert!(reloaded.contains("config generation 2"), "{reloaded}");

    relay.signal("TERM");
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(true));
}
