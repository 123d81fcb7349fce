//! The queue manager: schedules spooled messages, routes each recipient (static routes, then
//! route-stage plugins, then MX), delivers per destination with concurrency limits, retries
//! with backoff, and bounces (RFC 3464 DSN) what cannot be delivered. A message leaves the
//! spool only when every recipient is delivered, bounced or discarded.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postrider_config::Config;
use postrider_delivery::{Deliverer, Destination};
use postrider_metrics::{DeliveryResult, Metrics};
use postrider_queue::decide::{
    Outcome, Step, apply, decide, delay_warning_due, reply_status, temporary_status,
};
use postrider_queue::dsn::{
    DsnKind, DsnOptions, DsnRecipient, build_dsn_with, dsn_needs_smtputf8, wants_dsn,
};
use postrider_queue::schedule::RetryPolicy;
use postrider_queue::state::{MessageState, QueueState, RcptStatus};
use postrider_queue::{ClientInfo, Envelope, QueueId, Recipient, Spool, SpoolError};
use postrider_smtp::client::{OutboundMessage, OutboundRecipient, RcptResult};
use postrider_smtp::command::Body;
use tokio::sync::{Notify as Wake, Semaphore, mpsc};
use tracing::{info, warn};

use crate::generation::Current;
use crate::queue::admin::{Request, Response, parse_id, run_offline};
use crate::queue::route::{Plan, domain_of, reply_text, route};

/// One line per recipient and attempt, in the spirit of Postfix's smtp delivery lines: the
/// message is the status (delivered, deferred, bounced, expired); the fields say the queue
/// id, recipient, relay host, the TLS policy and what became of it (empty for LMTP and
/// Maildir), delay since reception (seconds), attempts so far, DSN status and the reply.
macro_rules! attempt_line {
    ($status:expr, $id:expr, $rcpt:expr, $relay:expr, $tls:expr, $received_ms:expr, $attempts:expr, $dsn:expr, $reply:expr $(, $($extra:tt)*)?) => {
        tracing::info!(
            queue_id = %$id,
            rcpt = %$rcpt,
            relay = %$relay.unwrap_or("none"),
            tls = %$tls.unwrap_or_default(),
            delay = delay_secs($received_ms),
            attempts = $attempts,
            dsn = %$dsn,
            reply = %$reply,
            $($($extra)*,)?
            "{}",
            $status
        )
    };
}

/// One pass over a message: what was loaded, and what the pass decided so far.
struct Pass<'a> {
    id: &'a QueueId,
    envelope: Envelope,
    message: Vec<u8>,
    state: MessageState,
    /// Recipients that failed in this pass and want a failure DSN.
    bounced: Vec<(usize, DsnRecipient)>,
}

/// An [`Outcome`] that owns its text.
enum Owned {
    Delivered(String),
    Temporary(String),
    Permanent(String, String),
    Held(String),
    Discarded,
}

impl Owned {
    fn borrow(&self) -> Outcome<'_> {
        match self {
            Owned::Delivered(reply) => Outcome::Delivered { reply },
            Owned::Temporary(reply) => Outcome::Temporary { reply },
            Owned::Permanent(status, reply) => Outcome::Permanent { status, reply },
            Owned::Held(reason) => Outcome::Held { reason },
            Owned::Discarded => Outcome::Discarded,
        }
    }
}

/// Tells the queue manager about new messages and carries out admin requests.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<QueueId>,
    manager: std::sync::Weak<Manager>,
}

impl QueueHandle {
    /// Schedules a message for immediate delivery (new, retried or released).
    pub fn submit(&self, id: QueueId) {
        let _ = self.tx.send(id);
    }

    /// Runs an admin request; changes wait for the message's lock, so they never race a
    /// delivery attempt of the same message.
    pub async fn admin(&self, request: Request) -> Response {
        let Some(manager) = self.manager.upgrade() else {
            return Response::Error {
                message: "queue manager stopped".into(),
            };
        };
        let ids: Vec<QueueId> = match &request {
            Request::List
            | Request::Show { .. }
            | Request::Reload
            | Request::Status
            | Request::Kv { .. } => Vec::new(),
            Request::TlsReport { send: false } => {
                let reports = manager
                    .tls_reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                return Response::TlsReport {
                    report: reports.to_json(&manager.reporter()),
                };
            }
            Request::TlsReport { send: true } => {
                let (sent, failed) = manager.send_tls_reports(true).await;
                return Response::TlsReport {
                    report: serde_json::json!({"sent": sent, "failed": failed}),
                };
            }
            Request::Retry { id: None } => manager.spool.list().unwrap_or_default(),
            Request::Retry { id: Some(id) }
            | Request::Delete { id }
            | Request::Hold { id }
            | Request::Release { id } => match parse_id(id) {
                Ok(id) => vec![id],
                Err(message) => return Response::Error { message },
            },
        };
        if ids.is_empty() {
            let spool = manager.spool.clone();
            return tokio::task::spawn_blocking(move || run_offline(&spool, &request))
                .await
                .unwrap_or_else(|e| Response::Error {
                    message: e.to_string(),
                });
        }
        let mut count = 0;
        for id in ids {
            let Some(_lock) = manager.lock(&id) else {
                if ids_is_single(&request) {
                    return Response::Error {
                        message: format!(
                            "{id} is being delivered right now; try again in a moment"
                        ),
                    };
                }
                continue;
            };
            let single = match &request {
                Request::Retry { .. } => Request::Retry {
                    id: Some(id.to_string()),
                },
                other => other.clone(),
            };
            let spool = manager.spool.clone();
            let response = tokio::task::spawn_blocking(move || run_offline(&spool, &single))
                .await
                .unwrap_or_else(|e| Response::Error {
                    message: e.to_string(),
                });
            match response {
                Response::Done { .. } => count += 1,
                other => return other,
            }
            match &request {
                Request::Delete { .. } => manager.track(&id, None),
                Request::Hold { .. } => manager.track(&id, Some("held")),
                _ => {}
            }
            if matches!(request, Request::Retry { .. } | Request::Release { .. }) {
                self.submit(id);
            }
        }
        Response::Done { count }
    }

    /// How many messages the queue manager knows in each state (queued, deferred, held,
    /// quarantined).
    pub fn summary(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = postrider_metrics::QUEUE_STATES
            .iter()
            .map(|s| ((*s).to_owned(), 0))
            .collect();
        if let Some(manager) = self.manager.upgrade() {
            let states = manager.states.lock().unwrap_or_else(|p| p.into_inner());
            for state in states.values() {
                *counts.entry((*state).to_owned()).or_default() += 1;
            }
        }
        counts
    }
}

fn ids_is_single(request: &Request) -> bool {
    !matches!(request, Request::Retry { id: None })
}

/// Holds a message's lock: one delivery task or admin change at a time.
struct MessageLock<'a> {
    manager: &'a Manager,
    id: QueueId,
}

impl Drop for MessageLock<'_> {
    fn drop(&mut self) {
        self.manager
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Everything a delivery task needs.
struct Manager {
    /// The current configuration generation: each routing decision uses the one current then.
    current: Current,
    spool: Spool,
    deliverer: Deliverer,
    policy: RetryPolicy,
    slots: Arc<Semaphore>,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
    inflight: Mutex<std::collections::HashSet<QueueId>>,
    tx: mpsc::UnboundedSender<QueueId>,
    metrics: Arc<Metrics>,
    /// The queue state of every message in the spool (for metrics and `postrider status`).
    states: Mutex<HashMap<QueueId, &'static str>>,
    /// Outbound TLS sessions under DANE and MTA-STS policies, for TLS reporting (RFC 8460).
    tls_reports: Mutex<postrider_tlsrpt::Aggregates>,
    /// Where reports are looked up and POSTed: the relay's resolver, the system's roots.
    reporting: Reporting,
}

/// What sending TLS reports needs besides the spool.
pub struct Reporting {
    /// The relay's resolver (`_smtp._tls` records, report hosts).
    pub dns: Arc<dyn postrider_plugin_host::Dns>,
    /// Roots to verify `https:` report hosts against.
    pub roots: postrider_delivery::TrustRoots,
}

impl Manager {
    /// The configuration of the current generation.
    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.current.load().config)
    }

    /// Records that `id` is now in `state` (`None`: no longer in the spool).
    fn track(&self, id: &QueueId, state: Option<&'static str>) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        let old = match state {
            Some(s) => states.insert(id.clone(), s),
            None => states.remove(id),
        };
        self.metrics.queue_moved(old, state);
    }

    /// Records `id` as queued unless its state is already known.
    fn track_new(&self, id: &QueueId) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        if !states.contains_key(id) {
            states.insert(id.clone(), "queued");
            self.metrics.queue_moved(None, Some("queued"));
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the queue manager: every message already in the spool is scheduled now.
/// Its retry policy and concurrency are those of the generation current at start.
pub fn start(
    current: Current,
    spool: Spool,
    deliverer: Deliverer,
    metrics: Arc<Metrics>,
    reporting: Reporting,
) -> QueueHandle {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = Arc::clone(&current.load().config);
    let d = &config.delivery;
    let policy = RetryPolicy {
        intervals: d
            .retry_intervals
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        max_age: Duration::from_secs(d.max_age),
        delay_warning: (d.delay_warning > 0).then(|| Duration::from_secs(d.delay_warning)),
    };
    let manager = Arc::new(Manager {
        slots: Arc::new(Semaphore::new(d.concurrency)),
        current,
        spool,
        deliverer,
        policy,
        per_destination: Mutex::new(HashMap::new()),
        inflight: Mutex::new(std::collections::HashSet::new()),
        tx: tx.clone(),
        metrics,
        states: Mutex::new(HashMap::new()),
        tls_reports: Mutex::new(load_tls_counts(&config.spool_dir)),
        reporting,
    });
    // The TLS reporting counts are saved every minute; the reports of each UTC day go out
    // once it is over (or at the first minute after a start, for days missed while down).
    {
        let manager = Arc::downgrade(&manager);
        tokio::spawn(async move {
            let mut day = String::new();
            let mut saved = String::new();
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(manager) = manager.upgrade() else {
                    return;
                };
                let today = postrider_tlsrpt::day_of(now_ms() / 1000);
                if today != day {
                    day = today;
                    manager.send_tls_reports(false).await;
                }
                manager.save_tls_counts(&mut saved).await;
            }
        });
    }
    let handle = QueueHandle {
        tx,
        manager: Arc::downgrade(&manager),
    };
    let due: Arc<Mutex<Schedule>> = Arc::new(Mutex::new(Schedule::default()));
    let wake = Arc::new(Wake::new());
    match manager.spool.list() {
        Ok(ids) => {
            let now = now_ms();
            let mut due = due.lock().unwrap_or_else(|p| p.into_inner());
            for id in ids {
                manager.track_new(&id);
                due.insert(id, now);
            }
        }
        Err(e) => warn!(error = %e, "listing the spool failed"),
    }
    // New, retried and released messages: due now.
    {
        let (due, wake, manager) = (Arc::clone(&due), Arc::clone(&wake), Arc::clone(&manager));
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                manager.track_new(&id);
                due.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, now_ms());
                wake.notify_one();
            }
        });
    }
    // The scheduler: runs what is due, sleeps until the next due time or a new message. A
    // message takes a working slot before it is loaded, so a huge queue is worked through a
    // bounded number of messages at a time.
    let working = Arc::new(Semaphore::new(
        config.delivery.concurrency.saturating_mul(2),
    ));
    tokio::spawn(async move {
        loop {
            let (ready, next) = due
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_due(now_ms());
            for id in ready {
                let Ok(permit) = Arc::clone(&working).acquire_owned().await else {
                    return;
                };
                let (manager, due, wake) =
                    (Arc::clone(&manager), Arc::clone(&due), Arc::clone(&wake));
                tokio::spawn(async move {
                    let again = manager.process(&id).await;
                    drop(permit);
                    if let Some(at) = again {
                        due.lock().unwrap_or_else(|p| p.into_inner()).insert(id, at);
                        wake.notify_one();
                    }
                });
            }
            let sleep = next.map_or(Duration::from_secs(3600), |t| {
                Duration::from_millis(t.saturating_sub(now_ms()))
            });
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = wake.notified() => {}
            }
        }
    });
    handle
}

/// When each queued message is due; a message is in it at most once, at its earliest time.
#[derive(Default)]
struct Schedule {
    by_time: BTreeMap<u64, Vec<QueueId>>,
    at: HashMap<QueueId, u64>,
}

impl Schedule {
    /// Schedules `id` at `time`, or earlier if it is already scheduled earlier.
    fn insert(&mut self, id: QueueId, time: u64) {
        if let Some(&old) = self.at.get(&id) {
            if old <= time {
                return;
            }
            if let Some(ids) = self.by_time.get_mut(&old) {
                ids.retain(|x| *x != id);
                if ids.is_empty() {
                    self.by_time.remove(&old);
                }
            }
        }
        self.at.insert(id.clone(), time);
        self.by_time.entry(time).or_default().push(id);
    }

    /// Takes every message due at `now`; also returns the next due time.
    fn pop_due(&mut self, now: u64) -> (Vec<QueueId>, Option<u64>) {
        let later = self.by_time.split_off(&now.saturating_add(1));
        let ready: Vec<QueueId> = std::mem::replace(&mut self.by_time, later)
            .into_values()
            .flatten()
            .collect();
        for id in &ready {
            self.at.remove(id);
        }
        (ready, self.by_time.keys().next().copied())
    }
}

fn destination_key(d: &Destination) -> String {
    match d {
        Destination::Mx { domain, .. } => format!("mx:{domain}"),
        Destination::Relay { host, port, .. } => format!("relay:{host}:{port}"),
        Destination::LmtpTcp { host, port } => format!("lmtp:{host}:{port}"),
        Destination::LmtpUnix(p) => format!("lmtp:unix:{}", p.display()),
        Destination::Maildir(p) => format!("maildir:{}", p.display()),
    }
}

impl Manager {
    /// Takes the message's lock, unless a delivery or admin change holds it.
    fn lock(&self, id: &QueueId) -> Option<MessageLock<'_>> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.insert(id.clone()).then(|| MessageLock {
            manager: self,
            id: id.clone(),
        })
    }

    /// Runs a spool operation on the blocking pool; `Err(None)` if the task itself failed.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, Option<SpoolError>> {
        let spool = self.spool.clone();
        match tokio::task::spawn_blocking(move || op(&spool)).await {
            Ok(r) => r.map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// Saves the delivery state; false (and a warning) if it could not be saved.
    async fn save(&self, id: &QueueId, state: &MessageState) -> bool {
        let (idc, st) = (id.clone(), state.clone());
        match self
            .blocking(move |spool| spool.save_state(&idc, &st))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!(queue_id = %id, error = ?e, "could not save delivery state");
                false
            }
        }
    }

    /// Attempts the due recipients of one message; returns when to come back, if ever.
    async fn process(&self, id: &QueueId) -> Option<u64> {
        let Some(_lock) = self.lock(id) else {
            // Another task or an admin change has it; look again shortly.
            return Some(now_ms().saturating_add(1000));
        };
        let mut pass = match self.load(id).await {
            Ok(pass) => pass,
            Err(next) => return next,
        };
        let quarantined = pass.envelope.quarantine.is_some();
        if pass.state.held || (quarantined && !pass.state.quarantine_released) {
            self.track(id, Some(pass.state.queue_state(quarantined).name()));
            return None;
        }
        let groups = self.plan(&mut pass).await;
        self.deliver(&mut pass, groups).await;
        self.notify_sender(&mut pass).await;
        self.finish(pass).await
    }

    /// Loads a message and its delivery state; `Err` says when to look again, if ever.
    async fn load<'a>(&self, id: &'a QueueId) -> Result<Pass<'a>, Option<u64>> {
        let soon = Some(now_ms().saturating_add(60_000));
        let idc = id.clone();
        let (envelope, message) = match self.blocking(move |spool| spool.load(&idc)).await {
            Ok(x) => x,
            // Deleted by an operator meanwhile.
            Err(Some(SpoolError::NotFound { .. })) => {
                self.track(id, None);
                return Err(None);
            }
            Err(Some(e @ (SpoolError::Corrupt { .. } | SpoolError::UnsupportedVersion { .. }))) => {
                warn!(queue_id = %id, error = %e, "queued message unreadable; left for an operator");
                self.track(id, None);
                return Err(None);
            }
            Err(e) => {
                warn!(queue_id = %id, error = ?e, "cannot load queued message; trying again later");
                return Err(soon);
            }
        };
        let state = match self.spool.load_state(id) {
            Ok(Some(s)) if s.recipients.len() == envelope.recipients.len() => s,
            Ok(Some(_)) => {
                warn!(queue_id = %id, "delivery state does not match the envelope; left for an operator");
                self.track(id, Some(QueueState::Held.name()));
                return Err(None);
            }
            Ok(None) => MessageState::new(envelope.recipients.len(), envelope.received_at_unix_ms),
            // Never guess: a fresh state would deliver again to recipients already done.
            Err(e) => {
                warn!(queue_id = %id, error = %e, "cannot read delivery state; trying again later");
                return Err(soon);
            }
        };
        Ok(Pass {
            id,
            envelope,
            message,
            state,
            bounced: Vec::new(),
        })
    }

    /// Routes every due recipient: those to deliver, grouped by destination, are returned;
    /// the others (held, discarded, bounced, deferred by their route) are settled here.
    async fn plan(&self, pass: &mut Pass<'_>) -> Vec<(Destination, Vec<usize>)> {
        let now = now_ms();
        let hops = count_received(&pass.message);
        let mut groups: Vec<(Destination, Vec<usize>)> = Vec::new();
        for i in 0..pass.envelope.recipients.len() {
            let st = &pass.state.recipients[i];
            if st.status != RcptStatus::Pending
                || st.route_hold.is_some()
                || st.next_attempt_ms > now
            {
                continue;
            }
            let plan = if hops > self.config().delivery.max_hops {
                Plan::Bounce(
                    "5.4.6".into(),
                    format!("554 5.4.6 Too many hops ({hops} Received headers): mail loop"),
                )
            } else {
                route(
                    &self.current.load_full(),
                    &self.metrics,
                    pass.id,
                    &pass.envelope,
                    &pass.envelope.recipients[i].address,
                    st.hold_released,
                )
                .await
            };
            let outcome = match plan {
                Plan::Deliver(dest) => {
                    match groups.iter_mut().find(|(d, _)| *d == dest) {
                        Some((_, v)) => v.push(i),
                        None => groups.push((dest, vec![i])),
                    }
                    continue;
                }
                Plan::Hold(reason) => Owned::Held(reason),
                Plan::Discard => Owned::Discarded,
                Plan::Bounce(status, text) => Owned::Permanent(status, text),
                Plan::Defer(reason) => {
                    pass.state.recipients[i].attempts += 1;
                    Owned::Temporary(format!("451 4.3.0 {reason}"))
                }
            };
            self.settle(pass, i, outcome.borrow(), None, None, now);
        }
        groups
    }

    /// Delivers to each destination in turn (messages run in parallel); the state is saved
    /// after each but the last, so a crash repeats at most one.
    async fn deliver(&self, pass: &mut Pass<'_>, groups: Vec<(Destination, Vec<usize>)>) {
        let last_group = groups.len().saturating_sub(1);
        for (g, (dest, idx)) in groups.into_iter().enumerate() {
            let (idx, attempt) = self
                .attempt(pass.id, &pass.envelope, &pass.message, dest, idx)
                .await;
            let remote = attempt.remote.clone();
            for (k, &i) in idx.iter().enumerate() {
                pass.state.recipients[i].attempts += 1;
                let outcome = match attempt.outcomes.get(k).map(|o| &o.result) {
                    None => Owned::Temporary("451 4.3.0 No result for this recipient".into()),
                    Some(RcptResult::Accepted(r)) => Owned::Delivered(reply_text(r)),
                    Some(RcptResult::Temporary(r)) => Owned::Temporary(reply_text(r)),
                    Some(RcptResult::Permanent(r)) => Owned::Permanent(
                        r.enhanced()
                            .map_or_else(|| "5.0.0".to_owned(), |e| e.to_string()),
                        reply_text(r),
                    ),
                };
                self.settle(
                    pass,
                    i,
                    outcome.borrow(),
                    remote.clone(),
                    attempt.tls.as_deref(),
                    now_ms(),
                );
            }
            // The last group's result is saved (or the message removed) by `finish`.
            if g < last_group {
                self.save(pass.id, &pass.state).await;
            }
        }
    }

    /// Queues the DSNs this pass owes the sender: a delay warning (once), and the failures.
    async fn notify_sender(&self, pass: &mut Pass<'_>) {
        let Pass {
            id,
            envelope,
            message,
            state,
            bounced,
        } = pass;
        if delay_warning_due(&self.policy, state, envelope.received_at_unix_ms, now_ms()) {
            let delayed: Vec<DsnRecipient> = envelope
                .recipients
                .iter()
                .zip(&state.recipients)
                .filter(|(r, s)| {
                    s.status == RcptStatus::Pending && wants_dsn(envelope, r, DsnKind::Delay)
                })
                .map(|(r, s)| DsnRecipient {
                    recipient: r.clone(),
                    status: temporary_status(s.last_reply.as_deref().unwrap_or(""), "4.0.0"),
                    diagnostic: s.last_reply.clone(),
                    remote_mta: None,
                })
                .collect();
            state.delay_warned = delayed.is_empty()
                || self
                    .send_dsn(id, envelope, message, &delayed, DsnKind::Delay)
                    .await;
        }
        if !bounced.is_empty() {
            let rcpts: Vec<DsnRecipient> = bounced.iter().map(|(_, r)| r.clone()).collect();
            if !self
                .send_dsn(id, envelope, message, &rcpts, DsnKind::Failure)
                .await
            {
                // The sender must hear about it: keep these recipients until the DSN is queued.
                for (i, _) in bounced.iter() {
                    state.recipients[*i].status = RcptStatus::Pending;
                    state.recipients[*i].next_attempt_ms = now_ms().saturating_add(60_000);
                }
            }
        }
    }

    /// Removes a finished message, or saves its state; returns when to look again, if ever.
    async fn finish(&self, pass: Pass<'_>) -> Option<u64> {
        let Pass {
            id,
            envelope,
            state,
            ..
        } = pass;
        let soon = Some(now_ms().saturating_add(60_000));
        if state.is_done() {
            let idc = id.clone();
            return match self.blocking(move |spool| spool.remove(&idc)).await {
                Ok(()) | Err(Some(SpoolError::NotFound { .. })) => {
                    info!(queue_id = %id, "removed");
                    self.track(id, None);
                    None
                }
                Err(e) => {
                    // Keep what was done, so the next pass only retries the removal.
                    warn!(queue_id = %id, error = ?e, "could not remove a finished message; trying again later");
                    self.save(id, &state).await;
                    soon
                }
            };
        }
        self.track(
            id,
            Some(state.queue_state(envelope.quarantine.is_some()).name()),
        );
        if !self.save(id, &state).await {
            return soon;
        }
        state.next_due_ms()
    }

    /// Delivers to one destination within the global and per-destination limits.
    async fn attempt(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        message: &[u8],
        dest: Destination,
        idx: Vec<usize>,
    ) -> (Vec<usize>, postrider_delivery::Attempt) {
        let key = destination_key(&dest);
        let per = {
            let mut map = self
                .per_destination
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            Arc::clone(map.entry(key.clone()).or_insert_with(|| {
                Arc::new(Semaphore::new(self.config().delivery.per_destination))
            }))
        };
        // Destination first: a slow destination must not sit on global slots while waiting.
        let _local = per.acquire().await;
        let _global = self.slots.acquire().await;
        let msg = outbound(envelope, message, &idx);
        tracing::debug!(queue_id = %id, destination = %key, rcpts = idx.len(), "delivery attempt");
        let started = std::time::Instant::now();
        // RFC 8689 section 5: REQUIRETLS wins over the header.
        let dest = if !envelope.require_tls && tls_not_required(message) {
            tracing::debug!(queue_id = %id, "TLS-Required: No: the recipient domain's TLS policies are ignored");
            without_recipient_policies(dest)
        } else {
            dest
        };
        let attempt = self.deliverer.deliver(&dest, &msg, message).await;
        self.metrics.delivery_attempt(started.elapsed());
        for (policy, result) in &attempt.sessions {
            self.metrics.outbound_tls(policy.name(), result.as_str());
        }
        if let Destination::Mx { domain, .. } = &dest
            && !attempt.tls_reports.is_empty()
        {
            let now = now_ms() / 1000;
            let mut reports = self.tls_reports.lock().unwrap_or_else(|p| p.into_inner());
            for (policy, result) in &attempt.tls_reports {
                reports.record(now, domain, policy, result.clone());
            }
        }
        (idx, attempt)
    }

    /// Records what became of recipient `i` after `outcome` (the pure decision of
    /// [`decide`]), logs it, counts it, and collects a failure DSN for it when one is due.
    fn settle(
        &self,
        pass: &mut Pass<'_>,
        i: usize,
        outcome: Outcome<'_>,
        remote: Option<String>,
        tls: Option<&str>,
        now: u64,
    ) {
        let Pass {
            id,
            envelope,
            state,
            bounced,
            ..
        } = pass;
        let id: &QueueId = id;
        let st = &mut state.recipients[i];
        let step = decide(
            &self.policy,
            envelope.received_at_unix_ms,
            now,
            st.attempts,
            &outcome,
        );
        apply(st, &outcome, &step);
        let rcpt = &envelope.recipients[i].address;
        let domain = domain_of(rcpt);
        let (reply, status) = match (&outcome, &step) {
            (Outcome::Held { reason }, _) => {
                info!(queue_id = %id, rcpt = %rcpt, reason = %reason, "held");
                return;
            }
            (Outcome::Discarded, _) => {
                info!(queue_id = %id, rcpt = %rcpt, "discarded by route");
                self.metrics.delivery(DeliveryResult::Discarded, domain);
                return;
            }
            (Outcome::Delivered { reply }, _) => (*reply, reply_status(reply, "2.0.0")),
            (_, Step::Bounced { status } | Step::Expired { status }) => {
                (st.last_reply.as_deref().unwrap_or_default(), status.clone())
            }
            (Outcome::Temporary { reply }, _) | (Outcome::Permanent { reply, .. }, _) => {
                (*reply, reply_status(reply, "4.0.0"))
            }
        };
        let relay = remote.as_deref();
        match &step {
            Step::Deferred { retry_at_ms } => attempt_line!(
                step.name(),
                id,
                rcpt,
                relay,
                tls,
                envelope.received_at_unix_ms,
                st.attempts,
                status,
                reply,
                retry_in = retry_at_ms.saturating_sub(now) / 1000
            ),
            _ => attempt_line!(
                step.name(),
                id,
                rcpt,
                relay,
                tls,
                envelope.received_at_unix_ms,
                st.attempts,
                status,
                reply
            ),
        }
        let result = match step {
            Step::Delivered => DeliveryResult::Delivered,
            Step::Deferred { .. } => DeliveryResult::Deferred,
            Step::Bounced { .. } => DeliveryResult::Bounced,
            Step::Expired { .. } => DeliveryResult::Expired,
            Step::Held | Step::Discarded => return,
        };
        self.metrics.delivery(result, domain);
        if matches!(result, DeliveryResult::Bounced | DeliveryResult::Expired)
            && wants_dsn(envelope, &envelope.recipients[i], DsnKind::Failure)
        {
            bounced.push((
                i,
                DsnRecipient {
                    recipient: envelope.recipients[i].clone(),
                    status,
                    diagnostic: Some(reply.to_owned()),
                    remote_mta: remote,
                },
            ));
        }
    }

    /// Writes the TLS reporting counts to the spool directory when they changed since
    /// `saved` (a new file renamed over the old).
    async fn save_tls_counts(&self, saved: &mut String) {
        let state = {
            let counts = self.tls_reports.lock().unwrap_or_else(|p| p.into_inner());
            counts.to_state().to_string()
        };
        if state == *saved {
            return;
        }
        let path = self.config().spool_dir.join(TLS_COUNTS_FILE);
        let tmp = path.with_extension("tmp");
        let written = async {
            tokio::fs::write(&tmp, &state).await?;
            tokio::fs::rename(&tmp, &path).await
        };
        match written.await {
            Ok(()) => *saved = state,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "cannot save the TLS reporting counts")
            }
        }
    }

    /// Who TLS reports come from: this relay's host name and its postmaster.
    fn reporter(&self) -> postrider_tlsrpt::Reporter {
        let config = self.config();
        postrider_tlsrpt::Reporter {
            organization: config.hostname.clone(),
            contact: format!("postmaster@{}", config.hostname),
        }
    }

    /// Sends the TLS reports (RFC 8460 section 5) of the UTC days that are over, or with
    /// `today_too` of every day counted so far, to the `rua` addresses of each domain's
    /// `_smtp._tls` record, and forgets those days; a domain without a record gets none.
    /// Returns how many reports went out and each failure.
    async fn send_tls_reports(&self, today_too: bool) -> (usize, Vec<String>) {
        use postrider_tlsrpt::{day_of, file_name, gzip, mail};
        let reporter = self.reporter();
        let today = day_of(now_ms() / 1000);
        let due: Vec<(String, String, serde_json::Value)> = {
            let mut counts = self.tls_reports.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            for day in counts.days() {
                if day >= today && !today_too {
                    continue;
                }
                for domain in counts.domains(&day) {
                    if let Some(report) = counts.report(&day, &domain, &reporter) {
                        due.push((day.clone(), domain, report));
                    }
                }
                counts.remove_day(&day);
            }
            due
        };
        let (mut sent, mut failed) = (0, Vec::new());
        for (day, domain, report) in due {
            let rua = match super::tls_reports::rua(&*self.reporting.dns, &domain).await {
                Ok(rua) => rua,
                Err(e) => {
                    tracing::debug!(domain = %domain, error = %e, "no TLS reporting address");
                    continue;
                }
            };
            let begin = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map_or(0, |t| t.and_utc().timestamp().max(0) as u64);
            let unique = now_ms().to_string();
            let file = file_name(
                &reporter.organization,
                &domain,
                begin,
                begin + 86_399,
                &unique,
            );
            let gzipped = gzip(&report);
            let id = report["report-id"].as_str().unwrap_or_default().to_owned();
            for uri in rua {
                let result = match super::tls_reports::mailto(&uri) {
                    Some(to) => {
                        let date = chrono::Utc::now().to_rfc2822();
                        let org = &reporter.organization;
                        let bytes = mail(
                            &reporter.contact,
                            to,
                            &domain,
                            org,
                            &id,
                            &file,
                            &gzipped,
                            &date,
                        );
                        self.spool_report(&reporter.contact, to, bytes).await
                    }
                    None => {
                        let (dns, roots) = (&*self.reporting.dns, &self.reporting.roots);
                        super::tls_reports::post(dns, roots, &uri, gzipped.clone()).await
                    }
                };
                match result {
                    Ok(()) => {
                        info!(domain = %domain, day = %day, to = %uri, "TLS report sent");
                        sent += 1;
                    }
                    Err(e) => {
                        warn!(domain = %domain, day = %day, to = %uri, error = %e, "TLS report not sent");
                        failed.push(format!("{domain} {uri}: {e}"));
                    }
                }
            }
        }
        (sent, failed)
    }

    /// Spools a TLS report email from `from` to `to` for delivery like any message.
    async fn spool_report(&self, from: &str, to: &str, message: Vec<u8>) -> Result<(), String> {
        let envelope = self.local_envelope(from, to, "tls-report", false, Body::SevenBit);
        let id = self
            .spool
            .store(envelope, message)
            .await
            .map_err(|e| e.to_string())?;
        info!(queue_id = %id, to = %to, "TLS report queued");
        let _ = self.tx.send(id);
        Ok(())
    }

    /// The envelope of a message the relay writes itself (a DSN, a TLS report): from
    /// `from` to `to`, received now from this host on the pseudo-listener `listener`.
    fn local_envelope(
        &self,
        from: &str,
        to: &str,
        listener: &str,
        smtputf8: bool,
        body: Body,
    ) -> Envelope {
        Envelope {
            received_at_unix_ms: now_ms(),
            mail_from: from.to_owned(),
            smtputf8,
            body: Some(body),
            ret: None,
            envid: None,
            size_param: None,
            recipients: vec![Recipient {
                address: to.to_owned(),
                notify: None,
                orcpt: None,
            }],
            client: ClientInfo {
                ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                port: 0,
                listener: listener.into(),
                helo: self.config().hostname.clone(),
                tls: None,
                authenticated: None,
                reverse_dns: None,
                session: None,
                server: None,
                sni: None,
            },
            quarantine: None,
            spf: None,
            require_tls: false,
        }
    }

    /// Queues a DSN to the original sender (never for the null sender).
    async fn send_dsn(
        &self,
        id: &QueueId,
        envelope: &Envelope,
        message: &[u8],
        rcpts: &[DsnRecipient],
        kind: DsnKind,
    ) -> bool {
        if envelope.mail_from.is_empty() {
            return true;
        }
        let options = DsnOptions {
            will_retry_until: Some(
                UNIX_EPOCH
                    + Duration::from_millis(self.policy.deadline_ms(envelope.received_at_unix_ms)),
            ),
            ..DsnOptions::default()
        };
        // A REQUIRETLS message's DSN returns its header only and goes back under
        // REQUIRETLS itself: the content must not travel where the sender forbade it.
        let headers_only;
        let original = if envelope.require_tls {
            headers_only = Envelope {
                ret: Some(postrider_smtp::command::Ret::Hdrs),
                ..envelope.clone()
            };
            &headers_only
        } else {
            envelope
        };
        let dsn = build_dsn_with(
            &self.config().hostname,
            original,
            message,
            rcpts,
            kind,
            SystemTime::now(),
            &options,
        );
        let smtputf8 = dsn_needs_smtputf8(envelope, message, rcpts);
        let mut dsn_envelope = self.local_envelope(
            "",
            &envelope.mail_from,
            "bounce",
            smtputf8,
            Body::EightBitMime,
        );
        dsn_envelope.require_tls = envelope.require_tls;
        match self.spool.store(dsn_envelope, dsn).await {
            Ok(dsn_id) => {
                let kind = match kind {
                    DsnKind::Failure => "failure",
                    DsnKind::Delay => "delay",
                };
                info!(queue_id = %id, dsn_queue_id = %dsn_id, to = %envelope.mail_from, kind, "DSN queued");
                self.metrics.dsn(kind);
                let _ = self.tx.send(dsn_id);
                true
            }
            Err(e) => {
                warn!(error = %e, "could not queue a DSN");
                false
            }
        }
    }
}

/// The TLS reporting counts' file in the spool directory.
const TLS_COUNTS_FILE: &str = "tls-rpt.json";

/// The TLS reporting counts saved by a previous run, if any.
fn load_tls_counts(spool_dir: &std::path::Path) -> postrider_tlsrpt::Aggregates {
    let path = spool_dir.join(TLS_COUNTS_FILE);
    match std::fs::read(&path).map(|b| serde_json::from_slice::<serde_json::Value>(&b)) {
        Ok(Ok(state)) => postrider_tlsrpt::Aggregates::from_state(&state),
        Ok(Err(e)) => {
            warn!(file = %path.display(), error = %e, "unreadable TLS reporting counts ignored");
            postrider_tlsrpt::Aggregates::default()
        }
        Err(_) => postrider_tlsrpt::Aggregates::default(),
    }
}

/// Seconds since `received_ms`, to the millisecond.
fn delay_secs(received_ms: u64) -> f64 {
    now_ms().saturating_sub(received_ms) as f64 / 1000.0
}

/// The lines of `message`'s header section (unfolded lines count as their own).
fn header_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let head = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message, |i| &message[..i + 2]);
    head.split(|&b| b == b'\n')
}

fn count_received(message: &[u8]) -> usize {
    header_lines(message)
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// The message carries `TLS-Required: No` (RFC 8689 section 5): its sender asks that the
/// recipient domain's DANE and MTA-STS policies be ignored for it.
fn tls_not_required(message: &[u8]) -> bool {
    const NAME: &[u8] = b"tls-required:";
    header_lines(message).any(|l| {
        l.len() > NAME.len()
            && l[..NAME.len()].eq_ignore_ascii_case(NAME)
            && l[NAME.len()..].trim_ascii().eq_ignore_ascii_case(b"no")
    })
}

/// `dest` with the recipient domain's TLS policies (DANE, MTA-STS, `auto`) turned into
/// opportunistic TLS, for a message that says `TLS-Required: No`; the operator's own
/// levels (`verify`, `require`, `none`) stay.
fn without_recipient_policies(dest: Destination) -> Destination {
    use postrider_smtp::client::TlsPolicy;
    match dest {
        Destination::Mx {
            domain,
            tls: TlsPolicy::Dane | TlsPolicy::MtaSts | TlsPolicy::Auto,
            roots,
        } => Destination::Mx {
            domain,
            tls: TlsPolicy::Opportunistic,
            roots,
        },
        other => other,
    }
}

fn outbound(envelope: &Envelope, message: &[u8], idx: &[usize]) -> OutboundMessage {
    OutboundMessage {
        from: envelope.mail_from.clone(),
        recipients: idx
            .iter()
            .map(|i| {
                let r = &envelope.recipients[*i];
                OutboundRecipient {
                    address: r.address.clone(),
                    notify: r.notify,
                    orcpt: r
                        .orcpt
                        .as_ref()
                        .and_then(|o| o.split_once(';'))
                        .map(|(t, a)| (t.to_owned(), a.to_owned())),
                }
            })
            .collect(),
        size: message.len() as u64,
        eight_bit: message.iter().any(|b| *b >= 0x80),
        smtputf8: envelope.smtputf8,
        ret: envelope.ret,
        envid: envelope.envid.clone(),
        require_tls: envelope.require_tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_required_no_is_read_from_the_header_only() {
        assert!(tls_not_required(
            b"Subject: x\r\nTLS-Required: No\r\n\r\nbody"
        ));
        assert!(tls_not_required(b"tls-required:no\r\n\r\n"));
        assert!(!tls_not_required(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!tls_not_required(b"Subject: x\r\n\r\nTLS-Required: No\r\n"));
        assert!(!tls_not_required(b"X-TLS-Required: No\r\n\r\n"));
        assert_eq!(
            count_received(b"Received: a\r\nreceived: b\r\n\r\nReceived: c\r\n"),
            2
        );
    }
}
