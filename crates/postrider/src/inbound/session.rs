//! One SMTP connection: drives the sans-IO [`postrider_smtp::server::Session`] over a TCP or
//! TLS stream, answers its decisions (relay control, AUTH, spooling) and enforces timeouts.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use postrider_auth::{AuthOutcome, SpfOutcome};
use postrider_config::{EarlyTalkers, Listener, ListenerKind, SmtpAuth, Timeouts};
use postrider_plugin_host::{ConnInfo, SpfCheck};
use postrider_queue::{Envelope, Incoming, QueueId};
use postrider_smtp::address::{ForwardPath, ReversePath};
use postrider_smtp::deadline::{DeadlineLimits, ReadDeadline};
use postrider_smtp::reply::Reply;
use postrider_smtp::server::{self as smtp, Event, Session, SessionConfig, TimeoutPhase};
use postrider_stages::{
    Credentials, Driver, Handled, MessageReport, MessageResult, Policy, Verified,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::SemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::generation::Generation;
use crate::inbound::Shared;
use crate::inbound::auth_throttle::Gate;
use crate::inbound::email_auth::{self, DmarcAction};
use crate::inbound::message_memory::IN_MEMORY;
use crate::inbound::passwords::Busy;
use crate::inbound::relay_control::check_recipient;

/// What one session gets from the server.
pub struct SessionCtx {
    /// Server-wide state.
    pub shared: Arc<Shared>,
    /// The configuration generation current when the client connected: the session keeps
    /// its limits, timeouts, relay rules, hostname, passwords and plugins to its end.
    pub generation: Arc<Generation>,
    /// The listener that accepted the connection.
    pub listener: Arc<Listener>,
    /// The listener's TLS acceptor, if it has a certificate.
    pub tls: Option<TlsAcceptor>,
    /// The client's address.
    pub peer: SocketAddr,
    /// Our address on this connection.
    pub local: SocketAddr,
    /// The load balancer the connection came through (a PROXY protocol listener); `peer` and
    /// `local` are then the addresses its header named.
    pub balancer: Option<SocketAddr>,
}

/// The transport under the session, upgraded in place by STARTTLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    /// Writes everything, or fails once `limit` passes: a client that stops reading must
    /// not hold its connection slot forever.
    async fn write_all(&mut self, data: &[u8], limit: Duration) -> std::io::Result<()> {
        let write = async {
            match self {
                Conn::Plain(s) => s.write_all(data).await,
                Conn::Tls(s) => {
                    s.write_all(data).await?;
                    s.flush().await
                }
            }
        };
        tokio::time::timeout(limit, write).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading")
        })?
    }

    async fn shutdown(&mut self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            match self {
                Conn::Plain(s) => s.shutdown().await,
                Conn::Tls(s) => s.shutdown().await,
            }
        })
        .await;
    }
}

/// Why a session ended early (logged at debug; the client has been told what it needs).
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("client closed the connection")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    #[error("session state machine misuse: {0}")]
    Misuse(#[from] smtp::Misuse),
}

/// Runs one connection to its end. Never panics on client input; errors end the session.
pub async fn run(ctx: SessionCtx, stream: TcpStream) {
    let id = format!(
        "{:x}-{:x}",
        std::process::id(),
        NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed)
    );
    let span =
        info_span!("session", listener = %ctx.listener.name, client = %ctx.peer, session = %id);
    async move {
        match ctx.balancer {
            Some(balancer) => info!(local = %ctx.local, via = %balancer, "connect"),
            None => info!(local = %ctx.local, "connect"),
        }
        match drive(&ctx, stream, id).await {
            Ok(()) | Err(SessionEnd::Eof) => info!("disconnect"),
            Err(e) => info!(reason = %e, "disconnect"),
        }
    }
    .instrument(span)
    .await
}

fn session_config(ctx: &SessionCtx) -> SessionConfig {
    let config = &ctx.generation.config;
    SessionConfig {
        hostname: config.hostname.clone(),
        max_message_size: config.limits.max_message_size,
        max_recipients: config.limits.max_recipients,
        max_bad_commands: config.limits.max_bad_commands,
        max_header_size: config.limits.max_header_size,
        line_endings: config.limits.line_endings,
        starttls: ctx.tls.is_some(),
        auth: ctx.tls.is_some() && ctx.generation.passwords.is_some(),
        auth_required: ctx.listener.kind.requires_auth(),
        chunking: true,
    }
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

async fn drive(ctx: &SessionCtx, tcp: TcpStream, id: String) -> Result<(), SessionEnd> {
    let timeouts = &ctx.generation.config.timeouts;
    let implicit_tls = ctx.listener.kind == ListenerKind::Submissions;
    let mut policy = RelayPolicy::new(ctx);
    let chain = ctx.generation.pipeline.as_ref().map(|p| p.session(false));
    let mut driver = Driver::new(chain, conn_info(ctx, id), &ctx.generation.config.hostname);
    let mut session = Session::new(session_config(ctx), implicit_tls);
    let mut conn = if implicit_tls {
        let acceptor = ctx
            .tls
            .as_ref()
            .ok_or_else(|| SessionEnd::Handshake("listener has no certificate".into()))?;
        let stream = handshake(ctx, acceptor, tcp).await?;
        driver.tls_established(
            &mut session,
            crate::inbound::tls::describe(stream.get_ref().1),
        )?;
        Conn::Tls(Box::new(stream))
    } else {
        Conn::Plain(tcp)
    };

    let write_limit = Duration::from_secs(timeouts.command);
    let mut buf = vec![0u8; 16 * 1024];
    let early = match early_talk(ctx, &mut conn, &mut buf).await? {
        Some(_) if ctx.generation.config.limits.early_talkers == EarlyTalkers::Reject => {
            let metrics = &ctx.shared.metrics;
            metrics.connection_refused(&ctx.listener.name, "early_talker");
            let line = b"554 5.5.1 Protocol error: talking before the greeting\r\n";
            conn.write_all(line, write_limit).await?;
            conn.shutdown(write_limit).await;
            // Closing with its octets unread would send a reset that can overtake the reply:
            // read what it sends for a moment first.
            let drain = async { while let Ok(1..) = conn.read(&mut buf).await {} };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
            return Ok(());
        }
        other => other,
    };
    driver.connect(&mut session).await?;
    record_runs(ctx, &mut driver);
    if let Some(n) = early {
        session.feed(&buf[..n]);
    }
    let mut force_close = ctx.shared.force_close.clone();
    let mut deadline = ReadDeadline::new(deadline_limits(timeouts), Instant::now());
    let mut replied = true;
    let mut incoming = Incoming::new(ctx.shared.spool.incoming_dir(), IN_MEMORY);
    loop {
        while let Some(mut event) = session.poll_event() {
            let mut reserved = None;
            if let Event::Message(envelope) = &mut event {
                match whole_message(ctx, &mut incoming, envelope).await {
                    Ok(permit) => reserved = permit,
                    Err(e) => {
                        warn!(error = %e, "keeping the message while it arrived failed");
                        driver.end_transaction();
                        let metrics = &ctx.shared.metrics;
                        metrics.transaction(&ctx.listener.name, "tempfailed", None);
                        session.reject(Reply::local(
                            452,
                            (4, 3, 1),
                            "Insufficient system storage",
                        ))?;
                        continue;
                    }
                }
            }
            let handled = driver.handle(&mut session, event, &mut policy).await?;
            drop(reserved);
            record_runs(ctx, &mut driver);
            match handled {
                Handled::Answered | Handled::Close => {}
                Handled::Message(report) => {
                    let metrics = &ctx.shared.metrics;
                    let size =
                        matches!(report.result, MessageResult::Queued(_)).then_some(report.size);
                    metrics.transaction(&ctx.listener.name, report.result.metric(), size);
                    transaction_line(&driver, &report);
                }
                Handled::StartTls => {
                    conn.write_all(&session.take_output(), write_limit).await?;
                    let Some(acceptor) = ctx.tls.as_ref() else {
                        return Err(SessionEnd::Handshake(
                            "STARTTLS without a certificate".into(),
                        ));
                    };
                    let Conn::Plain(tcp) = conn else {
                        return Err(SessionEnd::Handshake("STARTTLS inside TLS".into()));
                    };
                    // Nothing read before the handshake is kept (CVE-2011-0411): the session
                    // discarded its buffer, and we hand the raw socket over without a read buffer.
                    let stream = handshake(ctx, acceptor, tcp).await?;
                    let tls = crate::inbound::tls::describe(stream.get_ref().1);
                    info!(tls = %format!("{} {}", tls.protocol, tls.cipher), "STARTTLS");
                    conn = Conn::Tls(Box::new(stream));
                    driver.tls_established(&mut session, tls)?;
                    // The next command's time starts after the handshake.
                    replied = true;
                }
            }
        }
        let out = session.take_output();
        if !out.is_empty() {
            conn.write_all(&out, write_limit).await?;
            replied = true;
        }
        if session.is_closed() {
            conn.shutdown(write_limit).await;
            return Ok(());
        }
        if *force_close.borrow() {
            session.shutdown();
            continue;
        }
        if session.message_in_progress() {
            incoming.push(session.pending_content());
            session.clear_pending_content();
        } else {
            incoming.clear();
            deadline.message_done();
        }
        let until = deadline.before_read(session.timeout_phase(), replied, Instant::now());
        replied = false;
        tokio::select! {
            read = tokio::time::timeout_at(until.into(), conn.read(&mut buf)) => match read {
                Err(_) => {
                    info!(phase = ?session.timeout_phase(), "timeout");
                    ctx.shared.metrics.timeout(&ctx.listener.name, timeout_name(session.timeout_phase()));
                    session.timed_out();
                }
                Ok(Ok(0)) => return Err(SessionEnd::Eof),
                Ok(Ok(n)) => {
                    deadline.received(n, Instant::now());
                    session.feed(&buf[..n]);
                }
                Ok(Err(e)) => return Err(e.into()),
            },
            _ = force_close.changed() => session.shutdown(),
        }
    }
}

/// Waits `[limits] greet_delay_ms` before the greeting; `Some(n)`: the client sent `n` octets
/// (now in `buf`) in that time, an early talker (logged).
async fn early_talk(
    ctx: &SessionCtx,
    conn: &mut Conn,
    buf: &mut [u8],
) -> Result<Option<usize>, SessionEnd> {
    let delay = Duration::from_millis(ctx.generation.config.limits.greet_delay_ms);
    if delay.is_zero() {
        return Ok(None);
    }
    match tokio::time::timeout(delay, conn.read(buf)).await {
        Err(_) => Ok(None),
        Ok(Ok(0)) => Err(SessionEnd::Eof),
        Ok(Ok(n)) => {
            let policy = ctx.generation.config.limits.early_talkers;
            info!(
                octets = n,
                ?policy,
                "early talker: the client talked before the greeting"
            );
            Ok(Some(n))
        }
        Ok(Err(e)) => Err(e.into()),
    }
}

/// Puts what went to `incoming` while the message arrived back in front of its last octets,
/// once the memory budget has room for it whole; the permit holds that room until dropped.
async fn whole_message<'a>(
    ctx: &'a SessionCtx,
    incoming: &mut Incoming,
    envelope: &mut smtp::Envelope,
) -> std::io::Result<Option<SemaphorePermit<'a>>> {
    let size = incoming.len() + envelope.data.len() as u64;
    let permit = ctx.shared.message_memory.reserve(size).await;
    envelope.data = incoming.finish(std::mem::take(&mut envelope.data))?;
    Ok(permit)
}

/// The session's read deadlines from `[timeouts]`.
fn deadline_limits(timeouts: &Timeouts) -> DeadlineLimits {
    DeadlineLimits {
        command: Duration::from_secs(timeouts.command),
        data_block: Duration::from_secs(timeouts.data_block),
        data_total: Duration::from_secs(timeouts.data_total),
        min_data_rate: timeouts.min_data_rate,
    }
}

/// The metrics label of a read deadline.
fn timeout_name(phase: TimeoutPhase) -> &'static str {
    match phase {
        TimeoutPhase::Command => "command",
        TimeoutPhase::DataBlock => "data",
    }
}

/// Records the plugin calls of the stages just run in the metrics.
fn record_runs(ctx: &SessionCtx, driver: &mut Driver) {
    for run in driver.take_runs() {
        crate::plugins::record_calls(&ctx.shared.metrics, &run.calls);
    }
}

/// A whole TLS handshake, bounded by `[timeouts] tls_handshake` (a client trickling its
/// ClientHello does not extend it); on timeout the connection just closes.
async fn handshake(
    ctx: &SessionCtx,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, SessionEnd> {
    let limit = Duration::from_secs(ctx.generation.config.timeouts.tls_handshake);
    match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(SessionEnd::Handshake(e.to_string())),
        Err(_) => {
            ctx.shared.metrics.timeout(&ctx.listener.name, "tls");
            Err(SessionEnd::Handshake("timed out".into()))
        }
    }
}

/// The relay's own policy around the plugin stages: relay control, SPF, AUTH against the
/// password file, DKIM/ARC/DMARC, signing and the spool.
struct RelayPolicy<'a> {
    ctx: &'a SessionCtx,
    trusted_network: bool,
    /// SPF of the HELO identity, checked at this transaction's MAIL FROM (untrusted clients).
    spf_helo: Option<SpfOutcome>,
    /// SPF of the MAIL FROM identity of this transaction (untrusted clients).
    spf: Option<SpfOutcome>,
    /// DKIM/ARC/DMARC of the current message, for the ARC seal.
    verified: Option<AuthOutcome>,
    /// The id generated for the message being stored.
    next_id: Option<QueueId>,
    /// Failed AUTH attempts on this connection.
    auth_failures: u32,
}

impl<'a> RelayPolicy<'a> {
    fn new(ctx: &'a SessionCtx) -> RelayPolicy<'a> {
        RelayPolicy {
            ctx,
            trusted_network: ctx.generation.config.relay.is_relay_client(ctx.peer.ip()),
            spf_helo: None,
            spf: None,
            verified: None,
            auth_failures: 0,
            next_id: None,
        }
    }

    fn trusted(&self, session: &Session) -> bool {
        self.trusted_network || session.authenticated().is_some()
    }
}

impl Policy for RelayPolicy<'_> {
    fn check_recipient(
        &self,
        session: &Session,
        to: &ForwardPath,
        source_route: bool,
    ) -> Result<(), Reply> {
        let relay = &self.ctx.generation.config.relay;
        let checked = check_recipient(to, source_route, self.trusted(session), relay);
        if checked.is_err() {
            self.ctx
                .shared
                .metrics
                .verdict("rcpt", postrider_metrics::BUILTIN, "reject");
        }
        checked
    }

    async fn check_sender(&mut self, session: &Session, from: &ReversePath) -> Option<SpfCheck> {
        self.spf_helo = None;
        self.spf = None;
        self.verified = None;
        let auth = &self.ctx.generation.auth;
        if !auth.verifies(self.trusted(session)) {
            return None;
        }
        let helo = session.helo().map(|d| d.to_string()).unwrap_or_default();
        let (spf_helo, spf) = auth
            .spf(
                self.ctx.peer.ip(),
                &helo,
                &self.ctx.generation.config.hostname,
                &from.address(),
            )
            .await;
        debug!(spf = %spf.result, domain = %spf.domain, helo_spf = %spf_helo.result, "SPF");
        let check = email_auth::spf_check(&spf);
        self.spf_helo = Some(spf_helo);
        self.spf = Some(spf);
        Some(check)
    }

    async fn authenticate(&mut self, credentials: Credentials<'_>) -> Result<String, Reply> {
        let ctx = self.ctx;
        let config = &ctx.generation.config.smtp_auth;
        let metrics = &ctx.shared.metrics;
        let listener = &ctx.listener.name;
        let user = credentials.username;
        let identity = match acting_as(config, credentials) {
            Ok(identity) => identity,
            Err(reply) => {
                warn!(user = %user, authzid = %credentials.authzid, "AUTH: may not act as authzid");
                metrics.auth(listener, "authzid");
                return Err(reply);
            }
        };
        let Some(passwords) = &ctx.generation.passwords else {
            metrics.auth(listener, "failure");
            return Err(invalid_credentials());
        };
        // Clients of relay_networks (a webmail, say) are counted per user only.
        let client = (!self.trusted_network).then_some(ctx.peer.ip());
        let throttle = &ctx.shared.auth_throttle;
        match throttle.gate(config, client, user).await {
            Gate::Open => {}
            Gate::Delay(delay) => {
                debug!(user = %user, delay_ms = delay.as_millis(), "AUTH: delayed after failures");
                metrics.auth(listener, "delayed");
                tokio::time::sleep(delay).await;
            }
            Gate::Locked => {
                warn!(user = %user, "AUTH: locked after too many failures");
                metrics.auth(listener, "locked");
                return Err(Reply::local(
                    454,
                    (4, 7, 0),
                    "Too many failed authentications; try again later",
                ));
            }
        }
        let checked = ctx
            .shared
            .password_checks
            .check(Arc::clone(passwords), user, credentials.password)
            .await;
        match checked {
            Ok(true) => {
                info!(user = %user, as_user = %identity, "authenticated");
                metrics.auth(listener, "success");
                throttle.succeeded(user).await;
                Ok(identity)
            }
            Ok(false) => {
                warn!(user = %user, "authentication failed");
                metrics.auth(listener, "failure");
                throttle.failed(config, client, user).await;
                self.auth_failures += 1;
                if config.session_failures > 0 && self.auth_failures >= config.session_failures {
                    info!(
                        failures = self.auth_failures,
                        "AUTH: closing after too many failures"
                    );
                    return Err(Reply::local(
                        421,
                        (4, 7, 0),
                        "Too many failed authentications, closing connection",
                    ));
                }
                Err(invalid_credentials())
            }
            Err(Busy) => {
                warn!(user = %user, "AUTH: too many password checks waiting");
                metrics.auth(listener, "busy");
                Err(Reply::local(
                    454,
                    (4, 7, 0),
                    "Temporary authentication failure; try again later",
                ))
            }
        }
    }

    async fn verify(&mut self, session: &Session, envelope: &mut smtp::Envelope) -> Verified {
        let auth = Arc::clone(&self.ctx.generation.auth);
        // RFC 8601 §5: results claiming to be ours can only be forged; drop them.
        if let Cow::Owned(stripped) =
            postrider_auth::strip_forged_results(&envelope.data, auth.authserv_id())
        {
            envelope.data = stripped;
        }
        let mut verified = Verified::default();
        if !auth.verifies(self.trusted(session)) {
            return verified;
        }
        let ip = self.ctx.peer.ip();
        let helo = session.helo().map(|d| d.to_string()).unwrap_or_default();
        let mail_from = envelope.from.address();
        let spf = self.spf.clone().unwrap_or_else(|| SpfOutcome::none(&helo));
        let outcome = auth
            .verify_message(&envelope.data, ip, &helo, &mail_from, &spf)
            .await;
        verified.trace = auth.verifier().authentication_results(
            ip,
            &helo,
            &mail_from,
            self.spf_helo.as_ref(),
            self.spf.as_ref(),
            outcome.as_ref(),
        );
        if let Some(outcome) = &outcome {
            verified.authentication = Some(email_auth::authentication(outcome));
            match auth.dmarc_action(outcome) {
                DmarcAction::Accept => {}
                DmarcAction::Quarantine(reason) => verified.quarantine = Some(reason),
                DmarcAction::Reject(text) => {
                    self.ctx.shared.metrics.verdict("data", "dmarc", "reject");
                    verified.refuse =
                        Some(("dmarc".to_owned(), Reply::local(550, (5, 7, 1), &text)));
                }
            }
        }
        self.verified = outcome;
        verified
    }

    fn finish(&mut self, session: &Session, message: Vec<u8>) -> Vec<u8> {
        let auth = &self.ctx.generation.auth;
        if self.trusted(session) {
            if let Some(signature) = auth.sign(&message) {
                return email_auth::prepend(&signature, message);
            }
        } else if let Some(outcome) = &self.verified
            && let Some(seal) = auth.seal(&message, self.spf_helo.as_ref(), outcome)
        {
            return email_auth::prepend(&seal, message);
        }
        message
    }

    fn queue_id(&mut self) -> String {
        let id = QueueId::generate();
        let text = id.as_str().to_owned();
        self.next_id = Some(id);
        text
    }

    async fn store(&mut self, id: &str, envelope: Envelope, message: Vec<u8>) -> Result<(), Reply> {
        let id = match self.next_id.take() {
            Some(generated) if generated.as_str() == id => generated,
            _ => QueueId::generate(),
        };
        match self
            .ctx
            .shared
            .spool
            .store_as(id.clone(), envelope, message)
            .await
        {
            Ok(()) => {
                self.ctx.shared.queue.submit(id);
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "spool write failed");
                Err(Reply::local(
                    451,
                    (4, 3, 0),
                    "Temporary local problem: could not queue the message",
                ))
            }
        }
    }
}

/// The identity an AUTH as `credentials.username` acts as: the user itself, or an
/// authorization identity `[smtp_auth] act_as` allows it (RFC 4616 §2); else 535 5.7.8.
fn acting_as(config: &SmtpAuth, credentials: Credentials<'_>) -> Result<String, Reply> {
    let (authzid, user) = (credentials.authzid, credentials.username);
    if authzid.is_empty() || authzid == user {
        return Ok(user.to_owned());
    }
    let allowed = config
        .act_as
        .get(user)
        .is_some_and(|ids| ids.iter().any(|id| id == authzid));
    if allowed {
        Ok(authzid.to_owned())
    } else {
        Err(Reply::local(
            535,
            (5, 7, 8),
            "Authentication credentials invalid: not authorized to act as that identity",
        ))
    }
}

/// 535 5.7.8 for a wrong user name or password (the two are not told apart).
fn invalid_credentials() -> Reply {
    Reply::local(535, (5, 7, 8), "Authentication credentials invalid")
}

/// The one line per received message (like Postfix's smtpd and cleanup lines together):
/// the message is what became of it (queued, rejected, tempfailed); the fields are the
/// queue id, sender, recipients, size, TLS, user and every plugin's verdict. The session's
/// span adds the listener, client address and session id.
fn transaction_line(driver: &Driver, report: &MessageReport) {
    let envelope = &report.envelope;
    let to: Vec<&str> = envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    let tls = envelope.client.tls.as_deref().unwrap_or("none");
    let verdicts = driver.verdicts().join(",");
    let user = envelope.client.authenticated.as_deref().unwrap_or("");
    let quarantine = envelope.quarantine.as_deref().unwrap_or("");
    // Only a queued message has a queue id and a quarantine field.
    let queue_id = match &report.result {
        MessageResult::Queued(id) => Some(id.as_str()),
        _ => None,
    };
    info!(
        queue_id = queue_id.map(tracing::field::display),
        from = %envelope.mail_from,
        to = %to.join(","),
        nrcpt = to.len(),
        size = report.size,
        helo = %envelope.client.helo,
        tls = %tls,
        user = %user,
        verdicts = %verdicts,
        quarantine = queue_id.map(|_| tracing::field::display(quarantine)),
        "{}",
        report.result.name()
    );
}

/// The connection as plugins see it when the client connects.
fn conn_info(ctx: &SessionCtx, id: String) -> ConnInfo {
    ConnInfo {
        id,
        client_ip: ctx.peer.ip(),
        client_port: ctx.peer.port(),
        client_name: None,
        listener: ctx.listener.name.clone(),
        server_ip: ctx.local.ip(),
        server_port: ctx.local.port(),
        helo: None,
        tls: None,
        auth_user: None,
    }
}
