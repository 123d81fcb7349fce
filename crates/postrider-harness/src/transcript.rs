//! `postrider-harness run`: plays the client side of an SMTP transcript through the real
//! server state machine ([`postrider_smtp::server::Session`]) with the plugin chain deciding
//! as in the relay's session (built-in policy: accept everything), and prints both sides.

use std::sync::Arc;

use postrider_plugin_host::{ConnInfo, Pipeline, Stage, apply_edits};
use postrider_smtp::server::{Misuse, Session, SessionConfig, TimeoutPhase};
use postrider_stages::{Driver, StageRun};

use crate::policy::{HOSTNAME, HarnessPolicy, answer_events};
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
/// a leading `C: ` is dropped, `S: ` lines are ignored) through the relay's stage driver and
/// returns the dialogue.
pub async fn play(
    pipeline: &Arc<Pipeline>,
    conn: ConnInfo,
    transcript: &str,
    clock_ms: u64,
    trace: bool,
) -> Result<String, TranscriptError> {
    let mut out = Dialogue {
        text: String::new(),
        trace,
    };
    let config = SessionConfig {
        hostname: HOSTNAME.into(),
        ..SessionConfig::default()
    };
    let mut session = Session::new(config, conn.tls.is_some());
    let mut queued = 1u64;
    let mut policy = HarnessPolicy::new(queue_id(queued), clock_ms);
    out.trace_note(&format!("connect: {}", describe_conn(&conn)));
    let mut driver = Driver::new(Some(pipeline.session(true)), conn, HOSTNAME);
    driver.connect(&mut session).await?;
    out.runs(driver.take_runs());
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
        let stored = answer_events(&mut session, &mut driver, &mut policy, |runs| {
            out.runs(runs)
        })
        .await?;
        for (id, envelope) in stored {
            queued += 1;
            policy.queue_id = queue_id(queued);
            if !pipeline.wants(Stage::Route) {
                continue;
            }
            for rcpt in &envelope.recipients {
                let run =
                    postrider_stages::route(pipeline, &id, &envelope, &rcpt.address, true).await;
                out.runs(vec![run]);
            }
        }
        out.server(&session.take_output());
    }
    if !session.is_closed() {
        out.note("end of transcript (connection still open)");
    }
    Ok(out.text)
}

/// The queue id of the `n`th message of a transcript.
fn queue_id(n: u64) -> String {
    format!("H{n:05}")
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

    /// Notes what each stage did: its plugin calls (when tracing), rewrites, header edits,
    /// quarantine and routes.
    fn runs(&mut self, runs: Vec<StageRun>) {
        for run in runs {
            if run.stage == Stage::MailFrom
                && let Some(env) = &run.envelope
            {
                self.trace_note(&format!("mail-from: {}", describe_env(env)));
            }
            self.calls(run.stage.name(), call_reports!(run.calls));
            if let Some(new) = &run.rewrite
                && matches!(run.decision.kind(), "continue" | "accept")
            {
                self.note(&format!("recipient rewritten to <{new}>"));
            }
            if run.stage == Stage::Data && matches!(run.decision.kind(), "continue" | "accept") {
                for e in &run.edits {
                    self.note(&format!("header edit: {}", describe_edit(e)));
                }
                if let Some(q) = &run.quarantine {
                    self.note(&format!("quarantined: {q}"));
                }
                if self.trace
                    && let Some(message) = &run.message
                {
                    let edited = apply_edits(message, &run.edits);
                    let text = String::from_utf8_lossy(&edited);
                    let end = text.find("\r\n\r\n").unwrap_or(text.len());
                    self.note("headers as they would be queued:");
                    for l in text[..end].split("\r\n") {
                        self.note(&format!("  | {l}"));
                    }
                }
            }
            if let (Some(route), Some(rcpt)) = (&run.route, &run.rcpt) {
                self.note(&format!("route <{rcpt}>: {}", describe_route(route)));
            }
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
