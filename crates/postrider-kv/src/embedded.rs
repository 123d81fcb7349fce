//! [`EmbeddedKv`]: the persistent default, one redb file. The storage format and the
//! durability choice are described in the crate documentation.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};

use crate::{
    Clock, KvError, KvFuture, KvStore, Limits, OpaqueClock, add_counter, expiry_ms, is_live,
    parse_counter,
};

/// The only table: `(namespace, key)` → 8-byte BE expiry ms ++ value.
const ENTRIES: TableDefinition<'static, (&str, &str), &[u8]> =
    TableDefinition::new("postrider_kv_v1");

/// Persistent embedded store (redb), the default: no external service, survives restart.
/// Calls run on tokio's blocking pool, so await them inside a tokio runtime.
pub struct EmbeddedKv {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

/// A decoded table value.
struct Record<'v> {
    expires_at_ms: u64,
    value: &'v [u8],
}

impl EmbeddedKv {
    /// Opens (or creates) the store at `path` with the default [`Limits`]; blocking, since
    /// it may repair the file after a crash. Fails if the file is already open.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> Result<EmbeddedKv, KvError> {
        Self::open_with_limits(path, clock, Limits::default())
    }

    /// Like [`EmbeddedKv::open`], with size limits other than the default.
    pub fn open_with_limits(
        path: &Path,
        clock: Arc<dyn Clock>,
        limits: Limits,
    ) -> Result<EmbeddedKv, KvError> {
        let db = Database::create(path).map_err(|e| {
            KvError::Unavailable(format!("cannot open kv store {}: {e}", path.display()))
        })?;
        // Create the table up front, so read transactions can always open it.
        let txn = write_txn(&db)?;
        txn.open_table(ENTRIES).map_err(backend)?;
        txn.commit().map_err(backend)?;
        Ok(EmbeddedKv {
            inner: Arc::new(Inner { db, clock, limits }),
        })
    }

    /// Removes every expired entry and returns how many there were; expired entries are
    /// already invisible, so this only reclaims space (run it now and then, e.g. hourly).
    pub fn purge_expired(&self) -> KvFuture<'static, usize> {
        self.run(|inner| {
            let now = inner.clock.now_ms();
            let txn = write_txn(&inner.db)?;
            let mut purged = 0usize;
            {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                table
                    .retain(|_, stored| match decode(stored) {
                        Ok(record) if !is_live(record.expires_at_ms, now) => {
                            purged += 1;
                            false
                        }
                        // Corrupt records are kept: they are evidence, and every read of
                        // them already fails loudly.
                        _ => true,
                    })
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(purged)
        })
    }

    /// Runs `op` on the blocking pool with the shared state.
    fn run<T, F>(&self, op: F) -> KvFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, KvError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                KvError::Unavailable("the embedded kv store needs a tokio runtime".into())
            })?;
            runtime
                .spawn_blocking(move || op(&inner))
                .await
                .map_err(|e| KvError::Unavailable(format!("kv worker failed: {e}")))?
        })
    }
}

impl KvStore for EmbeddedKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        if let Err(e) = self.inner.limits.check_key(namespace, key) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.run(move |inner| {
            let now = inner.clock.now_ms();
            let id = (namespace.as_str(), key.as_str());
            let txn = inner.db.begin_read().map_err(backend)?;
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let Some(stored) = table.get(id).map_err(backend)? else {
                return Ok(None);
            };
            let record = decode(stored.value())?;
            if is_live(record.expires_at_ms, now) {
                return Ok(Some(record.value.to_vec()));
            }
            drop(stored);
            drop(table);
            drop(txn);
            // Expired: remove it while we know about it. The write transaction re-checks,
            // because a writer may have replaced it in between.
            let txn = write_txn(&inner.db)?;
            remove_if_expired(&txn, id, now)?;
            txn.commit().map_err(backend)?;
            Ok(None)
        })
    }

    fn set<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, ()> {
        let limits = &self.inner.limits;
        if let Err(e) = limits
            .check_key(namespace, key)
            .and_then(|()| limits.check_value(&value))
            .and_then(|()| expiry_ms(0, ttl))
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.run(move |inner| {
            let stored = encode(expiry_ms(inner.clock.now_ms(), ttl)?, &value);
            let txn = write_txn(&inner.db)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                table
                    .insert((namespace.as_str(), key.as_str()), stored.as_slice())
                    .map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
    }

    fn incr<'a>(
        &'a self,
        namespace: &'a str,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> KvFuture<'a, i64> {
        if let Err(e) = self
            .inner
            .limits
            .check_key(namespace, key)
            .and_then(|()| expiry_ms(0, ttl))
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.run(move |inner| {
            let id = (namespace.as_str(), key.as_str());
            let txn = write_txn(&inner.db)?;
            // Read the clock inside the write transaction: writers are serialized, so
            // each incr sees a clock no earlier than the one before it.
            let now = inner.clock.now_ms();
            let next = {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                let existing = match table.get(id).map_err(backend)? {
                    Some(stored) => {
                        let record = decode(stored.value())?;
                        if is_live(record.expires_at_ms, now) {
                            Some((parse_counter(record.value)?, record.expires_at_ms))
                        } else {
                            None
                        }
                    }
                    None => None,
                };
                let (current, expires_at_ms) = match existing {
                    Some(live) => live,
                    None => (0, expiry_ms(now, ttl)?),
                };
                let next = add_counter(current, delta)?;
                let stored = encode(expires_at_ms, next.to_string().as_bytes());
                table.insert(id, stored.as_slice()).map_err(backend)?;
                next
            };
            txn.commit().map_err(backend)?;
            Ok(next)
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        if let Err(e) = self.inner.limits.check_key(namespace, key) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.run(move |inner| {
            let txn = write_txn(&inner.db)?;
            let now = inner.clock.now_ms();
            let existed = {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                let removed = table
                    .remove((namespace.as_str(), key.as_str()))
                    .map_err(backend)?;
                match removed {
                    // A corrupt record is gone now either way; count it as existing.
                    Some(stored) => decode(stored.value())
                        .map_or(true, |record| is_live(record.expires_at_ms, now)),
                    None => false,
                }
            };
            txn.commit().map_err(backend)?;
            Ok(existed)
        })
    }
}

impl fmt::Debug for EmbeddedKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedKv")
            .field("clock", &OpaqueClock)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Begins a write transaction with the store's durability (see the crate docs).
fn write_txn(db: &Database) -> Result<WriteTransaction, KvError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Eventual);
    Ok(txn)
}

/// Removes the entry `id` if it has expired by `now`.
fn remove_if_expired(txn: &WriteTransaction, id: (&str, &str), now: u64) -> Result<(), KvError> {
    let mut table = txn.open_table(ENTRIES).map_err(backend)?;
    let expired = match table.get(id).map_err(backend)? {
        Some(stored) => decode(stored.value()).is_ok_and(|r| !is_live(r.expires_at_ms, now)),
        None => false,
    };
    if expired {
        table.remove(id).map_err(backend)?;
    }
    Ok(())
}

fn encode(expires_at_ms: u64, value: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(8 + value.len());
    stored.extend_from_slice(&expires_at_ms.to_be_bytes());
    stored.extend_from_slice(value);
    stored
}

fn decode(stored: &[u8]) -> Result<Record<'_>, KvError> {
    let Some((expiry, value)) = stored.split_first_chunk::<8>() else {
        return Err(KvError::Unavailable(format!(
            "corrupt kv record: {} bytes, shorter than its 8-byte header",
            stored.len()
        )));
    };
    Ok(Record {
        expires_at_ms: u64::from_be_bytes(*expiry),
        value,
    })
}

/// Maps a redb failure: the store is broken or out of space, so the caller may retry later.
fn backend(e: impl Into<redb::Error>) -> KvError {
    KvError::Unavailable(format!("embedded kv store: {}", e.into()))
}
