//! `postrider queue`: against the running relay (admin socket) and a stopped one (spool).

use std::time::Duration;

use crate::harness::{Relay, config, list_json, queue, send_message};
use crate::peers::{Receiver, Script, free_port_on, wait_for};

#[test]
fn list_show_hold_retry_release_delete_online_and_offline() {
    let port = free_port_on(&["127.0.0.6"]);
    let cfg = config(&format!(
        "[relay]\nlocal_domains = [\"relay.test\"]\n[delivery]\nretry_intervals = [3600]\nconnect_timeout = 2\n\
         [[route]]\ndomains = [\"relay.test\"]\nrelay = \"127.0.0.6:{port}\"\ntls = \"none\"\n"
    ));
    let mut relay = Relay::builder(&cfg).start();
    let dir = relay.dir.clone();
    for i in 0..3 {
        let mut c = relay.client();
        assert_eq!(
            send_message(
                &mut c,
                "alice@sender.test",
                &["bob@relay.test"],
                &format!("Subject: q{i}\r\n\r\nx")
            )
            .0,
            250
        );
    }
    // Nothing listens yet: all three are deferred for an hour.
    wait_for("three deferred messages", Duration::from_secs(20), || {
        list_json(&dir)["entries"]
            .as_array()
            .is_some_and(|e| e.len() == 3 && e.iter().all(|m| m["state"] == "deferred"))
    });
    let (ok, table) = queue(&dir, &["list"]);
    assert!(
        ok && table.starts_with("ID ")
            && table.contains("alice@sender.test")
            && table.contains("deferred"),
        "{table}"
    );
    let entries = list_json(&dir)["entries"].as_array().unwrap().clone();
    let [first, second, third] = [0, 1, 2].map(|i| entries[i]["id"].as_str().unwrap().to_owned());

    let (ok, shown) = queue(&dir, &["show", &first]);
    assert!(
        ok && shown.contains("<bob@relay.test>") && shown.contains("Subject: q0"),
        "{shown}"
    );
    assert!(!queue(&dir, &["show", "NOTANID"]).0);

    assert!(queue(&dir, &["hold", &second]).0);
    assert!(queue(&dir, &["hold", &third]).0);
    let receiver = Receiver::start(
        format!("127.0.0.6:{port}").parse().unwrap(),
        Script(vec!["250 2.0.0 Ok"]),
    );
    let (ok, out) = queue(&dir, &["retry"]);
    assert!(ok, "{out}");
    wait_for("the retried message", Duration::from_secs(20), || {
        receiver.accepted.lock().unwrap().len() == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    let left = list_json(&dir);
    assert_eq!(left["entries"].as_array().unwrap().len(), 2, "{left}");
    assert!(
        left["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "held")
    );
    assert_eq!(
        receiver.accepted.lock().unwrap().len(),
        1,
        "held messages are not delivered"
    );

    // Released: attempted at once.
    let (ok, out) = queue(&dir, &["release", &second]);
    assert!(ok, "{out}");
    wait_for("the released message", Duration::from_secs(20), || {
        receiver.accepted.lock().unwrap().len() == 2
    });
    assert!(
        receiver.accepted.lock().unwrap()[1]
            .2
            .contains("Subject: q1")
    );
    wait_for("one message left", Duration::from_secs(10), || {
        relay.queued() == 1
    });

    // Stopped relay: the same commands work on the spool.
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(15)), Some(true));
    let offline = list_json(&dir);
    assert_eq!(offline["entries"][0]["id"], third.as_str());
    assert_eq!(offline["entries"][0]["state"], "held");
    assert!(queue(&dir, &["delete", &third]).0);
    assert_eq!(list_json(&dir)["entries"].as_array().unwrap().len(), 0);
    assert_eq!(
        receiver.accepted.lock().unwrap().len(),
        2,
        "the held message was never delivered"
    );
}
