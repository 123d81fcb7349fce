//! The harness's side of the stage driver: the relay's built-in policy stands aside (every
//! recipient is accepted, no SPF or DKIM lookups), SPF and DKIM/DMARC/ARC results come from
//! the case, and the "spool" keeps the envelope for the route stage.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postrider_plugin_host::{Authentication, SpfCheck};
use postrider_queue::Envelope;
use postrider_smtp::address::{ForwardPath, ReversePath};
use postrider_smtp::reply::Reply;
use postrider_smtp::server::Misuse;
use postrider_smtp::server::{self as smtp, Session};
use postrider_stages::{Credentials, Driver, Handled, MessageResult, Policy, StageRun, Verified};

/// The SMTP host name the harness's session announces and writes in `Received`.
pub const HOSTNAME: &str = "harness.postrider.invalid";

/// The HELO name sent for a case that gives none (a client must greet before MAIL FROM).
pub const DEFAULT_HELO: &str = "client.harness.invalid";

/// What the harness answers where the relay would decide itself.
pub struct HarnessPolicy {
    /// SPF the envelope carries from MAIL FROM on (`None`: not checked).
    pub spf: Option<SpfCheck>,
    /// DKIM, DMARC and ARC the data stage sees.
    pub authentication: Option<Authentication>,
    /// The queue id a stored message gets.
    pub queue_id: String,
    /// The messages "stored", with their ids.
    pub stored: Vec<(String, Envelope)>,
    /// The case's clock, Unix ms (the `Received` header's date).
    pub clock_ms: u64,
}

impl HarnessPolicy {
    /// A policy giving stored messages `queue_id`.
    pub fn new(queue_id: String, clock_ms: u64) -> HarnessPolicy {
        HarnessPolicy {
            clock_ms,
            spf: None,
            authentication: None,
            queue_id,
            stored: Vec::new(),
        }
    }
}

impl Policy for HarnessPolicy {
    fn check_recipient(&self, _: &Session, _: &ForwardPath, _: bool) -> Result<(), Reply> {
        Ok(())
    }

    async fn check_sender(&mut self, _: &Session, _: &ReversePath) -> Option<SpfCheck> {
        self.spf.clone()
    }

    async fn authenticate(&mut self, _: Credentials<'_>) -> Result<String, Reply> {
        Err(Reply::local(
            535,
            (5, 7, 8),
            "Authentication is not simulated; use --auth-user",
        ))
    }

    async fn verify(&mut self, _: &Session, _: &mut smtp::Envelope) -> Verified {
        Verified {
            authentication: self.authentication.clone(),
            ..Verified::default()
        }
    }

    fn finish(&mut self, _: &Session, message: Vec<u8>) -> Vec<u8> {
        message
    }

    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.clock_ms)
    }

    fn queue_id(&mut self) -> String {
        self.queue_id.clone()
    }

    async fn store(&mut self, id: &str, envelope: Envelope, _: Vec<u8>) -> Result<(), Reply> {
        self.stored.push((id.to_owned(), envelope));
        Ok(())
    }
}

/// Answers every event the session has pending through the stage driver, as the relay's
/// session does (STARTTLS is refused: the harness has no TLS). `runs` gets each event's stage
/// runs as they happen; returns the stored messages as (queue id, envelope).
pub async fn answer_events(
    session: &mut Session,
    driver: &mut Driver,
    policy: &mut HarnessPolicy,
    mut runs: impl FnMut(Vec<StageRun>),
) -> Result<Vec<(String, Envelope)>, Misuse> {
    let mut stored = Vec::new();
    while let Some(event) = session.poll_event() {
        let handled = driver.handle(session, event, policy).await?;
        runs(driver.take_runs());
        match handled {
            Handled::Message(m) => {
                if let MessageResult::Queued(id) = m.result {
                    stored.push((id, m.envelope));
                }
            }
            Handled::StartTls => {
                session.reject(Reply::local(454, (4, 7, 0), "TLS not available"))?
            }
            Handled::Answered | Handled::Close => {}
        }
    }
    Ok(stored)
}
