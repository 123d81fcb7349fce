//! Timeouts, connection limits, error limits and graceful shutdown.

use std::time::{Duration, Instant};

use crate::harness::{Client, Relay, config};

#[test]
fn idle_client_gets_421_after_command_timeout() {
    let relay = Relay::builder(&config("[timeouts]\ncommand = 1\n")).start();
    let mut c = relay.client();
    let start = Instant::now();
    let (code, lines) = c.reply();
    assert_eq!(
        (code, crate::harness::enhanced(&lines[0]).as_str()),
        (421, "4.4.2")
    );
    assert!(start.elapsed() >= Duration::from_millis(900));
    assert!(c.is_closed());
}

#[test]
fn stalled_data_gets_421_after_data_timeout() {
    let relay = Relay::builder(&config(
        "[relay]\nlocal_domains = [\"relay.test\"]\n[timeouts]\ndata_block = 1\n",
    ))
    .start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: half\r\n");
    assert_eq!(c.reply().0, 421);
}

#[test]
fn per_ip_connection_limit() {
    let relay = Relay::builder(&config("[limits]\nmax_connections_per_ip = 2\n")).start();
    let _a = relay.client();
    let _b = relay.client();
    let mut c = Client::connect(relay.addr("smtp"));
    let (code, lines) = c.reply();
    assert_eq!(
        (code, crate::harness::enhanced(&lines[0]).as_str()),
        (421, "4.7.0")
    );
    drop(_a);
    // The slot comes back once the first session has ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = Client::connect(relay.addr("smtp"));
        if d.reply().0 == 220 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn too_many_bad_commands_closes_the_session() {
    let relay = Relay::builder(&config("[limits]\nmax_bad_commands = 3\n")).start();
    let mut c = relay.client();
    for _ in 0..3 {
        assert_eq!(c.cmd("FROB").0, 500);
    }
    // The fourth error still gets its own reply, then the session ends with 421.
    assert_eq!(c.cmd("FROB").0, 500);
    let (code, lines) = c.reply();
    assert_eq!(
        (code, crate::harness::enhanced(&lines[0]).as_str()),
        (421, "4.7.0")
    );
    assert!(c.is_closed());
}

#[test]
fn long_command_line_is_refused_and_session_goes_on() {
    let relay = Relay::builder(&config("")).start();
    let mut c = relay.client();
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(c.cmd(&long), (500, "5.5.2".into()));
    assert_eq!(c.cmd("NOOP"), (250, "2.0.0".into()));
}

#[test]
fn message_over_size_limit_gets_552() {
    let relay = Relay::builder(&config(
        "[relay]\nlocal_domains = [\"relay.test\"]\n[limits]\nmax_message_size = 1000\n",
    ))
    .start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@client.test> SIZE=5000"),
        (552, "5.3.4".into())
    );
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    assert_eq!(c.cmd("RCPT TO:<b@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(
        format!(
            "Subject: big\r\n\r\n{}.\r\n",
            format!("{}\r\n", "y".repeat(500)).repeat(3)
        )
        .as_bytes(),
    );
    let (code, lines) = c.reply();
    assert_eq!(
        (code, crate::harness::enhanced(&lines[0]).as_str()),
        (552, "5.3.4")
    );
    assert_eq!(c.cmd("NOOP").0, 250);
}

#[test]
fn sigterm_lets_a_session_finish_then_exits() {
    let mut relay = Relay::builder(&config(
        "[relay]\nlocal_domains = [\"relay.test\"]\n[timeouts]\nshutdown_grace = 20\n",
    ))
    .start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    assert_eq!(c.cmd("MAIL FROM:<a@client.test>").0, 250);
    relay.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    // No new connections once shutting down.
    assert!(
        std::net::TcpStream::connect(relay.addr("smtp")).is_err(),
        "listener still open"
    );
    assert_eq!(c.cmd("RCPT TO:<b@relay.test>").0, 250);
    assert_eq!(c.cmd("DATA").0, 354);
    c.send(b"Subject: during shutdown\r\n\r\nx\r\n.\r\n");
    assert_eq!(c.reply().0, 250);
    assert_eq!(c.cmd("QUIT").0, 221);
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(true));
    assert_eq!(
        crate::harness::read_spool(&relay.dir.join("spool")).len(),
        1
    );
}

#[test]
fn sigterm_closes_idle_sessions_with_421_after_grace() {
    let mut relay = Relay::builder(&config("[timeouts]\nshutdown_grace = 1\n")).start();
    let mut c = relay.client();
    assert_eq!(c.cmd("EHLO client.test").0, 250);
    relay.signal("TERM");
    let (code, lines) = c.reply();
    assert_eq!(
        (code, crate::harness::enhanced(&lines[0]).as_str()),
        (421, "4.3.2")
    );
    assert_eq!(relay.wait_exit(Duration::from_secs(15)), Some(true));
}

#[test]
fn total_connection_limit() {
    let relay = Relay::builder(&config("[limits]\nmax_connections = 1\n")).start();
    let _a = relay.client();
    let mut b = Client::connect(relay.addr("smtp"));
    let (code, lines) = b.reply();
    assert_eq!(
        (code, crate::harness::enhanced(&lines[0]).as_str()),
        (421, "4.7.0")
    );
    assert!(b.is_closed());
}
