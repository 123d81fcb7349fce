//! The key-value store behind the WebAssembly plugins' `kv` import.
//!
//! Policy plugins keep small pieces of state here: greylisting triplets, rate-limit
//! counters, "seen before" markers. The plugin host calls a [`KvStore`] (usually as an
//! `Arc<dyn KvStore>`) with the calling plugin's namespace, so a plugin only ever sees its
//! own keys.
//!
//! Three backends live in this crate:
//!
//! - [`EmbeddedKv`], the default: a [redb] file, no external service, survives a restart.
//! - [`RedisKv`]: a Redis (7.0 or later) shared by several relays, so they enforce one
//!   policy state (greylisting, rate limits) together.
//! - [`MemoryKv`]: a map in memory, for tests and the plugin test harness.
//!
//! [`conformance::run`] is the behaviour every backend must have; each backend's tests run
//! it.
//!
//! # Semantics shared by every backend
//!
//! - **Namespaces** are chosen by the host, never by a plugin. A namespace must be
//!   non-empty (an empty one is a host bug that would let plugins share state) and at most
//!   [`Limits::max_key_len`] bytes; otherwise the call fails with [`KvError::Invalid`].
//! - **Keys** are at most [`Limits::max_key_len`] bytes. The empty key is allowed: it is an
//!   ordinary key, as in Redis, and refusing it would buy nothing.
//! - **Values** are at most [`Limits::max_value_len`] bytes.
//! - **Expiry.** A TTL makes an entry expire that long after the write, measured by the
//!   store's [`Clock`] in whole milliseconds (rounded up). An entry is live while
//!   `now < expiry`; an expired entry behaves exactly as if absent. A zero TTL is
//!   [`KvError::Invalid`] (as in Redis), because an entry that is dead on arrival is
//!   always a mistake. [`KvStore::set`] replaces the expiry: without a TTL the entry
//!   never expires, even if it had one before.
//! - **Counters.** [`KvStore::incr`] stores its result as canonical decimal ASCII (`"-42"`),
//!   so [`KvStore::get`] reads it as such. It accepts an existing value only in that
//!   canonical form (no sign `+`, no leading zeros, no whitespace), as Redis does, so a
//!   future Redis backend agrees with this one.
//!
//! # The embedded backend
//!
//! [`EmbeddedKv`] keeps one redb table, `postrider_kv_v1`, keyed by the tuple
//! `(namespace, key)`, so no separator byte can make two different pairs collide. Each
//! value is an 8-byte big-endian expiry in Unix milliseconds (0 = never) followed by the
//! entry's bytes; a change to this layout needs a new table name. Expired entries are
//! removed lazily (by the call that finds them) and by [`EmbeddedKv::purge_expired`].
//!
//! Reads run on tokio's blocking pool. Writes go to one writer thread, which applies every
//! write queued so far (up to 256) in order in one transaction and commits it durably
//! (redb's `Durability::Immediate`: one fsync), then answers each caller. Applying writes in
//! order on one thread is what makes `incr` atomic; a write that fails (a value that is not
//! a counter) changes nothing, and the rest of its group still commits. A call whose future
//! is dropped early may still take effect.
//!
//! **Durability.** A write is durable when its call returns: a crash or power loss loses
//! nothing acknowledged (tested by a child process that exits without closing the store).
//! Group commit is what keeps that affordable: under load one fsync carries many writes.
//!
//! [redb]: https://docs.rs/redb

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod embedded;
mod memory;
mod redis;

pub mod conformance;

pub use embedded::EmbeddedKv;
pub use memory::MemoryKv;
pub use redis::{FailureHook, RedisKv, RedisOptions};

/// A boxed future, so the trait is object-safe (`Arc<dyn KvStore>`).
pub type KvFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KvError>> + Send + 'a>>;

/// Why a kv call failed; maps one to one onto the `kv-error` variant of the plugin interface.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// The backend is down, slow or broken; retrying later may work.
    #[error("kv store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is bad (too large, not a counter); retrying will not help.
    #[error("invalid kv request: {0}")]
    Invalid(String),
}

/// The store behind the plugins' `kv` import. Keys are namespaced: a plugin only ever sees
/// its own namespace.
pub trait KvStore: Send + Sync + 'static {
    /// Returns the value of `key`, or `None` if it is absent or has expired.
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>>;

    /// Sets `key` to `value`; with a `ttl` it expires that long from now, without one never.
    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, ()>;

    /// Adds delta (creating the key at 0, stored as decimal ASCII) and returns the new
    /// value; ttl applies only when the key is created (or had expired). Atomic. A
    /// non-numeric existing value → Invalid. Overflow → Invalid.
    fn incr<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, i64>;

    /// Removes `key`; returns whether a live entry existed.
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool>;

    /// Up to `limit` live entries of `namespace` whose key starts with `prefix`, sorted by
    /// key (Redis: `limit` of the matching entries, not necessarily the first ones). For
    /// operators (`postrider kv`); plugins have no such call.
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<KvEntry>>;
}

/// One live entry, as [`KvStore::list`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key, without the namespace.
    pub key: String,
    /// The value's bytes.
    pub value: Vec<u8>,
    /// When it expires (Unix milliseconds), or `None` for never.
    pub expires_at_ms: Option<u64>,
}

impl KvEntry {
    fn new(key: String, value: Vec<u8>, expires_at_ms: u64) -> KvEntry {
        KvEntry {
            key,
            value,
            expires_at_ms: (expires_at_ms != NO_EXPIRY).then_some(expires_at_ms),
        }
    }
}

/// Time source for expiry, injectable so tests and the plugin test harness can fix the clock.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch (or any fixed origin the store's data agrees on).
    fn now_ms(&self) -> u64;
}

/// The wall clock in Unix milliseconds, so stored expiry times survive a restart (a jump
/// of the system clock moves every expiry with it).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, duration_to_ms_floor)
    }
}

/// A clock that moves only when told to, for tests and the plugin test harness.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// Creates a clock that reads `ms` until it is set or advanced.
    pub fn new(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// Sets the time to `ms` (which may go backwards).
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }

    /// Moves the time forward by `by`, in whole milliseconds (rounded down), saturating.
    pub fn advance(&self, by: Duration) {
        let by = duration_to_ms_floor(by);
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Size limits every backend enforces (violations are [`KvError::Invalid`]), so a plugin
/// cannot fill the disk or memory through one huge entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key (and namespace) in bytes; default 1024.
    pub max_key_len: usize,
    /// Longest value in bytes; default 64 KiB.
    pub max_value_len: usize,
}

impl Limits {
    /// The default [`Limits::max_key_len`]: 1024 bytes.
    pub const DEFAULT_MAX_KEY_LEN: usize = 1024;
    /// The default [`Limits::max_value_len`]: 64 KiB.
    pub const DEFAULT_MAX_VALUE_LEN: usize = 64 * 1024;

    /// Checks a namespace and key against these limits.
    pub(crate) fn check_key(&self, namespace: &str, key: &str) -> Result<(), KvError> {
        if namespace.is_empty() {
            return Err(KvError::Invalid("empty namespace".into()));
        }
        if namespace.len() > self.max_key_len {
            return Err(KvError::Invalid(format!(
                "namespace is {} bytes, the limit is {}",
                namespace.len(),
                self.max_key_len
            )));
        }
        if key.len() > self.max_key_len {
            return Err(KvError::Invalid(format!(
                "key is {} bytes, the limit is {}",
                key.len(),
                self.max_key_len
            )));
        }
        Ok(())
    }

    /// Checks a value against these limits.
    pub(crate) fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.max_value_len {
            return Err(KvError::Invalid(format!(
                "value is {} bytes, the limit is {}",
                value.len(),
                self.max_value_len
            )));
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_len: Self::DEFAULT_MAX_KEY_LEN,
            max_value_len: Self::DEFAULT_MAX_VALUE_LEN,
        }
    }
}

/// When an entry written at `now_ms` with `ttl` expires, as Unix milliseconds; 0 means
/// never. A zero TTL is invalid; a partial millisecond rounds up.
pub(crate) fn expiry_ms(now_ms: u64, ttl: Option<Duration>) -> Result<u64, KvError> {
    let Some(ttl) = ttl else { return Ok(NO_EXPIRY) };
    if ttl.is_zero() {
        return Err(KvError::Invalid("ttl must be positive".into()));
    }
    let mut ms = ttl.as_millis();
    if ttl.subsec_nanos() % 1_000_000 != 0 {
        ms += 1;
    }
    let ms = u64::try_from(ms).unwrap_or(u64::MAX);
    // ms >= 1, so the sum is never NO_EXPIRY.
    Ok(now_ms.saturating_add(ms))
}

/// The stored expiry of an entry that never expires.
pub(crate) const NO_EXPIRY: u64 = 0;

/// Whether an entry with this stored expiry is still live at `now_ms`.
pub(crate) fn is_live(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms == NO_EXPIRY || now_ms < expires_at_ms
}

/// Reads a counter as [`KvStore::incr`] stores it: canonical decimal ASCII of an `i64`,
/// nothing else (for callers that `get` a counter).
pub fn parse_counter(value: &[u8]) -> Result<i64, KvError> {
    let not_a_counter = || KvError::Invalid("existing value is not a decimal integer".into());
    let text = std::str::from_utf8(value).map_err(|_| not_a_counter())?;
    let n: i64 = text.parse().map_err(|_| not_a_counter())?;
    // Rejects "+1", "007", "-0": the forms Redis would refuse too.
    if n.to_string() != text {
        return Err(not_a_counter());
    }
    Ok(n)
}

/// Adds `delta` to a counter, reporting overflow as [`KvError::Invalid`].
pub(crate) fn add_counter(current: i64, delta: i64) -> Result<i64, KvError> {
    current
        .checked_add(delta)
        .ok_or_else(|| KvError::Invalid(format!("incrementing {current} by {delta} overflows")))
}

fn duration_to_ms_floor(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A `Debug` stand-in for the store's clock, which need not implement `Debug`.
pub(crate) struct OpaqueClock;

impl fmt::Debug for OpaqueClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn Clock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_must_be_canonical() {
        assert_eq!(parse_counter(b"0"), Ok(0));
        assert_eq!(parse_counter(b"-42"), Ok(-42));
        assert_eq!(parse_counter(b"9223372036854775807"), Ok(i64::MAX));
        assert_eq!(parse_counter(b"-9223372036854775808"), Ok(i64::MIN));
        for bad in [
            &b""[..],
            b"+1",
            b"007",
            b"-0",
            b" 1",
            b"1 ",
            b"1.0",
            b"abc",
            b"9223372036854775808",
            b"\xff",
        ] {
            assert!(
                matches!(parse_counter(bad), Err(KvError::Invalid(_))),
                "{bad:?} parsed as a counter"
            );
        }
    }

    #[test]
    fn overflow_is_invalid() {
        assert_eq!(add_counter(1, 2), Ok(3));
        assert!(matches!(add_counter(i64::MAX, 1), Err(KvError::Invalid(_))));
        assert!(matches!(
            add_counter(i64::MIN, -1),
            Err(KvError::Invalid(_))
        ));
    }

    #[test]
    fn expiry_rounds_up_and_rejects_zero() {
        assert_eq!(expiry_ms(100, None), Ok(NO_EXPIRY));
        assert_eq!(expiry_ms(100, Some(Duration::from_millis(5))), Ok(105));
        assert_eq!(expiry_ms(100, Some(Duration::from_micros(1))), Ok(101));
        assert_eq!(expiry_ms(0, Some(Duration::from_millis(1))), Ok(1));
        assert_eq!(expiry_ms(5, Some(Duration::MAX)), Ok(u64::MAX));
        assert!(matches!(
            expiry_ms(100, Some(Duration::ZERO)),
            Err(KvError::Invalid(_))
        ));
        assert!(is_live(NO_EXPIRY, u64::MAX));
        assert!(is_live(105, 104));
        assert!(!is_live(105, 105));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(clock.now_ms(), 2_500);
        clock.set(7);
        assert_eq!(clock.now_ms(), 7);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
    }

    #[test]
    fn system_clock_is_unix_time() {
        // 2020-01-01 in Unix milliseconds: any sane system clock is past it.
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
