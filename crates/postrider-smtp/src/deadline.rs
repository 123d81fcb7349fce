//! Read deadlines that bound whole units of work, not single reads: a client that sends one
//! byte a second must not keep a command line or a message open for ever.
//!
//! The model is Postfix's `smtpd_per_request_deadline` with `smtpd_min_data_rate`:
//! - a **command line** (or SASL response) must arrive whole within `command` of our previous
//!   reply;
//! - **message content** (DATA, a BDAT chunk) has a budget that starts at `data_block`, is
//!   spent by the time that passes and earns `octets / min_data_rate` seconds for each octet
//!   received, never beyond `data_block` (so a client sending at least `min_data_rate` octets
//!   a second never runs out);
//! - the whole message, from the `354` (or the first BDAT) to its end, is also capped at
//!   `data_total`, whatever the rate.
//!
//! Sans-IO: the caller passes the time and asks for the instant its next read must finish by.

use std::time::{Duration, Instant};

use crate::server::TimeoutPhase;

/// The configured bounds (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineLimits {
    /// Time for one whole command line, from our previous reply.
    pub command: Duration,
    /// The most time message content may go without earning more.
    pub data_block: Duration,
    /// The most time one message may take, however fast its octets come.
    pub data_total: Duration,
    /// Octets per second that keep the content budget from running down; 0 earns nothing.
    pub min_data_rate: u64,
}

/// The deadline of the read in progress, for one session.
#[derive(Debug, Clone)]
pub struct ReadDeadline {
    limits: DeadlineLimits,
    phase: TimeoutPhase,
    deadline: Instant,
    /// When the message (content phase) started; `None` outside message content.
    message_started: Option<Instant>,
}

impl ReadDeadline {
    /// Starts in the command phase at `now` (the greeting was just sent).
    pub fn new(limits: DeadlineLimits, now: Instant) -> ReadDeadline {
        ReadDeadline {
            limits,
            phase: TimeoutPhase::Command,
            deadline: now + limits.command,
            message_started: None,
        }
    }

    /// Call before each read: `replied` is true when output was sent since the previous call
    /// (the client's previous unit is done); `phase` is the session's
    /// [`Session::timeout_phase`](crate::Session::timeout_phase). Returns when the read must
    /// have finished.
    pub fn before_read(&mut self, phase: TimeoutPhase, replied: bool, now: Instant) -> Instant {
        let phase_changed = phase != self.phase;
        self.phase = phase;
        match phase {
            TimeoutPhase::Command => {
                if replied || phase_changed {
                    self.deadline = now + self.limits.command;
                }
            }
            TimeoutPhase::DataBlock => {
                if phase_changed {
                    // BDAT chunks of one message share its total; a DATA body is one unit.
                    let started = *self.message_started.get_or_insert(now);
                    self.deadline =
                        (now + self.limits.data_block).min(started + self.limits.data_total);
                }
            }
        }
        self.deadline
    }

    /// `octets` arrived at `now`: in message content they earn time at the minimum rate.
    pub fn received(&mut self, octets: usize, now: Instant) {
        if self.phase != TimeoutPhase::DataBlock || self.limits.min_data_rate == 0 {
            return;
        }
        let earned = Duration::from_secs_f64(octets as f64 / self.limits.min_data_rate as f64);
        let cap = now + self.limits.data_block;
        let total = self
            .message_started
            .map_or(cap, |started| started + self.limits.data_total);
        self.deadline = (self.deadline + earned).min(cap).min(total);
    }

    /// The message ended (its reply was sent or the transaction was reset): the next content
    /// phase starts a new total.
    pub fn message_done(&mut self) {
        self.message_started = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DeadlineLimits = DeadlineLimits {
        command: Duration::from_secs(20),
        data_block: Duration::from_secs(60),
        data_total: Duration::from_secs(600),
        min_data_rate: 500,
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_command_line_has_a_total_deadline_that_partial_input_does_not_extend() {
        let t0 = Instant::now();
        let mut d = ReadDeadline::new(LIMITS, t0);
        assert_eq!(
            d.before_read(TimeoutPhase::Command, false, t0),
            t0 + secs(20)
        );
        // One byte a second: each read finds the same deadline.
        for i in 1..30 {
            d.received(1, t0 + secs(i));
            assert_eq!(
                d.before_read(TimeoutPhase::Command, false, t0 + secs(i)),
                t0 + secs(20)
            );
        }
        // Our reply starts the next command's time.
        assert_eq!(
            d.before_read(TimeoutPhase::Command, true, t0 + secs(5)),
            t0 + secs(25)
        );
    }

    #[test]
    fn content_earns_time_at_the_minimum_rate_up_to_the_block_limit() {
        let t0 = Instant::now();
        let mut d = ReadDeadline::new(LIMITS, t0);
        let start = t0 + secs(1);
        assert_eq!(
            d.before_read(TimeoutPhase::DataBlock, true, start),
            start + secs(60)
        );
        // 5,000 octets at 500/s earn 10 s.
        d.received(5_000, start + secs(30));
        assert_eq!(
            d.before_read(TimeoutPhase::DataBlock, false, start + secs(30)),
            start + secs(70)
        );
        // A fast client is capped at data_block from now, never more.
        let mut d = ReadDeadline::new(LIMITS, t0);
        d.before_read(TimeoutPhase::DataBlock, true, start);
        d.received(10_000_000, start + secs(30));
        assert_eq!(
            d.before_read(TimeoutPhase::DataBlock, false, start + secs(30)),
            start + secs(90)
        );
    }

    #[test]
    fn a_one_byte_a_second_client_runs_out_of_content_budget() {
        let t0 = Instant::now();
        let mut d = ReadDeadline::new(LIMITS, t0);
        let mut deadline = d.before_read(TimeoutPhase::DataBlock, true, t0);
        let mut now = t0;
        while now < deadline {
            now += secs(1);
            d.received(1, now);
            deadline = d.before_read(TimeoutPhase::DataBlock, false, now);
        }
        // 60 s of budget, earning 1/500 s per second: out shortly after 60 s.
        assert!(
            now - t0 >= secs(60) && now - t0 <= secs(61),
            "{:?}",
            now - t0
        );
    }

    #[test]
    fn a_message_is_capped_at_its_total_whatever_the_rate() {
        let limits = DeadlineLimits {
            data_total: secs(100),
            ..LIMITS
        };
        let t0 = Instant::now();
        let mut d = ReadDeadline::new(limits, t0);
        let mut deadline = d.before_read(TimeoutPhase::DataBlock, true, t0);
        let mut now = t0;
        while now < deadline {
            now += secs(1);
            d.received(1_000_000, now);
            deadline = d.before_read(TimeoutPhase::DataBlock, false, now);
        }
        assert_eq!(now, t0 + secs(100));
    }

    #[test]
    fn bdat_chunks_of_one_message_share_the_total() {
        let limits = DeadlineLimits {
            data_total: secs(100),
            ..LIMITS
        };
        let t0 = Instant::now();
        let mut d = ReadDeadline::new(limits, t0);
        d.before_read(TimeoutPhase::DataBlock, true, t0);
        // Chunk done, its 250 sent, the next BDAT command read.
        d.before_read(TimeoutPhase::Command, true, t0 + secs(70));
        assert_eq!(
            d.before_read(TimeoutPhase::DataBlock, false, t0 + secs(71)),
            t0 + secs(100)
        );
        // After the message, a new one starts a new total.
        d.message_done();
        d.before_read(TimeoutPhase::Command, true, t0 + secs(80));
        assert_eq!(
            d.before_read(TimeoutPhase::DataBlock, false, t0 + secs(81)),
            t0 + secs(141)
        );
    }

    #[test]
    fn no_rate_earns_nothing() {
        let limits = DeadlineLimits {
            min_data_rate: 0,
            ..LIMITS
        };
        let t0 = Instant::now();
        let mut d = ReadDeadline::new(limits, t0);
        d.before_read(TimeoutPhase::DataBlock, true, t0);
        d.received(1_000_000, t0 + secs(10));
        assert_eq!(
            d.before_read(TimeoutPhase::DataBlock, false, t0 + secs(10)),
            t0 + secs(60)
        );
    }
}
