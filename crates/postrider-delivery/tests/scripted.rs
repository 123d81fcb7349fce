//! The delivery driver against scripted SMTP/LMTP servers on loopback: partial LMTP
//! outcomes on EOF and timeout, the plaintext retry after a failed opportunistic STARTTLS,
//! the next MX host for a message the first cannot take, and large messages on slow links.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{deliverer, message, two_mx};

use std::time::Duration;

use postrider_delivery::{Attempt, Destination};
use postrider_dns::StaticDns;
use postrider_smtp::client::{RcptResult, TlsPolicy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// One accepted connection, scripted line by line.
struct Peer(BufReader<TcpStream>);

impl Peer {
    async fn say(&mut self, text: &str) {
        self.0.get_mut().write_all(text.as_bytes()).await.unwrap();
    }

    /// Reads one command line and checks its start (case-insensitive).
    async fn expect(&mut self, prefix: &str) -> String {
        let mut line = Vec::new();
        self.0.read_until(b'\n', &mut line).await.unwrap();
        let line = String::from_utf8_lossy(&line).into_owned();
        assert!(
            line.to_ascii_uppercase()
                .starts_with(&prefix.to_ascii_uppercase()),
            "expected {prefix:?}, got {line:?}"
        );
        line
    }

    /// Reads the message data up to the terminating dot; returns its length. The first
    /// `slow` bytes are read at about 5 MB/s (a slow link).
    async fn data(&mut self, slow: usize) -> usize {
        let mut total = 0;
        let mut paced = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self.0.read_until(b'\n', &mut line).await.unwrap();
            assert!(n > 0, "EOF in the data");
            if line == b".\r\n" {
                return total;
            }
            total += n;
            if total < slow && total - paced >= 256 * 1024 {
                paced = total;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits for the client to close the connection.
    async fn until_eof(mut self) {
        let mut rest = Vec::new();
        let _ = self.0.read_to_end(&mut rest).await;
    }

    /// MAIL, RCPT for each recipient (all accepted, no PIPELINING), DATA and the data.
    async fn transaction(&mut self, recipients: usize) {
        self.expect("MAIL FROM:").await;
        self.say("250 2.1.0 ok\r\n").await;
        for _ in 0..recipients {
            self.expect("RCPT TO:").await;
            self.say("250 2.1.5 ok\r\n").await;
        }
        self.expect("DATA").await;
        self.say("354 go ahead\r\n").await;
        self.data(0).await;
    }
}

async fn bind() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

async fn accept(listener: &TcpListener) -> Peer {
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    Peer(BufReader::new(stream))
}

/// True if the client connects again within a short while.
async fn connects_again(listener: &TcpListener) -> bool {
    tokio::time::timeout(Duration::from_millis(300), listener.accept())
        .await
        .is_ok()
}

/// `recipient=A250/2.0.0`, `T421/4.4.2`, `P554/5.6.3` per recipient.
fn outcomes(attempt: &Attempt) -> Vec<String> {
    attempt
        .outcomes
        .iter()
        .map(|o| {
            let kind = match &o.result {
                RcptResult::Accepted(_) => "A",
                RcptResult::Temporary(_) => "T",
                RcptResult::Permanent(_) => "P",
            };
            let reply = o.result.reply();
            let code = match reply.enhanced() {
                Some(e) => format!("{}/{e}", reply.code()),
                None => reply.code().to_string(),
            };
            format!("{}={kind}{code}", o.recipient)
        })
        .collect()
}

fn lmtp(port: u16) -> Destination {
    Destination::LmtpTcp {
        host: "127.0.0.1".into(),
        port,
    }
}

fn relay(port: u16, tls: TlsPolicy) -> Destination {
    Destination::Relay {
        host: "127.0.0.1".into(),
        port,
        tls,
        roots: None,
        auth: None,
    }
}

/// An LMTP server that answers the first recipient after the data, then `hang`s (keeps
/// the connection open without a word) or closes.
fn lmtp_first_only(listener: TcpListener, hang: bool) -> JoinHandle<TcpListener> {
    tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.say("220 lmtp.test LMTP\r\n").await;
        peer.expect("LHLO client.test").await;
        peer.say("250-lmtp.test\r\n250 ENHANCEDSTATUSCODES\r\n")
            .await;
        peer.transaction(2).await;
        peer.say("250 2.0.0 first delivered\r\n").await;
        if hang {
            peer.until_eof().await;
        }
        listener
    })
}

#[tokio::test]
async fn lmtp_eof_keeps_the_outcomes_already_received() {
    let (listener, port) = bind().await;
    let server = lmtp_first_only(listener, false);
    let d = deliverer(StaticDns::default(), 25, Duration::from_secs(5));
    let attempt = d
        .deliver(
            &lmtp(port),
            &message(&["a@d.test", "b@d.test"], b"hi\r\n"),
            b"hi\r\n",
        )
        .await;
    assert_eq!(
        outcomes(&attempt),
        ["a@d.test=A250/2.0.0", "b@d.test=T421/4.4.2"]
    );
    let listener = server.await.unwrap();
    assert!(!connects_again(&listener).await);
}

#[tokio::test]
async fn lmtp_timeout_keeps_the_outcomes_already_received() {
    let (listener, port) = bind().await;
    let server = lmtp_first_only(listener, true);
    let d = deliverer(StaticDns::default(), 25, Duration::from_millis(500));
    let attempt = d
        .deliver(
            &lmtp(port),
            &message(&["a@d.test", "b@d.test"], b"hi\r\n"),
            b"hi\r\n",
        )
        .await;
    assert_eq!(
        outcomes(&attempt),
        ["a@d.test=A250/2.0.0", "b@d.test=T421/4.4.2"]
    );
    let reason = attempt.outcomes[1].result.reply().to_string();
    assert!(reason.contains("Timed out"), "{reason}");
    drop(d);
    server.await.unwrap();
}

/// Offers STARTTLS, answers 220 to it, then sends garbage instead of a TLS handshake.
async fn broken_starttls(peer: &mut Peer) {
    peer.say("220 mx.test ESMTP\r\n").await;
    peer.expect("EHLO client.test").await;
    peer.say("250-mx.test\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n")
        .await;
    peer.expect("STARTTLS").await;
    peer.say("220 2.0.0 go ahead\r\n").await;
    peer.say("this is not a TLS handshake\r\n\r\n").await;
}

#[tokio::test]
async fn opportunistic_tls_falls_back_to_plaintext() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        broken_starttls(&mut first).await;
        first.until_eof().await;
        // The second connection, to the same address: plaintext even though offered.
        let mut peer = accept(&listener).await;
        peer.say("220 mx.test ESMTP\r\n").await;
        peer.expect("EHLO client.test").await;
        peer.say("250-mx.test\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n")
            .await;
        peer.transaction(1).await;
        peer.say("250 2.0.0 queued\r\n").await;
        // The delivered-to connection is kept for reuse; it closes when the deliverer goes.
        peer.until_eof().await;
        assert!(!connects_again(&listener).await);
    });
    let d = deliverer(StaticDns::default(), 25, Duration::from_secs(5));
    let attempt = d
        .deliver(
            &relay(port, TlsPolicy::Opportunistic),
            &message(&["a@d.test"], b"hi\r\n"),
            b"hi\r\n",
        )
        .await;
    assert_eq!(outcomes(&attempt), ["a@d.test=A250/2.0.0"]);
    drop(d);
    server.await.unwrap();
}

#[tokio::test]
async fn required_tls_never_falls_back() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        broken_starttls(&mut first).await;
        first.until_eof().await;
        assert!(!connects_again(&listener).await, "no plaintext retry");
    });
    let d = deliverer(StaticDns::default(), 25, Duration::from_secs(5));
    let attempt = d
        .deliver(
            &relay(port, TlsPolicy::Require),
            &message(&["a@d.test"], b"hi\r\n"),
            b"hi\r\n",
        )
        .await;
    assert_eq!(outcomes(&attempt), ["a@d.test=T451/4.7.5"]);
    let reason = attempt.outcomes[0].result.reply().to_string();
    assert!(
        reason.contains("TLS with 127.0.0.1 failed (require)"),
        "{reason}"
    );
    drop(d);
    server.await.unwrap();
}

/// A server without 8BITMIME: the client must refuse the 8-bit message itself and quit.
async fn without_8bitmime(peer: &mut Peer) {
    peer.say("220 mx.test ESMTP\r\n").await;
    peer.expect("EHLO client.test").await;
    peer.say("250-mx.test\r\n250 ENHANCEDSTATUSCODES\r\n").await;
    peer.expect("QUIT").await;
    peer.say("221 2.0.0 bye\r\n").await;
}

fn mx(domain: &str) -> Destination {
    Destination::Mx {
        domain: domain.into(),
        tls: TlsPolicy::None,
        roots: None,
    }
}

const EIGHT_BIT: &[u8] = b"Subject: caf\xc3\xa9\r\n\r\ncaf\xc3\xa9\r\n";

#[tokio::test]
async fn a_host_lacking_8bitmime_passes_the_message_to_the_next_mx() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let mut first = accept(&listener).await;
        without_8bitmime(&mut first).await;
        first.until_eof().await;
        let mut peer = accept(&listener).await;
        peer.say("220 mx.test ESMTP\r\n").await;
        peer.expect("EHLO client.test").await;
        peer.say("250-mx.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
            .await;
        let mail = peer.expect("MAIL FROM:").await;
        assert!(mail.contains("BODY=8BITMIME"), "{mail}");
        peer.say("250 2.1.0 ok\r\n").await;
        peer.expect("RCPT TO:<a@d.test>").await;
        peer.say("250 2.1.5 ok\r\n").await;
        peer.expect("DATA").await;
        peer.say("354 go ahead\r\n").await;
        peer.data(0).await;
        peer.say("250 2.0.0 queued\r\n").await;
        // The delivered-to connection is kept for reuse; it closes when the deliverer goes.
        peer.until_eof().await;
    });
    let d = deliverer(two_mx(true), port, Duration::from_secs(5));
    let attempt = d
        .deliver(&mx("d.test"), &message(&["a@d.test"], EIGHT_BIT), EIGHT_BIT)
        .await;
    assert_eq!(outcomes(&attempt), ["a@d.test=A250/2.0.0"]);
    assert!(attempt.remote.unwrap().starts_with("b.d.test["));
    drop(d);
    server.await.unwrap();
}

#[tokio::test]
async fn the_8bitmime_refusal_is_permanent_only_if_no_host_may_take_it() {
    // Both hosts lack 8BITMIME: the message bounces.
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let mut peer = accept(&listener).await;
            without_8bitmime(&mut peer).await;
        }
    });
    let d = deliverer(two_mx(true), port, Duration::from_secs(5));
    let attempt = d
        .deliver(&mx("d.test"), &message(&["a@d.test"], EIGHT_BIT), EIGHT_BIT)
        .await;
    assert_eq!(outcomes(&attempt), ["a@d.test=P554/5.6.3"]);
    drop(d);
    server.await.unwrap();

    // The second host could not be tried (no address): it may take the message later.
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        without_8bitmime(&mut peer).await;
    });
    let d = deliverer(two_mx(false), port, Duration::from_secs(5));
    let attempt = d
        .deliver(&mx("d.test"), &message(&["a@d.test"], EIGHT_BIT), EIGHT_BIT)
        .await;
    assert_eq!(outcomes(&attempt), ["a@d.test=T451/4.4.3"]);
    drop(d);
    server.await.unwrap();
}

#[tokio::test]
async fn a_large_message_on_a_slow_link_is_not_cut_off() {
    // A small receive buffer, so the kernel cannot absorb the message.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let port = listener.local_addr().unwrap().port();
    const SIZE: usize = 12 * 1024 * 1024;
    let line = format!("{}\r\n", "x".repeat(998));
    let data = line.repeat(SIZE / line.len()).into_bytes();
    let len = data.len();
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener).await;
        peer.say("220 mx.test ESMTP\r\n").await;
        peer.expect("EHLO client.test").await;
        peer.say("250-mx.test\r\n250 ENHANCEDSTATUSCODES\r\n").await;
        peer.expect("MAIL FROM:").await;
        peer.say("250 2.1.0 ok\r\n").await;
        peer.expect("RCPT TO:").await;
        peer.say("250 2.1.5 ok\r\n").await;
        peer.expect("DATA").await;
        peer.say("354 go ahead\r\n").await;
        // About 1.2 s for the first 6 MiB: far longer than the reply timeout.
        assert_eq!(peer.data(6 * 1024 * 1024).await, len);
        peer.say("250 2.0.0 queued\r\n").await;
        // The delivered-to connection is kept for reuse; it closes when the deliverer goes.
        peer.until_eof().await;
    });
    let d = deliverer(StaticDns::default(), 25, Duration::from_millis(500));
    let attempt = d
        .deliver(
            &relay(port, TlsPolicy::None),
            &message(&["a@d.test"], &data),
            &data,
        )
        .await;
    assert_eq!(outcomes(&attempt), ["a@d.test=A250/2.0.0"]);
    drop(d);
    server.await.unwrap();
}
