//! Throttling of password guessing across connections: failed AUTH attempts are counted per
//! client (an IPv6 client by its /64) and per user name over `[smtp_auth] failure_window`;
//! past `delay_after` failures each answer waits longer, past the lockout counts AUTH gets
//! 454 4.7.0 without a password check until the window ends.
//!
//! The counts live in a kv store: the plugins' Redis when `[plugins] kv_url` is set, so
//! every relay sharing it sees the same counts, else a map in this process. A kv failure
//! lets the attempt through (and is logged): AUTH keeps working while Redis is down.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postrider_config::SmtpAuth;
use postrider_kv::{KvError, KvStore, MemoryKv, SystemClock};
use tracing::warn;

/// The kv namespace of the counts (plugin names cannot contain a dot, so no plugin sees it).
const NAMESPACE: &str = "postrider.auth-failures";

/// What to do with an AUTH attempt, given the recent failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Check the password now.
    Open,
    /// Check it after this delay.
    Delay(Duration),
    /// Refuse with 454 4.7.0 without checking.
    Locked,
}

/// The gate for an attempt after `client` failures from its client and `user` failures for
/// its user name in the current windows. Pure, so the policy is tested by tables.
pub fn gate(config: &SmtpAuth, client: u64, user: u64) -> Gate {
    let locked = |failures: u64, limit: u32| limit > 0 && failures >= u64::from(limit);
    if locked(client, config.lockout_client) || locked(user, config.lockout_user) {
        return Gate::Locked;
    }
    let failures = client.max(user);
    let after = u64::from(config.delay_after);
    if failures < after {
        return Gate::Open;
    }
    let doublings = u32::try_from(failures - after).unwrap_or(u32::MAX).min(32);
    let delay = config
        .delay_ms
        .saturating_mul(1u64 << doublings)
        .min(config.max_delay_ms);
    if delay == 0 {
        Gate::Open
    } else {
        Gate::Delay(Duration::from_millis(delay))
    }
}

/// The key a client's failures are counted under: its address, or its /64 for IPv6 (one
/// host usually has a whole /64 to choose addresses from).
pub fn client_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("client:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("client:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The key a user name's failures are counted under.
fn user_key(user: &str) -> String {
    format!("user:{user}")
}

/// The failure counts, in a kv store shared by every session (and, with Redis, every relay).
pub struct AuthThrottle {
    kv: Arc<dyn KvStore>,
    /// The same store when it is this process's map, whose expired counts are purged.
    local: Option<Arc<MemoryKv>>,
    /// Failures recorded, to purge the local map every [`PURGE_EVERY`].
    recorded: AtomicU64,
}

/// Failures between two purges of the local map: its size stays bounded by what the
/// password checks can produce in one window.
const PURGE_EVERY: u64 = 1024;

impl AuthThrottle {
    /// Counts in `kv` (shared with other relays).
    pub fn shared(kv: Arc<dyn KvStore>) -> AuthThrottle {
        AuthThrottle {
            kv,
            local: None,
            recorded: AtomicU64::new(0),
        }
    }

    /// Counts in this process's memory.
    pub fn in_memory() -> AuthThrottle {
        let local = Arc::new(MemoryKv::new(Arc::new(SystemClock)));
        AuthThrottle {
            kv: Arc::clone(&local) as Arc<dyn KvStore>,
            local: Some(local),
            recorded: AtomicU64::new(0),
        }
    }

    /// The gate for an attempt from `client` (`None`: a trusted network, counted per user
    /// only) as `user`.
    pub async fn gate(&self, config: &SmtpAuth, client: Option<IpAddr>, user: &str) -> Gate {
        let client_failures = match client {
            Some(ip) => self.count(&client_key(ip)).await,
            None => 0,
        };
        let user_failures = self.count(&user_key(user)).await;
        gate(config, client_failures, user_failures)
    }

    /// Records a failed attempt.
    pub async fn failed(&self, config: &SmtpAuth, client: Option<IpAddr>, user: &str) {
        let window = Some(Duration::from_secs(config.failure_window));
        if let Some(ip) = client {
            self.note(self.kv.incr(NAMESPACE, &client_key(ip), 1, window).await);
        }
        self.note(self.kv.incr(NAMESPACE, &user_key(user), 1, window).await);
        let recorded = self.recorded.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(local) = &self.local
            && recorded.is_multiple_of(PURGE_EVERY)
        {
            local.purge_expired();
        }
    }

    /// Records a successful login: the user's own failures were typos. The client's count
    /// stays (an attacker with one account must not reset its address's count with it).
    pub async fn succeeded(&self, user: &str) {
        self.note(self.kv.delete(NAMESPACE, &user_key(user)).await);
    }

    /// The failures counted under `key` (0 when the store fails).
    async fn count(&self, key: &str) -> u64 {
        match self.kv.get(NAMESPACE, key).await {
            Ok(Some(value)) => postrider_kv::parse_counter(&value)
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                warn!(error = %e, "AUTH failure counts unavailable; not throttling");
                0
            }
        }
    }

    fn note<T>(&self, result: Result<T, KvError>) {
        if let Err(e) = result {
            warn!(error = %e, "recording an AUTH failure count");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SmtpAuth {
        SmtpAuth {
            delay_after: 3,
            delay_ms: 1000,
            max_delay_ms: 5000,
            lockout_client: 10,
            lockout_user: 30,
            ..SmtpAuth::default()
        }
    }

    #[test]
    fn gate_by_failures() {
        let c = config();
        let ms = |ms| Gate::Delay(Duration::from_millis(ms));
        let table = [
            ((0, 0), Gate::Open),
            ((2, 0), Gate::Open),
            ((0, 2), Gate::Open),
            ((3, 0), ms(1000)),
            ((4, 0), ms(2000)),
            ((5, 1), ms(4000)),
            ((6, 0), ms(5000)),
            ((9, 0), ms(5000)),
            ((0, 29), ms(5000)),
            ((10, 0), Gate::Locked),
            ((0, 30), Gate::Locked),
            ((u64::MAX, 0), Gate::Locked),
        ];
        for ((client, user), want) in table {
            assert_eq!(gate(&c, client, user), want, "client {client} user {user}");
        }
    }

    #[test]
    fn zero_limits_disable_lockout_and_delay() {
        let c = SmtpAuth {
            lockout_client: 0,
            lockout_user: 0,
            delay_ms: 0,
            ..config()
        };
        assert_eq!(gate(&c, u64::MAX, u64::MAX), Gate::Open);
        let c = SmtpAuth {
            lockout_client: 0,
            lockout_user: 0,
            ..config()
        };
        assert_eq!(
            gate(&c, u64::MAX, 0),
            Gate::Delay(Duration::from_millis(5000))
        );
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        assert_eq!(client_key(a), "client:2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "client:192.0.2.7");
    }

    #[tokio::test]
    async fn failures_count_across_calls_and_success_clears_the_user() {
        let throttle = AuthThrottle::in_memory();
        let c = config();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..10 {
            throttle.failed(&c, Some(ip), "alice").await;
        }
        assert_eq!(throttle.gate(&c, Some(ip), "bob").await, Gate::Locked);
        let elsewhere: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            throttle.gate(&c, Some(elsewhere), "alice").await,
            Gate::Delay(Duration::from_millis(5000))
        );
        throttle.succeeded("alice").await;
        assert_eq!(
            throttle.gate(&c, Some(elsewhere), "alice").await,
            Gate::Open
        );
        // A trusted network is counted per user only.
        assert_eq!(throttle.gate(&c, None, "alice").await, Gate::Open);
    }
}
