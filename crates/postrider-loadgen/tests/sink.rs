//! postrider-sink, the binary: plain and STARTTLS sessions are counted, a second TLS session
//! from the same client resumes the first, and commands pipelined after STARTTLS are refused.

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Sink(Child);
impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> (Sink, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postrider-sink"))
        .args(["--listen", "127.0.0.1:0", "--ca-out"])
        .arg(dir.join("ca.pem"))
        .arg("--counts")
        .arg(dir.join("counts"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    (Sink(child), addr)
}

async fn reply<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> String {
    let mut all = String::new();
    loop {
        let mut l = String::new();
        assert!(
            io.read_line(&mut l).await.unwrap() > 0,
            "closed after {all:?}"
        );
        all.push_str(&l);
        if l.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

async fn say<S: AsyncRead + AsyncWrite + Unpin>(io: &mut BufReader<S>, cmd: &str) -> String {
    io.get_mut().write_all(cmd.as_bytes()).await.unwrap();
    reply(io).await
}

async fn message<S: AsyncRead + AsyncWrite + Unpin>(io: &mut BufReader<S>) {
    assert!(say(io, "MAIL FROM:<a@b.test>\r\n").await.starts_with("250"));
    assert!(say(io, "RCPT TO:<c@d.test>\r\n").await.starts_with("250"));
    assert!(say(io, "DATA\r\n").await.starts_with("354"));
    let end = say(io, "Subject: x\r\n\r\n..dot\r\n.\r\n").await;
    assert!(end.starts_with("250"), "{end}");
    assert!(say(io, "QUIT\r\n").await.starts_with("221"));
}

/// Connects, says EHLO and (with a connector) goes over to TLS.
async fn tls_message(addr: &str, tls: &TlsConnector) {
    let mut io = BufReader::new(TcpStream::connect(addr).await.unwrap());
    assert!(reply(&mut io).await.starts_with("220"));
    assert!(say(&mut io, "EHLO c\r\n").await.contains("STARTTLS"));
    assert!(say(&mut io, "STARTTLS\r\n").await.starts_with("220"));
    let name = rustls_pki_types::ServerName::try_from("sink.bench.test").unwrap();
    let stream = tls.connect(name, io.into_inner()).await.unwrap();
    let mut io = BufReader::new(stream);
    assert!(!say(&mut io, "EHLO c\r\n").await.contains("STARTTLS"));
    message(&mut io).await;
}

fn counts(dir: &Path, want: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read_to_string(dir.join("counts")).unwrap_or_default();
        if got.trim() == want || Instant::now() > end {
            return got.trim().to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn counts_messages_handshakes_and_resumed_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (_sink, addr) = start(dir.path());

    let mut io = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    assert!(reply(&mut io).await.starts_with("220"));
    assert!(say(&mut io, "EHLO c\r\n").await.starts_with("250"));
    message(&mut io).await;

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(dir.path().join("ca.pem")).unwrap();
    for cert in pem_certs(&pem) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config));
    tls_message(&addr, &tls).await;
    tls_message(&addr, &tls).await;
    assert_eq!(counts(dir.path(), "3 2 1"), "3 2 1");

    // STARTTLS with a command behind it in the same packet: refused, not carried into TLS.
    let mut io = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    assert!(reply(&mut io).await.starts_with("220"));
    assert!(say(&mut io, "EHLO c\r\n").await.starts_with("250"));
    let got = say(&mut io, "STARTTLS\r\nMAIL FROM:<a@b.test>\r\n").await;
    assert!(got.starts_with("554 5.5.1"), "{got}");
}

fn pem_certs(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|c| c.unwrap())
        .collect()
}
