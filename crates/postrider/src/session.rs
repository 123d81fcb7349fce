//! One SMTP connection: drives the sans-IO [`postrider_smtp::server::Session`] over a TCP or
//! TLS stream, answers its decisions (relay control, AUTH, spooling) and enforces timeouts.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postrider_config::{LineEndings, Listener, ListenerKind};
use postrider_queue::{ClientInfo, Envelope, Recipient};
use std::sync::atomic::{AtomicU64, Ordering};

use postrider_auth::SpfOutcome;
use postrider_metrics::Metrics;
use postrider_plugin_host::{
    ChainSession, ConnInfo, Decision, EnvelopeInfo, MessageView, PluginCall, SpfCheck, TlsInfo,
    apply_edits,
};
use postrider_smtp::address::{self, ForwardPath};
use postrider_smtp::command::{MailParams, Notify, RcptParams};
use postrider_smtp::server::{self as smtp, Event, Session, SessionConfig, TimeoutPhase};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::email_auth::{self, DmarcAction};
use crate::relay::{check_recipient, static_reply};
use crate::reload::Generation;
use crate::server::Shared;

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

/// Records each plugin call of a stage in the metrics: duration, verdict, failure.
pub fn record_calls(metrics: &Metrics, calls: &[PluginCall]) {
    for call in calls {
        metrics.plugin_call(
            call.stage.name(),
            &call.plugin,
            call.verdict,
            call.failure.as_ref().map(|f| f.kind()),
            call.elapsed,
        );
        if let Some(source) = call.instance {
            metrics.plugin_instance(&call.plugin, source.name());
        }
    }
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
        info!(local = %ctx.local, "connect");
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
        line_endings: match config.limits.line_endings {
            LineEndings::Reject => smtp::LineEndings::Reject,
            LineEndings::Normalize => smtp::LineEndings::Normalize,
        },
        starttls: ctx.tls.is_some(),
        auth: ctx.tls.is_some() && ctx.generation.passwords.is_some(),
        auth_required: ctx.listener.kind.requires_auth(),
        chunking: true,
    }
}

/// Session state the server keeps beside the protocol state machine.
struct Client {
    id: String,
    tls: Option<(String, String)>,
    trusted_network: bool,
    /// The plugin chain of this session (the pipeline current when it connected).
    chain: Option<ChainSession>,
    /// Whether a MAIL FROM started a transaction whose plugin instances are still alive.
    in_transaction: bool,
    /// What each plugin (and the built-in relay control) answered in this transaction, as
    /// `plugin@stage=verdict`, for the transaction's log line.
    verdicts: Vec<String>,
    /// SPF of the HELO identity, checked at this transaction's MAIL FROM (untrusted clients).
    spf_helo: Option<SpfOutcome>,
    /// SPF of the MAIL FROM identity of this transaction (untrusted clients).
    spf: Option<SpfOutcome>,
}

impl Client {
    /// Ends the plugin instances of the current transaction, if any.
    fn end_transaction(&mut self) {
        if let Some(chain) = self.chain.as_mut() {
            chain.end_transaction();
        }
        self.in_transaction = false;
    }

    /// The transaction's SPF result as plugins see it.
    fn spf_check(&self) -> Option<SpfCheck> {
        self.spf.as_ref().map(email_auth::spf_check)
    }

    fn tls_text(&self) -> Option<String> {
        self.tls.as_ref().map(|(v, c)| format!("{v} {c}"))
    }

    /// Records a stage's plugin calls in the metrics and in this transaction's verdicts.
    fn record(&mut self, metrics: &Metrics, calls: &[PluginCall]) {
        record_calls(metrics, calls);
        self.verdicts.extend(
            calls
                .iter()
                .map(|c| format!("{}@{}={}", c.plugin, c.stage.name(), c.verdict)),
        );
    }
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

async fn drive(ctx: &SessionCtx, tcp: TcpStream, id: String) -> Result<(), SessionEnd> {
    let timeouts = &ctx.generation.config.timeouts;
    let implicit_tls = ctx.listener.kind == ListenerKind::Submissions;
    let mut client = Client {
        id,
        tls: None,
        trusted_network: ctx.generation.config.relay.is_relay_client(ctx.peer.ip()),
        chain: ctx.generation.pipeline.as_ref().map(|p| p.session(false)),
        in_transaction: false,
        verdicts: Vec::new(),
        spf_helo: None,
        spf: None,
    };
    let mut conn = if implicit_tls {
        let acceptor = ctx
            .tls
            .as_ref()
            .ok_or_else(|| SessionEnd::Handshake("listener has no certificate".into()))?;
        let stream = handshake(acceptor, tcp, timeouts.tls_handshake).await?;
        client.tls = Some(crate::tls::describe(stream.get_ref().1));
        Conn::Tls(Box::new(stream))
    } else {
        Conn::Plain(tcp)
    };

    let write_limit = Duration::from_secs(timeouts.command);
    let mut session = Session::new(session_config(ctx), implicit_tls);
    greet(ctx, &mut client, &mut session).await?;
    let mut force_close = ctx.shared.force_close.clone();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                Event::StartTls => {
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
                    let stream = handshake(acceptor, tcp, timeouts.tls_handshake).await?;
                    client.tls = Some(crate::tls::describe(stream.get_ref().1));
                    info!(tls = client.tls_text().unwrap_or_default(), "STARTTLS");
                    conn = Conn::Tls(Box::new(stream));
                    session.tls_established()?;
                }
                other => decide(ctx, &mut client, &mut session, other).await?,
            }
        }
        let out = session.take_output();
        if !out.is_empty() {
            conn.write_all(&out, write_limit).await?;
        }
        if session.is_closed() {
            conn.shutdown(write_limit).await;
            return Ok(());
        }
        let wait = Duration::from_secs(match session.timeout_phase() {
            TimeoutPhase::Command => timeouts.command,
            TimeoutPhase::DataBlock => timeouts.data_block,
        });
        if *force_close.borrow() {
            session.shutdown();
            continue;
        }
        tokio::select! {
            read = tokio::time::timeout(wait, conn.read(&mut buf)) => match read {
                Err(_) => {
                    info!("timeout");
                    session.timed_out();
                }
                Ok(Ok(0)) => return Err(SessionEnd::Eof),
                Ok(Ok(n)) => session.feed(&buf[..n]),
                Ok(Err(e)) => return Err(e.into()),
            },
            _ = force_close.changed() => session.shutdown(),
        }
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    secs: u64,
) -> Result<TlsStream<TcpStream>, SessionEnd> {
    match tokio::time::timeout(Duration::from_secs(secs), acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(SessionEnd::Handshake(e.to_string())),
        Err(_) => Err(SessionEnd::Handshake("timed out".into())),
    }
}

/// Runs the connect stage, then greets (or refuses) the client.
async fn greet(
    ctx: &SessionCtx,
    client: &mut Client,
    session: &mut Session,
) -> Result<(), SessionEnd> {
    let conn = conn_info(ctx, client, session);
    let Some(chain) = client.chain.as_mut() else {
        session.greet();
        return Ok(());
    };
    let outcome = chain.on_connect(&conn).await;
    record_calls(&ctx.shared.metrics, &outcome.calls);
    // Instances live per transaction: an idle client must not hold plugin instances.
    chain.end_transaction();
    if outcome.decision != Decision::Continue {
        info!(verdict = outcome.decision.kind(), "connect verdict");
    }
    outcome.decision.greet(session)?;
    Ok(())
}

/// Applies a plugin decision that refuses; false when the built-in default should go on.
fn refused(session: &mut Session, decision: Decision) -> Result<bool, SessionEnd> {
    Ok(decision.refuse(session)?)
}

/// Answers one decision event of the state machine: built-in policy first, then plugins.
async fn decide(
    ctx: &SessionCtx,
    client: &mut Client,
    session: &mut Session,
    event: Event,
) -> Result<(), SessionEnd> {
    match event {
        Event::Helo { domain, .. } => {
            let conn = conn_info(ctx, client, session);
            if let Some(chain) = client.chain.as_mut() {
                let helo = domain.to_string();
                let conn = postrider_plugin_host::ConnInfo {
                    helo: Some(helo.clone()),
                    ..conn
                };
                let outcome = chain.on_helo(&conn, &helo).await;
                record_calls(&ctx.shared.metrics, &outcome.calls);
                chain.end_transaction();
                client.in_transaction = false;
                if refused(session, outcome.decision)? {
                    return Ok(());
                }
            }
            session.accept()?;
        }
        Event::MailFrom { from, params, .. } => {
            client.verdicts.clear();
            client.spf_helo = None;
            client.spf = None;
            let auth = &ctx.generation.auth;
            if auth.verifies(client.trusted_network || session.authenticated().is_some()) {
                let helo = session.helo().map(|d| d.to_string()).unwrap_or_default();
                let (spf_helo, spf) = auth
                    .spf(
                        ctx.peer.ip(),
                        &helo,
                        &ctx.generation.config.hostname,
                        &from.address(),
                    )
                    .await;
                debug!(spf = %spf.result, domain = %spf.domain, helo_spf = %spf_helo.result, "SPF");
                client.spf_helo = Some(spf_helo);
                client.spf = Some(spf);
            }
            let conn = conn_info(ctx, client, session);
            if let Some(chain) = client.chain.as_mut() {
                if client.in_transaction {
                    chain.end_transaction();
                }
                client.in_transaction = true;
                let env = EnvelopeInfo {
                    spf: client.spf.as_ref().map(email_auth::spf_check),
                    ..EnvelopeInfo::from_transaction(&from, &params, &[])
                };
                let outcome = chain.on_mail_from(&conn, &env).await;
                client.record(&ctx.shared.metrics, &outcome.calls);
                if outcome.decision != Decision::Continue {
                    info!(from = %from.address(), verdict = outcome.decision.kind(), "sender verdict");
                }
                if refused(session, outcome.decision)? {
                    return Ok(());
                }
            }
            session.accept()?;
        }
        Event::DataStart => session.accept()?,
        Event::RcptTo {
            to, source_route, ..
        } => {
            let trusted = client.trusted_network || session.authenticated().is_some();
            if let Err(reply) =
                check_recipient(&to, source_route, trusted, &ctx.generation.config.relay)
            {
                info!(rcpt = %to.address(), code = reply.code(), "recipient refused: relay access denied");
                ctx.shared
                    .metrics
                    .verdict("rcpt", postrider_metrics::BUILTIN, "reject");
                client
                    .verdicts
                    .push(format!("{}@rcpt=reject", postrider_metrics::BUILTIN));
                session.reject(reply)?;
                return Ok(());
            }
            let conn = conn_info(ctx, client, session);
            let (Some(chain), Some(tx)) = (client.chain.as_mut(), session.transaction()) else {
                session.accept()?;
                return Ok(());
            };
            let env = EnvelopeInfo {
                spf: client.spf.as_ref().map(email_auth::spf_check),
                ..EnvelopeInfo::from_transaction(&tx.from, &tx.mail_params, &tx.recipients)
            };
            let outcome = chain.on_rcpt(&conn, &env, &to.address()).await;
            record_calls(&ctx.shared.metrics, &outcome.calls);
            client.verdicts.extend(
                outcome
                    .calls
                    .iter()
                    .map(|c| format!("{}@{}={}", c.plugin, c.stage.name(), c.verdict)),
            );
            if outcome.decision != Decision::Continue && outcome.decision != Decision::Accept {
                info!(rcpt = %to.address(), verdict = outcome.decision.kind(), "recipient refused by plugin");
            }
            if refused(session, outcome.decision)? {
                return Ok(());
            }
            match outcome.rewrite {
                Some(new) => match address::parse_forward_path(&format!("<{new}>"), env.smtputf8) {
                    Ok(parsed) => {
                        info!(rcpt = %to.address(), rewritten = %new, "recipient rewritten by plugin");
                        session.accept_rcpt_as(parsed.path)?;
                    }
                    Err(_) => {
                        session.reject(static_reply(451, "4.3.0", "Temporary local problem"))?
                    }
                },
                None => session.accept()?,
            }
        }
        Event::Auth {
            username, password, ..
        } => {
            let ok = match &ctx.generation.passwords {
                Some(passwords) => {
                    let passwords = Arc::clone(passwords);
                    let user = username.clone();
                    tokio::task::spawn_blocking(move || passwords.verify(&user, &password))
                        .await
                        .unwrap_or(false)
                }
                None => false,
            };
            if ok {
                info!(user = %username, "authenticated");
                ctx.shared.metrics.auth(&ctx.listener.name, "success");
                session.auth_succeeded(&username)?;
            } else {
                warn!(user = %username, "authentication failed");
                ctx.shared.metrics.auth(&ctx.listener.name, "failure");
                session.reject(static_reply(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ))?;
            }
        }
        Event::Message(mut envelope) => {
            let metrics = &ctx.shared.metrics;
            let listener = &ctx.listener.name;
            let auth = Arc::clone(&ctx.generation.auth);
            // RFC 8601 §5: results claiming to be ours can only be forged; drop them.
            if let Cow::Owned(stripped) =
                postrider_auth::strip_forged_results(&envelope.data, auth.authserv_id())
            {
                envelope.data = stripped;
            }
            let trusted = client.trusted_network || session.authenticated().is_some();
            let mut trace = String::new();
            let mut verified = None;
            let mut dmarc_quarantine = None;
            if auth.verifies(trusted) {
                let ip = ctx.peer.ip();
                let helo = session.helo().map(|d| d.to_string()).unwrap_or_default();
                let mail_from = envelope.from.address();
                let spf = client
                    .spf
                    .clone()
                    .unwrap_or_else(|| SpfOutcome::none(&helo));
                let outcome = auth
                    .verify_message(&envelope.data, ip, &helo, &mail_from, &spf)
                    .await;
                trace = auth.verifier().authentication_results(
                    ip,
                    &helo,
                    &mail_from,
                    client.spf_helo.as_ref(),
                    client.spf.as_ref(),
                    outcome.as_ref(),
                );
                if let Some(outcome) = &outcome {
                    match auth.dmarc_action(outcome) {
                        DmarcAction::Accept => {}
                        DmarcAction::Quarantine(reason) => dmarc_quarantine = Some(reason),
                        DmarcAction::Reject(text) => {
                            let (spool_envelope, message) =
                                to_spool(ctx, client, session, *envelope, &trace);
                            client.verdicts.push("dmarc@data=reject".to_owned());
                            metrics.verdict("data", "dmarc", "reject");
                            metrics.transaction(listener, "rejected", None);
                            transaction_line(
                                client,
                                &spool_envelope,
                                None,
                                message.len(),
                                "rejected",
                            );
                            client.end_transaction();
                            session.reject(static_reply(550, "5.7.1", &text))?;
                            return Ok(());
                        }
                    }
                }
                verified = outcome;
            }
            let env = EnvelopeInfo {
                spf: client.spf_check(),
                ..EnvelopeInfo::from_transaction(
                    &envelope.from,
                    &envelope.mail_params,
                    &envelope.recipients,
                )
            };
            let (mut spool_envelope, mut message) =
                to_spool(ctx, client, session, *envelope, &trace);
            spool_envelope.spf = client.spf.as_ref().map(email_auth::spf_record);
            spool_envelope.quarantine = dmarc_quarantine;
            let conn = conn_info(ctx, client, session);
            if let Some(chain) = client.chain.as_mut() {
                let mut view = MessageView::new(Arc::from(message.as_slice()));
                if let Some(outcome) = &verified {
                    view = view.with_authentication(email_auth::authentication(outcome));
                }
                let outcome = chain.on_data(&conn, &env, &view).await;
                chain.end_transaction();
                client.in_transaction = false;
                client.record(metrics, &outcome.calls);
                let result = match &outcome.decision {
                    Decision::Continue | Decision::Accept => None,
                    Decision::Tempfail(_) => Some("tempfailed"),
                    Decision::Reject(_) => Some("rejected"),
                    Decision::Disconnect(r) if r.code() < 500 => Some("tempfailed"),
                    Decision::Disconnect(_) => Some("rejected"),
                };
                if let Some(result) = result {
                    metrics.transaction(listener, result, None);
                    transaction_line(client, &spool_envelope, None, message.len(), result);
                    refused(session, outcome.decision)?;
                    return Ok(());
                }
                message = apply_edits(&message, &outcome.edits);
                if outcome.quarantine.is_some() {
                    spool_envelope.quarantine = outcome.quarantine;
                }
            }
            if trusted {
                if let Some(signature) = auth.sign(&message) {
                    message = email_auth::prepend(&signature, message);
                }
            } else if let Some(outcome) = &verified
                && let Some(seal) = auth.seal(&message, client.spf_helo.as_ref(), outcome)
            {
                message = email_auth::prepend(&seal, message);
            }
            let size = message.len();
            let summary = spool_envelope.clone();
            match ctx.shared.spool.store(spool_envelope, message).await {
                Ok(id) => {
                    metrics.transaction(listener, "accepted", Some(size));
                    transaction_line(client, &summary, Some(id.as_str()), size, "queued");
                    session.queued(id.as_str())?;
                    ctx.shared.queue.submit(id);
                }
                Err(e) => {
                    warn!(error = %e, "spool write failed");
                    metrics.transaction(listener, "tempfailed", None);
                    transaction_line(client, &summary, None, size, "tempfailed");
                    session.reject(static_reply(
                        451,
                        "4.3.0",
                        "Temporary local problem: could not queue the message",
                    ))?;
                }
            }
        }
        Event::Close => {
            debug!("close requested");
            // Before the 221 goes out: warm instances are back in their pools by the time the
            // client can connect again.
            client.end_transaction();
        }
        Event::StartTls => session.reject(static_reply(454, "4.7.0", "TLS not available"))?,
    }
    Ok(())
}

/// The one line per received message (like Postfix's smtpd and cleanup lines together):
/// the message is what became of it (queued, rejected, tempfailed); the fields are the
/// queue id, sender, recipients, size, TLS, user and every plugin's verdict. The session's
/// span adds the listener, client address and session id.
fn transaction_line(
    client: &Client,
    envelope: &Envelope,
    queue_id: Option<&str>,
    size: usize,
    result: &'static str,
) {
    let to: Vec<&str> = envelope
        .recipients
        .iter()
        .map(|r| r.address.as_str())
        .collect();
    let tls = client.tls_text().unwrap_or_else(|| "none".to_owned());
    let verdicts = client.verdicts.join(",");
    let user = envelope.client.authenticated.as_deref().unwrap_or("");
    let quarantine = envelope.quarantine.as_deref().unwrap_or("");
    // Only a queued message has a queue id and a quarantine field.
    let queued = result == "queued";
    info!(
        queue_id = queued.then(|| tracing::field::display(queue_id.unwrap_or(""))),
        from = %envelope.mail_from,
        to = %to.join(","),
        nrcpt = to.len(),
        size,
        helo = %envelope.client.helo,
        tls = %tls,
        user = %user,
        verdicts = %verdicts,
        quarantine = queued.then(|| tracing::field::display(quarantine)),
        "{result}"
    );
}

/// The connection as plugins see it.
fn conn_info(ctx: &SessionCtx, client: &Client, session: &Session) -> ConnInfo {
    ConnInfo {
        id: client.id.clone(),
        client_ip: ctx.peer.ip(),
        client_port: ctx.peer.port(),
        client_name: None,
        listener: ctx.listener.name.clone(),
        server_ip: ctx.local.ip(),
        server_port: ctx.local.port(),
        helo: session.helo().map(|d| d.to_string()),
        tls: client.tls.as_ref().map(|(protocol, cipher)| TlsInfo {
            protocol: protocol.clone(),
            cipher: cipher.clone(),
            sni: None,
        }),
        auth_user: session.authenticated().map(str::to_owned),
    }
}

/// The envelope as plugins see it: MAIL FROM parameters by upper-case name.
/// Builds the spool entry: the envelope, and the message with our Received header on top,
/// followed by `trace` (our Authentication-Results, when verified).
fn to_spool(
    ctx: &SessionCtx,
    client: &Client,
    session: &Session,
    envelope: smtp::Envelope,
    trace: &str,
) -> (Envelope, Vec<u8>) {
    let now = SystemTime::now();
    let helo = session.helo().map(|d| d.to_string()).unwrap_or_default();
    let user = session.authenticated().map(str::to_owned);
    let smtp::Envelope {
        from,
        mail_params,
        recipients,
        data,
    } = envelope;
    let received = received_header(ctx, client, session, &helo, &mail_params, &recipients, now);
    let mut message = Vec::with_capacity(received.len() + trace.len() + data.len());
    message.extend_from_slice(received.as_bytes());
    message.extend_from_slice(trace.as_bytes());
    message.extend_from_slice(&data);
    let MailParams {
        size,
        body,
        smtputf8,
        ret,
        envid,
        ..
    } = mail_params;
    let envelope = Envelope {
        received_at_unix_ms: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        mail_from: from.address(),
        smtputf8,
        body: body.map(|b| b.keyword().to_owned()),
        ret: ret.map(|r| r.keyword().to_owned()),
        envid,
        size_param: size,
        recipients: recipients
            .iter()
            .map(|(to, params)| recipient(to, params))
            .collect(),
        client: ClientInfo {
            ip: ctx.peer.ip(),
            port: ctx.peer.port(),
            listener: ctx.listener.name.clone(),
            helo,
            tls: client.tls_text(),
            authenticated: user,
            reverse_dns: None,
        },
        quarantine: None,
        spf: None,
    };
    (envelope, message)
}

fn recipient(to: &ForwardPath, params: &RcptParams) -> Recipient {
    Recipient {
        address: to.address(),
        notify: params.notify.as_ref().map(notify_keywords),
        orcpt: params
            .orcpt
            .as_ref()
            .map(|(kind, addr)| format!("{kind};{addr}")),
    }
}

fn notify_keywords(notify: &Notify) -> Vec<String> {
    match notify {
        Notify::Never => vec!["NEVER".to_owned()],
        Notify::On(on) => [
            (on.success, "SUCCESS"),
            (on.failure, "FAILURE"),
            (on.delay, "DELAY"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, k)| k.to_owned())
        .collect(),
    }
}

/// The Received trace header (RFC 5321 section 4.4, protocol names from RFC 3848).
fn received_header(
    ctx: &SessionCtx,
    client: &Client,
    session: &Session,
    helo: &str,
    params: &MailParams,
    recipients: &[(ForwardPath, RcptParams)],
    now: SystemTime,
) -> String {
    let mut protocol = String::from(if params.smtputf8 {
        "UTF8SMTP"
    } else if session.is_esmtp() {
        "ESMTP"
    } else {
        "SMTP"
    });
    if client.tls.is_some() {
        protocol.push('S');
    }
    if session.authenticated().is_some() {
        protocol.push('A');
    }
    let date = chrono::DateTime::<chrono::Utc>::from(now).to_rfc2822();
    let tls = client
        .tls_text()
        .map(|t| format!("\r\n\t(using {t})"))
        .unwrap_or_default();
    let rcpt = match recipients {
        [(one, _)] => format!("\r\n\tfor <{}>", one.address()),
        _ => String::new(),
    };
    format!(
        "Received: from {helo} ([{ip}]){tls}\r\n\tby {host} (Postrider) with {protocol}{rcpt};\r\n\t{date}\r\n",
        ip = ctx.peer.ip(),
        host = ctx.generation.config.hostname,
    )
}
