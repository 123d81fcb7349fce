//! Several relays, one policy state: two relay processes share a real `redis-server`
//! through the Redis kv backend, and an outage of Redis is survived.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postrider_testkit::RedisServer;

use crate::harness::{ADMIN, Client, NO_DNS, Relay, config_full, plugin, scrape, value};
use crate::peers::wait_for;

/// A relay whose kv store is `redis` (cluster "e2e") with one plugin entry.
fn relay(redis: &RedisServer, plugin_entry: &str) -> Relay {
    Relay::builder(&config_full(
        NO_DNS,
        &format!("kv_url = \"{}\"\nkv_cluster = \"e2e\"", redis.url(0)),
        &format!("{ADMIN}[relay]\nlocal_domains = [\"relay.test\"]\n{plugin_entry}"),
    ))
    .start()
}

fn mail_from(c: &mut Client) -> (u16, String) {
    let reply = c.cmd("MAIL FROM:<alice@sender.test>");
    if reply.0 == 250 {
        assert_eq!(c.cmd("RSET").0, 250);
    }
    reply
}

#[test]
fn a_rate_limit_holds_across_two_relays() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let entry = plugin(
        "rate",
        "rate-limit",
        "config = { per_client_ip = { limit = 4, window_seconds = 3600 } }",
    );
    let a = relay(&redis, &entry);
    let b = relay(&redis, &entry);
    let (mut ca, mut cb) = (a.client(), b.client());
    assert_eq!(ca.cmd("EHLO client.test").0, 250);
    assert_eq!(cb.cmd("EHLO client.test").0, 250);
    // Four messages from 127.0.0.1 in all, two through each relay, are within the limit...
    for _ in 0..2 {
        assert_eq!(mail_from(&mut ca), (250, "2.1.0".into()));
        assert_eq!(mail_from(&mut cb), (250, "2.1.0".into()));
    }
    // ... and the fifth is over it, whichever relay it reaches.
    assert_eq!(mail_from(&mut ca), (450, "4.7.1".into()));
    assert_eq!(mail_from(&mut cb), (450, "4.7.1".into()));
    // The counter is one Redis key that both relays incremented.
    let keys = redis.command(&["KEYS", "postrider:e2e:4:rate:*"]).unwrap();
    assert_eq!(keys.lines().count(), 1, "one counter key: {keys}");
}

#[test]
fn a_greylist_triplet_seen_at_one_relay_passes_at_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(dir.path());
    let entry = plugin(
        "greylist",
        "greylist",
        "config = { delay_seconds = 1, skip_networks = [] }",
    );
    let a = relay(&redis, &entry);
    let b = relay(&redis, &entry);
    let rcpt = |relay: &Relay, to: &str| {
        let mut c = relay.client();
        assert_eq!(c.cmd("EHLO client.test").0, 250);
        assert_eq!(c.cmd("MAIL FROM:<alice@sender.test>").0, 250);
        c.cmd(&format!("RCPT TO:<{to}>"))
    };
    assert_eq!(rcpt(&a, "bob@relay.test"), (451, "4.7.1".into()));
    // Too early at the other relay too: it sees the same triplet, still waiting.
    assert_eq!(rcpt(&b, "bob@relay.test"), (451, "4.7.1".into()));
    // A triplet never seen anywhere is greylisted at B as well (B does greylist).
    assert_eq!(rcpt(&b, "carol@relay.test"), (451, "4.7.1".into()));
    // After the delay the retry passes at B, though A saw the first attempt.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(rcpt(&b, "bob@relay.test"), (250, "2.1.5".into()));
    assert_eq!(rcpt(&a, "bob@relay.test"), (250, "2.1.5".into()));
}

#[test]
fn redis_killed_under_load_tempfails_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start(dir.path());
    let strict = relay(
        &redis,
        &plugin(
            "rate",
            "rate-limit",
            "config = { per_client_ip = { limit = 1000000, window_seconds = 3600 }, on_kv_error = \"tempfail\" }",
        ),
    );
    let lenient = relay(
        &redis,
        &plugin(
            "rate",
            "rate-limit",
            "config = { per_client_ip = { limit = 1000000, window_seconds = 3600 } }",
        ),
    );
    // Load: clients on both relays send MAIL FROM in a loop and record every reply.
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(std::sync::Mutex::new(Vec::<(bool, u16, String)>::new()));
    let mut workers = Vec::new();
    for (is_strict, addr) in [
        (true, strict.addr("smtp")),
        (true, strict.addr("smtp")),
        (false, lenient.addr("smtp")),
        (false, lenient.addr("smtp")),
    ] {
        let (stop, replies) = (stop.clone(), replies.clone());
        workers.push(std::thread::spawn(move || {
            // Ten commands per connection: refusals count towards the relay's bad-command
            // limit (20), which would close a longer session with 421.
            for _ in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = Client::connect(addr);
                assert_eq!(c.reply().0, 220);
                assert_eq!(c.cmd("EHLO client.test").0, 250);
                for _ in 0..10 {
                    let reply = mail_from(&mut c);
                    replies.lock().unwrap().push((is_strict, reply.0, reply.1));
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert_eq!(c.cmd("QUIT").0, 221);
            }
        }));
    }
    let count = |strict: bool, code: u16| {
        replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == strict && r.1 == code)
            .count()
    };
    wait_for("traffic before the outage", Duration::from_secs(10), || {
        count(true, 250) >= 20
    });
    redis.kill();
    wait_for(
        "tempfails during the outage",
        Duration::from_secs(10),
        || count(true, 451) >= 20,
    );
    let lenient_ok_during = count(false, 250);
    wait_for(
        "lenient relay failing open",
        Duration::from_secs(10),
        || count(false, 250) >= lenient_ok_during + 20,
    );
    redis.resume();
    let ok_after = count(true, 250);
    wait_for(
        "recovery after Redis is back",
        Duration::from_secs(15),
        || count(true, 250) >= ok_after + 20,
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let all = replies.lock().unwrap().clone();
    for (strict, code, enhanced) in &all {
        match (strict, code) {
            (_, 250) => {}
            (true, 451) => assert_eq!(enhanced, "4.3.0"),
            other => panic!("unexpected reply {other:?} {enhanced}"),
        }
    }
    // Both relays are still serving.
    for relay in [&strict, &lenient] {
        let mut c = relay.client();
        assert_eq!(c.cmd("EHLO again.test").0, 250);
        assert_eq!(mail_from(&mut c).0, 250);
    }
    // Every failed kv call was counted, on both relays.
    let failures = value(&scrape(&strict), "postrider_kv_failures_total");
    assert!(failures >= 20.0, "postrider_kv_failures_total = {failures}");
    assert!(value(&scrape(&lenient), "postrider_kv_failures_total") >= 20.0);
    let mut strict = strict;
    let logs = strict.stop_and_logs();
    assert!(logs.contains("kv: redis unavailable"), "{logs}");
    assert!(logs.contains("kv: redis answers again"), "{logs}");
}
