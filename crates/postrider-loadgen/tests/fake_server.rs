//! The load generator against a tiny in-process SMTP server: counts, sizes, connection reuse
//! and refusals.

#![allow(missing_docs, clippy::unwrap_used)]

use postrider_loadgen::{Options, run};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    messages: AtomicUsize,
    body_bytes: AtomicUsize,
}

/// Accepts everything, except RCPT TO:<refuse@...> (550).
async fn fake_server() -> (String, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap() == 0 {
                        return;
                    }
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-fake\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT TO:<REFUSE@") {
                        b"550 5.1.1 no such user\r\n"
                    } else if upper.starts_with("DATA") {
                        w.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut in_body = false;
                        loop {
                            line.clear();
                            r.read_line(&mut line).await.unwrap();
                            if line == ".\r\n" {
                                break;
                            }
                            if in_body {
                                s.body_bytes.fetch_add(line.len(), Ordering::Relaxed);
                            } else if line == "\r\n" {
                                in_body = true;
                            }
                        }
                        s.messages.fetch_add(1, Ordering::Relaxed);
                        b"250 2.0.0 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

fn options(server: String, reuse: bool) -> Options {
    Options {
        server,
        sessions: 4,
        messages: 40,
        size: 4096,
        reuse,
        from: "sender@client.test".into(),
        to: "user@remote.test".into(),
        helo: "loadgen.test".into(),
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_new_connection_per_message() {
    let (addr, seen) = fake_server().await;
    let opts = options(addr, false);
    let report = run(opts.clone()).await.unwrap();
    assert_eq!((report.accepted, report.failed), (40, 0));
    assert_eq!(report.latencies.len(), 40);
    assert_eq!(seen.messages.load(Ordering::Relaxed), 40);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 40);
    assert_eq!(seen.body_bytes.load(Ordering::Relaxed), 40 * 4096);
    let json = report.to_json(&opts);
    assert_eq!(json["accepted"], 40);
    assert!(json["p99_ms"].as_f64().unwrap() >= json["p50_ms"].as_f64().unwrap());
}

#[tokio::test]
async fn reused_connections() {
    let (addr, seen) = fake_server().await;
    let report = run(options(addr, true)).await.unwrap();
    assert_eq!((report.accepted, report.failed), (40, 0));
    assert_eq!(seen.messages.load(Ordering::Relaxed), 40);
    assert_eq!(seen.connections.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn refusals_are_counted_not_fatal() {
    let (addr, seen) = fake_server().await;
    let mut opts = options(addr, true);
    opts.to = "refuse@remote.test".into();
    let report = run(opts).await.unwrap();
    assert_eq!((report.accepted, report.failed), (0, 40));
    assert!(report.first_error.unwrap().contains("550 5.1.1"));
    assert_eq!(seen.messages.load(Ordering::Relaxed), 0);
}
