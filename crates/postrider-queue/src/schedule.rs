//! The retry policy for temporary delivery failures: pure arithmetic on timestamps.

use std::time::Duration;

/// The delay used when [`RetryPolicy::intervals`] is empty, so a bad configuration never
/// makes the queue manager spin.
pub const FALLBACK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// When to retry a recipient that failed temporarily, and when to give up on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delays after the 1st, 2nd, … failed attempt; the last one repeats for all later attempts.
    pub intervals: Vec<Duration>,
    /// How long after arrival a message may be retried before it bounces (Postfix's
    /// `maximal_queue_lifetime`).
    pub max_age: Duration,
    /// How long after arrival the sender gets a "still trying" delay DSN; `None` never warns.
    pub delay_warning: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Postfix-like: 5, 10, 20, 40, then every 60 minutes; give up after 5 days; warn after 4 hours.
    fn default() -> Self {
        const MINUTE: u64 = 60;
        Self {
            intervals: [5, 10, 20, 40, 60]
                .into_iter()
                .map(|m| Duration::from_secs(m * MINUTE))
                .collect(),
            max_age: Duration::from_secs(5 * 24 * 3600),
            delay_warning: Some(Duration::from_secs(4 * 3600)),
        }
    }
}

/// The outcome of [`RetryPolicy::next`] for a recipient that just failed temporarily.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Try again at this time, in milliseconds since the Unix epoch.
    At(u64),
    /// The next attempt would be past the message's maximum age: bounce (status "expired").
    GiveUp,
}

impl RetryPolicy {
    /// After `attempts` failed attempts (1 = the first failed), the delay before the next one;
    /// the last interval repeats. `0` is treated like `1`.
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        match self.intervals.get(index).or(self.intervals.last()) {
            Some(delay) => *delay,
            None => FALLBACK_INTERVAL,
        }
    }

    /// What to do with a recipient that just failed temporarily: retry at `now + delay`, or
    /// give up (bounce) when the next attempt would be past `received + max_age`.
    ///
    /// An attempt due exactly at `received + max_age` is still made.
    pub fn next(&self, received_ms: u64, now_ms: u64, attempts: u32) -> Retry {
        let at = now_ms.saturating_add(millis(self.delay_after(attempts)));
        if at > self.deadline_ms(received_ms) {
            Retry::GiveUp
        } else {
            Retry::At(at)
        }
    }

    /// Whether a delay DSN is due by `now` for a message received at `received_ms` (the
    /// caller records that it sent one, see `MessageState::delay_warned`).
    pub fn warn_due(&self, received_ms: u64, now_ms: u64) -> bool {
        self.delay_warning
            .is_some_and(|after| now_ms >= received_ms.saturating_add(millis(after)))
    }

    /// The last moment, in milliseconds since the Unix epoch, at which a message received at
    /// `received_ms` may still be attempted (the `Will-Retry-Until` of a delay DSN).
    pub fn deadline_ms(&self, received_ms: u64) -> u64 {
        received_ms.saturating_add(millis(self.max_age))
    }
}

/// A duration in whole milliseconds, saturating at `u64::MAX`.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;

    #[test]
    fn default_delays_follow_the_table_and_the_last_repeats() {
        let policy = RetryPolicy::default();
        let table: &[(u32, u64)] = &[
            (0, 5),
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (5, 60),
            (6, 60),
            (7, 60),
            (100, 60),
            (u32::MAX, 60),
        ];
        for &(attempts, minutes) in table {
            assert_eq!(
                policy.delay_after(attempts),
                Duration::from_secs(minutes * 60),
                "attempts = {attempts}"
            );
        }
        assert_eq!(policy.max_age, Duration::from_secs(5 * 24 * 3600));
        assert_eq!(policy.delay_warning, Some(Duration::from_secs(4 * 3600)));
    }

    #[test]
    fn custom_and_empty_interval_lists() {
        let one = RetryPolicy {
            intervals: vec![Duration::from_secs(7)],
            ..RetryPolicy::default()
        };
        for attempts in [0, 1, 2, 50] {
            assert_eq!(one.delay_after(attempts), Duration::from_secs(7));
        }
        let empty = RetryPolicy {
            intervals: Vec::new(),
            ..RetryPolicy::default()
        };
        assert_eq!(empty.delay_after(3), FALLBACK_INTERVAL);
    }

    #[test]
    fn next_gives_up_only_past_the_deadline() {
        let policy = RetryPolicy::default();
        let received = 1_700_000_000_000;
        let deadline = received + 5 * DAY;
        assert_eq!(policy.deadline_ms(received), deadline);
        // (now, attempts, expected)
        let table: &[(u64, u32, Retry)] = &[
            // First failure right after arrival.
            (received, 1, Retry::At(received + 5 * MIN)),
            (received + 1000, 2, Retry::At(received + 1000 + 10 * MIN)),
            // The next attempt lands exactly on the deadline: still made.
            (deadline - HOUR, 9, Retry::At(deadline)),
            // One millisecond later it would be past the deadline.
            (deadline - HOUR + 1, 9, Retry::GiveUp),
            // Short interval near the deadline: still fits.
            (deadline - 5 * MIN, 1, Retry::At(deadline)),
            (deadline - 5 * MIN + 1, 1, Retry::GiveUp),
            // Already past the deadline.
            (deadline, 1, Retry::GiveUp),
            (deadline + DAY, 30, Retry::GiveUp),
        ];
        for &(now, attempts, expected) in table {
            assert_eq!(
                policy.next(received, now, attempts),
                expected,
                "now = received + {} ms, attempts = {attempts}",
                now - received
            );
        }
    }

    #[test]
    fn next_saturates_instead_of_overflowing() {
        let policy = RetryPolicy {
            max_age: Duration::MAX,
            ..RetryPolicy::default()
        };
        assert_eq!(
            policy.next(u64::MAX - 1, u64::MAX - 1, 1),
            Retry::At(u64::MAX)
        );
        let zero = RetryPolicy {
            max_age: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(zero.next(1000, 1000, 1), Retry::GiveUp);
    }

    #[test]
    fn warn_due_after_the_delay_warning() {
        let policy = RetryPolicy::default();
        let received = 1_700_000_000_000;
        assert!(!policy.warn_due(received, received));
        assert!(!policy.warn_due(received, received + 4 * HOUR - 1));
        assert!(policy.warn_due(received, received + 4 * HOUR));
        assert!(policy.warn_due(received, received + DAY));
        // A clock that went backwards never warns early.
        assert!(!policy.warn_due(received, received - HOUR));
        let never = RetryPolicy {
            delay_warning: None,
            ..RetryPolicy::default()
        };
        assert!(!never.warn_due(received, received + 10 * DAY));
    }
}
