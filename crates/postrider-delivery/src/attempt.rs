//! One delivery attempt of one message to one destination.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_dns::{Dns, DnsError, SecureDns};
use postrider_smtp::client::{
    ClientConfig, ClientEvent, ClientSession, ConnectionFailure, Credentials, OutboundMessage,
    RcptOutcome, RcptResult, TlsPolicy,
};
use postrider_smtp::reply::Reply;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info};

use crate::resolve::{ResolveError, mail_hosts, secure_mail_hosts};
use crate::sts::MtaSts;
use postrider_mta_sts::{Mode, Policy};
use postrider_tls_roots::{RootsError, TrustRoots};
use postrider_tlsrpt::{Failure, PolicyType, ResultType};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The MX hosts of this domain, on the SMTP port.
    Mx {
        /// Recipient domain.
        domain: String,
        /// TLS policy.
        tls: TlsPolicy,
        /// Roots for `verify` other than the system store (a `ca_file`).
        roots: Option<TrustRoots>,
    },
    /// A fixed relay host (smarthost).
    Relay {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
        /// TLS policy.
        tls: TlsPolicy,
        /// Roots for `verify` other than the system store (a `ca_file`).
        roots: Option<TrustRoots>,
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
    /// Local Maildir directories under this root, one per recipient local part.
    Maildir(PathBuf),
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
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// Per recipient.
    pub outcomes: Vec<RcptOutcome>,
    /// `host[ip]` of the server that answered last, if any.
    pub remote: Option<String>,
    /// The TLS policy applied and what became of it with that server, e.g.
    /// "verify: TLSv1.3 TLS13_AES_256_GCM_SHA384, certificate verified"; `None` for LMTP
    /// and Maildir.
    pub tls: Option<String>,
    /// Each new SMTP connection of the attempt: its TLS policy and what became of TLS.
    pub sessions: Vec<(TlsPolicy, TlsOutcome)>,
    /// For TLS reporting (RFC 8460): each session, or MX host skipped, under a DANE or
    /// MTA-STS policy, and whether it met the policy.
    pub tls_reports: Vec<(postrider_tlsrpt::Policy, Result<(), Failure>)>,
}

/// What became of TLS on one outbound SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsOutcome {
    /// TLS with a certificate verified against trusted roots.
    Verified,
    /// TLS, the certificate not checked (`opportunistic`, `require`).
    Unverified,
    /// No TLS: not offered, or the policy did not ask for it.
    Plaintext,
    /// The handshake or the certificate check failed.
    Failed,
}

impl TlsOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsOutcome::Verified => "verified",
            TlsOutcome::Unverified => "unverified",
            TlsOutcome::Plaintext => "plaintext",
            TlsOutcome::Failed => "failed",
        }
    }
}

/// What one connection's session saw of TLS.
#[derive(Default)]
struct SessionTls {
    /// A new connection was made (not taken from the idle pool).
    fresh: bool,
    /// Version, cipher and certificate check once TLS is up.
    established: Option<String>,
    /// The handshake or the certificate check failed: why, as rustls said.
    error: Option<String>,
    /// Under MTA-STS `testing`: why `enforce` would have refused this session.
    would_fail: Option<String>,
}

/// Delivers messages; shared by all queue workers.
pub struct Deliverer {
    dns: Arc<dyn Dns>,
    /// The validating resolver of `dane`; without one, `dane` is `opportunistic`.
    secure_dns: Option<Arc<dyn SecureDns>>,
    /// The MTA-STS client of `mta-sts` and `auto`; without one, no domain has a policy.
    sts: Option<Arc<MtaSts>>,
    /// When validation through `secure_dns` was last probed, and whether it worked.
    dnssec: std::sync::Mutex<Option<(Instant, bool)>>,
    /// The DANE client configuration of each host and TLSA set, kept so that its session
    /// cache lets the next connection to that host resume (a TLSA change is a new entry).
    dane_configs: std::sync::Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
    options: DeliveryOptions,
    /// For `opportunistic` and `require`.
    unverified: TlsConnector,
    /// For `verify` without a CA file of its own.
    system_roots: TrustRoots,
    /// Connections kept open after a delivery, for the next message to the same place.
    idle: std::sync::Mutex<HashMap<String, Vec<Idle>>>,
}

/// A session's outcomes, and its connection when it can take another message.
type SessionResult = Result<(Vec<RcptOutcome>, Option<(Conn, ClientSession)>), ConnError>;

/// An open connection in the Ready state, waiting for its next message.
struct Idle {
    conn: Conn,
    session: ClientSession,
    since: Instant,
    used: u32,
}

/// How long an idle connection is kept (servers close idle ones after their own timeout).
const IDLE_TIME: Duration = Duration::from_secs(5);
/// Most messages sent over one connection.
const MAX_REUSE: u32 = 100;

fn all(msg: &OutboundMessage, result: &RcptResult) -> Vec<RcptOutcome> {
    msg.recipients
        .iter()
        .map(|r| RcptOutcome {
            recipient: r.address.clone(),
            result: result.clone(),
        })
        .collect()
}

/// What a domain without a usable mail host means for its recipients.
fn unresolved(e: ResolveError) -> RcptResult {
    match e {
        ResolveError::NullMx => RcptResult::Permanent(Reply::local(
            556,
            (5, 1, 10),
            "Recipient domain accepts no mail (null MX)",
        )),
        ResolveError::NxDomain => {
            RcptResult::Permanent(Reply::local(550, (5, 1, 2), "Recipient domain not found"))
        }
        ResolveError::Temporary(e) => RcptResult::Temporary(Reply::local(
            451,
            (4, 4, 3),
            &format!("DNS lookup failed: {e}"),
        )),
    }
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
    /// The server cannot take this message (it lacks SMTPUTF8 or 8BITMIME, or its SIZE
    /// limit is too small); nothing was sent. The client's permanent refusal stands only
    /// if no other host can take the message either: try the next host.
    Unsupported(RcptResult),
    /// STARTTLS failed under opportunistic TLS before a message was sent: try the same
    /// address once more without TLS, then the next host.
    TlsFailed(RcptResult),
    /// The connection failed with a message in flight: its recipients get this.
    InFlight(RcptResult),
    /// A reused connection was closed by the server before it answered anything: nothing
    /// was delivered, so a fresh connection may take the message.
    Stale,
}

/// What one session has done with the message so far.
#[derive(Default)]
struct Progress {
    /// The message was sent and its outcome is not known yet.
    sent: bool,
    /// The per-recipient outcomes reported by the session.
    outcomes: Option<Vec<RcptOutcome>>,
    /// The session refused the message for this peer (a missing extension).
    unsupported: Option<RcptResult>,
    /// The connection was reused from the idle pool.
    reused: bool,
    /// Some reply came back after the message was sent.
    answered: bool,
}

impl Progress {
    /// The session's result once the connection ends; `lost` is for a message in flight
    /// (or for the host, if nothing was sent). Known outcomes always stand: a recipient
    /// the server accepted must never be delivered again.
    fn finish(self, lost: RcptResult) -> Result<Vec<RcptOutcome>, ConnError> {
        if self.reused && !self.answered && self.outcomes.is_none() {
            return Err(ConnError::Stale);
        }
        if let Some(outcomes) = self.outcomes {
            Ok(outcomes)
        } else if let Some(refused) = self.unsupported {
            Err(ConnError::Unsupported(refused))
        } else if self.sent {
            Err(ConnError::InFlight(lost))
        } else {
            Err(ConnError::NextHost(lost))
        }
    }

    /// Nothing was sent yet and nothing is known: another connection may be tried.
    fn untouched(&self) -> bool {
        !self.sent && self.outcomes.is_none() && self.unsupported.is_none()
    }
}

/// DANE client configurations kept (one per host and TLSA set); past it they start anew.
const MAX_DANE_CONFIGS: usize = 1024;

/// How long a probe of DNSSEC validation ([`SecureDns::available`]) holds.
const DNSSEC_PROBE_INTERVAL: Duration = Duration::from_secs(300);

/// The most written under one `reply_timeout`: progress on a slow link resets the timer.
const WRITE_CHUNK: usize = 64 * 1024;

impl Deliverer {
    /// A delivery agent using `dns` for MX and address lookups and `system_roots` (see
    /// [`TrustRoots::system`]) to verify next hops without a CA file of their own.
    pub fn new(
        dns: Arc<dyn Dns>,
        options: DeliveryOptions,
        system_roots: TrustRoots,
    ) -> Result<Deliverer, RootsError> {
        Ok(Deliverer {
            dns,
            secure_dns: None,
            sts: None,
            dnssec: std::sync::Mutex::new(None),
            dane_configs: std::sync::Mutex::new(HashMap::new()),
            options,
            unverified: TlsConnector::from(crate::tls::client_config()?),
            system_roots,
            idle: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// With `dns` (DNSSEC-validating) for the MX, address and TLSA lookups of `dane`.
    pub fn with_secure_dns(mut self, dns: Arc<dyn SecureDns>) -> Deliverer {
        self.secure_dns = Some(dns);
        self
    }

    /// With `sts` to find the MTA-STS policies of `mta-sts` and `auto`.
    pub fn with_mta_sts(mut self, sts: Arc<MtaSts>) -> Deliverer {
        self.sts = Some(sts);
        self
    }

    /// What checks the certificate under `tls`: the destination's roots or the system's for
    /// `verify`, nothing otherwise (a `dane` host without usable TLSA records).
    fn security(&self, tls: TlsPolicy, roots: Option<&TrustRoots>) -> Security {
        let roots = (tls == TlsPolicy::Verify).then(|| roots.unwrap_or(&self.system_roots));
        Security {
            policy: if tls == TlsPolicy::Dane {
                TlsPolicy::Opportunistic
            } else {
                tls
            },
            label: tls,
            connector: roots.map_or_else(|| self.unverified.clone(), |r| r.connector().clone()),
            verified_by: roots.map(|r| Arc::from(r.source())),
            insecure_auth: false,
            audit: None,
            report: None,
        }
    }

    /// How a relay host (named by the config) is reached under `tls`.
    fn plan(&self, tls: TlsPolicy, roots: Option<&TrustRoots>) -> HostPlan {
        match tls {
            // Named by the config, not by DNS: as good as a secure MX.
            TlsPolicy::Dane => HostPlan::PerHost {
                dane: true,
                sts: None,
                sts_failed: None,
                label: tls,
            },
            _ => HostPlan::Fixed(self.security(tls, roots)),
        }
    }

    /// A host's addresses (an IP literal is its own).
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RcptResult> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        self.dns.lookup_ip(host).await.map_err(|e| {
            debug!(host = %host, error = %e, "no address for mail host");
            RcptResult::Temporary(Reply::local(
                451,
                (4, 4, 3),
                &format!("No address for {host}"),
            ))
        })
    }

    /// A host's addresses and TLS under `plan`: DANE where the plan allows it and the host
    /// has usable TLSA records, else the MTA-STS policy, else opportunistic TLS (labelled
    /// with the configured level, or `opportunistic` under `auto`). An MX host that an
    /// `enforce` policy does not name is skipped (4.7.5).
    async fn host_setup(
        &self,
        host: &str,
        port: u16,
        plan: &HostPlan,
    ) -> Result<(Vec<IpAddr>, Security), Skipped> {
        let (dane, sts, label) = match plan {
            HostPlan::Fixed(security) => {
                return Ok((self.addresses(host).await?, security.clone()));
            }
            HostPlan::PerHost {
                dane, sts, label, ..
            } => (*dane, sts.as_ref(), *label),
        };
        let mut found = None;
        if let (true, Some(dns), Err(_)) = (dane, &self.secure_dns, host.parse::<IpAddr>()) {
            match self.dane_setup(&**dns, host, port).await? {
                (ips, Some(security)) => return Ok((ips, security)),
                (ips, None) => found = Some(ips),
            }
        }
        let security = match sts.filter(|p| p.mode != Mode::None) {
            Some(policy) => self.sts_security(policy, host)?,
            None => {
                let mut s = self.security(TlsPolicy::Opportunistic, None);
                s.label = if label == TlsPolicy::Auto {
                    TlsPolicy::Opportunistic
                } else {
                    label
                };
                s
            }
        };
        let ips = match found {
            Some(ips) => ips,
            None => self.addresses(host).await?,
        };
        Ok((ips, security))
    }

    /// TLS towards `host` under an MTA-STS policy in `enforce` or `testing` mode.
    fn sts_security(&self, policy: &Policy, host: &str) -> Result<Security, Skipped> {
        let listed = policy.allows(host);
        let mut security = match policy.mode {
            Mode::Enforce if !listed => {
                info!(host = %host, policy = %policy, "MX host not in the MTA-STS policy, skipped");
                let failure = Failure {
                    result: ResultType::ValidationFailure,
                    receiving_mx_hostname: Some(host.to_owned()),
                    receiving_ip: None,
                };
                return Err(Skipped {
                    reply: RcptResult::Temporary(Reply::local(
                        451,
                        (4, 7, 5),
                        &format!("MX host {host} is not in the recipient domain's MTA-STS policy"),
                    )),
                    report: Some(Box::new((sts_report(policy), Err(failure)))),
                });
            }
            Mode::Enforce => self.security(TlsPolicy::Verify, None),
            Mode::Testing | Mode::None => {
                let mut s = self.security(TlsPolicy::Opportunistic, None);
                s.audit = Some(Arc::new(Audit {
                    roots: self.system_roots.clone(),
                    listed,
                }));
                s
            }
        };
        security.label = TlsPolicy::MtaSts;
        security.report = Some(Arc::new(sts_report(policy)));
        Ok(security)
    }

    /// RFC 7672 section 2.2 for one host: its addresses, and the TLS its TLSA records ask
    /// for, which count only when the host's addresses are DNSSEC-secure (the caller knows
    /// the MX was). `None`: no secure TLSA records, DANE does not apply. A host whose
    /// address or TLSA lookup fails validation is skipped (the next MX, in the end a
    /// deferral); secure TLSA records that are all unusable give TLS without
    /// authentication.
    async fn dane_setup(
        &self,
        dns: &dyn SecureDns,
        host: &str,
        port: u16,
    ) -> Result<(Vec<IpAddr>, Option<Security>), RcptResult> {
        let dnssec_failed = |what: &str, e: DnsError| {
            info!(host = %host, error = %e, "{what} lookup failed for DANE");
            let code = if matches!(e, DnsError::Bogus(_)) {
                (4, 7, 5)
            } else {
                (4, 4, 3)
            };
            RcptResult::Temporary(Reply::local(
                451,
                code,
                &format!("{what} lookup for {host} failed: {e}"),
            ))
        };
        let ips = dns
            .secure_ip(host)
            .await
            .map_err(|e| dnssec_failed("address", e))?;
        if !ips.secure {
            return Ok((ips.records, None));
        }
        let tlsa = dns
            .tlsa(&format!("_{port}._tcp.{host}"))
            .await
            .map_err(|e| dnssec_failed("TLSA", e))?;
        if !tlsa.secure || tlsa.records.is_empty() {
            return Ok((ips.records, None));
        }
        let report = Some(Arc::new(tlsa_report(&tlsa.records)));
        let usable = crate::dane::usable(&tlsa.records);
        if usable.is_empty() {
            // RFC 7672 section 2.2: TLS is still mandatory, without authentication.
            let mut security = self.security(TlsPolicy::Require, None);
            security.label = TlsPolicy::Dane;
            security.report = report;
            return Ok((ips.records, Some(security)));
        }
        let mut described: Vec<String> = usable.iter().map(|r| r.to_string()).collect();
        described.dedup();
        let config = self.dane_config(host, usable).map_err(|e| {
            RcptResult::Temporary(Reply::local(
                451,
                (4, 7, 5),
                &format!("DANE for {host}: {e}"),
            ))
        })?;
        let security = Security {
            policy: TlsPolicy::Verify,
            label: TlsPolicy::Dane,
            connector: TlsConnector::from(config),
            verified_by: Some(format!("TLSA {}", described.join(", ")).into()),
            insecure_auth: false,
            audit: None,
            report,
        };
        Ok((ips.records, Some(security)))
    }

    /// One attempt to deliver `data` (canonical CRLF, no terminating dot) to `dest`.
    pub async fn deliver(&self, dest: &Destination, msg: &OutboundMessage, data: &[u8]) -> Attempt {
        match dest {
            Destination::Mx { domain, tls, roots } => {
                match self.mx_hosts(domain, *tls, roots.as_ref()).await {
                    Ok((hosts, plan)) => {
                        self.try_hosts(&hosts, self.options.smtp_port, plan, None, false, msg, data)
                            .await
                    }
                    Err(e) => Attempt {
                        outcomes: all(msg, &unresolved(e)),
                        ..Attempt::default()
                    },
                }
            }
            Destination::Relay {
                host,
                port,
                tls,
                roots,
                auth,
            } => {
                let mut plan = self.plan(*tls, roots.as_ref());
                if let HostPlan::Fixed(security) = &mut plan {
                    // The config allows this only with the operator's `insecure_auth`.
                    security.insecure_auth = auth.is_some() && *tls != TlsPolicy::Verify;
                }
                self.try_hosts(
                    std::slice::from_ref(host),
                    *port,
                    plan,
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
                    HostPlan::Fixed(self.security(TlsPolicy::None, None)),
                    None,
                    true,
                    msg,
                    data,
                )
                .await
            }
            Destination::Maildir(root) => {
                let remote = Some(format!("maildir:{}", root.display()));
                let (root, host) = (root.clone(), self.options.helo_name.clone());
                let (owned, data) = (msg.clone(), data.to_vec());
                let written = tokio::task::spawn_blocking(move || {
                    crate::maildir::deliver(&root, &host, &owned, &data)
                })
                .await;
                let outcomes = written.unwrap_or_else(|e| {
                    all(
                        msg,
                        &RcptResult::Temporary(Reply::local(
                            451,
                            (4, 3, 0),
                            &format!("Maildir delivery failed: {e}"),
                        )),
                    )
                });
                Attempt {
                    outcomes,
                    remote,
                    ..Attempt::default()
                }
            }
            Destination::LmtpUnix(path) => {
                let config = self.client_config(TlsPolicy::None, None, true);
                let remote = Some(format!("unix:{}", path.display()));
                match tokio::time::timeout(self.options.connect_timeout, UnixStream::connect(path))
                    .await
                {
                    Ok(Ok(stream)) => match self
                        .session(
                            Conn::Unix(stream),
                            None,
                            config,
                            &self.security(TlsPolicy::None, None),
                            "localhost",
                            msg,
                            data,
                            &mut SessionTls::default(),
                        )
                        .await
                    {
                        Ok((outcomes, open)) => {
                            if let Some((conn, session)) = open {
                                self.close(conn, session).await;
                            }
                            Attempt {
                                outcomes,
                                remote,
                                ..Attempt::default()
                            }
                        }
                        Err(
                            ConnError::NextHost(r)
                            | ConnError::Unsupported(r)
                            | ConnError::TlsFailed(r)
                            | ConnError::InFlight(r),
                        ) => Attempt {
                            outcomes: all(msg, &r),
                            remote,
                            ..Attempt::default()
                        },
                        Err(ConnError::Stale) => Attempt {
                            outcomes: all(
                                msg,
                                &RcptResult::Temporary(Reply::local(
                                    451,
                                    (4, 4, 2),
                                    "Connection closed",
                                )),
                            ),
                            remote,
                            ..Attempt::default()
                        },
                    },
                    _ => Attempt {
                        outcomes: all(
                            msg,
                            &RcptResult::Temporary(Reply::local(
                                451,
                                (4, 4, 1),
                                "LMTP socket not reachable",
                            )),
                        ),
                        remote,
                        ..Attempt::default()
                    },
                }
            }
        }
    }

    /// `domain`'s mail hosts, and how to reach them under `tls`: for `dane` and `auto`
    /// from the validating resolver, with whether the MX records were secure; for
    /// `mta-sts` and `auto` with the domain's policy.
    async fn mx_hosts(
        &self,
        domain: &str,
        tls: TlsPolicy,
        roots: Option<&TrustRoots>,
    ) -> Result<(Vec<String>, HostPlan), ResolveError> {
        let (dane, sts) = match tls {
            TlsPolicy::Dane => (true, false),
            TlsPolicy::MtaSts => (false, true),
            TlsPolicy::Auto => (true, true),
            _ => return Ok((mail_hosts(&*self.dns, domain).await?, self.plan(tls, roots))),
        };
        let (hosts, dane) = match (&self.secure_dns, dane) {
            // `auto` does DANE only where validation works at all: behind nameservers that
            // do not serve DNSSEC every answer would be bogus and no mail would leave.
            // `dane` itself insists.
            (Some(dns), true) if tls == TlsPolicy::Dane || self.dnssec_available(&**dns).await => {
                secure_mail_hosts(&**dns, domain).await?
            }
            _ => (mail_hosts(&*self.dns, domain).await?, false),
        };
        let (sts, sts_failed) = match (&self.sts, sts) {
            (Some(client), true) => client.lookup(domain).await,
            _ => (None, None),
        };
        Ok((
            hosts,
            HostPlan::PerHost {
                dane,
                sts,
                sts_failed: sts_failed.map(|e| e.result_type()),
                label: tls,
            },
        ))
    }

    /// The client configuration authenticating `host` by `usable` TLSA records: the one
    /// made before for the same host and records (its sessions resume), else a new one.
    fn dane_config(
        &self,
        host: &str,
        usable: Vec<postrider_dns::Tlsa>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let key = format!("{host}|{:?}", tlsa_report(&usable).strings);
        let mut configs = self.dane_configs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = configs.get(&key) {
            return Ok(Arc::clone(config));
        }
        if configs.len() >= MAX_DANE_CONFIGS {
            configs.clear();
        }
        let config = crate::dane::DaneVerifier::client_config(usable)?;
        configs.insert(key, Arc::clone(&config));
        Ok(config)
    }

    /// Whether DNSSEC validation works through the configured nameservers
    /// ([`SecureDns::available`]), probed again after [`DNSSEC_PROBE_INTERVAL`]; a change is
    /// logged.
    async fn dnssec_available(&self, dns: &dyn SecureDns) -> bool {
        let last = *self.dnssec.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, works)) = last
            && at.elapsed() < DNSSEC_PROBE_INTERVAL
        {
            return works;
        }
        let works = dns.available().await.unwrap_or(false);
        *self.dnssec.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), works));
        match (last.map(|(_, w)| w), works) {
            (Some(true), true) | (Some(false), false) => {}
            (_, true) => info!("DNSSEC validation works: tls = \"auto\" uses DANE"),
            (_, false) => tracing::warn!(
                "DNSSEC validation does not work through the configured nameservers (the root \
                 zone does not validate): tls = \"auto\" goes on without DANE (MTA-STS, else \
                 opportunistic) and tls = \"dane\" defers"
            ),
        }
        works
    }

    fn client_config(&self, tls: TlsPolicy, auth: Option<Credentials>, lmtp: bool) -> ClientConfig {
        ClientConfig {
            helo_name: self.options.helo_name.clone(),
            lmtp,
            tls,
            auth,
        }
    }

    /// Tries each host's addresses in order until one takes the message.
    ///
    /// If none does, the recipients get the last host's failure; but a host that cannot
    /// take this message (a missing extension) makes it bounce only if no host failed
    /// temporarily: that one may take it later.
    #[allow(clippy::too_many_arguments)]
    async fn try_hosts(
        &self,
        hosts: &[String],
        port: u16,
        plan: HostPlan,
        auth: Option<Credentials>,
        lmtp: bool,
        msg: &OutboundMessage,
        data: &[u8],
    ) -> Attempt {
        let mut last = RcptResult::Temporary(Reply::local(451, (4, 4, 1), "No mail host answered"));
        let mut temporary = None;
        let mut unsupported = None;
        let mut remote = None;
        let mut tls = None;
        let mut sessions = Vec::new();
        let mut tls_reports = Vec::new();
        if let HostPlan::PerHost {
            sts_failed: Some(result),
            ..
        } = &plan
        {
            let policy = postrider_tlsrpt::Policy {
                policy_type: PolicyType::Sts,
                strings: Vec::new(),
                mx_host: Vec::new(),
            };
            let failure = Failure {
                result: *result,
                receiving_mx_hostname: None,
                receiving_ip: None,
            };
            tls_reports.push((policy, Err(failure)));
        }
        for host in hosts {
            let (addrs, security) = match self.host_setup(host, port, &plan).await {
                Ok(found) => found,
                Err(Skipped { reply, report }) => {
                    tls_reports.extend(report.map(|r| *r));
                    last = reply;
                    temporary = Some(last.clone());
                    continue;
                }
            };
            if msg.require_tls && !lmtp && security.verified_by.is_none() {
                // RFC 8689 section 4.2.1: only over TLS authenticated by DANE, MTA-STS or
                // verified roots; another host may have it, else the message bounces.
                info!(host = %host, policy = security.label.name(), "REQUIRETLS message, TLS to this host would not be authenticated");
                unsupported = Some(RcptResult::Permanent(Reply::local(
                    550,
                    (5, 7, 10),
                    &format!(
                        "REQUIRETLS: TLS with {host} would not be authenticated ({})",
                        security.label.name()
                    ),
                )));
                continue;
            }
            for ip in addrs {
                let addr = SocketAddr::new(ip, port);
                remote = Some(format!("{host}[{ip}]:{port}"));
                let mut now = security.clone();
                loop {
                    let config = self.client_config(now.policy, auth.clone(), lmtp);
                    let mut seen = SessionTls::default();
                    let result = self
                        .connect(addr, host, config, &now, msg, data, &mut seen)
                        .await;
                    if !lmtp {
                        if seen.fresh {
                            sessions.push((now.label, now.outcome(&seen)));
                            if let Some(policy) = &now.report {
                                let result = now.report(&seen, host, ip);
                                tls_reports.push(((**policy).clone(), result));
                            }
                        }
                        tls = Some(security.summary(seen.established));
                    }
                    match result {
                        Ok(outcomes) => {
                            return Attempt {
                                outcomes,
                                remote,
                                tls,
                                sessions,
                                tls_reports,
                            };
                        }
                        Err(ConnError::InFlight(r)) => {
                            return Attempt {
                                outcomes: all(msg, &r),
                                remote,
                                tls,
                                sessions,
                                tls_reports,
                            };
                        }
                        Err(ConnError::TlsFailed(r)) if now.policy == TlsPolicy::Opportunistic => {
                            // Opportunistic TLS must not stop the mail: once more in plaintext.
                            info!(host = %host, %addr, result = ?r, "STARTTLS failed, retrying without TLS");
                            now = self.security(TlsPolicy::None, None);
                            now.label = security.label;
                        }
                        Err(ConnError::Unsupported(r)) => {
                            info!(host = %host, %addr, result = ?r, "host cannot take the message, trying the next host");
                            unsupported = Some(r);
                            break;
                        }
                        Err(ConnError::Stale) => break,
                        Err(ConnError::NextHost(r) | ConnError::TlsFailed(r)) => {
                            info!(host = %host, %addr, result = ?r, "host failed before the message, trying the next host");
                            if matches!(r, RcptResult::Temporary(_)) {
                                temporary = Some(r.clone());
                            }
                            last = r;
                            break;
                        }
                    }
                }
            }
        }
        let result = match unsupported {
            Some(refused) => temporary.unwrap_or(refused),
            None => last,
        };
        Attempt {
            outcomes: all(msg, &result),
            remote,
            tls,
            sessions,
            tls_reports,
        }
    }

    /// Takes an idle connection for `key`, dropping the expired ones.
    fn take_idle(&self, key: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Expired connections of every destination go (dropping closes them).
        idle.retain(|_, list| {
            list.retain(|i| i.since.elapsed() < IDLE_TIME);
            !list.is_empty()
        });
        let list = idle.get_mut(key)?;
        let found = list.pop();
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Sends over a reused connection when one is idle, else connects to `addr`; keeps
    /// the connection for the next message when the session ends Ready.
    #[allow(clippy::too_many_arguments)]
    async fn connect(
        &self,
        addr: SocketAddr,
        host: &str,
        config: ClientConfig,
        security: &Security,
        msg: &OutboundMessage,
        data: &[u8],
        seen: &mut SessionTls,
    ) -> Result<Vec<RcptOutcome>, ConnError> {
        // A connection is reused only under the same policy, roots and credentials, for
        // the same name (the one its certificate was checked against).
        let key = format!(
            "{addr}|{host}|{:?}|{:?}|{}|{}|{}",
            config.tls,
            security.label,
            security.verified_by.as_deref().unwrap_or(""),
            config.auth.as_ref().map_or("", |a| a.username.as_str()),
            config.lmtp
        );
        while let Some(idle) = self.take_idle(&key) {
            debug!(host = %host, %addr, used = idle.used, "reusing connection");
            match self
                .session(
                    idle.conn,
                    Some(idle.session),
                    config.clone(),
                    security,
                    host,
                    msg,
                    data,
                    seen,
                )
                .await
            {
                Err(ConnError::Stale) => continue,
                result => return self.keep(key, result, idle.used + 1),
            }
        }
        let stream = match tokio::time::timeout(
            self.options.connect_timeout,
            TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(host = %host, %addr, error = %e, "connect failed");
                return Err(ConnError::NextHost(RcptResult::Temporary(Reply::local(
                    451,
                    (4, 4, 1),
                    &format!("Connection to {host} failed"),
                ))));
            }
            Err(_) => {
                return Err(ConnError::NextHost(RcptResult::Temporary(Reply::local(
                    451,
                    (4, 4, 1),
                    &format!("Connection to {host} timed out"),
                ))));
            }
        };
        let _ = stream.set_nodelay(true);
        seen.fresh = true;
        let result = self
            .session(
                Conn::Plain(stream),
                None,
                config,
                security,
                host,
                msg,
                data,
                seen,
            )
            .await;
        self.keep(key, result, 1)
    }

    /// Ends a Ready session politely: QUIT, then close.
    async fn close(&self, mut conn: Conn, mut session: ClientSession) {
        session.quit();
        let _ = conn
            .write_all(&session.take_output(), Duration::from_secs(5))
            .await;
        conn.shutdown().await;
    }

    /// Puts a connection that ended Ready back into the idle pool.
    fn keep(
        &self,
        key: String,
        result: SessionResult,
        used: u32,
    ) -> Result<Vec<RcptOutcome>, ConnError> {
        let (outcomes, open) = result?;
        if let Some((conn, session)) = open
            && used < MAX_REUSE
        {
            let idle = Idle {
                conn,
                session,
                since: Instant::now(),
                used,
            };
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default()
                .push(idle);
        }
        Ok(outcomes)
    }

    /// Drives one SMTP/LMTP session for one message, on a new connection or on a `reused`
    /// one already Ready. Returns the outcomes, and the connection if it can take another
    /// message (the caller pools it; otherwise it was closed with QUIT); `seen` gets the
    /// TLS parameters once TLS is up.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        mut conn: Conn,
        reused: Option<ClientSession>,
        config: ClientConfig,
        security: &Security,
        host: &str,
        msg: &OutboundMessage,
        data: &[u8],
        seen: &mut SessionTls,
    ) -> SessionResult {
        // A failed STARTTLS may be retried in plaintext, except with AUTH: credentials
        // never go without TLS, so that retry could not succeed.
        let tls_fallback = config.tls == TlsPolicy::Opportunistic && config.auth.is_none();
        let limit = self.options.reply_timeout;
        let mut progress = Progress::default();
        security.observe(&conn, host, seen);
        let mut session = match reused {
            Some(mut session) => {
                session.send(msg, data).map_err(|_| ConnError::Stale)?;
                progress.sent = true;
                progress.reused = true;
                session
            }
            None => ClientSession::new(config),
        };
        let mut buf = vec![0u8; 16 * 1024];
        let mut ended = false;
        let local_fail = |text: &str| RcptResult::Temporary(Reply::local(451, (4, 4, 2), text));
        loop {
            while let Some(event) = session.poll_event() {
                match event {
                    ClientEvent::StartTls => {
                        // Only before the first message: nothing is in flight.
                        if conn.write_all(&session.take_output(), limit).await.is_err() {
                            return Err(ConnError::NextHost(local_fail("Connection lost")));
                        }
                        conn = match conn.upgrade(&security.connector, host, limit).await {
                            Ok(conn) => conn,
                            Err(e) => {
                                let r = if security.policy.mandatory() {
                                    // RFC 3463 X.7.5: cryptographic failure.
                                    RcptResult::Temporary(Reply::local(
                                        451,
                                        (4, 7, 5),
                                        &format!(
                                            "TLS with {host} failed ({}): {e}",
                                            security.label.name()
                                        ),
                                    ))
                                } else {
                                    local_fail(&format!("TLS handshake failed: {e}"))
                                };
                                seen.error = Some(e.clone());
                                return Err(if tls_fallback {
                                    ConnError::TlsFailed(r)
                                } else {
                                    ConnError::NextHost(r)
                                });
                            }
                        };
                        security.observe(&conn, host, seen);
                        session
                            .tls_established()
                            .map_err(|_| ConnError::NextHost(local_fail("TLS state error")))?;
                    }
                    ClientEvent::Ready if progress.untouched() => {
                        session
                            .send(msg, data)
                            .map_err(|_| ConnError::NextHost(local_fail("Client state error")))?;
                        progress.sent = true;
                    }
                    ClientEvent::Ready => match progress.outcomes.take() {
                        // Done, and the connection can take another message.
                        Some(outcomes) if !progress.sent => {
                            return Ok((outcomes, Some((conn, session))));
                        }
                        other => {
                            progress.outcomes = other;
                            session.quit();
                        }
                    },
                    ClientEvent::Delivered(result) => {
                        progress.outcomes = Some(result);
                        progress.sent = false;
                    }
                    ClientEvent::Unsupported(result) => {
                        // Every recipient has the same local refusal.
                        progress.unsupported = result.into_iter().next().map(|o| o.result);
                        progress.sent = false;
                    }
                    ClientEvent::Failed(f) => {
                        if f.stage == "starttls" && tls_fallback && progress.untouched() {
                            return Err(ConnError::TlsFailed(failure_result(&f)));
                        }
                        return progress.finish(failure_result(&f)).map(|o| (o, None));
                    }
                    ClientEvent::Closed => {}
                }
            }
            let out = session.take_output();
            if !out.is_empty() && conn.write_all(&out, limit).await.is_err() {
                return progress
                    .finish(local_fail("Connection lost while sending"))
                    .map(|o| (o, None));
            }
            if session.is_closed() {
                conn.shutdown().await;
                return progress
                    .finish(local_fail("Connection closed"))
                    .map(|o| (o, None));
            }
            if ended {
                // The session reports EOF and timeouts itself; this is only a safeguard.
                return progress
                    .finish(local_fail("Connection closed by the server"))
                    .map(|o| (o, None));
            }
            match tokio::time::timeout(limit, conn.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    progress.answered |= progress.sent;
                    session.feed(&buf[..n]);
                }
                // EOF or a broken connection: the session reports the replies already
                // received (LMTP outcomes of some recipients), then fails.
                Ok(_) => {
                    session.peer_closed();
                    ended = true;
                }
                Err(_) => {
                    session.timed_out();
                    ended = true;
                }
            }
        }
    }
}

/// How the hosts of a destination are reached.
enum HostPlan {
    /// One TLS setup for every host.
    Fixed(Security),
    /// Decided per host: DANE, then the MTA-STS policy, then opportunistic TLS.
    PerHost {
        /// DANE applies: the MX RRset was DNSSEC-secure (a relay host named by the config
        /// counts as such); each host's own TLSA records decide.
        dane: bool,
        /// The recipient domain's MTA-STS policy.
        sts: Option<Policy>,
        /// Why fetching the policy failed, if it did (reported, RFC 8460).
        sts_failed: Option<ResultType>,
        /// The configured level, for logs where neither applies.
        label: TlsPolicy,
    },
}

/// A host not tried: why, and what TLS reporting counts of it.
struct Skipped {
    reply: RcptResult,
    report: Option<Box<(postrider_tlsrpt::Policy, Result<(), Failure>)>>,
}

impl From<RcptResult> for Skipped {
    fn from(reply: RcptResult) -> Skipped {
        Skipped {
            reply,
            report: None,
        }
    }
}

/// MTA-STS `testing` mode: the certificate is checked after the handshake, and what would
/// have failed under `enforce` is logged, without stopping the mail.
struct Audit {
    /// The roots `enforce` would verify against.
    roots: TrustRoots,
    /// The MX host is named by the policy.
    listed: bool,
}

/// The TLS of a connection and what enforces it.
#[derive(Clone)]
struct Security {
    /// What the session is told: is STARTTLS mandatory.
    policy: TlsPolicy,
    /// The policy as configured, for logs and metrics (`dane` for every DANE host).
    label: TlsPolicy,
    /// Does the handshake; it verifies the certificate only with `verified_by`.
    connector: TlsConnector,
    /// What the certificate is checked against: roots, or TLSA records.
    verified_by: Option<Arc<str>>,
    /// Credentials go over TLS that is not verified, as the operator chose.
    insecure_auth: bool,
    /// What `enforce` would have checked, under an MTA-STS policy in `testing` mode.
    audit: Option<Arc<Audit>>,
    /// The DANE or MTA-STS policy sessions are reported under (RFC 8460).
    report: Option<Arc<postrider_tlsrpt::Policy>>,
}

/// The report's result type for a certificate or handshake failure, from rustls's words.
fn classify(error: &str) -> ResultType {
    if error.contains("NotValidForName") {
        ResultType::CertificateHostMismatch
    } else if error.contains("Expired") {
        ResultType::CertificateExpired
    } else if error.contains("UnknownIssuer") || error.contains("no trusted roots") {
        ResultType::CertificateNotTrusted
    } else {
        ResultType::ValidationFailure
    }
}

/// An MTA-STS policy as TLS reports name it: its lines, and its MX patterns.
fn sts_report(policy: &Policy) -> postrider_tlsrpt::Policy {
    let mut strings = vec![
        "version: STSv1".to_owned(),
        format!("mode: {}", policy.mode.as_str()),
    ];
    strings.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    strings.push(format!("max_age: {}", policy.max_age));
    postrider_tlsrpt::Policy {
        policy_type: PolicyType::Sts,
        strings,
        mx_host: policy.mx.clone(),
    }
}

/// TLSA records as TLS reports name them: "3 1 1 HEX".
fn tlsa_report(records: &[postrider_dns::Tlsa]) -> postrider_tlsrpt::Policy {
    postrider_tlsrpt::Policy {
        policy_type: PolicyType::Tlsa,
        strings: records
            .iter()
            .map(|r| {
                let hex: String = r.data.iter().map(|b| format!("{b:02X}")).collect();
                format!("{r} {hex}")
            })
            .collect(),
        mx_host: Vec::new(),
    }
}

impl Security {
    /// Notes in `seen` what an established session is, for logs ("TLSv1.3 CIPHER,
    /// certificate verified by ..."), and under MTA-STS `testing` what `enforce` would
    /// have said of it; nothing before TLS.
    fn observe(&self, conn: &Conn, host: &str, seen: &mut SessionTls) {
        let Some((version, cipher)) = conn.tls_params() else {
            return;
        };
        let checked = match (&self.verified_by, &self.audit) {
            (Some(by), _) => format!("verified by {by}"),
            (None, Some(audit)) => {
                let chain = match conn {
                    Conn::Tls(s) => s.get_ref().1.peer_certificates().unwrap_or_default(),
                    Conn::Plain(_) | Conn::Unix(_) => &[],
                };
                seen.would_fail = match (audit.listed, audit.roots.check(chain, host)) {
                    (true, Ok(())) => None,
                    (false, _) => Some("MX host not in the policy".to_owned()),
                    (true, Err(e)) => Some(e),
                };
                match &seen.would_fail {
                    None => "not verified (MTA-STS testing: enforce would deliver)".to_owned(),
                    Some(why) => {
                        info!(host = %host, verdict = %why, "MTA-STS testing mode: enforce would refuse, mail delivered");
                        format!("not verified (MTA-STS testing: enforce would refuse: {why})")
                    }
                }
            }
            (None, None) => "not verified".to_owned(),
        };
        let resumed = if conn.resumed() {
            ", session resumed"
        } else {
            ""
        };
        seen.established = Some(format!(
            "{version} {cipher}, certificate {checked}{resumed}"
        ));
    }

    /// What TLS reporting counts of one connection under a reported policy.
    fn report(&self, seen: &SessionTls, host: &str, ip: IpAddr) -> Result<(), Failure> {
        let result = match (&seen.established, &seen.error, &seen.would_fail) {
            (Some(_), None, None) => return Ok(()),
            (_, Some(why), _) | (Some(_), None, Some(why)) => classify(why),
            // No TLS: under a policy, STARTTLS was missing (testing mode delivered anyway).
            (None, None, _) => ResultType::StarttlsNotSupported,
        };
        Err(Failure {
            result,
            receiving_mx_hostname: Some(host.to_owned()),
            receiving_ip: Some(ip.to_string()),
        })
    }

    /// The result label of one connection's TLS.
    fn outcome(&self, seen: &SessionTls) -> TlsOutcome {
        match (&seen.established, seen.error.is_some()) {
            (_, true) => TlsOutcome::Failed,
            (Some(_), false) if self.verified_by.is_some() => TlsOutcome::Verified,
            (Some(_), false) => TlsOutcome::Unverified,
            // Not offered or refused, where TLS was mandatory: the session failed for it.
            (None, false) if self.policy.mandatory() => TlsOutcome::Failed,
            (None, false) => TlsOutcome::Plaintext,
        }
    }

    /// The policy and what became of it on one connection.
    fn summary(&self, seen: Option<String>) -> String {
        format!(
            "{}{}: {}",
            self.label.name(),
            if self.insecure_auth {
                " (insecure_auth)"
            } else {
                ""
            },
            seen.as_deref().unwrap_or(if self.audit.is_some() {
                "no TLS (MTA-STS testing: enforce would refuse)"
            } else {
                "no TLS"
            })
        )
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
    /// Writes `data` in chunks of [`WRITE_CHUNK`], each within `limit`.
    async fn write_all(&mut self, data: &[u8], limit: Duration) -> std::io::Result<()> {
        for chunk in data.chunks(WRITE_CHUNK) {
            let write = async {
                match self {
                    Conn::Plain(s) => write_to(s, chunk).await,
                    Conn::Tls(s) => write_to(s, chunk).await,
                    Conn::Unix(s) => write_to(s, chunk).await,
                }
            };
            tokio::time::timeout(limit, write).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out")
            })??;
        }
        Ok(())
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => read_from(s, buf).await,
            Conn::Tls(s) => read_from(s, buf).await,
            Conn::Unix(s) => read_from(s, buf).await,
        }
    }

    /// TLS is up on a resumed session (the certificate was checked when it began).
    fn resumed(&self) -> bool {
        match self {
            Conn::Tls(s) => s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            Conn::Plain(_) | Conn::Unix(_) => false,
        }
    }

    /// Version and cipher suite, once TLS is up.
    fn tls_params(&self) -> Option<(String, String)> {
        match self {
            Conn::Tls(s) => Some(crate::tls::session_params(s.get_ref().1)),
            Conn::Plain(_) | Conn::Unix(_) => None,
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
