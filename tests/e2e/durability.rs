//! Nothing acknowledged with 250 is lost: kill -9 right after the reply, restart, find it.

use std::time::Duration;

use crate::harness::{Relay, config, queue_id, read_spool, send_message};

#[test]
fn message_survives_kill_9_right_after_250() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config("[relay]\nlocal_domains = [\"relay.test\"]\n");
    let mut ids = Vec::new();
    {
        let relay = Relay::builder(&cfg).in_dir(tmp.path()).start();
        for i in 0..5 {
            let mut c = relay.client();
            let (code, lines) = send_message(
                &mut c,
                "a@client.test",
                &["b@relay.test"],
                &format!("Subject: {i}\r\n\r\nbody {i}\r\n"),
            );
            assert_eq!(code, 250);
            ids.push(queue_id(&lines));
        }
        relay.signal("KILL");
    }
    let mut relay = Relay::builder(&cfg).in_dir(tmp.path()).start();
    // The restarted relay recovered the spool and still accepts mail.
    let mut c = relay.client();
    assert_eq!(
        send_message(
            &mut c,
            "a@client.test",
            &["b@relay.test"],
            "Subject: after\r\n\r\nx\r\n"
        )
        .0,
        250
    );
    drop(c);
    let logs = relay.stop_and_logs();
    assert!(logs.contains("recovered=5"), "{logs}");
    let spool = read_spool(&tmp.path().join("spool"));
    assert_eq!(spool.len(), 6);
    for (i, id) in ids.iter().enumerate() {
        let found = spool
            .iter()
            .any(|(_, msg)| String::from_utf8_lossy(msg).contains(&format!("body {i}\r\n")));
        assert!(found, "message {id} lost after kill -9");
    }
}

#[test]
fn concurrent_clients_all_get_unique_ids() {
    let mut relay = Relay::builder(&config("[relay]\nlocal_domains = [\"relay.test\"]\n")).start();
    let addr = relay.addr("smtp");
    let handles: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                (0..10)
                    .map(|i| {
                        let mut c = crate::harness::Client::connect(addr);
                        assert_eq!(c.reply().0, 220);
                        let (code, lines) = send_message(
                            &mut c,
                            "a@client.test",
                            &["b@relay.test"],
                            &format!("Subject: {t}-{i}\r\n\r\nx\r\n"),
                        );
                        assert_eq!(code, 250);
                        queue_id(&lines)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 80);
    assert_eq!(relay.stop_and_read_spool().len(), 80);
}
