//! One delivery attempt of one message to one destination.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use postrider_dns::Dns;
use postrider_smtp::client::{
    ClientConfig, ClientEvent, ClientSession, ConnectionFailure, Credentials, OutboundMessage,
    RcptOutcome, RcptResult, TlsWanted,
};
use postrider_smtp::reply::{EnhancedCode, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info};

use crate::resolve::{ResolveError, mail_hosts};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The MX hosts of this domain, on the SMTP port.
    Mx {
        /// Recipient domain.
        domain: String,
        /// TLS policy.
        tls: TlsWanted,
    },
    /// A fixed relay host (smarthost).
    Relay {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
        /// TLS policy.
        tls: TlsWanted,
        /// AUTH credentials, sent only over TLS.
        auth: Option<Credentials>,
    },
    /// LMTP over TCP.
    LmtpTcp {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// LMTP over a unix socket.
    LmtpUnix(PathBuf),
}

/// Settings of the delivery agent.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Our name in EHLO.
    pub helo_name: String,
    /// Port for MX hosts (25; tests use another).
    pub smtp_port: u16,
    /// Connecting, per address.
    pub connect_timeout: Duration,
    /// Waiting for each reply.
    pub reply_timeout: Duration,
}

/// The result of an attempt: one outcome per recipient, in order, and who answered.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Per recipient.
    pub outcomes: Vec<RcptOutcome>,
    /// "host[ip]" of the server that answered last, if any.
    pub remote: Option<String>,
}

/// Delivers messages; shared by all queue workers.
pub struct Deliverer {
    dns: Arc<dyn Dns>,
    options: DeliveryOptions,
    tls: TlsConnector,
}

fn reply(code: u16, e: (u8, u16, u16), text: &str) -> Reply {
    let enhanced = EnhancedCode {
        class: e.0,
        subject: e.1,
        detail: e.2,
    };
    Reply::new(code, Some(enhanced), text)
        .unwrap_or_else(|_| unreachable!("constant reply is valid"))
}

fn all(msg: &OutboundMessage, result: &RcptResult) -> Vec<RcptOutcome> {
    msg.recipients
        .iter()
        .map(|r| RcptOutcome {
            recipient: r.address.clone(),
            result: result.clone(),
        })
        .collect()
}

fn failure_result(f: &ConnectionFailure) -> RcptResult {
    if f.permanent {
        RcptResult::Permanent(f.reply.clone())
    } else {
        RcptResult::Temporary(f.reply.clone())
    }
}

/// Why one connection did not deliver.
enum ConnError {
    /// Could not connect, or the server failed before a message was sent: try the next host.
    NextHost(RcptResult),
    /// The connection failed with a message in flight: its recipients get this.
    InFlight(RcptResult),
}

impl Deliverer {
    /// A delivery agent using `dns` for MX and address lookups.
    pub fn new(dns: Arc<dyn Dns>, options: DeliveryOptions) -> Result<Deliverer, rustls::Error> {
        Ok(Deliverer {
            dns,
            options,
            tls: TlsConnector::from(crate::tls::client_config()?),
        })
    }

    /// One attempt to deliver `data` (canonical CRLF, no terminating dot) to `dest`.
    pub async fn deliver(&self, dest: &Destination, msg: &OutboundMessage, data: &[u8]) -> Attempt {
        match dest {
            Destination::Mx { domain, tls } => match mail_hosts(&*self.dns, domain).await {
                Ok(hosts) => {
                    self.try_hosts(&hosts, self.options.smtp_port, *tls, None, false, msg, data)
                        .await
                }
                Err(ResolveError::NullMx) => Attempt {
                    outcomes: all(
                        msg,
                        &RcptResult::Permanent(reply(
                            556,
                            (5, 1, 10),
                            "Recipient domain accepts no mail (null MX)",
                        )),
                    ),
                    remote: None,
                },
                Err(ResolveError::NxDomain) => Attempt {
                    outcomes: all(
                        msg,
                        &RcptResult::Permanent(reply(550, (5, 1, 2), "Recipient domain not found")),
                    ),
                    remote: None,
                },
                Err(ResolveError::Temporary(e)) => Attempt {
                    outcomes: all(
                        msg,
                        &RcptResult::Temporary(reply(
                            451,
                            (4, 4, 3),
                            &format!("DNS lookup failed: {e}"),
                        )),
                    ),
                    remote: None,
                },
            },
            Destination::Relay {
                host,
                port,
                tls,
                auth,
            } => {
                self.try_hosts(
                    std::slice::from_ref(host),
                    *port,
                    *tls,
                    auth.clone(),
                    false,
                    msg,
                    data,
                )
                .await
            }
            Destination::LmtpTcp { host, port } => {
                self.try_hosts(
                    std::slice::from_ref(host),
                    *port,
                    TlsWanted::None,
                    None,
                    true,
                    msg,
                    data,
                )
                .await
            }
            Destination::LmtpUnix(path) => {
                let config = self.client_config(TlsWanted::None, None, true);
                let remote = Some(format!("unix:{}", path.display()));
                match tokio::time::timeout(self.options.connect_timeout, UnixStream::connect(path))
                    .await
                {
                    Ok(Ok(stream)) => match self
                        .session(Conn::Unix(stream), config, "localhost", msg, data)
                        .await
                    {
                        Ok(outcomes) => Attempt { outcomes, remote },
                        Err(ConnError::NextHost(r) | ConnError::InFlight(r)) => Attempt {
                            outcomes: all(msg, &r),
                            remote,
                        },
                    },
                    _ => Attempt {
                        outcomes: all(
                            msg,
                            &RcptResult::Temporary(reply(
                                451,
                                (4, 4, 1),
                                "LMTP socket not reachable",
                            )),
                        ),
                        remote,
                    },
                }
            }
        }
    }

    fn client_config(&self, tls: TlsWanted, auth: Option<Credentials>, lmtp: bool) -> ClientConfig {
        ClientConfig {
            helo_name: self.options.helo_name.clone(),
            lmtp,
            tls,
            auth,
        }
    }

    /// Tries each host's addresses in order until one takes the message.
    #[allow(clippy::too_many_arguments)]
    async fn try_hosts(
        &self,
        hosts: &[String],
        port: u16,
        tls: TlsWanted,
        auth: Option<Credentials>,
        lmtp: bool,
        msg: &OutboundMessage,
        data: &[u8],
    ) -> Attempt {
        let mut last = RcptResult::Temporary(reply(451, (4, 4, 1), "No mail host answered"));
        let mut remote = None;
        for host in hosts {
            let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.dns.lookup_ip(host).await {
                    Ok(ips) => ips,
                    Err(e) => {
                        debug!(host = %host, error = %e, "no address for mail host");
                        last = RcptResult::Temporary(reply(
                            451,
                            (4, 4, 3),
                            &format!("No address for {host}"),
                        ));
                        continue;
                    }
                },
            };
            for ip in addrs {
                let addr = SocketAddr::new(ip, port);
                remote = Some(format!("{host}[{ip}]:{port}"));
                let stream = match tokio::time::timeout(
                    self.options.connect_timeout,
                    TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        info!(host = %host, %addr, error = %e, "connect failed, trying the next host");
                        last = RcptResult::Temporary(reply(
                            451,
                            (4, 4, 1),
                            &format!("Connection to {host} failed"),
                        ));
                        continue;
                    }
                    Err(_) => {
                        last = RcptResult::Temporary(reply(
                            451,
                            (4, 4, 1),
                            &format!("Connection to {host} timed out"),
                        ));
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let config = self.client_config(tls, auth.clone(), lmtp);
                match self
                    .session(Conn::Plain(stream), config, host, msg, data)
                    .await
                {
                    Ok(outcomes) => return Attempt { outcomes, remote },
                    Err(ConnError::InFlight(r)) => {
                        return Attempt {
                            outcomes: all(msg, &r),
                            remote,
                        };
                    }
                    Err(ConnError::NextHost(r)) => {
                        info!(host = %host, %addr, result = ?r, "host failed before the message, trying the next host");
                        last = r;
                    }
                }
            }
        }
        Attempt {
            outcomes: all(msg, &last),
            remote,
        }
    }

    /// Drives one SMTP/LMTP session: one message, then QUIT.
    async fn session(
        &self,
        mut conn: Conn,
        config: ClientConfig,
        host: &str,
        msg: &OutboundMessage,
        data: &[u8],
    ) -> Result<Vec<RcptOutcome>, ConnError> {
        let mut session = ClientSession::new(config);
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = false;
        let mut outcomes = None;
        let fail = |sent: bool, r: RcptResult| {
            if sent {
                ConnError::InFlight(r)
            } else {
                ConnError::NextHost(r)
            }
        };
        let local_fail = |text: &str| RcptResult::Temporary(reply(451, (4, 4, 2), text));
        loop {
            while let Some(event) = session.poll_event() {
                match event {
                    ClientEvent::StartTls => {
                        conn.write_all(&session.take_output(), self.options.reply_timeout)
                            .await
                            .map_err(|_| fail(sent, local_fail("Connection lost")))?;
                        conn = conn
                            .upgrade(&self.tls, host, self.options.reply_timeout)
                            .await
                            .map_err(|e| {
                                fail(sent, local_fail(&format!("TLS handshake failed: {e}")))
                            })?;
                        session
                            .tls_established()
                            .map_err(|_| fail(sent, local_fail("TLS state error")))?;
                    }
                    ClientEvent::Ready if !sent && outcomes.is_none() => {
                        session
                            .send(msg, data)
                            .map_err(|_| fail(sent, local_fail("Client state error")))?;
                        sent = true;
                    }
                    ClientEvent::Ready => session.quit(),
                    ClientEvent::Delivered(result) => {
                        outcomes = Some(result);
                        sent = false;
                    }
                    ClientEvent::Failed(f) => {
                        if let Some(done) = outcomes {
                            return Ok(done);
                        }
                        return Err(fail(sent, failure_result(&f)));
                    }
                    ClientEvent::Closed => {}
                }
            }
            let out = session.take_output();
            if !out.is_empty() {
                conn.write_all(&out, self.options.reply_timeout)
                    .await
                    .map_err(|_| fail(sent, local_fail("Connection lost while sending")))?;
            }
            if session.is_closed() {
                conn.shutdown().await;
                return outcomes.ok_or_else(|| fail(sent, local_fail("Connection closed")));
            }
            match tokio::time::timeout(self.options.reply_timeout, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => session.feed(&buf[..n]),
                Ok(_) => {
                    // The peer closed: fine once the message is done (QUIT answered or not).
                    return outcomes
                        .ok_or_else(|| fail(sent, local_fail("Connection closed by the server")));
                }
                Err(_) => {
                    return outcomes
                        .ok_or_else(|| fail(sent, local_fail("Timed out waiting for the server")));
                }
            }
        }
    }
}

/// The transport under a client session.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Unix(UnixStream),
}

async fn write_to<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}

async fn read_from<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> std::io::Result<usize> {
    s.read(buf).await
}

impl Conn {
    async fn write_all(&mut self, data: &[u8], limit: Duration) -> std::io::Result<()> {
        let write = async {
            match self {
                Conn::Plain(s) => write_to(s, data).await,
                Conn::Tls(s) => write_to(s, data).await,
                Conn::Unix(s) => write_to(s, data).await,
            }
        };
        tokio::time::timeout(limit, write)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => read_from(s, buf).await,
            Conn::Tls(s) => read_from(s, buf).await,
            Conn::Unix(s) => read_from(s, buf).await,
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
            Conn::Unix(s) => s.shutdown().await,
        };
    }

    async fn upgrade(
        self,
        tls: &TlsConnector,
        host: &str,
        limit: Duration,
    ) -> Result<Conn, String> {
        let Conn::Plain(tcp) = self else {
            return Err("STARTTLS on a connection that is not plain TCP".into());
        };
        let name =
            rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        match tokio::time::timeout(limit, tls.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(Conn::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}
