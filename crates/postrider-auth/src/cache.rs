//! Bounded caches of parsed DNS records for `mail-auth` (its `ResolverCache` trait). hickory
//! already caches raw answers; these keep the parsed form (SPF records, DKIM public keys, DMARC
//! policies) so a busy relay does not parse the same key for every message.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

use mail_auth::{MX, RecordSet, ResolverCache, Txt};

/// A map of at most `capacity` entries, each dropped when its DNS TTL runs out. When full, expired
/// entries go first; if none has expired the whole map is emptied (simple, and still bounded).
pub(crate) struct BoundedCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> BoundedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        BoundedCache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for BoundedCache<K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // A poisoned lock only means another thread panicked mid-insert: treat it as a miss.
        let mut map = self.map.lock().ok()?;
        match map.get(name) {
            Some((value, until)) if *until > Instant::now() => Some(value.clone()),
            Some(_) => {
                map.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.lock().ok()?.remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.capacity && !map.contains_key(&key) {
            let now = Instant::now();
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(key, (value, valid_until));
    }
}

/// The five caches `mail-auth`'s `Parameters` take.
pub(crate) struct Caches {
    pub(crate) txt: BoundedCache<Box<str>, Txt>,
    pub(crate) mx: BoundedCache<Box<str>, RecordSet<MX>>,
    pub(crate) ipv4: BoundedCache<Box<str>, RecordSet<Ipv4Addr>>,
    pub(crate) ipv6: BoundedCache<Box<str>, RecordSet<Ipv6Addr>>,
    pub(crate) ptr: BoundedCache<IpAddr, RecordSet<Box<str>>>,
}

impl Caches {
    pub(crate) fn new(capacity: usize) -> Self {
        Caches {
            txt: BoundedCache::new(capacity),
            mx: BoundedCache::new(capacity),
            ipv4: BoundedCache::new(capacity),
            ipv6: BoundedCache::new(capacity),
            ptr: BoundedCache::new(capacity),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expired_entries_are_misses() {
        let cache: BoundedCache<Box<str>, u32> = BoundedCache::new(4);
        let now = Instant::now();
        cache.insert("live.".into(), 1, now + Duration::from_secs(60));
        cache.insert("dead.".into(), 2, now);
        assert_eq!(cache.get("live."), Some(1));
        assert_eq!(cache.get("dead."), None);
        assert_eq!(cache.len(), 1, "the expired entry is dropped on lookup");
    }

    #[test]
    fn never_grows_past_capacity() {
        let cache: BoundedCache<Box<str>, u32> = BoundedCache::new(3);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..10u32 {
            cache.insert(format!("n{i}.").into(), i, later);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.get("n9."), Some(9), "the newest entry is kept");
    }

    #[test]
    fn full_cache_drops_expired_first() {
        let cache: BoundedCache<Box<str>, u32> = BoundedCache::new(2);
        let now = Instant::now();
        cache.insert("old.".into(), 1, now);
        cache.insert("keep.".into(), 2, now + Duration::from_secs(60));
        cache.insert("new.".into(), 3, now + Duration::from_secs(60));
        assert_eq!(cache.get("keep."), Some(2));
        assert_eq!(cache.get("new."), Some(3));
    }
}
