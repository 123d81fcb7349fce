//! The queue manager's decisions, as pure functions over typed state (no IO, no clock): what
//! becomes of a recipient after an attempt or a routing decision ([`decide`], [`apply`]),
//! whether a delay warning is due ([`delay_warning_due`]), and when to look at a message
//! again ([`MessageState::next_due_ms`]).

use crate::schedule::{Retry, RetryPolicy};
use crate::state::{MessageState, RcptState, RcptStatus};

/// What happened to one recipient in this pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The next hop accepted it, with this reply.
    Delivered {
        /// The reply, as one line.
        reply: &'a str,
    },
    /// A temporary failure: a 4xx reply, no answer, or a route that defers.
    Temporary {
        /// The reply or reason, as one line.
        reply: &'a str,
    },
    /// A permanent failure: a 5xx reply, a bouncing route, a mail loop.
    Permanent {
        /// The enhanced status for the DSN, e.g. "5.1.1".
        status: &'a str,
        /// The reply, as one line.
        reply: &'a str,
    },
    /// A route plugin holds it until an operator releases it.
    Held {
        /// The plugin's reason.
        reason: &'a str,
    },
    /// A route plugin dropped it.
    Discarded,
}

/// What becomes of the recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Delivered: never attempted again.
    Delivered,
    /// Try again at this time (ms since the Unix epoch).
    Deferred {
        /// When.
        retry_at_ms: u64,
    },
    /// Bounced: a failure DSN with this status is due (if the sender wants one).
    Bounced {
        /// Enhanced status, e.g. "5.1.1".
        status: String,
    },
    /// Gave up after the queue's maximum age: a failure DSN with this status is due.
    Expired {
        /// The last temporary status made permanent ("4.2.2" becomes "5.2.2"), or 5.4.7.
        status: String,
    },
    /// Held by a route until an operator releases it.
    Held,
    /// Dropped without a DSN.
    Discarded,
}

impl Step {
    /// The word for logs: delivered, deferred, bounced, expired, held, discarded.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Delivered => "delivered",
            Step::Deferred { .. } => "deferred",
            Step::Bounced { .. } => "bounced",
            Step::Expired { .. } => "expired",
            Step::Held => "held",
            Step::Discarded => "discarded",
        }
    }
}

/// Decides what becomes of a recipient after `outcome`, given the attempts made so far
/// (this one included), when the message arrived and the time now.
pub fn decide(
    policy: &RetryPolicy,
    received_ms: u64,
    now_ms: u64,
    attempts: u32,
    outcome: &Outcome<'_>,
) -> Step {
    match *outcome {
        Outcome::Delivered { .. } => Step::Delivered,
        Outcome::Permanent { status, .. } => Step::Bounced {
            status: status.to_owned(),
        },
        Outcome::Held { .. } => Step::Held,
        Outcome::Discarded => Step::Discarded,
        Outcome::Temporary { reply } => match policy.next(received_ms, now_ms, attempts) {
            Retry::At(retry_at_ms) => Step::Deferred { retry_at_ms },
            // The last temporary reason, reported as the permanent failure it now is.
            Retry::GiveUp => Step::Expired {
                status: temporary_status(reply, "4.4.7").replacen('4', "5", 1),
            },
        },
    }
}

/// Records `step` (decided for `outcome`) in the recipient's state.
pub fn apply(state: &mut RcptState, outcome: &Outcome<'_>, step: &Step) {
    match *outcome {
        Outcome::Delivered { reply }
        | Outcome::Temporary { reply }
        | Outcome::Permanent { reply, .. } => state.last_reply = Some(reply.to_owned()),
        Outcome::Held { reason } => state.route_hold = Some(reason.to_owned()),
        Outcome::Discarded => {}
    }
    match step {
        Step::Delivered => state.status = RcptStatus::Delivered,
        Step::Deferred { retry_at_ms } => state.next_attempt_ms = *retry_at_ms,
        Step::Bounced { .. } => state.status = RcptStatus::Bounced,
        Step::Expired { .. } => state.status = RcptStatus::Expired,
        Step::Held => {}
        Step::Discarded => state.status = RcptStatus::Discarded,
    }
}

/// Whether the sender is due a delay warning for this message now: once, after the policy's
/// `delay_warning`, while a recipient is still pending.
pub fn delay_warning_due(
    policy: &RetryPolicy,
    state: &MessageState,
    received_ms: u64,
    now_ms: u64,
) -> bool {
    !state.delay_warned && !state.is_done() && policy.warn_due(received_ms, now_ms)
}

/// The enhanced status of a temporary reply ("451 4.7.1 ..." gives "4.7.1"), or `default`
/// when the reply carries no class-4 enhanced code.
pub fn temporary_status(reply: &str, default: &str) -> String {
    let status = reply_status(reply, default);
    if status.starts_with("4.") {
        status
    } else {
        default.to_owned()
    }
}

/// The enhanced status code in a reply line ("550 5.1.1 ..." gives "5.1.1"), or `default`.
pub fn reply_status(reply: &str, default: &str) -> String {
    reply
        .split(' ')
        .nth(1)
        .filter(|s| {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map_or_else(|| default.to_owned(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIN: u64 = 60_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            intervals: vec![Duration::from_secs(300), Duration::from_secs(600)],
            max_age: Duration::from_secs(3600),
            delay_warning: Some(Duration::from_secs(1800)),
        }
    }

    fn pending() -> RcptState {
        MessageState::new(1, 0).recipients.remove(0)
    }

    #[test]
    fn each_outcome_gives_its_step() {
        let p = policy();
        let rows: &[(Outcome<'_>, u64, u32, Step)] = &[
            (
                Outcome::Delivered {
                    reply: "250 2.0.0 ok",
                },
                0,
                1,
                Step::Delivered,
            ),
            (
                Outcome::Temporary {
                    reply: "451 4.7.1 later",
                },
                0,
                1,
                Step::Deferred {
                    retry_at_ms: 5 * MIN,
                },
            ),
            (
                Outcome::Temporary {
                    reply: "451 4.7.1 later",
                },
                10 * MIN,
                2,
                Step::Deferred {
                    retry_at_ms: 20 * MIN,
                },
            ),
            // The last interval repeats.
            (
                Outcome::Temporary {
                    reply: "451 4.7.1 later",
                },
                20 * MIN,
                7,
                Step::Deferred {
                    retry_at_ms: 30 * MIN,
                },
            ),
            // Due exactly at the maximum age: still attempted.
            (
                Outcome::Temporary {
                    reply: "421 4.4.2 gone",
                },
                50 * MIN,
                3,
                Step::Deferred {
                    retry_at_ms: 60 * MIN,
                },
            ),
            // Past it: expired, the last temporary status made permanent.
            (
                Outcome::Temporary {
                    reply: "452 4.2.2 mailbox full",
                },
                51 * MIN,
                3,
                Step::Expired {
                    status: "5.2.2".into(),
                },
            ),
            (
                Outcome::Temporary {
                    reply: "connection refused",
                },
                59 * MIN,
                4,
                Step::Expired {
                    status: "5.4.7".into(),
                },
            ),
            (
                Outcome::Permanent {
                    status: "5.1.1",
                    reply: "550 5.1.1 no such user",
                },
                0,
                1,
                Step::Bounced {
                    status: "5.1.1".into(),
                },
            ),
            (Outcome::Held { reason: "review" }, 0, 0, Step::Held),
            (Outcome::Discarded, 0, 0, Step::Discarded),
        ];
        for (outcome, now, attempts, step) in rows {
            assert_eq!(
                decide(&p, 0, *now, *attempts, outcome),
                *step,
                "{outcome:?} at {now}"
            );
        }
    }

    /// An outcome, its step, and the status, last reply, route hold and next attempt time
    /// the recipient has after it.
    type ApplyRow<'a> = (
        Outcome<'a>,
        Step,
        RcptStatus,
        Option<&'a str>,
        Option<&'a str>,
        u64,
    );

    #[test]
    fn applying_a_step_records_it() {
        let rows: &[ApplyRow<'_>] = &[
            (
                Outcome::Delivered { reply: "250 ok" },
                Step::Delivered,
                RcptStatus::Delivered,
                Some("250 ok"),
                None,
                0,
            ),
            (
                Outcome::Temporary { reply: "451 x" },
                Step::Deferred { retry_at_ms: 99 },
                RcptStatus::Pending,
                Some("451 x"),
                None,
                99,
            ),
            (
                Outcome::Temporary { reply: "451 x" },
                Step::Expired {
                    status: "5.4.7".into(),
                },
                RcptStatus::Expired,
                Some("451 x"),
                None,
                0,
            ),
            (
                Outcome::Permanent {
                    status: "5.1.1",
                    reply: "550 x",
                },
                Step::Bounced {
                    status: "5.1.1".into(),
                },
                RcptStatus::Bounced,
                Some("550 x"),
                None,
                0,
            ),
            (
                Outcome::Held { reason: "review" },
                Step::Held,
                RcptStatus::Pending,
                None,
                Some("review"),
                0,
            ),
            (
                Outcome::Discarded,
                Step::Discarded,
                RcptStatus::Discarded,
                None,
                None,
                0,
            ),
        ];
        for (outcome, step, status, reply, hold, next) in rows {
            let mut st = pending();
            apply(&mut st, outcome, step);
            assert_eq!(st.status, *status, "{outcome:?}");
            assert_eq!(st.last_reply.as_deref(), *reply, "{outcome:?}");
            assert_eq!(st.route_hold.as_deref(), *hold, "{outcome:?}");
            assert_eq!(st.next_attempt_ms, *next, "{outcome:?}");
        }
    }

    #[test]
    fn a_held_recipient_is_not_due_and_a_delay_warning_goes_out_once() {
        let p = policy();
        let mut state = MessageState::new(2, 0);
        apply(
            &mut state.recipients[0],
            &Outcome::Held { reason: "r" },
            &Step::Held,
        );
        assert_eq!(state.next_due_ms(), Some(0));
        state.recipients[1].next_attempt_ms = 7 * MIN;
        assert_eq!(state.next_due_ms(), Some(7 * MIN));
        state.recipients[1].status = RcptStatus::Delivered;
        assert_eq!(state.next_due_ms(), None, "only a route hold is left");

        let mut state = MessageState::new(1, 0);
        assert!(!delay_warning_due(&p, &state, 0, 29 * MIN));
        assert!(delay_warning_due(&p, &state, 0, 30 * MIN));
        state.delay_warned = true;
        assert!(!delay_warning_due(&p, &state, 0, 40 * MIN));
        let mut done = MessageState::new(1, 0);
        done.recipients[0].status = RcptStatus::Delivered;
        assert!(!delay_warning_due(&p, &done, 0, 40 * MIN));
    }

    #[test]
    fn statuses_are_read_from_replies() {
        assert_eq!(temporary_status("452 4.2.2 mailbox full", "4.0.0"), "4.2.2");
        assert_eq!(temporary_status("451 try again later", "4.0.0"), "4.0.0");
        assert_eq!(temporary_status("451 4.x.1 broken", "4.0.0"), "4.0.0");
        assert_eq!(temporary_status("550 5.1.1 no such user", "4.0.0"), "4.0.0");
        assert_eq!(reply_status("550 5.1.1 no such user", "5.0.0"), "5.1.1");
        assert_eq!(reply_status("250 ok", "2.0.0"), "2.0.0");
    }
}
