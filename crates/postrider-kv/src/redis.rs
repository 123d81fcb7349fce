//! [`RedisKv`]: the shared backend, for several relays with one policy state.
//!
//! # Layout
//!
//! Each entry is one plain Redis string under the key
//! `postrider:{cluster}:{namespace length}:{namespace}:{key}`. The length prefix makes the
//! mapping injective (a `:` in a namespace or key cannot make two pairs collide), and the
//! cluster name (which may not contain `:`) lets several relay clusters share one Redis.
//! Values are stored as they are, so `redis-cli GET` shows what a plugin wrote and counters
//! are ordinary Redis integers.
//!
//! # Expiry and the clock
//!
//! A TTL becomes a native Redis expiry at an absolute time (`SET ... PXAT`), computed from
//! the store's [`Clock`]: Redis removes the entry on its own. Reads also compare that
//! expiry with the store's clock (`PEXPIRETIME`, Redis 7.0 or later), so an entry is live
//! exactly while `now < expiry` by this relay's clock, as in every other backend; relays
//! sharing one Redis therefore need synchronised clocks (NTP), as mail servers do anyway.
//! `incr` and `delete` run as Lua scripts, which Redis executes atomically.
//!
//! # Failures
//!
//! The connection is made lazily and re-made on its own after Redis goes away
//! (redis-rs's `ConnectionManager`); a call while Redis is down or slow fails with
//! [`KvError::Unavailable`] within the configured timeout. The relay starts even when
//! Redis is unreachable. Failures are counted ([`RedisKv::failures`]) and logged once per
//! outage, with a second line when Redis answers again.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script, TlsCertificates, Value};

use crate::{
    Clock, KvEntry, KvError, KvFuture, KvStore, Limits, NO_EXPIRY, OpaqueClock, expiry_ms,
};

/// Returns the value if live by the caller's clock (ARGV[1]).
const GET: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
local e = redis.call('PEXPIRETIME', KEYS[1])
if e >= 0 and e <= tonumber(ARGV[1]) then return false end
return v
";

/// Adds ARGV[1] to a live counter, or creates it with that value and the expiry ARGV[3]
/// ('' for none); ARGV[2] is now. Returns the new value as its decimal string, so no
/// precision is lost in Lua's doubles.
const INCR: &str = r"
local e = redis.call('PEXPIRETIME', KEYS[1])
if e >= 0 and e <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  e = -2
end
if e == -2 then
  if ARGV[3] == '' then
    redis.call('SET', KEYS[1], ARGV[1])
  else
    redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
  end
  return ARGV[1]
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
";

/// Deletes the key; returns 1 if it was live by the caller's clock (ARGV[1]).
const DELETE: &str = r"
local e = redis.call('PEXPIRETIME', KEYS[1])
if e == -2 then return 0 end
redis.call('DEL', KEYS[1])
if e >= 0 and e <= tonumber(ARGV[1]) then return 0 end
return 1
";

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// Namespaces the keys of this relay cluster; non-empty, no `:`.
    pub cluster: String,
    /// PEM roots to trust for `rediss://` instead of the system's (a private CA).
    pub ca_pem: Option<Vec<u8>>,
    /// Bound on connecting and on each command.
    pub timeout: Duration,
}

/// The kv store in Redis, shared by every relay pointed at it.
pub struct RedisKv {
    manager: ConnectionManager,
    prefix: String,
    clock: Arc<dyn Clock>,
    limits: Limits,
    timeout: Duration,
    scripts: Scripts,
    health: Arc<Health>,
    on_failure: Option<FailureHook>,
}

/// Called on every failed call, e.g. to count it in the relay's metrics.
pub type FailureHook = Arc<dyn Fn() + Send + Sync>;

struct Scripts {
    get: Script,
    incr: Script,
    delete: Script,
}

#[derive(Default)]
struct Health {
    failures: AtomicU64,
    down: AtomicBool,
}

impl RedisKv {
    /// Prepares the store without connecting (the first call connects), so a relay starts
    /// while Redis is down. Fails only on a bad URL, cluster name or CA file. Call it inside
    /// a tokio runtime (the connection manager spawns its task there).
    pub fn new(options: RedisOptions, clock: Arc<dyn Clock>) -> Result<RedisKv, KvError> {
        if options.cluster.is_empty() || options.cluster.contains(':') {
            return Err(KvError::Invalid(format!(
                "cluster name {:?} must be non-empty and contain no ':'",
                options.cluster
            )));
        }
        let bad_url = |e: RedisError| KvError::Invalid(format!("redis url: {e}"));
        let client = match options.ca_pem {
            Some(root) => Client::build_with_tls(
                options.url.as_str(),
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root),
                },
            ),
            None => Client::open(options.url.as_str()),
        }
        .map_err(bad_url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.timeout))
            .set_response_timeout(Some(options.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(2));
        let manager = ConnectionManager::new_lazy_with_config(client, config).map_err(bad_url)?;
        Ok(RedisKv {
            manager,
            prefix: format!("postrider:{}:", options.cluster),
            clock,
            limits: Limits::default(),
            timeout: options.timeout,
            scripts: Scripts {
                get: Script::new(GET),
                incr: Script::new(INCR),
                delete: Script::new(DELETE),
            },
            health: Arc::new(Health::default()),
            on_failure: None,
        })
    }

    /// Calls `hook` on every call that fails because Redis is unreachable, slow or broken.
    pub fn with_failure_hook(mut self, hook: FailureHook) -> RedisKv {
        self.on_failure = Some(hook);
        self
    }

    /// How many calls have failed because Redis was unreachable, slow or broken.
    pub fn failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    fn redis_key(&self, namespace: &str, key: &str) -> Result<String, KvError> {
        self.limits.check_key(namespace, key)?;
        Ok(format!(
            "{}{}:{namespace}:{key}",
            self.prefix,
            namespace.len()
        ))
    }

    /// Runs one Redis call under the timeout, mapping and counting its failure.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, KvError> {
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if is_invalid_request(&e) => {
                return Err(KvError::Invalid(format!("{what}: {}", error_text(&e))));
            }
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(v) => {
                if self.health.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("kv: redis answers again");
                }
                Ok(v)
            }
            Err(reason) => {
                self.health.failures.fetch_add(1, Ordering::Relaxed);
                if let Some(hook) = &self.on_failure {
                    hook();
                }
                if !self.health.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(reason = %reason, "kv: redis unavailable; kv calls fail until it is back");
                }
                Err(KvError::Unavailable(reason))
            }
        }
    }
}

/// A script error raised by Redis itself on this request (not a counter, overflow), as
/// opposed to a connection problem.
fn is_invalid_request(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        return false;
    }
    let text = e.to_string();
    text.contains("not an integer") || text.contains("overflow")
}

fn error_text(e: &RedisError) -> String {
    if e.to_string().contains("overflow") {
        "the increment overflows".into()
    } else {
        "existing value is not a decimal integer".into()
    }
}

/// `text` with Redis glob characters escaped, to match it literally in `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn expiry_arg(expires_at_ms: u64) -> String {
    if expires_at_ms == NO_EXPIRY {
        String::new()
    } else {
        expires_at_ms.to_string()
    }
}

impl KvStore for RedisKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            let rkey = self.redis_key(namespace, key)?;
            let now = self.clock.now_ms();
            let mut con = self.manager.clone();
            let mut inv = self.scripts.get.key(&rkey);
            inv.arg(now);
            let value: Option<Vec<u8>> = self.call("get", inv.invoke_async(&mut con)).await?;
            Ok(value)
        })
    }

    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, ()> {
        Box::pin(async move {
            let rkey = self.redis_key(namespace, key)?;
            self.limits.check_value(&value)?;
            let expires = expiry_ms(self.clock.now_ms(), ttl)?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(&rkey).arg(value);
            if expires != NO_EXPIRY {
                cmd.arg("PXAT").arg(expires);
            }
            let mut con = self.manager.clone();
            let _: Value = self.call("set", cmd.query_async(&mut con)).await?;
            Ok(())
        })
    }

    fn incr<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, i64> {
        Box::pin(async move {
            let rkey = self.redis_key(namespace, key)?;
            let now = self.clock.now_ms();
            let expires = expiry_ms(now, ttl)?;
            let mut con = self.manager.clone();
            let mut inv = self.scripts.incr.key(&rkey);
            inv.arg(delta.to_string()).arg(now).arg(expiry_arg(expires));
            let text: Vec<u8> = self.call("incr", inv.invoke_async(&mut con)).await?;
            crate::parse_counter(&text)
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(async move {
            let rkey = self.redis_key(namespace, key)?;
            let now = self.clock.now_ms();
            let mut con = self.manager.clone();
            let mut inv = self.scripts.delete.key(&rkey);
            inv.arg(now);
            let existed: i64 = self.call("delete", inv.invoke_async(&mut con)).await?;
            Ok(existed == 1)
        })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<KvEntry>> {
        Box::pin(async move {
            let base = self.redis_key(namespace, "")?;
            self.limits.check_key(namespace, prefix)?;
            // Every part escaped: a namespace or prefix with `*` matches only itself.
            let pattern = format!("{}*", glob_escape(&format!("{base}{prefix}")));
            let mut con = self.manager.clone();
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            let mut cursor = 0u64;
            // SCAN may return a key twice and keys Redis has not expired yet (by our clock):
            // scan until `limit` live entries or the end.
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000);
                let (next, batch): (u64, Vec<String>) =
                    self.call("list", cmd.query_async(&mut con)).await?;
                for rkey in batch {
                    if out.len() == limit || !seen.insert(rkey.clone()) {
                        continue;
                    }
                    let mut inv = self.scripts.get.key(&rkey);
                    inv.arg(self.clock.now_ms());
                    let value: Option<Vec<u8>> =
                        self.call("list", inv.invoke_async(&mut con)).await?;
                    let Some(value) = value else { continue };
                    let mut cmd = redis::cmd("PEXPIRETIME");
                    cmd.arg(&rkey);
                    let expires: i64 = self.call("list", cmd.query_async(&mut con)).await?;
                    let expires_at_ms = match expires {
                        -1 => NO_EXPIRY,
                        // Gone since the read.
                        ms if ms < 0 => continue,
                        ms => ms.unsigned_abs(),
                    };
                    let key = rkey.get(base.len()..).unwrap_or_default().to_owned();
                    out.push(KvEntry::new(key, value, expires_at_ms));
                }
                cursor = next;
                if cursor == 0 || out.len() == limit {
                    break;
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
    }
}

impl fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisKv")
            .field("prefix", &self.prefix)
            .field("clock", &OpaqueClock)
            .field("limits", &self.limits)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cluster: &str) -> Result<RedisKv, KvError> {
        RedisKv::new(
            RedisOptions {
                url: "redis://127.0.0.1:1/0".into(),
                cluster: cluster.into(),
                ca_pem: None,
                timeout: Duration::from_millis(200),
            },
            Arc::new(crate::SystemClock),
        )
    }

    #[tokio::test]
    async fn keys_are_namespaced_without_collisions() {
        let kv = store("eu").unwrap();
        assert_eq!(
            kv.redis_key("greylist", "k").unwrap(),
            "postrider:eu:8:greylist:k"
        );
        // "a:b" + "c" and "a" + "b:c" would collide with a plain separator.
        assert_ne!(
            kv.redis_key("a:b", "c").unwrap(),
            kv.redis_key("a", "b:c").unwrap()
        );
        assert!(matches!(kv.redis_key("", "k"), Err(KvError::Invalid(_))));
    }

    #[tokio::test]
    async fn cluster_names_are_checked() {
        assert!(matches!(store(""), Err(KvError::Invalid(_))));
        assert!(matches!(store("a:b"), Err(KvError::Invalid(_))));
        assert!(matches!(
            RedisKv::new(
                RedisOptions {
                    url: "http://nope".into(),
                    cluster: "c".into(),
                    ca_pem: None,
                    timeout: Duration::from_millis(200),
                },
                Arc::new(crate::SystemClock),
            ),
            Err(KvError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn unreachable_redis_fails_fast_as_unavailable() {
        let hooked = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hooked);
        let kv = store("c").unwrap().with_failure_hook(Arc::new(move || {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let started = std::time::Instant::now();
        let r = kv.get("ns", "k").await;
        assert!(matches!(r, Err(KvError::Unavailable(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(kv.failures(), 1);
        assert_eq!(hooked.load(Ordering::Relaxed), 1);
    }
}
