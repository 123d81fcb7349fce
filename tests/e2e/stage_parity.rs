//! The relay and the plugin test harness run the same stage driver: one transcript played
//! over TCP against the real relay and through `postrider-harness`'s transcript mode gives the
//! same reply at every stage and the same route. And the route stage tells the truth: what a
//! route plugin sees is the connection and envelope the message really came in with.

use std::sync::Arc;

use postrider_harness::case::{ConnSpec, DEFAULT_CLOCK_MS, DEFAULT_MEMORY_MB};
use postrider_harness::policy::HOSTNAME;
use postrider_harness::runner::{Harness, LoadOptions, World, conn_info};
use postrider_plugin_host::StaticDns;

use crate::harness::{Client, Relay, auth_relay, config, list_json, plugin, python, tls_listener};

/// The client's side of the dialogue: commands, and the message inside DATA.
const TRANSCRIPT: &[&str] = &[
    "EHLO client.example",
    "MAIL FROM:<someone@sender.example> BODY=8BITMIME",
    "RCPT TO:<alice@example.org>",
    "RCPT TO:<mallory@example.org>",
    "RCPT TO:<info@review.example>",
    "RCPT TO:<x@example.net>",
    "DATA",
    "Subject: parity",
    "",
    "same glue",
    ".",
    "MAIL FROM:<>",
    "RCPT TO:<mallory@example.org>",
    "RSET",
    "QUIT",
];

/// Plays [`TRANSCRIPT`] against the relay over TCP: every reply line, as `S: ` lines.
fn relay_dialogue(relay: &Relay) -> Vec<String> {
    let mut client = Client::connect(relay.addr("smtp"));
    let mut replies = Vec::new();
    let take = |client: &mut Client, replies: &mut Vec<String>| {
        let (code, lines) = client.reply();
        let n = lines.len();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            replies.push(format!("S: {code}{sep}{l}"));
        }
    };
    take(&mut client, &mut replies);
    let mut in_data = false;
    for line in TRANSCRIPT {
        client.send(format!("{line}\r\n").as_bytes());
        if in_data && *line != "." {
            continue;
        }
        in_data = *line == "DATA";
        take(&mut client, &mut replies);
    }
    replies
}

/// Plays [`TRANSCRIPT`] through the harness's transcript mode (the library the binary runs),
/// with the plugin's config as JSON: the `S: ` lines and the `# route` notes.
fn harness_dialogue(plugin_file: &str, config_json: &str) -> (Vec<String>, Vec<String>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let wasm = postrider_testkit::plugin_wasm(plugin_file);
        let harness = Harness::new(&wasm, "p", DEFAULT_MEMORY_MB, None).unwrap();
        let world = World::new(DEFAULT_CLOCK_MS, StaticDns::default(), None);
        let options = LoadOptions {
            config_json: config_json.to_owned(),
            failure_policy: postrider_plugin_host::FailurePolicy::Tempfail,
            timeout_ms: 2000,
            memory_mb: DEFAULT_MEMORY_MB,
            reuse: 1,
            pool_idle: 1,
            network: Default::default(),
        };
        let pipeline = harness.load(&options, &world.services).await.unwrap();
        let conn = conn_info(&ConnSpec::default().resolve("harness-1"));
        let text = TRANSCRIPT.join("\n");
        let dialogue = postrider_harness::transcript::play(
            &Arc::clone(&pipeline),
            conn,
            &text,
            DEFAULT_CLOCK_MS,
            false,
        )
        .await
        .unwrap();
        let lines = |prefix: &str| -> Vec<String> {
            dialogue
                .lines()
                .filter(|l| l.trim_start().starts_with(prefix))
                .map(|l| l.trim_start().to_owned())
                .collect()
        };
        (lines("S: "), lines("# route <"))
    })
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply becomes `ID`.
fn without_queue_id(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| match l.split_once("queued as ") {
            Some((head, _)) => format!("{head}queued as ID"),
            None => l,
        })
        .collect()
}

#[test]
fn relay_and_harness_decide_every_stage_alike() {
    let rcpt_config = r#"{"domains":{"example.org":["alice"],"example.net":["info"]}}"#;
    let route_config = r#"{"routes":{"review.example":{"type":"hold","reason":"manual review"}}}"#;
    let relay = Relay::builder(&format!(
        "{}\n[relay]\nlocal_domains = [\"example.org\", \"example.net\", \"review.example\"]\n{}{}",
        config("").replace("mx.relay.test", HOSTNAME),
        plugin(
            "allow",
            "rcpt-allowlist",
            "config = { domains = { \"example.org\" = [\"alice\"], \"example.net\" = [\"info\"] } }"
        ),
        plugin(
            "route",
            "route-by-domain",
            "config = { routes = { \"review.example\" = { type = \"hold\", reason = \"manual review\" } } }"
        ),
    )).start();
    let relay_lines = without_queue_id(relay_dialogue(&relay));

    // The harness runs one plugin at a time: each plugin's dialogue must match the relay's
    // at the stages it decides, and neither may differ anywhere else.
    let (allow_lines, _) = harness_dialogue("rcpt-allowlist", rcpt_config);
    let (route_lines, routes) = harness_dialogue("route-by-domain", route_config);
    let allow_lines = without_queue_id(allow_lines);
    let route_lines = without_queue_id(route_lines);
    assert_eq!(
        relay_lines, allow_lines,
        "relay vs harness (rcpt-allowlist)"
    );
    // route-by-domain has no opinion on recipients: the relay's own refusals are the
    // allowlist's, everything else is the same.
    let refusals: Vec<usize> = allow_lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("S: 550 5.1.1"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refusals.len(), 3, "{allow_lines:#?}");
    for (i, (a, b)) in allow_lines.iter().zip(&route_lines).enumerate() {
        if !refusals.contains(&i) {
            assert_eq!(
                a, b,
                "line {i}: rcpt-allowlist vs route-by-domain dialogues"
            );
        }
    }

    // Routes: the harness routes every recipient its plugin let through; the relay routed
    // the two the allowlist accepted the same way (its log says so).
    assert_eq!(
        routes,
        [
            "# route <alice@example.org>: mx",
            "# route <mallory@example.org>: mx",
            "# route <info@review.example>: hold \"manual review\"",
            "# route <x@example.net>: mx",
        ],
        "harness routes"
    );
    wait_held(&relay);
    let mut relay = relay;
    let logs = relay.stop_and_logs();
    let logged = |word: &str, rcpt: &str| {
        logs.lines()
            .any(|l| l.contains(&format!(" {word} ")) && l.contains(&format!("rcpt={rcpt}")))
    };
    assert!(
        logs.lines().any(|l| l.contains(" held ")
            && l.contains("rcpt=info@review.example")
            && l.contains("reason=manual review")),
        "relay held info@review.example: {logs}"
    );
    assert!(!logged("held", "alice@example.org"), "{logs}");
}

/// Waits for the relay's only message to be held by a route; returns its reason.
fn wait_held(relay: &Relay) -> String {
    for _ in 0..100 {
        let list = list_json(&relay.dir);
        if let Some(entry) = list["entries"].as_array().and_then(|a| a.first())
            && entry["state"] == "held"
        {
            return entry["reason"].as_str().unwrap_or_default().to_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("no message held: {}", list_json(&relay.dir));
}

/// Submits over STARTTLS (with SNI) and AUTH with MAIL FROM parameters; prints the client's
/// local port, then the queue id.
const PY_SUBMIT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(local_hostname="client.example", timeout=20)
s.connect("127.0.0.1", port)
s._host = "mx.relay.test"  # the name STARTTLS sends as SNI
s.ehlo()
s.starttls(context=ctx)
s.ehlo()
s.login("alice", "s3cret")
code, msg = s.mail("alice@relay.test", ["SIZE=200", "BODY=8BITMIME", "RET=HDRS", "ENVID=env-7"])
assert code == 250, (code, msg)
for r in ["bob@example.net", "carol@example.net"]:
    code, msg = s.rcpt(r)
    assert code == 250, (code, msg)
code, msg = s.data(b"Subject: inputs\r\n\r\nbody\r\n")
assert code == 250, (code, msg)
print(s.sock.getsockname()[1])
print(msg.decode().rsplit(" ", 1)[1])
s.quit()
"#;

#[test]
fn the_route_stage_sees_the_connection_and_envelope_the_message_came_in_with() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(&format!(
        "{}{}{}",
        tls_listener(tmp.path(), "sub", "submission"),
        auth_relay(tmp.path(), "relay.test"),
        plugin("inputs", "misbehave", "config = { mode = \"inputs\" }"),
    ));
    let relay = Relay::builder(&cfg).in_tmp(tmp).start();
    let addr = relay.addr("sub");
    let out = python(PY_SUBMIT, &[&addr.port().to_string()]);
    let mut lines = out.lines();
    let client_port = lines.next().unwrap();
    let queue_id = lines.next().unwrap();

    let reason = wait_held(&relay);
    let fields: std::collections::HashMap<&str, &str> = reason
        .trim_start_matches("held: ")
        .split(' ')
        .filter_map(|f| f.split_once('='))
        .collect();
    let expect = [
        ("q", queue_id.to_owned()),
        ("ip", "127.0.0.1".to_owned()),
        ("port", client_port.to_owned()),
        ("name", "-".to_owned()),
        ("l", "sub".to_owned()),
        ("srv", addr.to_string()),
        ("helo", "client.example".to_owned()),
        ("user", "alice".to_owned()),
        ("from", "alice@relay.test".to_owned()),
        (
            "params",
            "SIZE=200,BODY=8BITMIME,RET=HDRS,ENVID=env-7".to_owned(),
        ),
        // SPF is checked for untrusted clients only; alice authenticated.
        ("spf", "-".to_owned()),
        ("rcpts", "bob@example.net,carol@example.net".to_owned()),
    ];
    for (key, want) in &expect {
        assert_eq!(
            fields.get(key).copied(),
            Some(want.as_str()),
            "{key} in {reason}"
        );
    }
    let tls = fields.get("tls").copied().unwrap_or_default();
    let parts: Vec<&str> = tls.split('/').collect();
    assert_eq!(parts.len(), 3, "{reason}");
    assert!(parts[0].starts_with("TLSv1"), "{reason}");
    assert!(parts[1].starts_with("TLS"), "{reason}");
    assert_eq!(parts[2], "mx.relay.test", "SNI in {reason}");
    let id = fields.get("id").copied().unwrap_or_default();
    assert!(id.contains('-'), "connection id in {reason}");

    // The data stage saw the same id the 250 reply gave, and the same connection id.
    let mut relay = relay;
    let logs = relay.stop_and_logs();
    let spool = crate::harness::read_spool(&relay.dir.join("spool"));
    let (_, message) = &spool[0];
    let text = String::from_utf8_lossy(message);
    let header = text
        .lines()
        .find(|l| l.starts_with("X-Stage-Inputs: "))
        .unwrap_or_else(|| panic!("no X-Stage-Inputs header in {text}"));
    assert!(
        header.contains(&format!("q={queue_id} id={id} ")),
        "{header}"
    );
    assert!(
        logs.contains(&format!("session={id}")),
        "session {id} in the logs"
    );
}
