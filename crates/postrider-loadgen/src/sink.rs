//! A discarding SMTP server with STARTTLS, the receiving end of the verified-TLS benchmark.
//!
//! Postfix's `smtp-sink` has no TLS, so `bench/compare.sh` relays its `*-verify` runs here:
//! every message is accepted and thrown away; the server counts messages, TLS handshakes
//! and handshakes that resumed an earlier session, and writes the three numbers to a file
//! the bench polls. Its certificate is signed by a CA made at start (written out for the
//! relays under test to trust) and names `name` and the listening IP address.
//!
//! TLS 1.3 session tickets and a session cache are on, as on a real receiver, so a relay
//! that keeps its client sessions resumes instead of doing a full handshake.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::server::ServerSessionMemoryCache;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Longest command or data line read; a longer one ends the session.
const MAX_LINE: u64 = 64 * 1024;
/// Idle time after which a session is dropped.
const IDLE: Duration = Duration::from_secs(300);

/// How the sink runs.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// Address to listen on (port 0: any free port, printed at start).
    pub listen: SocketAddr,
    /// Host name in the greeting and the certificate.
    pub name: String,
    /// Where the CA certificate (PEM) is written.
    pub ca_out: PathBuf,
    /// Where "MESSAGES HANDSHAKES RESUMED" is written, every 50 ms while it changes.
    pub counts: PathBuf,
}

/// What the sink has seen since it started.
#[derive(Debug, Default)]
pub struct Counts {
    messages: AtomicU64,
    handshakes: AtomicU64,
    resumed: AtomicU64,
}

impl Counts {
    /// The counts as the file holds them.
    pub fn line(&self) -> String {
        format!(
            "{} {} {}\n",
            self.messages.load(Ordering::Relaxed),
            self.handshakes.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed)
        )
    }
}

/// A CA and a server certificate it signed for `name` and `ip`: (CA PEM, chain, key).
fn certificates(
    name: &str,
    ip: std::net::IpAddr,
) -> Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "postrider-sink bench CA");
    let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    // ECDSA P-256, rcgen's default: the key type most receivers offer first.
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec![name.to_owned(), ip.to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, name);
    let cert = leaf.signed_by(&key, &issuer)?;
    let chain = vec![cert.der().clone(), issuer.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((issuer.pem(), chain, key))
}

/// Binds, writes the CA file and returns the bound address and the future that serves.
pub async fn bind(
    opts: SinkOptions,
) -> Result<(SocketAddr, impl std::future::Future<Output = Result<()>>)> {
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let (ca_pem, chain, key) = certificates(&opts.name, addr.ip())?;
    std::fs::write(&opts.ca_out, ca_pem)
        .with_context(|| format!("writing {}", opts.ca_out.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.session_storage = ServerSessionMemoryCache::new(16 * 1024);
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let counts = Arc::new(Counts::default());
    let serve = serve(listener, acceptor, counts, opts);
    Ok((addr, serve))
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    counts: Arc<Counts>,
    opts: SinkOptions,
) -> Result<()> {
    tokio::spawn(write_counts(counts.clone(), opts.counts.clone()));
    let name: Arc<str> = opts.name.into();
    loop {
        let (stream, _) = listener.accept().await?;
        let (acceptor, counts, name) = (acceptor.clone(), counts.clone(), name.clone());
        tokio::spawn(async move {
            // A session that fails only ends itself: the bench sees it in the counts.
            let _ = connection(stream, acceptor, &counts, &name).await;
        });
    }
}

async fn write_counts(counts: Arc<Counts>, path: PathBuf) {
    let tmp = path.with_extension("tmp");
    let mut last = String::new();
    loop {
        let line = counts.line();
        if line != last
            && std::fs::write(&tmp, &line).is_ok()
            && std::fs::rename(&tmp, &path).is_ok()
        {
            last = line;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connection(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    counts: &Counts,
    name: &str,
) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut plain = BufReader::new(stream);
    plain
        .get_mut()
        .write_all(format!("220 {name} ESMTP postrider-sink\r\n").as_bytes())
        .await?;
    if session(&mut plain, counts, name, false).await? != Next::StartTls {
        return Ok(());
    }
    if !plain.buffer().is_empty() {
        // Commands sent before the handshake would be read as if they came over TLS.
        plain
            .get_mut()
            .write_all(b"554 5.5.1 Commands pipelined after STARTTLS\r\n")
            .await?;
        return Ok(());
    }
    plain.get_mut().write_all(b"220 2.0.0 Ready\r\n").await?;
    let tls = tokio::time::timeout(IDLE, acceptor.accept(plain.into_inner()))
        .await
        .context("TLS handshake timed out")??;
    counts.handshakes.fetch_add(1, Ordering::Relaxed);
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        counts.resumed.fetch_add(1, Ordering::Relaxed);
    }
    session(&mut BufReader::new(tls), counts, name, true).await?;
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Next {
    Closed,
    StartTls,
}

/// Reads a line of at most [`MAX_LINE`] bytes into `buf`; false at the end of the stream.
async fn line<S: AsyncRead + Unpin>(io: &mut BufReader<S>, buf: &mut Vec<u8>) -> Result<bool> {
    buf.clear();
    let n = tokio::time::timeout(IDLE, (&mut *io).take(MAX_LINE).read_until(b'\n', buf))
        .await
        .context("idle")??;
    if n as u64 == MAX_LINE && !buf.ends_with(b"\n") {
        bail!("line too long");
    }
    Ok(n > 0)
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    counts: &Counts,
    name: &str,
    tls: bool,
) -> Result<Next> {
    let mut buf = Vec::with_capacity(1024);
    while line(io, &mut buf).await? {
        let cmd = buf.get(..4).unwrap_or(&buf).to_ascii_uppercase();
        let ehlo;
        let reply: &[u8] = match &cmd[..] {
            b"EHLO" => {
                let starttls = if tls { "" } else { "250-STARTTLS\r\n" };
                ehlo = format!("250-{name}\r\n250-PIPELINING\r\n{starttls}250 8BITMIME\r\n");
                ehlo.as_bytes()
            }
            b"HELO" | b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => b"250 2.0.0 Ok\r\n",
            b"STAR" if !tls && buf.eq_ignore_ascii_case(b"STARTTLS\r\n") => {
                return Ok(Next::StartTls);
            }
            b"DATA" => {
                io.get_mut().write_all(b"354 End data with .\r\n").await?;
                loop {
                    if !line(io, &mut buf).await? {
                        return Ok(Next::Closed);
                    }
                    if buf == b".\r\n" || buf == b".\n" {
                        break;
                    }
                }
                counts.messages.fetch_add(1, Ordering::Relaxed);
                b"250 2.0.0 Ok: discarded\r\n"
            }
            b"QUIT" => {
                io.get_mut().write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(Next::Closed);
            }
            _ => b"502 5.5.2 Not implemented\r\n",
        };
        // Replies to pipelined commands go out together, once no more input is waiting.
        io.get_mut().write_all(reply).await?;
        if io.buffer().is_empty() {
            io.get_mut().flush().await?;
        }
    }
    Ok(Next::Closed)
}
