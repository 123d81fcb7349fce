//! Queue administration: list, show, retry, delete, hold and release. The same operations
//! serve the admin socket of a running relay (under the queue manager's per-message lock)
//! and the `postrider queue` command on a stopped relay's spool directory. The admin socket
//! also takes `{"cmd":"reload"}` (`postrider reload`) and `{"cmd":"status"}`
//! (`postrider status`), answered by the running relay.

use std::time::{SystemTime, UNIX_EPOCH};

use postrider_queue::state::{MessageState, QueueState, RcptState, RcptStatus};
use postrider_queue::{QueueId, Spool, SpoolError};
use serde::{Deserialize, Serialize};

/// A request on the admin socket (one JSON line); also the `postrider queue` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// List queued messages (ID, age, size, state, pending/all recipients, sender, last reply).
    List,
    /// Show one message: envelope, per-recipient state, header.
    Show {
        /// Queue ID.
        id: String,
    },
    /// Attempt delivery now: one message, or all.
    Retry {
        /// Queue ID (all messages when omitted).
        id: Option<String>,
    },
    /// Remove a message without delivering or bouncing it.
    Delete {
        /// Queue ID.
        id: String,
    },
    /// Stop delivery attempts of a message until released.
    Hold {
        /// Queue ID.
        id: String,
    },
    /// Release a held or quarantined message and attempt it now; recipients a route plugin
    /// held take the default route.
    Release {
        /// Queue ID.
        id: String,
    },
    /// Reload the configuration and plugins (`postrider reload`); only a running relay can.
    #[command(skip)]
    Reload,
    /// Listeners, plugins and queue summary (`postrider status`); only a running relay can.
    #[command(skip)]
    Status,
    /// A plugin's kv entries (`postrider kv`).
    #[command(skip)]
    Kv {
        /// What to do.
        kv: crate::kv_admin::KvRequest,
    },
    /// Today's and earlier unsent TLS reporting counts (`postrider tls-report`); with
    /// `send`, the reports go out now, today's counts so far included.
    #[command(skip)]
    TlsReport {
        /// Send instead of show.
        send: bool,
    },
}

/// One line of `queue list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Queue id.
    pub id: String,
    /// Seconds since it was received.
    pub age_secs: u64,
    /// Size of the spooled message in octets.
    pub size: u64,
    /// Reverse path ("" for the null sender).
    pub sender: String,
    /// Recipients still to deliver.
    pub pending: usize,
    /// All recipients.
    pub recipients: usize,
    /// "queued", "deferred", "held" or "quarantined".
    pub state: String,
    /// The last reply for a pending recipient, if any.
    pub reason: Option<String>,
}

/// `queue show`: the envelope, the delivery state and the message header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    /// The summary line.
    pub entry: Entry,
    /// The stored envelope.
    pub envelope: postrider_queue::Envelope,
    /// Per-recipient delivery state.
    pub delivery: Option<MessageState>,
    /// The message's header section.
    pub headers: String,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    /// `list`.
    List {
        /// Messages, oldest first.
        entries: Vec<Entry>,
    },
    /// `show`.
    Show {
        /// The message.
        detail: Box<Detail>,
    },
    /// The operation was done; how many messages it touched.
    Done {
        /// Messages changed.
        count: usize,
    },
    /// `status`: what the running relay is doing.
    Status {
        /// The relay's state.
        status: Box<crate::status::Status>,
    },
    /// `kv list`: a plugin's entries.
    Kv {
        /// Sorted by key.
        entries: Vec<crate::kv_admin::Item>,
    },
    /// `tls-report`: the RFC 8460 aggregate reports so far, one per day and domain.
    TlsReport {
        /// `{"reports": [...], "dropped-sessions": N}`.
        report: serde_json::Value,
    },
    /// `kv delete`: whether a live entry existed.
    Deleted {
        /// False when there was nothing to delete.
        existed: bool,
    },
    /// A reload succeeded: the number of the generation now in use.
    Ok {
        /// Generation number (1 is the configuration the relay started with).
        generation: u64,
    },
    /// The operation failed.
    Error {
        /// Why.
        message: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl From<Result<crate::kv_admin::Answer, String>> for Response {
    fn from(answer: Result<crate::kv_admin::Answer, String>) -> Response {
        match answer {
            Ok(crate::kv_admin::Answer::Entries(entries)) => Response::Kv { entries },
            Ok(crate::kv_admin::Answer::Deleted(existed)) => Response::Deleted { existed },
            Err(message) => Response::Error { message },
        }
    }
}

/// Parses a queue id given by an operator.
pub fn parse_id(text: &str) -> Result<QueueId, String> {
    text.parse::<QueueId>()
        .map_err(|_| format!("not a queue id: {text}"))
}

fn state_of(
    spool: &Spool,
    id: &QueueId,
    recipients: usize,
    received: u64,
) -> Result<MessageState, SpoolError> {
    Ok(spool
        .load_state(id)?
        .filter(|s| s.recipients.len() == recipients)
        .unwrap_or_else(|| MessageState::new(recipients, received)))
}

/// The summary of one message.
pub fn entry(spool: &Spool, id: &QueueId) -> Result<(Entry, Detail), SpoolError> {
    let (envelope, message) = spool.load(id)?;
    let delivery = spool.load_state(id)?;
    let state = delivery.clone().unwrap_or_else(|| {
        MessageState::new(envelope.recipients.len(), envelope.received_at_unix_ms)
    });
    let pending: Vec<_> = state
        .recipients
        .iter()
        .filter(|r| r.status == RcptStatus::Pending)
        .collect();
    let now = now_ms();
    let queue_state = state.queue_state(envelope.quarantine.is_some());
    let reason = envelope
        .quarantine
        .clone()
        .filter(|_| queue_state == QueueState::Quarantined)
        .or_else(|| pending.iter().find_map(|r| r.shown_reply()));
    let entry = Entry {
        id: id.to_string(),
        age_secs: now.saturating_sub(envelope.received_at_unix_ms) / 1000,
        size: message.len() as u64,
        sender: envelope.mail_from.clone(),
        pending: pending.len(),
        recipients: envelope.recipients.len(),
        state: queue_state.name().to_owned(),
        reason,
    };
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |i| i + 2);
    let detail = Detail {
        entry: entry.clone(),
        envelope,
        delivery,
        headers: String::from_utf8_lossy(&message[..head_end]).into_owned(),
    };
    Ok((entry, detail))
}

/// Every message, oldest first.
pub fn list(spool: &Spool) -> Result<Vec<Entry>, SpoolError> {
    let mut out = Vec::new();
    for id in spool.list()? {
        match entry(spool, &id) {
            Ok((e, _)) => out.push(e),
            // Removed while we were listing.
            Err(SpoolError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Makes every pending recipient of `id` due now; `release` also undoes holds and quarantine.
pub fn reschedule(spool: &Spool, id: &QueueId, release: bool) -> Result<(), SpoolError> {
    let (envelope, _) = spool.load(id)?;
    let mut state = state_of(
        spool,
        id,
        envelope.recipients.len(),
        envelope.received_at_unix_ms,
    )?;
    let now = now_ms();
    for r in state
        .recipients
        .iter_mut()
        .filter(|r| r.status == RcptStatus::Pending)
    {
        if release && r.route_hold.take().is_some() {
            // Held by a route plugin: from now on its hold gives way to the default route.
            r.hold_released = true;
        }
        if r.route_hold.is_none() {
            r.next_attempt_ms = now;
        }
    }
    if release {
        state.held = false;
        state.quarantine_released = envelope.quarantine.is_some();
    }
    spool.save_state(id, &state)
}

/// Puts `id` on hold.
pub fn hold(spool: &Spool, id: &QueueId) -> Result<(), SpoolError> {
    let (envelope, _) = spool.load(id)?;
    let mut state = state_of(
        spool,
        id,
        envelope.recipients.len(),
        envelope.received_at_unix_ms,
    )?;
    state.held = true;
    spool.save_state(id, &state)
}

/// Runs one request against a spool no queue manager is using (the relay is stopped, or the
/// caller holds the manager's lock on the message).
pub fn run_offline(spool: &Spool, request: &Request) -> Response {
    let result = (|| -> Result<Response, String> {
        let e = |e: SpoolError| e.to_string();
        Ok(match request {
            Request::List => Response::List {
                entries: list(spool).map_err(e)?,
            },
            Request::Show { id } => Response::Show {
                detail: Box::new(entry(spool, &parse_id(id)?).map_err(e)?.1),
            },
            Request::Retry { id: Some(id) } => {
                reschedule(spool, &parse_id(id)?, false).map_err(e)?;
                Response::Done { count: 1 }
            }
            Request::Retry { id: None } => {
                let ids = spool.list().map_err(e)?;
                for id in &ids {
                    reschedule(spool, id, false).map_err(e)?;
                }
                Response::Done { count: ids.len() }
            }
            Request::Delete { id } => {
                spool.remove(&parse_id(id)?).map_err(e)?;
                Response::Done { count: 1 }
            }
            Request::Hold { id } => {
                hold(spool, &parse_id(id)?).map_err(e)?;
                Response::Done { count: 1 }
            }
            Request::Release { id } => {
                reschedule(spool, &parse_id(id)?, true).map_err(e)?;
                Response::Done { count: 1 }
            }
            Request::Reload => return Err("only a running relay can reload".into()),
            Request::Status => return Err("the relay is not running".into()),
            Request::Kv { .. } => return Err("the spool holds no kv entries".into()),
            Request::TlsReport { .. } => {
                return Err("the TLS reporting counts are kept by the running relay".into());
            }
        })
    })();
    result.unwrap_or_else(|message| Response::Error { message })
}

/// Renders a response for people.
pub fn render(response: &Response) -> String {
    match response {
        Response::List { entries } if entries.is_empty() => "queue is empty\n".to_owned(),
        Response::List { entries } => {
            let mut out = format!(
                "{:<17}  {:>7}  {:>8}  {:<11}  {:>5}  {:<30}  {}\n",
                "ID", "AGE", "SIZE", "STATE", "RCPTS", "SENDER", "REASON"
            );
            for e in entries {
                let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
                out.push_str(&format!(
                    "{:<17}  {:>7}  {:>8}  {:<11}  {:>5}  {:<30}  {}\n",
                    e.id,
                    age(e.age_secs),
                    e.size,
                    e.state,
                    format!("{}/{}", e.pending, e.recipients),
                    sender,
                    e.reason.as_deref().unwrap_or("")
                ));
            }
            out
        }
        Response::Show { detail } => {
            let d = detail;
            let mut out = format!(
                "id: {}\nstate: {}\nage: {}\nsize: {}\nsender: <{}>\nclient: {} [{}] helo={} tls={} user={}\n",
                d.entry.id,
                d.entry.state,
                age(d.entry.age_secs),
                d.entry.size,
                d.envelope.mail_from,
                d.envelope.client.listener,
                d.envelope.client.ip,
                d.envelope.client.helo,
                d.envelope.client.tls.as_deref().unwrap_or("no"),
                d.envelope.client.authenticated.as_deref().unwrap_or("-"),
            );
            if let Some(q) = &d.envelope.quarantine {
                out.push_str(&format!("quarantine: {q}\n"));
            }
            out.push_str("recipients:\n");
            for (i, r) in d.envelope.recipients.iter().enumerate() {
                let st = d.delivery.as_ref().and_then(|s| s.recipients.get(i));
                let status = st.map_or("pending".to_owned(), |s| {
                    format!("{:?}", s.status).to_lowercase()
                });
                let attempts = st.map_or(0, |s| s.attempts);
                let reply = st.and_then(RcptState::shown_reply).unwrap_or_default();
                out.push_str(&format!(
                    "  <{}>  {status}  attempts={attempts}  {reply}\n",
                    r.address
                ));
            }
            out.push_str("headers:\n");
            out.push_str(&d.headers.replace("\r\n", "\n"));
            out
        }
        Response::Done { count } => format!("ok: {count} message(s)\n"),
        Response::Status { status } => crate::status::render(status),
        Response::Ok { generation } => format!("reloaded: configuration generation {generation}\n"),
        Response::Kv { entries } => crate::kv_admin::render(entries),
        Response::TlsReport { report } => format!("{report:#}\n"),
        Response::Deleted { existed: true } => "deleted\n".to_owned(),
        Response::Deleted { existed: false } => "no such entry\n".to_owned(),
        Response::Error { message } => format!("error: {message}\n"),
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
