//! The stage driver: the one place where an SMTP event becomes a plugin stage and the
//! chain's decision is applied to the session.
//!
//! The relay's session and both modes of `postrider-harness` run every event of the sans-IO
//! [`Session`] through [`Driver::handle`]; what differs between them (relay control, SPF,
//! AUTH, DKIM/DMARC, the spool) is behind the [`Policy`] trait. The route stage runs from the
//! spooled envelope through [`route`], for the relay's queue manager and the harness alike.

mod entry;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use postrider_plugin_host::{
    Authentication, ChainSession, ConnInfo, Decision, EnvelopeEdit, EnvelopeInfo, HeaderEdit,
    MessageView, Pipeline, PluginCall, RouteDecision, SpfCheck, Stage, TlsInfo, append_text_part,
    apply_edits, replace_body,
};
use postrider_queue::Envelope;
use postrider_smtp::address::{self, ForwardPath, ReversePath};
use postrider_smtp::command::MailParams;
use postrider_smtp::reply::Reply;
use postrider_smtp::server::{self as smtp, Event, Misuse, Session};

pub use entry::{auth_result_keyword, route_inputs, spf_from_record, spf_record, spool_entry};

/// What an AUTH exchange carried (RFC 4616 names).
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    /// The authorization identity: who the client wants to act as; empty for "myself".
    pub authzid: &'a str,
    /// The authentication identity: the user whose password this is.
    pub username: &'a str,
    /// The password.
    pub password: &'a str,
}

impl std::fmt::Debug for Credentials<'_> {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What the driver asks of its host: the built-in policy around the plugin stages.
pub trait Policy {
    /// Relay control for one recipient, before any plugin: `Err` is the refusal.
    fn check_recipient(
        &self,
        session: &Session,
        to: &ForwardPath,
        source_route: bool,
    ) -> Result<(), Reply>;

    /// Checks the sender at MAIL FROM (SPF); the result is what plugins see in
    /// `envelope.spf` from then on, `None` when not checked.
    fn check_sender(
        &mut self,
        session: &Session,
        from: &ReversePath,
    ) -> impl Future<Output = Option<SpfCheck>> + Send;

    /// Verifies AUTH credentials. `Ok` is the identity the session acts as from then on (for
    /// relay control, signing, logs and plugins' `auth-user`): the user, or the
    /// authorization identity it may act as. `Err` is the reply to send (535 5.7.8, 454 4.7.0).
    fn authenticate(
        &mut self,
        credentials: Credentials<'_>,
    ) -> impl Future<Output = Result<String, Reply>> + Send;

    /// Email authentication of a complete message, before the data stage; may rewrite
    /// `data` (removing forged results).
    fn verify(
        &mut self,
        session: &Session,
        envelope: &mut smtp::Envelope,
    ) -> impl Future<Output = Verified> + Send;

    /// The last step before the spool (DKIM signing, ARC sealing).
    fn finish(&mut self, session: &Session, message: Vec<u8>) -> Vec<u8>;

    /// The time a message is received at (its `Received` header and spool entry).
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// The queue id for the message about to be stored (data plugins see it).
    fn queue_id(&mut self) -> String;

    /// Stores the message durably under `id`: `Err` is the reply to send (451 4.3.0).
    fn store(
        &mut self,
        id: &str,
        envelope: Envelope,
        message: Vec<u8>,
    ) -> impl Future<Output = Result<(), Reply>> + Send;
}

/// What [`Policy::verify`] found in a message.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    /// Trace header lines (our `Authentication-Results`) to insert below `Received`.
    pub trace: String,
    /// DKIM, DMARC and ARC as the data stage sees them (`None`: not verified).
    pub authentication: Option<Authentication>,
    /// A built-in refusal before any plugin runs: the check's name and the reply.
    pub refuse: Option<(String, Reply)>,
    /// A built-in quarantine (DMARC `p=quarantine`).
    pub quarantine: Option<String>,
}

/// One stage as it ran: what went in, what the chain decided, each plugin call.
#[derive(Debug, Clone)]
pub struct StageRun {
    /// The stage.
    pub stage: Stage,
    /// The connection the plugins saw.
    pub conn: ConnInfo,
    /// The envelope they saw (mail-from onward).
    pub envelope: Option<EnvelopeInfo>,
    /// The recipient (rcpt, route).
    pub rcpt: Option<String>,
    /// The decision (route: [`Decision::Continue`]).
    pub decision: Decision,
    /// The recipient rewrite (rcpt).
    pub rewrite: Option<String>,
    /// Header edits (data).
    pub edits: Vec<HeaderEdit>,
    /// The replacement body (data).
    pub body: Option<Vec<u8>>,
    /// Texts appended as parts (data).
    pub texts: Vec<String>,
    /// Envelope edits (data).
    pub envelope_edits: Vec<EnvelopeEdit>,
    /// The message as the data stage saw it (data).
    pub message: Option<Arc<[u8]>>,
    /// Quarantine reason (data).
    pub quarantine: Option<String>,
    /// The route (route).
    pub route: Option<RouteDecision>,
    /// Each plugin call, in order.
    pub calls: Vec<PluginCall>,
}

impl StageRun {
    fn new(stage: Stage, conn: &ConnInfo, envelope: Option<EnvelopeInfo>) -> StageRun {
        StageRun {
            stage,
            conn: conn.clone(),
            envelope,
            rcpt: None,
            decision: Decision::Continue,
            rewrite: None,
            edits: Vec::new(),
            body: None,
            texts: Vec::new(),
            envelope_edits: Vec::new(),
            message: None,
            quarantine: None,
            route: None,
            calls: Vec::new(),
        }
    }
}

/// What became of a complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageResult {
    /// Stored under this queue id; the client got 250.
    Queued(String),
    /// Refused with a 5xx.
    Rejected,
    /// Refused with a 4xx.
    Tempfailed,
    /// Accepted with 250 and thrown away, as a milter asked (its name).
    Discarded(String),
}

impl MessageResult {
    /// The transaction's result in metrics: accepted, rejected, tempfailed.
    pub fn metric(&self) -> &'static str {
        match self {
            MessageResult::Queued(_) => "accepted",
            MessageResult::Rejected => "rejected",
            MessageResult::Tempfailed => "tempfailed",
            MessageResult::Discarded(_) => "discarded",
        }
    }

    /// The word for the transaction's log line: queued, rejected, tempfailed.
    pub fn name(&self) -> &'static str {
        match self {
            MessageResult::Queued(_) => "queued",
            MessageResult::Rejected => "rejected",
            MessageResult::Tempfailed => "tempfailed",
            MessageResult::Discarded(_) => "discarded",
        }
    }
}

/// A complete message's fate, for the transaction's log line.
#[derive(Debug, Clone)]
pub struct MessageReport {
    /// Queued, rejected or tempfailed.
    pub result: MessageResult,
    /// The envelope as spooled (or as it would have been).
    pub envelope: Envelope,
    /// The message size with our headers, as stored.
    pub size: usize,
}

/// What [`Driver::handle`] did with an event.
#[derive(Debug)]
pub enum Handled {
    /// The event is answered; go on reading.
    Answered,
    /// A complete message was stored or refused.
    Message(Box<MessageReport>),
    /// STARTTLS: the caller flushes, hands the socket to TLS and calls
    /// [`Driver::tls_established`], or refuses.
    StartTls,
    /// The session is closing (QUIT, a disconnect): flush and close.
    Close,
}

/// One SMTP connection's plugin stages: the chain (when plugins are configured), the
/// connection as plugins see it, and the transaction's verdicts.
pub struct Driver {
    chain: Option<ChainSession>,
    conn: ConnInfo,
    hostname: String,
    in_transaction: bool,
    spf: Option<SpfCheck>,
    verdicts: Vec<String>,
    runs: Vec<StageRun>,
}

impl Driver {
    /// A driver for one connection; `hostname` names us in the `Received` header.
    pub fn new(chain: Option<ChainSession>, conn: ConnInfo, hostname: &str) -> Driver {
        Driver {
            chain,
            conn,
            hostname: hostname.to_owned(),
            in_transaction: false,
            spf: None,
            verdicts: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// The connection as plugins see it now.
    pub fn conn(&self) -> &ConnInfo {
        &self.conn
    }

    /// Every plugin's (and built-in check's) verdict in the current transaction, as
    /// `plugin@stage=verdict`.
    pub fn verdicts(&self) -> &[String] {
        &self.verdicts
    }

    /// The stages run since the last call, in order.
    pub fn take_runs(&mut self) -> Vec<StageRun> {
        std::mem::take(&mut self.runs)
    }

    /// TLS is up (implicit TLS, or after STARTTLS's handshake). After STARTTLS the client
    /// greets again (RFC 3207 section 4.2): the HELO name is forgotten until it does.
    pub fn tls_established(&mut self, session: &mut Session, tls: TlsInfo) -> Result<(), Misuse> {
        self.conn.tls = Some(tls);
        if session.tls() {
            return Ok(());
        }
        self.conn.helo = None;
        session.tls_established()
    }

    /// Runs the connect stage and greets or refuses the client (RFC 5321 section 3.1).
    pub async fn connect(&mut self, session: &mut Session) -> Result<(), Misuse> {
        let Some(chain) = self.chain.as_mut() else {
            session.greet();
            return Ok(());
        };
        let mut run = StageRun::new(Stage::Connect, &self.conn, None);
        let outcome = chain.on_connect(&self.conn).await;
        // Instances live per transaction: an idle client must not hold plugin instances.
        chain.end_transaction();
        log_refusal(Stage::Connect, &outcome.decision, &outcome.calls, "");
        run.decision = outcome.decision.clone();
        run.calls = outcome.calls;
        self.runs.push(run);
        outcome.decision.greet(session)
    }

    /// Ends the plugin instances of the current transaction, if any.
    pub fn end_transaction(&mut self) {
        if let Some(chain) = self.chain.as_mut() {
            chain.end_transaction();
        }
        self.in_transaction = false;
    }

    /// Answers one event of the session: built-in policy first, then the plugin stage, then
    /// the decision applied to the session.
    pub async fn handle<P: Policy>(
        &mut self,
        session: &mut Session,
        event: Event,
        policy: &mut P,
    ) -> Result<Handled, Misuse> {
        match event {
            Event::Helo { domain, .. } => self.helo(session, &domain.to_string()).await?,
            Event::MailFrom { from, params, .. } => {
                self.mail_from(session, &from, &params, policy).await?
            }
            Event::RcptTo {
                to, source_route, ..
            } => self.rcpt(session, &to, source_route, policy).await?,
            Event::DataStart => session.accept()?,
            Event::Auth {
                authzid,
                username,
                password,
                ..
            } => {
                let credentials = Credentials {
                    authzid: &authzid,
                    username: &username,
                    password: &password,
                };
                match policy.authenticate(credentials).await {
                    Ok(identity) => {
                        session.auth_succeeded(&identity)?;
                        self.conn.auth_user = Some(identity);
                    }
                    // RFC 5321 section 3.8: 421 closes the transmission channel.
                    Err(reply) if reply.code() == 421 => session.disconnect(reply)?,
                    Err(reply) => session.reject(reply)?,
                }
            }
            Event::Message(envelope) => {
                let report = self.message(session, *envelope, policy).await?;
                return Ok(Handled::Message(Box::new(report)));
            }
            Event::StartTls => return Ok(Handled::StartTls),
            Event::Close => {
                // Before the 221 goes out: warm instances are back in their pools by the
                // time the client can connect again.
                self.end_transaction();
                return Ok(Handled::Close);
            }
        }
        Ok(Handled::Answered)
    }

    async fn helo(&mut self, session: &mut Session, helo: &str) -> Result<(), Misuse> {
        self.conn.helo = Some(helo.to_owned());
        if let Some(chain) = self.chain.as_mut() {
            let mut run = StageRun::new(Stage::Helo, &self.conn, None);
            let outcome = chain.on_helo(&self.conn, helo).await;
            log_refusal(Stage::Helo, &outcome.decision, &outcome.calls, helo);
            chain.end_transaction();
            self.in_transaction = false;
            run.decision = outcome.decision.clone();
            run.calls = outcome.calls;
            self.runs.push(run);
            if outcome.decision.refuse(session)? {
                return Ok(());
            }
        }
        session.accept()
    }

    async fn mail_from<P: Policy>(
        &mut self,
        session: &mut Session,
        from: &ReversePath,
        params: &MailParams,
        policy: &mut P,
    ) -> Result<(), Misuse> {
        self.verdicts.clear();
        self.spf = policy.check_sender(session, from).await;
        if let Some(chain) = self.chain.as_mut() {
            if self.in_transaction {
                chain.end_transaction();
            }
            self.in_transaction = true;
            let env = EnvelopeInfo {
                spf: self.spf.clone(),
                ..EnvelopeInfo::from_transaction(from, params, &[])
            };
            let outcome = chain.on_mail_from(&self.conn, &env).await;
            log_refusal(
                Stage::MailFrom,
                &outcome.decision,
                &outcome.calls,
                &from.address(),
            );
            self.record(&outcome.calls);
            let mut run = StageRun::new(Stage::MailFrom, &self.conn, Some(env));
            run.decision = outcome.decision.clone();
            run.calls = outcome.calls;
            self.runs.push(run);
            if outcome.decision.refuse(session)? {
                return Ok(());
            }
        }
        session.accept()
    }

    async fn rcpt<P: Policy>(
        &mut self,
        session: &mut Session,
        to: &ForwardPath,
        source_route: bool,
        policy: &mut P,
    ) -> Result<(), Misuse> {
        if let Err(reply) = policy.check_recipient(session, to, source_route) {
            tracing::info!(rcpt = %to.address(), code = reply.code(), "recipient refused: relay access denied");
            self.verdicts.push(format!("{BUILTIN}@rcpt=reject"));
            return session.reject(reply);
        }
        let (Some(chain), Some(tx)) = (self.chain.as_mut(), session.transaction()) else {
            return session.accept();
        };
        let env = EnvelopeInfo {
            spf: self.spf.clone(),
            ..EnvelopeInfo::from_transaction(&tx.from, &tx.mail_params, &tx.recipients)
        };
        let rcpt = to.address();
        let outcome = chain.on_rcpt(&self.conn, &env, &rcpt).await;
        log_refusal(Stage::Rcpt, &outcome.decision, &outcome.calls, &rcpt);
        self.record(&outcome.calls);
        let mut run = StageRun::new(Stage::Rcpt, &self.conn, Some(env.clone()));
        run.rcpt = Some(rcpt.clone());
        run.decision = outcome.decision.clone();
        run.rewrite = outcome.rewrite.clone();
        run.calls = outcome.calls;
        self.runs.push(run);
        if outcome.decision.refuse(session)? {
            return Ok(());
        }
        match outcome.rewrite {
            Some(new) => match address::parse_forward_path(&format!("<{new}>"), env.smtputf8) {
                Ok(parsed) => {
                    tracing::info!(rcpt = %rcpt, rewritten = %new, "recipient rewritten by plugin");
                    session.accept_rcpt_as(parsed.path)
                }
                Err(_) => session.reject(Reply::local(451, (4, 3, 0), "Temporary local problem")),
            },
            None => session.accept(),
        }
    }

    /// A complete message: built-in checks, the data stage, the last touches, the spool.
    async fn message<P: Policy>(
        &mut self,
        session: &mut Session,
        mut envelope: smtp::Envelope,
        policy: &mut P,
    ) -> Result<MessageReport, Misuse> {
        let verified = policy.verify(session, &mut envelope).await;
        let env = EnvelopeInfo {
            spf: self.spf.clone(),
            ..EnvelopeInfo::from_transaction(
                &envelope.from,
                &envelope.mail_params,
                &envelope.recipients,
            )
        };
        let (mut spool_env, mut message) = spool_entry(
            policy.now(),
            &self.hostname,
            &self.conn,
            session,
            envelope,
            &verified.trace,
            self.spf.as_ref(),
        );
        spool_env.quarantine = verified.quarantine;
        if let Some((check, reply)) = verified.refuse {
            self.verdicts.push(format!("{check}@data=reject"));
            self.end_transaction();
            let size = message.len();
            session.reject(reply)?;
            return Ok(MessageReport {
                result: MessageResult::Rejected,
                envelope: spool_env,
                size,
            });
        }
        let id = policy.queue_id();
        if let Some(chain) = self.chain.as_mut() {
            let env = EnvelopeInfo {
                queue_id: Some(id.clone()),
                ..env
            };
            let shown: Arc<[u8]> = Arc::from(message.as_slice());
            let mut view =
                MessageView::new(Arc::clone(&shown)).with_max_size(session.max_message_size());
            if let Some(auth) = &verified.authentication {
                view = view.with_authentication(auth.clone());
            }
            let outcome = chain.on_data(&self.conn, &env, &view).await;
            log_refusal(Stage::Data, &outcome.decision, &outcome.calls, "");
            chain.end_transaction();
            self.in_transaction = false;
            self.record(&outcome.calls);
            let mut run = StageRun::new(Stage::Data, &self.conn, Some(env));
            run.decision = outcome.decision.clone();
            run.edits = outcome.edits.clone();
            run.body = outcome.body.clone();
            run.texts = outcome.texts.clone();
            run.envelope_edits = outcome.envelope.clone();
            run.message = Some(shown);
            run.quarantine = outcome.quarantine.clone();
            run.calls = outcome.calls;
            self.runs.push(run);
            let refused = match &outcome.decision {
                Decision::Continue | Decision::Accept => None,
                Decision::Tempfail(_) => Some(MessageResult::Tempfailed),
                Decision::Reject(_) => Some(MessageResult::Rejected),
                Decision::Disconnect(r) if r.code() < 500 => Some(MessageResult::Tempfailed),
                Decision::Disconnect(_) => Some(MessageResult::Rejected),
            };
            if let Some(result) = refused {
                let size = message.len();
                outcome.decision.refuse(session)?;
                return Ok(MessageReport {
                    result,
                    envelope: spool_env,
                    size,
                });
            }
            if let Some(milter) = outcome.discard {
                tracing::info!(milter = %milter, id = %id, "message discarded by milter");
                self.verdicts.push(format!("{milter}@data=discard"));
                let size = message.len();
                // As Postfix does: the client cannot tell a discarded message from a queued one.
                session.queued(&id)?;
                return Ok(MessageReport {
                    result: MessageResult::Discarded(milter),
                    envelope: spool_env,
                    size,
                });
            }
            message = apply_edits(&message, &outcome.edits);
            if let Some(body) = &outcome.body {
                message = replace_body(&message, body);
            }
            for text in &outcome.texts {
                message = append_text_part(&message, text);
            }
            edit_envelope(&mut spool_env, &outcome.envelope);
            if spool_env.recipients.is_empty() {
                tracing::warn!(id = %id, "every recipient removed by the data stage: nothing to store");
                let size = message.len();
                session.reject(Reply::local(
                    554,
                    (5, 7, 1),
                    "No recipients left after content filtering",
                ))?;
                return Ok(MessageReport {
                    result: MessageResult::Rejected,
                    envelope: spool_env,
                    size,
                });
            }
            if outcome.quarantine.is_some() {
                spool_env.quarantine = outcome.quarantine;
            }
        }
        self.in_transaction = false;
        let message = policy.finish(session, message);
        let size = message.len();
        match policy.store(&id, spool_env.clone(), message).await {
            Ok(()) => {
                session.queued(&id)?;
                Ok(MessageReport {
                    result: MessageResult::Queued(id),
                    envelope: spool_env,
                    size,
                })
            }
            Err(reply) => {
                session.reject(reply)?;
                Ok(MessageReport {
                    result: MessageResult::Tempfailed,
                    envelope: spool_env,
                    size,
                })
            }
        }
    }

    /// Keeps each call's verdict for the transaction's log line.
    fn record(&mut self, calls: &[PluginCall]) {
        self.verdicts.extend(
            calls
                .iter()
                .map(|c| format!("{}@{}={}", c.plugin, c.stage.name(), c.verdict)),
        );
    }
}

/// Applies data-stage envelope edits in order: a recipient added twice is kept once, one
/// removed goes whatever its case.
fn edit_envelope(envelope: &mut Envelope, edits: &[EnvelopeEdit]) {
    for edit in edits {
        match edit {
            EnvelopeEdit::AddRcpt(address) => {
                if !envelope
                    .recipients
                    .iter()
                    .any(|r| r.address.eq_ignore_ascii_case(address))
                {
                    tracing::info!(rcpt = %address, "recipient added by the data stage");
                    envelope.recipients.push(postrider_queue::Recipient {
                        address: address.clone(),
                        notify: None,
                        orcpt: None,
                    });
                }
            }
            EnvelopeEdit::DeleteRcpt(address) => {
                tracing::info!(rcpt = %address, "recipient removed by the data stage");
                envelope
                    .recipients
                    .retain(|r| !r.address.eq_ignore_ascii_case(address));
            }
            EnvelopeEdit::ChangeFrom(from) => {
                tracing::info!(from = %from, "sender changed by the data stage");
                envelope.mail_from = from.clone();
            }
        }
    }
}

/// The name built-in relay control goes by in verdict lists and metrics.
pub const BUILTIN: &str = "builtin";

/// The reply a refusing decision sends, for logs ("" for continue and accept).
/// Logs a plugin's refusal at a stage: which plugin, its verdict and the reply the client
/// gets. `subject` is what was refused (HELO name, sender, recipient), if any. The chain
/// stops at the first verdict other than continue, so the last call decided.
fn log_refusal(stage: Stage, decision: &Decision, calls: &[PluginCall], subject: &str) {
    let reply = match decision {
        Decision::Continue | Decision::Accept => return,
        Decision::Reject(r) | Decision::Tempfail(r) | Decision::Disconnect(r) => r.to_string(),
    };
    let plugin = calls.last().map_or("", |c| c.plugin.as_str());
    tracing::info!(
        plugin,
        stage = stage.name(),
        subject,
        verdict = decision.kind(),
        reply = %reply,
        "refused by plugin"
    );
}

/// Routes one recipient of a spooled message through the route-stage plugins, with the
/// connection and envelope the message came in with ([`route_inputs`]).
pub async fn route(
    pipeline: &Arc<Pipeline>,
    queue_id: &str,
    envelope: &Envelope,
    rcpt: &str,
    trace: bool,
) -> StageRun {
    let (conn, env) = route_inputs(queue_id, envelope);
    let (decision, calls) = pipeline.route(&conn, &env, rcpt, trace).await;
    let mut run = StageRun::new(Stage::Route, &conn, Some(env));
    run.rcpt = Some(rcpt.to_owned());
    run.route = Some(decision);
    run.calls = calls;
    run
}
