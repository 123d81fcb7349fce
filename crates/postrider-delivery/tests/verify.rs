//! `verify` against STARTTLS servers on loopback with certificates from test CAs: a chain to
//! the route's CA file and the next hop's name deliver; an unknown issuer or another name
//! defer with 4.7.5 without a word of plain text or a credential sent, after trying the next
//! MX; `opportunistic` keeps accepting any certificate. `dane` through a fake validating
//! resolver: TLSA records authenticate only when MX, addresses and TLSA are secure; a
//! mismatch passes the message to the next MX, a TLSA answer that fails validation defers it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{acceptor, deliverer, message, two_mx};

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postrider_delivery::{Attempt, Destination, TlsOutcome, TrustRoots};
use postrider_dns::{DnsError, DnsFuture, SecureDns, StaticDns, Tlsa, Validated};
use postrider_smtp::client::{Credentials, TlsPolicy};
use postrider_testkit::TestCa;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// What the server saw on one connection.
#[derive(Debug)]
enum Seen {
    /// The TLS handshake failed (the client refused the certificate); then the lines the
    /// client sent in plain text after it, if any.
    HandshakeFailed(Vec<String>),
    /// The commands sent over TLS.
    Tls(Vec<String>),
}

async fn line<S: AsyncRead + Unpin>(r: &mut BufReader<S>) -> Option<String> {
    let mut l = String::new();
    match tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut l)).await {
        Ok(Ok(n)) if n > 0 => Some(l.trim_end().to_owned()),
        _ => None,
    }
}

/// Offers STARTTLS with `acceptor`'s certificate, then takes a message (and AUTH PLAIN)
/// over TLS until the client goes.
async fn starttls_server(listener: &TcpListener, acceptor: &TlsAcceptor) -> Seen {
    serve_starttls(listener, acceptor, false).await
}

/// [`starttls_server`]; with `hang_up`, the server closes the connection once it has taken
/// a message (so the next message needs a new connection).
async fn serve_starttls(listener: &TcpListener, acceptor: &TlsAcceptor, hang_up: bool) -> Seen {
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    let mut plain = BufReader::new(stream);
    plain
        .get_mut()
        .write_all(b"220 mx ESMTP\r\n")
        .await
        .unwrap();
    assert!(line(&mut plain).await.unwrap().starts_with("EHLO"));
    plain
        .get_mut()
        .write_all(b"250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
        .await
        .unwrap();
    assert_eq!(line(&mut plain).await.unwrap(), "STARTTLS");
    plain
        .get_mut()
        .write_all(b"220 go ahead\r\n")
        .await
        .unwrap();
    let tls = match acceptor.accept(plain.into_inner()).await {
        Ok(tls) => tls,
        Err(_) => return Seen::HandshakeFailed(Vec::new()),
    };
    let mut r = BufReader::new(tls);
    let mut seen = Vec::new();
    while let Some(cmd) = line(&mut r).await {
        seen.push(cmd.clone());
        let reply: &[u8] = match cmd.split(' ').next().unwrap_or("") {
            "EHLO" => b"250-mx\r\n250 AUTH PLAIN\r\n",
            "AUTH" => b"235 2.7.0 ok\r\n",
            "MAIL" | "RCPT" => b"250 ok\r\n",
            "DATA" => {
                r.get_mut().write_all(b"354 go\r\n").await.unwrap();
                while line(&mut r).await.is_some_and(|l| l != ".") {}
                if hang_up {
                    r.get_mut()
                        .write_all(b"250 2.0.0 queued\r\n")
                        .await
                        .unwrap();
                    r.get_mut().flush().await.unwrap();
                    return Seen::Tls(seen);
                }
                b"250 2.0.0 queued\r\n"
            }
            "QUIT" => b"221 bye\r\n",
            _ => b"500 what\r\n",
        };
        r.get_mut().write_all(reply).await.unwrap();
        r.get_mut().flush().await.unwrap();
    }
    Seen::Tls(seen)
}

/// The one outcome: "A250/2.0.0", "T451/4.7.5", ... and its text.
fn outcome(attempt: &Attempt) -> (String, String) {
    let result = &attempt.outcomes[0].result;
    let reply = result.reply();
    let kind = match result {
        postrider_smtp::client::RcptResult::Accepted(_) => "A",
        postrider_smtp::client::RcptResult::Temporary(_) => "T",
        postrider_smtp::client::RcptResult::Permanent(_) => "P",
    };
    let enhanced = reply.enhanced().map(|e| e.to_string()).unwrap_or_default();
    (
        format!("{kind}{}/{enhanced}", reply.code()),
        reply.to_string(),
    )
}

fn relay(host: &str, port: u16, tls: TlsPolicy, ca: Option<&Path>) -> Destination {
    Destination::Relay {
        host: host.into(),
        port,
        tls,
        roots: ca.map(|f| TrustRoots::from_file(f).unwrap()),
        auth: Some(Credentials {
            username: "alice".into(),
            password: "s3cret".into(),
        }),
    }
}

async fn one(dest: Destination, acceptor: TlsAcceptor) -> (Attempt, Seen, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dest = match dest {
        Destination::Relay {
            host,
            tls,
            roots,
            auth,
            ..
        } => Destination::Relay {
            host,
            port,
            tls,
            roots,
            auth,
        },
        other => other,
    };
    let server = tokio::spawn(async move {
        let seen = starttls_server(&listener, &acceptor).await;
        let again = tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_ok();
        (seen, again)
    });
    let localhost: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
    let dns = StaticDns {
        ip: HashMap::from([("localhost".to_owned(), Ok(localhost))]),
        ..StaticDns::default()
    };
    let d = deliverer(dns, 25, Duration::from_secs(5));
    let attempt = d
        .deliver(&dest, &message(&["a@d.test"], b"hi\r\n"), b"hi\r\n")
        .await;
    drop(d);
    let (seen, again) = server.await.unwrap();
    (attempt, seen, again)
}

#[tokio::test]
async fn a_chain_to_the_ca_file_for_the_relay_name_delivers_with_auth_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "ours");
    let server = acceptor(&ca.issue("smart", &["localhost"]));
    let dest = relay("localhost", 0, TlsPolicy::Verify, Some(&ca.cert_file()));
    let (attempt, seen, _) = one(dest, server).await;
    assert_eq!(outcome(&attempt).0, "A250/2.0.0");
    let Seen::Tls(commands) = seen else {
        panic!("{seen:?}")
    };
    assert!(
        commands.iter().any(|c| c.starts_with("AUTH PLAIN")),
        "{commands:?}"
    );
    let tls = attempt.tls.unwrap();
    assert!(
        tls.starts_with("verify: TLSv1.3 TLS13_")
            && tls.ends_with(&format!(
                "certificate verified by {}",
                ca.cert_file().display()
            )),
        "{tls}"
    );
}

#[tokio::test]
async fn an_unknown_issuer_or_another_name_defers_4_7_5_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ours = TestCa::new(dir.path(), "ours");
    let theirs = TestCa::new(dir.path(), "theirs");
    let cases = [
        // Signed by a CA the route does not trust.
        (
            "localhost",
            theirs.issue("smart", &["localhost"]),
            "UnknownIssuer",
        ),
        // Trusted CA, but for another name than the one the route connects to.
        (
            "127.0.0.1",
            ours.issue("other", &["localhost"]),
            "not valid for name",
        ),
        (
            "localhost",
            ours.issue("else", &["smart.example"]),
            "not valid for name",
        ),
    ];
    for (host, cert, why) in cases {
        let dest = relay(host, 0, TlsPolicy::Verify, Some(&ours.cert_file()));
        let (attempt, seen, again) = one(dest, acceptor(&cert)).await;
        let (code, text) = outcome(&attempt);
        assert_eq!(code, "T451/4.7.5", "{host}: {text}");
        assert!(
            text.contains(&format!("TLS with {host} failed (verify)")) && text.contains(why),
            "{text}"
        );
        // No credential, no message, and no second (plain text) connection.
        assert!(
            matches!(seen, Seen::HandshakeFailed(ref l) if l.is_empty()),
            "{seen:?}"
        );
        assert!(!again, "{host}: the client came back");
        assert_eq!(attempt.tls.as_deref(), Some("verify: no TLS"));
    }
}

#[tokio::test]
async fn the_system_store_is_used_without_a_ca_file() {
    // A private CA is in no system store: verify refuses it; opportunistic takes it.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "private");
    let cert = ca.issue("smart", &["localhost"]);
    let (attempt, _, _) = one(
        relay("localhost", 0, TlsPolicy::Verify, None),
        acceptor(&cert),
    )
    .await;
    let (code, text) = outcome(&attempt);
    assert_eq!(code, "T451/4.7.5", "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    let mut dest = relay("localhost", 0, TlsPolicy::Require, None);
    if let Destination::Relay { auth, .. } = &mut dest {
        *auth = None;
    }
    let (attempt, seen, _) = one(dest, acceptor(&cert)).await;
    assert_eq!(outcome(&attempt).0, "A250/2.0.0");
    assert!(matches!(seen, Seen::Tls(_)));
    let tls = attempt.tls.unwrap();
    assert!(
        tls.starts_with("require: TLSv1.3 ") && tls.ends_with("certificate not verified"),
        "{tls}"
    );
}

#[tokio::test]
async fn an_mx_that_fails_verification_passes_the_message_to_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "mx");
    // The first MX presents a certificate for another host, the second its own.
    let (bad, good) = (
        acceptor(&ca.issue("a", &["c.d.test"])),
        acceptor(&ca.issue("b", &["b.d.test"])),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let first = starttls_server(&listener, &bad).await;
        let second = starttls_server(&listener, &good).await;
        (first, second)
    });
    let d = deliverer(two_mx(true), port, Duration::from_secs(5));
    let dest = Destination::Mx {
        domain: "d.test".into(),
        tls: TlsPolicy::Verify,
        roots: Some(TrustRoots::from_file(&ca.cert_file()).unwrap()),
    };
    let attempt = d
        .deliver(&dest, &message(&["a@d.test"], b"hi\r\n"), b"hi\r\n")
        .await;
    drop(d);
    let (first, second) = server.await.unwrap();
    assert!(matches!(first, Seen::HandshakeFailed(_)), "{first:?}");
    assert!(
        matches!(second, Seen::Tls(ref c) if c.iter().any(|l| l.starts_with("MAIL"))),
        "{second:?}"
    );
    assert_eq!(outcome(&attempt).0, "A250/2.0.0");
    assert_eq!(
        attempt.sessions,
        [
            (TlsPolicy::Verify, TlsOutcome::Failed),
            (TlsPolicy::Verify, TlsOutcome::Verified)
        ]
    );
    assert!(attempt.remote.unwrap().starts_with("b.d.test["));
}

/// A validating resolver with fixed answers: MX of d.test, addresses and TLSA records by
/// name, each with its security; a name missing from `tlsa` has none (secure denial), one
/// in `bogus` fails validation.
#[derive(Default)]
struct FakeSecure {
    mx: Vec<(u16, String)>,
    mx_secure: bool,
    ip_secure: bool,
    tlsa: HashMap<String, Vec<Tlsa>>,
    bogus: Vec<String>,
}

impl SecureDns for FakeSecure {
    fn secure_mx<'a>(&'a self, _name: &'a str) -> DnsFuture<'a, Validated<Vec<(u16, String)>>> {
        Box::pin(async move {
            Ok(Validated {
                records: self.mx.clone(),
                secure: self.mx_secure,
            })
        })
    }

    fn secure_ip<'a>(&'a self, _name: &'a str) -> DnsFuture<'a, Validated<Vec<IpAddr>>> {
        Box::pin(async move {
            Ok(Validated {
                records: vec!["127.0.0.1".parse().unwrap()],
                secure: self.ip_secure,
            })
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<Tlsa>>> {
        Box::pin(async move {
            if self.bogus.iter().any(|b| b == name) {
                return Err(DnsError::Bogus(format!("{name} TLSA: validation failed")));
            }
            Ok(Validated {
                records: self.tlsa.get(name).cloned().unwrap_or_default(),
                secure: true,
            })
        })
    }
}

/// "3 1 1" for the certificate file `cert`.
fn dane_ee(cert: &Path) -> Tlsa {
    let der = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&der).unwrap();
    let spki = webpki::spki_for_anchor(&anchor);
    Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: ring::digest::digest(&ring::digest::SHA256, spki.as_ref())
            .as_ref()
            .to_vec(),
    }
}

/// Delivers to d.test under `dane` through `dns`, the servers taking the connections in
/// turn with `certs`; returns the attempt and what each server saw.
async fn dane_attempt(dns: FakeSecure, certs: Vec<(PathBuf, PathBuf)>) -> (Attempt, Vec<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tlsa = dns
        .tlsa
        .into_iter()
        .map(|(k, v)| (k.replace("PORT", &port.to_string()), v))
        .collect();
    let bogus = dns
        .bogus
        .iter()
        .map(|b| b.replace("PORT", &port.to_string()))
        .collect();
    let dns = FakeSecure { tlsa, bogus, ..dns };
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for cert in &certs {
            seen.push(starttls_server(&listener, &acceptor(cert)).await);
        }
        let again = tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_ok();
        assert!(!again, "one connection too many");
        seen
    });
    let d = deliverer(two_mx(true), port, Duration::from_secs(5)).with_secure_dns(Arc::new(dns));
    let dest = Destination::Mx {
        domain: "d.test".into(),
        tls: TlsPolicy::Dane,
        roots: None,
    };
    let attempt = d
        .deliver(&dest, &message(&["a@d.test"], b"hi\r\n"), b"hi\r\n")
        .await;
    drop(d);
    (attempt, server.await.unwrap())
}

fn both_mx() -> Vec<(u16, String)> {
    vec![(10, "a.d.test".into()), (20, "b.d.test".into())]
}

#[tokio::test]
async fn dane_authenticates_by_tlsa_and_passes_a_mismatch_to_the_next_mx() {
    let dir = tempfile::tempdir().unwrap();
    // Self-signed for another name: DANE-EE checks neither issuer nor name.
    let ca = TestCa::new(dir.path(), "nobody");
    let (a, b) = (ca.issue("a", &["x.example"]), ca.issue("b", &["y.example"]));
    let dns = FakeSecure {
        mx: both_mx(),
        mx_secure: true,
        ip_secure: true,
        // a.d.test publishes b's key: a mismatch.
        tlsa: HashMap::from([
            ("_PORT._tcp.a.d.test".to_owned(), vec![dane_ee(&b.0)]),
            ("_PORT._tcp.b.d.test".to_owned(), vec![dane_ee(&b.0)]),
        ]),
        ..FakeSecure::default()
    };
    let (attempt, seen) = dane_attempt(dns, vec![a, b]).await;
    assert!(matches!(seen[0], Seen::HandshakeFailed(_)), "{seen:?}");
    assert!(matches!(seen[1], Seen::Tls(ref c) if c.iter().any(|l| l.starts_with("MAIL"))));
    assert_eq!(outcome(&attempt).0, "A250/2.0.0");
    assert_eq!(
        attempt.sessions,
        [
            (TlsPolicy::Dane, TlsOutcome::Failed),
            (TlsPolicy::Dane, TlsOutcome::Verified)
        ]
    );
    let tls = attempt.tls.unwrap();
    assert!(
        tls.starts_with("dane: TLSv1.3 ") && tls.ends_with("certificate verified by TLSA 3 1 1"),
        "{tls}"
    );
}

#[tokio::test]
async fn dane_defers_4_7_5_when_tlsa_fails_validation_and_never_connects() {
    let dns = FakeSecure {
        mx: vec![(10, "a.d.test".into())],
        mx_secure: true,
        ip_secure: true,
        bogus: vec!["_PORT._tcp.a.d.test".into()],
        ..FakeSecure::default()
    };
    let (attempt, seen) = dane_attempt(dns, Vec::new()).await;
    assert!(seen.is_empty());
    let (code, text) = outcome(&attempt);
    assert_eq!(code, "T451/4.7.5", "{text}");
    assert!(
        text.contains("TLSA lookup for a.d.test failed: DNSSEC"),
        "{text}"
    );
}

#[tokio::test]
async fn dane_is_opportunistic_without_secure_tlsa_and_encrypts_with_unusable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "any");
    let cert = ca.issue("a", &["a.d.test"]);
    let tlsa = HashMap::from([("_PORT._tcp.a.d.test".to_owned(), vec![dane_ee(&cert.0)])]);
    // An insecure MX or insecure addresses: TLSA records do not count (a wrong one here).
    let wrong = HashMap::from([(
        "_PORT._tcp.a.d.test".to_owned(),
        vec![Tlsa {
            data: vec![0; 32],
            ..dane_ee(&cert.0)
        }],
    )]);
    for (mx_secure, ip_secure) in [(false, true), (true, false)] {
        let dns = FakeSecure {
            mx: vec![(10, "a.d.test".into())],
            mx_secure,
            ip_secure,
            tlsa: wrong.clone(),
            ..FakeSecure::default()
        };
        let (attempt, _) = dane_attempt(dns, vec![cert.clone()]).await;
        assert_eq!(outcome(&attempt).0, "A250/2.0.0");
        assert_eq!(
            attempt.sessions,
            [(TlsPolicy::Dane, TlsOutcome::Unverified)]
        );
        assert!(attempt.tls.unwrap().ends_with("certificate not verified"));
    }
    // Secure but only PKIX-EE (unusable for SMTP): TLS without authentication.
    let pkix = tlsa
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|r| Tlsa { usage: 1, ..r }).collect()))
        .collect();
    let dns = FakeSecure {
        mx: vec![(10, "a.d.test".into())],
        mx_secure: true,
        ip_secure: true,
        tlsa: pkix,
        ..FakeSecure::default()
    };
    let (attempt, _) = dane_attempt(dns, vec![cert]).await;
    assert_eq!(outcome(&attempt).0, "A250/2.0.0");
    assert_eq!(
        attempt.sessions,
        [(TlsPolicy::Dane, TlsOutcome::Unverified)]
    );
}

#[tokio::test]
async fn dane_sessions_to_the_same_host_resume() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "nobody");
    let cert = ca.issue("a", &["x.example"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dns = FakeSecure {
        mx: vec![(10, "a.d.test".into())],
        mx_secure: true,
        ip_secure: true,
        tlsa: HashMap::from([(format!("_{port}._tcp.a.d.test"), vec![dane_ee(&cert.0)])]),
        ..FakeSecure::default()
    };
    let acceptor = acceptor(&cert);
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            serve_starttls(&listener, &acceptor, true).await;
        }
    });
    let d = deliverer(two_mx(true), port, Duration::from_secs(5)).with_secure_dns(Arc::new(dns));
    let dest = Destination::Mx {
        domain: "d.test".into(),
        tls: TlsPolicy::Dane,
        roots: None,
    };
    let mut summaries = Vec::new();
    for _ in 0..2 {
        let attempt = d
            .deliver(&dest, &message(&["a@d.test"], b"hi\r\n"), b"hi\r\n")
            .await;
        assert_eq!(outcome(&attempt).0, "A250/2.0.0");
        summaries.push(attempt.tls.unwrap());
    }
    server.await.unwrap();
    assert!(
        summaries[0].ends_with("certificate verified by TLSA 3 1 1"),
        "{summaries:?}"
    );
    assert!(
        summaries[1].ends_with("certificate verified by TLSA 3 1 1, session resumed"),
        "{summaries:?}"
    );
}
