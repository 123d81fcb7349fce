//! The opt-in warm instance pool of a plugin (`reuse` > 1): instances that ended a
//! transaction cleanly wait here, up to `pool_idle` per plugin and half the engine's
//! instance slots in all, and are handed to the next transaction after a fresh `init`.
//!
//! Idle instances hold pooling-allocator slots, so they must never starve new ones: when no
//! slot is free, [`acquire_slot`] evicts the oldest idle instance of any plugin before it
//! waits, and a failed instantiation is retried once after evicting every idle instance.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::CallFailure;
use crate::plugin::Instance;

/// Every warm pool of one engine, and the engine-wide bound on idle instances.
pub(crate) struct Registry {
    pools: Mutex<Vec<Weak<WarmPool>>>,
    idle_total: Arc<AtomicUsize>,
    idle_cap: usize,
}

impl Registry {
    /// A registry keeping at most `idle_cap` idle instances across all plugins.
    pub(crate) fn new(idle_cap: usize) -> Arc<Registry> {
        Arc::new(Registry {
            pools: Mutex::new(Vec::new()),
            idle_total: Arc::new(AtomicUsize::new(0)),
            idle_cap,
        })
    }

    /// A new pool for one loaded plugin, registered for eviction.
    pub(crate) fn pool(self: &Arc<Self>, reuse: u32, idle_max: usize) -> Arc<WarmPool> {
        let pool = Arc::new(WarmPool {
            reuse,
            idle_max,
            idle: Mutex::new(VecDeque::new()),
            retired: AtomicBool::new(false),
            registry: Arc::clone(self),
        });
        if pool.enabled() {
            let mut pools = lock(&self.pools);
            pools.retain(|p| p.strong_count() > 0);
            pools.push(Arc::downgrade(&pool));
        }
        pool
    }

    /// Idle instances of every plugin of the engine.
    pub(crate) fn idle(&self) -> usize {
        self.idle_total.load(Ordering::Relaxed)
    }

    /// Drops the oldest idle instance of the plugin with the most idle ones; false when
    /// there is none.
    pub(crate) fn evict_one(&self) -> bool {
        let pools: Vec<Arc<WarmPool>> =
            lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        let victim = pools
            .iter()
            .max_by_key(|p| p.idle_len())
            .and_then(|p| lock(&p.idle).pop_front());
        victim.is_some()
    }

    /// Drops every idle instance of every plugin.
    pub(crate) fn evict_all(&self) {
        let pools: Vec<Arc<WarmPool>> =
            lock(&self.pools).iter().filter_map(Weak::upgrade).collect();
        for pool in pools {
            let drained: Vec<Idle> = lock(&pool.idle).drain(..).collect();
            drop(drained);
        }
    }
}

/// Holds one unit of the engine-wide idle budget while an instance is parked.
struct IdleToken(Arc<AtomicUsize>);

impl IdleToken {
    fn take(counter: &Arc<AtomicUsize>, cap: usize) -> Option<IdleToken> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| IdleToken(Arc::clone(counter)))
    }
}

impl Drop for IdleToken {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A parked instance and its share of the idle budget.
struct Idle {
    instance: Instance,
    _token: IdleToken,
}

/// One plugin's idle instances.
pub(crate) struct WarmPool {
    reuse: u32,
    idle_max: usize,
    /// Oldest first: reuse takes the newest (warm caches), eviction the oldest.
    idle: Mutex<VecDeque<Idle>>,
    retired: AtomicBool,
    registry: Arc<Registry>,
}

impl WarmPool {
    /// Whether instances are kept at all (`reuse` > 1).
    pub(crate) fn enabled(&self) -> bool {
        self.reuse > 1 && self.idle_max > 0
    }

    /// The newest idle instance, if any.
    pub(crate) fn take(&self) -> Option<Instance> {
        lock(&self.idle).pop_back().map(|idle| idle.instance)
    }

    /// Keeps `instance` for a later transaction if it is sound, has uses left, the plugin's
    /// generation is current and both idle bounds allow it; drops it otherwise.
    pub(crate) fn put(&self, instance: Instance) {
        if !self.enabled()
            || !instance.sound
            || instance.uses >= self.reuse
            || self.retired.load(Ordering::Acquire)
        {
            return;
        }
        let mut idle = lock(&self.idle);
        if idle.len() >= self.idle_max {
            return;
        }
        let Some(token) = IdleToken::take(&self.registry.idle_total, self.registry.idle_cap) else {
            return;
        };
        idle.push_back(Idle {
            instance,
            _token: token,
        });
        drop(idle);
        // A retire between the check above and the push must not leave an instance behind.
        if self.retired.load(Ordering::Acquire) {
            self.clear();
        }
    }

    /// Idle instances of this plugin.
    pub(crate) fn idle_len(&self) -> usize {
        lock(&self.idle).len()
    }

    /// Drops every idle instance and keeps none from now on (the plugin's config generation
    /// was replaced).
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.clear();
    }

    fn clear(&self) {
        let drained: Vec<Idle> = lock(&self.idle).drain(..).collect();
        drop(drained);
    }
}

/// An instance slot of the engine. Idle instances give theirs back (oldest first) when
/// none is free; only then does the caller wait, for at most `timeout`.
pub(crate) async fn acquire_slot(
    slots: &Arc<Semaphore>,
    registry: &Registry,
    timeout: Duration,
) -> Result<OwnedSemaphorePermit, CallFailure> {
    loop {
        match Arc::clone(slots).try_acquire_owned() {
            Ok(permit) => return Ok(permit),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(CallFailure::Busy),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if !registry.evict_one() {
                    break;
                }
            }
        }
    }
    tokio::time::timeout(timeout, Arc::clone(slots).acquire_owned())
        .await
        .map_err(|_| CallFailure::Busy)?
        .map_err(|_| CallFailure::Busy)
}

/// Locks a mutex, also after a panic elsewhere (the pool's data stays consistent: every
/// critical section is a single push or pop).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
