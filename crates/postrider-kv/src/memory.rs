//! [`MemoryKv`]: a map in memory.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::{
    Clock, KvEntry, KvError, KvFuture, KvStore, Limits, OpaqueClock, add_counter, expiry_ms,
    is_live, parse_counter,
};

/// In-memory store for tests and the plugin harness (preset entries).
/// Each call takes one lock and is ready on first poll, so `incr` is atomic.
pub struct MemoryKv {
    entries: Mutex<BTreeMap<(String, String), Entry>>,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

struct Entry {
    value: Vec<u8>,
    /// Unix milliseconds, or `NO_EXPIRY`.
    expires_at_ms: u64,
}

impl MemoryKv {
    /// Creates an empty store with the default [`Limits`], expiring entries by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> MemoryKv {
        MemoryKv {
            entries: Mutex::new(BTreeMap::new()),
            clock,
            limits: Limits::default(),
        }
    }

    /// Replaces the size limits, e.g. to test how a plugin copes with small ones.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> MemoryKv {
        self.limits = limits;
        self
    }

    /// Sets an entry without a TTL and without a runtime, so a test or the plugin harness
    /// can preset state; the limits apply as for [`KvStore::set`].
    pub fn insert(
        &self,
        namespace: impl Into<String>,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), KvError> {
        let (namespace, key, value) = (namespace.into(), key.into(), value.into());
        self.set_now(&namespace, &key, value, None)
    }

    /// The live entries as `(namespace, key, value)`, sorted, so a test can assert on all
    /// the state a plugin left behind.
    pub fn entries(&self) -> Vec<(String, String, Vec<u8>)> {
        let now = self.clock.now_ms();
        self.lock()
            .iter()
            .filter(|(_, entry)| is_live(entry.expires_at_ms, now))
            .map(|((namespace, key), entry)| (namespace.clone(), key.clone(), entry.value.clone()))
            .collect()
    }

    /// Removes the expired entries (a store that lives long calls it now and then, since
    /// entries nobody reads again are otherwise kept); returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = self.clock.now_ms();
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, entry| is_live(entry.expires_at_ms, now));
        before - entries.len()
    }

    /// Locks the map. A panic while the lock was held cannot leave an entry half-written
    /// (every update is a single insert or remove), so a poisoned lock is safe to reuse.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_now(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.limits.check_key(namespace, key)?;
        let now = self.clock.now_ms();
        let id = (namespace.to_owned(), key.to_owned());
        let mut entries = self.lock();
        match entries.get(&id) {
            Some(entry) if is_live(entry.expires_at_ms, now) => Ok(Some(entry.value.clone())),
            Some(_) => {
                entries.remove(&id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    fn set_now(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), KvError> {
        self.limits.check_key(namespace, key)?;
        self.limits.check_value(&value)?;
        let expires_at_ms = expiry_ms(self.clock.now_ms(), ttl)?;
        self.lock().insert(
            (namespace.to_owned(), key.to_owned()),
            Entry {
                value,
                expires_at_ms,
            },
        );
        Ok(())
    }

    fn incr_now(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, KvError> {
        self.limits.check_key(namespace, key)?;
        let now = self.clock.now_ms();
        let new_expiry = expiry_ms(now, ttl)?;
        let id = (namespace.to_owned(), key.to_owned());
        let mut entries = self.lock();
        let (current, expires_at_ms) = match entries.get(&id) {
            Some(entry) if is_live(entry.expires_at_ms, now) => {
                (parse_counter(&entry.value)?, entry.expires_at_ms)
            }
            _ => (0, new_expiry),
        };
        let next = add_counter(current, delta)?;
        entries.insert(
            id,
            Entry {
                value: next.to_string().into_bytes(),
                expires_at_ms,
            },
        );
        Ok(next)
    }

    fn delete_now(&self, namespace: &str, key: &str) -> Result<bool, KvError> {
        self.limits.check_key(namespace, key)?;
        let now = self.clock.now_ms();
        let removed = self.lock().remove(&(namespace.to_owned(), key.to_owned()));
        Ok(removed.is_some_and(|entry| is_live(entry.expires_at_ms, now)))
    }
}

impl KvStore for MemoryKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(self.get_now(namespace, key)))
    }

    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, ()> {
        Box::pin(std::future::ready(self.set_now(namespace, key, value, ttl)))
    }

    fn incr<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, i64> {
        Box::pin(std::future::ready(
            self.incr_now(namespace, key, delta, ttl),
        ))
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        Box::pin(std::future::ready(self.delete_now(namespace, key)))
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<KvEntry>> {
        let now = self.clock.now_ms();
        let listed = self.limits.check_key(namespace, prefix).map(|()| {
            self.lock()
                .range((namespace.to_owned(), prefix.to_owned())..)
                .take_while(|((ns, key), _)| ns == namespace && key.starts_with(prefix))
                .filter(|(_, e)| is_live(e.expires_at_ms, now))
                .take(limit)
                .map(|((_, key), e)| KvEntry::new(key.clone(), e.value.clone(), e.expires_at_ms))
                .collect()
        });
        Box::pin(std::future::ready(listed))
    }
}

impl fmt::Debug for MemoryKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryKv")
            .field("entries", &self.lock().len())
            .field("clock", &OpaqueClock)
            .field("limits", &self.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn insert_presets_state_and_entries_lists_it_sorted() {
        let clock = Arc::new(ManualClock::new(0));
        let kv = MemoryKv::new(clock.clone());
        kv.insert("b", "k", b"2".to_vec()).unwrap();
        kv.insert("a", "z", b"1".to_vec()).unwrap();
        kv.insert("a", "y", b"0".to_vec()).unwrap();
        kv.set_now("a", "gone", b"x".to_vec(), Some(Duration::from_secs(1)))
            .unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            kv.entries(),
            vec![
                ("a".into(), "y".into(), b"0".to_vec()),
                ("a".into(), "z".into(), b"1".to_vec()),
                ("b".into(), "k".into(), b"2".to_vec()),
            ]
        );
        assert!(matches!(
            kv.insert("", "k", b"v".to_vec()),
            Err(KvError::Invalid(_))
        ));
    }

    #[test]
    fn custom_limits_apply() {
        let kv = MemoryKv::new(Arc::new(ManualClock::new(0))).with_limits(Limits {
            max_key_len: 3,
            max_value_len: 2,
        });
        kv.insert("ns", "abc", b"12".to_vec()).unwrap();
        assert!(matches!(
            kv.insert("ns", "abcd", b"1".to_vec()),
            Err(KvError::Invalid(_))
        ));
        assert!(matches!(
            kv.insert("ns", "a", b"123".to_vec()),
            Err(KvError::Invalid(_))
        ));
    }
}
