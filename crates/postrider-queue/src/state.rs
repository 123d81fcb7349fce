//! Where a queued message and each of its recipients stand: the typed delivery state the
//! queue manager decides on ([`crate::decide`]). How it is stored beside each spool entry is
//! `state_file`'s business.

use serde::{Deserialize, Serialize};

/// Where one recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptStatus {
    /// Not yet delivered; due at `next_attempt_ms`.
    Pending,
    /// Accepted by the next hop (or the local store): never attempted again.
    Delivered,
    /// Rejected permanently (5xx); a failure DSN is due if the sender wants one.
    Bounced,
    /// Gave up after the retry policy's `max_age`: bounced as expired.
    Expired,
    /// Dropped on purpose (operator or policy), without a DSN.
    Discarded,
}

impl RcptStatus {
    /// Whether the recipient still awaits delivery.
    pub fn is_pending(self) -> bool {
        self == Self::Pending
    }
}

/// The delivery state of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptState {
    /// Where the recipient stands.
    pub status: RcptStatus,
    /// Delivery attempts made so far (successful or not).
    pub attempts: u32,
    /// The last reply from the remote side (e.g. `"451 4.7.1 try later"`), for logs and DSNs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply: Option<String>,
    /// When the next attempt is due, in milliseconds since the Unix epoch (meaningful while
    /// pending and not held).
    pub next_attempt_ms: u64,
    /// Why a route plugin holds this pending recipient: it waits for an operator's release
    /// (`postrider queue release`). Files written before this field marked such a recipient
    /// with `next_attempt_ms` = `u64::MAX` and a `"held: REASON"` reply; reading one turns
    /// that into this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_hold: Option<String>,
    /// How the recipient is routed, e.g. `"mx"` or `"relay:host:port"`, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// An operator released a hold a route plugin put on this recipient: routing now takes
    /// the default route when a plugin says hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hold_released: bool,
}

impl RcptState {
    /// What an operator is shown for this recipient: `held: REASON` while a route holds it,
    /// else the last reply.
    pub fn shown_reply(&self) -> Option<String> {
        match &self.route_hold {
            Some(reason) => Some(format!("held: {reason}")),
            None => self.last_reply.clone(),
        }
    }
}

/// The delivery state of a whole message, persisted by [`crate::Spool::save_state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageState {
    /// One entry per envelope recipient, in the same order as `Envelope::recipients`.
    pub recipients: Vec<RcptState>,
    /// Whether an operator put the message on hold: it is not attempted until released.
    #[serde(default)]
    pub held: bool,
    /// Whether the sender has been sent a delay DSN already.
    #[serde(default)]
    pub delay_warned: bool,
    /// Whether an operator released a message a plugin had quarantined.
    #[serde(default)]
    pub quarantine_released: bool,
}

impl MessageState {
    /// The state of a fresh message: every recipient pending and due at `now_ms`.
    pub fn new(n_recipients: usize, now_ms: u64) -> MessageState {
        let fresh = RcptState {
            status: RcptStatus::Pending,
            attempts: 0,
            last_reply: None,
            next_attempt_ms: now_ms,
            route_hold: None,
            route: None,
            hold_released: false,
        };
        MessageState {
            recipients: vec![fresh; n_recipients],
            held: false,
            delay_warned: false,
            quarantine_released: false,
        }
    }

    /// Whether no recipient is pending any more, so the message can be removed.
    pub fn is_done(&self) -> bool {
        !self.recipients.iter().any(|r| r.status.is_pending())
    }

    /// The earliest `next_attempt_ms` among pending recipients a route does not hold: when
    /// to look at the message again, if ever.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.recipients
            .iter()
            .filter(|r| r.status.is_pending() && r.route_hold.is_none())
            .map(|r| r.next_attempt_ms)
            .min()
    }

    /// Where the message stands in the queue; `quarantined` says the envelope carries a
    /// quarantine reason.
    pub fn queue_state(&self, quarantined: bool) -> QueueState {
        let mut pending = self.recipients.iter().filter(|r| r.status.is_pending());
        if quarantined && !self.quarantine_released {
            QueueState::Quarantined
        } else if self.held || pending.clone().any(|r| r.route_hold.is_some()) {
            QueueState::Held
        } else if pending.any(|r| r.attempts > 0) {
            QueueState::Deferred
        } else {
            QueueState::Queued
        }
    }

    /// Turns the sentinel older files used for a route hold into [`RcptState::route_hold`].
    pub(crate) fn upgrade(mut self) -> MessageState {
        for r in &mut self.recipients {
            if r.status.is_pending() && r.route_hold.is_none() && r.next_attempt_ms == u64::MAX {
                let reason = r.last_reply.as_deref().unwrap_or("held");
                r.route_hold = Some(reason.strip_prefix("held: ").unwrap_or(reason).to_owned());
                r.last_reply = None;
            }
        }
        self
    }
}

/// Where a message stands in the queue, for `postrider queue` and the queue gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueState {
    /// Waiting for its first attempt.
    Queued,
    /// Attempted, and due again later.
    Deferred,
    /// On hold: by an operator, or a route plugin holds a recipient.
    Held,
    /// A plugin or DMARC quarantined it; an operator releases it.
    Quarantined,
}

impl QueueState {
    /// Every state, in gauge order.
    pub const ALL: [QueueState; 4] = [
        QueueState::Queued,
        QueueState::Deferred,
        QueueState::Held,
        QueueState::Quarantined,
    ];

    /// The word in listings and metrics: queued, deferred, held, quarantined.
    pub fn name(self) -> &'static str {
        match self {
            QueueState::Queued => "queued",
            QueueState::Deferred => "deferred",
            QueueState::Held => "held",
            QueueState::Quarantined => "quarantined",
        }
    }
}
