//! `postrider-harness run`: plays the client side of an SMTP transcript through the real
//! server state machine ([`postrider_smtp::server::Session`]) with the plugin chain deciding
//! as in the relay's session (built-in policy: accept everything), and prints both sides.

use std::sync::Arc;

use postrider_plugin_host::{
    ConnInfo, Decision, EnvelopeInfo, MessageView, Pipeline, Stage, apply_edits,
};
use postrider_smtp::address;
use postrider_smtp::reply::{EnhancedCode, Reply};
use postrider_smtp::server::{Event, Misuse, Session, SessionConfig, TimeoutPhase};

use crate::runner::{
    CallReport, call_reports, describe_conn, describe_edit, describe_env, describe_route,
};

/// Why a transcript could not be played to its end.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptError {
    /// The harness drove the state machine wrongly (a bug in the harness).
    #[error(transparent)]
    Misuse(#[from] Misuse),
}

/// Plays `transcript` (client lines; `#` comments and blank lines outside DATA are skipped,
/// a leading `C: ` is dropped, `S: ` lines are ignored) and returns the dialogue.
pub async fn play(
    pipeline: &Arc<Pipeline>,
    mut conn: ConnInfo,
    transcript: &str,
    trace: bool,
) -> Result<String, TranscriptError> {
    let mut out = Dialogue {
        text: String::new(),
        trace,
    };
    let config = SessionConfig {
        hostname: "harness.postrider.invalid".into(),
        ..SessionConfig::default()
    };
    let mut session = Session::new(config, conn.tls.is_some());
    let mut chain = pipeline.session(true);
    let mut in_transaction = false;
    let queue_ids = std::sync::atomic::AtomicU64::new(1);

    out.trace_note(&format!("connect: {}", describe_conn(&conn)));
    let connect = chain.on_connect(&conn).await;
    chain.end_transaction();
    out.calls("connect", call_reports!(connect.calls));
    connect.decision.greet(&mut session)?;
    out.server(&session.take_output());

    for line in transcript.lines() {
        if session.is_closed() {
            out.note("connection closed; the rest of the transcript is not sent");
            break;
        }
        let data = session.timeout_phase() == TimeoutPhase::DataBlock;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !data {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with("S:") {
                continue;
            }
        }
        let line = if data {
            line
        } else {
            line.trim_start()
                .strip_prefix("C:")
                .map_or(line.trim_start(), str::trim_start)
        };
        out.text.push_str(&format!("C: {line}\n"));
        session.feed(format!("{line}\r\n").as_bytes());
        while let Some(event) = session.poll_event() {
            match event {
                Event::Helo { domain, .. } => {
                    let helo = domain.to_string();
                    conn.helo = Some(helo.clone());
                    let o = chain.on_helo(&conn, &helo).await;
                    chain.end_transaction();
                    in_transaction = false;
                    out.calls("helo", call_reports!(o.calls));
                    if !refused(&mut session, o.decision)? {
                        session.accept()?;
                    }
                }
                Event::MailFrom { from, params, .. } => {
                    if in_transaction {
                        chain.end_transaction();
                    }
                    in_transaction = true;
                    let env = EnvelopeInfo::from_transaction(&from, &params, &[]);
                    out.trace_note(&format!("mail-from: {}", describe_env(&env)));
                    let o = chain.on_mail_from(&conn, &env).await;
                    out.calls("mail-from", call_reports!(o.calls));
                    if !refused(&mut session, o.decision)? {
                        session.accept()?;
                    }
                }
                Event::RcptTo { to, .. } => {
                    let Some(tx) = session.transaction() else {
                        session.accept()?;
                        continue;
                    };
                    let env =
                        EnvelopeInfo::from_transaction(&tx.from, &tx.mail_params, &tx.recipients);
                    let o = chain.on_rcpt(&conn, &env, &to.address()).await;
                    out.calls("rcpt", call_reports!(o.calls));
                    if refused(&mut session, o.decision)? {
                    } else if let Some(new) = o.rewrite {
                        match address::parse_forward_path(&format!("<{new}>"), env.smtputf8) {
                            Ok(parsed) => {
                                out.note(&format!("recipient rewritten to <{new}>"));
                                session.accept_rcpt_as(parsed.path)?;
                            }
                            Err(_) => {
                                session.reject(reply(451, (4, 3, 0), "Temporary local problem"))?
                            }
                        }
                    } else {
                        session.accept()?;
                    }
                }
                Event::DataStart => session.accept()?,
                Event::Message(envelope) => {
                    let env = EnvelopeInfo::from_transaction(
                        &envelope.from,
                        &envelope.mail_params,
                        &envelope.recipients,
                    );
                    let view = MessageView::new(Arc::from(envelope.data.as_slice()));
                    let o = chain.on_data(&conn, &env, &view).await;
                    chain.end_transaction();
                    in_transaction = false;
                    out.calls("data", call_reports!(o.calls));
                    if refused(&mut session, o.decision)? {
                        continue;
                    }
                    for e in &o.edits {
                        out.note(&format!("header edit: {}", describe_edit(e)));
                    }
                    if let Some(q) = &o.quarantine {
                        out.note(&format!("quarantined: {q}"));
                    }
                    if trace {
                        let edited = apply_edits(&envelope.data, &o.edits);
                        let text = String::from_utf8_lossy(&edited);
                        let end = text.find("\r\n\r\n").unwrap_or(text.len());
                        out.note("headers as they would be queued:");
                        for l in text[..end].split("\r\n") {
                            out.note(&format!("  | {l}"));
                        }
                    }
                    let n = queue_ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let id = format!("H{n:05}");
                    session.queued(&id)?;
                    if pipeline.wants(Stage::Route) {
                        let env = EnvelopeInfo {
                            queue_id: Some(id.clone()),
                            ..env
                        };
                        for rcpt in &env.recipients {
                            let (route, calls) = pipeline.route(&conn, &env, rcpt, true).await;
                            out.calls("route", call_reports!(calls));
                            out.note(&format!("route <{rcpt}>: {}", describe_route(&route)));
                        }
                    }
                }
                Event::Auth { .. } => session.reject(reply(
                    535,
                    (5, 7, 8),
                    "Authentication is not simulated; use --auth-user",
                ))?,
                Event::StartTls => session.reject(reply(454, (4, 7, 0), "TLS not available"))?,
                Event::Close => {}
            }
        }
        out.server(&session.take_output());
    }
    if !session.is_closed() {
        out.note("end of transcript (connection still open)");
    }
    Ok(out.text)
}

/// The dialogue being written.
struct Dialogue {
    text: String,
    trace: bool,
}

impl Dialogue {
    fn server(&mut self, bytes: &[u8]) {
        for line in String::from_utf8_lossy(bytes).split("\r\n") {
            if !line.is_empty() {
                self.text.push_str(&format!("S: {line}\n"));
            }
        }
    }

    fn note(&mut self, text: &str) {
        self.text.push_str(&format!("   # {text}\n"));
    }

    fn trace_note(&mut self, text: &str) {
        if self.trace {
            self.note(text);
        }
    }

    fn calls(&mut self, stage: &str, calls: Vec<CallReport>) {
        if !self.trace {
            return;
        }
        if calls.is_empty() {
            self.note(&format!("{stage}: no plugin asked for this stage"));
        }
        for c in calls {
            self.note(&format!(
                "{} {}: {} [{} µs]",
                c.plugin, c.stage, c.outcome, c.elapsed_us
            ));
            if let Some(f) = &c.failure {
                self.note(&format!("  failure: {f}"));
            }
            for h in &c.host_calls {
                self.note(&format!(
                    "  {} {} -> {} [{} µs]",
                    h.call, h.args, h.result, h.elapsed_us
                ));
            }
        }
    }
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

/// Applies a refusing decision as the relay does; false when the command goes on.
fn refused(session: &mut Session, decision: Decision) -> Result<bool, Misuse> {
    decision.refuse(session)
}
