//! [`EmbeddedKv`]: the persistent default, one redb file. The storage format and the
//! durability choice are described in the crate documentation.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use crate::{
    Clock, KvEntry, KvError, KvFuture, KvStore, Limits, OpaqueClock, add_counter, expiry_ms,
    is_live, parse_counter,
};

/// The only table: `(namespace, key)` → 8-byte BE expiry ms ++ value.
const ENTRIES: TableDefinition<'static, (&str, &str), &[u8]> =
    TableDefinition::new("postrider_kv_v1");

/// Most writes one transaction (one fsync) carries.
const MAX_GROUP: usize = 256;

/// Persistent embedded store (redb), the default: no external service, survives restart.
/// Reads run on tokio's blocking pool, so await them inside a tokio runtime; writes go to
/// one writer thread that commits them in groups.
pub struct EmbeddedKv {
    inner: Arc<Inner>,
    /// Dropping it lets the writer finish what is queued and stop.
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<thread::JoinHandle<()>>,
}

struct Inner {
    db: Database,
    clock: Arc<dyn Clock>,
    limits: Limits,
}

/// A write waiting for the writer thread, boxed so one queue carries every result type.
type Write = Box<dyn QueuedWrite>;

/// A write waiting for the writer thread.
trait QueuedWrite: Send {
    /// Applies the change in the group's transaction; returns how to answer the caller
    /// once the group's commit is known.
    fn apply(self: Box<Self>, inner: &Inner, txn: &WriteTransaction) -> Answer;
    /// Answers the caller with `error` without applying anything.
    fn refuse(self: Box<Self>, error: KvError);
}

/// Given the outcome of its group's commit, answers the caller of one write.
type Answer = Box<dyn FnOnce(Result<(), &KvError>) + Send>;

/// A change and the caller waiting for its result.
struct Pending<T, F> {
    change: F,
    answer: oneshot::Sender<Result<T, KvError>>,
}

impl<T, F> QueuedWrite for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Inner, &WriteTransaction) -> Result<T, KvError> + Send,
{
    fn apply(self: Box<Self>, inner: &Inner, txn: &WriteTransaction) -> Answer {
        let outcome = (self.change)(inner, txn);
        let answer = self.answer;
        Box::new(move |committed| {
            // The caller may have stopped waiting; the write stands either way.
            let _ = answer.send(committed.map_err(Clone::clone).and(outcome));
        })
    }

    fn refuse(self: Box<Self>, error: KvError) {
        let _ = self.answer.send(Err(error));
    }
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
        let txn = db.begin_write().map_err(backend)?;
        txn.open_table(ENTRIES).map_err(backend)?;
        txn.commit().map_err(backend)?;
        let inner = Arc::new(Inner { db, clock, limits });
        let (writes, queue) = mpsc::channel();
        let writing = Arc::clone(&inner);
        let writer = thread::Builder::new()
            .name("postrider-kv-writer".into())
            .spawn(move || write_groups(&writing, &queue))
            .map_err(|e| KvError::Unavailable(format!("cannot start the kv writer: {e}")))?;
        Ok(EmbeddedKv {
            inner,
            writes: Some(writes),
            writer: Some(writer),
        })
    }

    /// Removes every expired entry and returns how many there were; expired entries are
    /// already invisible, so this only reclaims space (run it now and then, e.g. hourly).
    pub fn purge_expired(&self) -> KvFuture<'static, usize> {
        self.write(|inner, txn| {
            let now = inner.clock.now_ms();
            let mut purged = 0usize;
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
            Ok(purged)
        })
    }

    /// Runs `op` on the blocking pool with the shared state.
    fn read<T, F>(&self, op: F) -> KvFuture<'static, T>
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

    /// Queues `change` for the writer and resolves once its group has committed durably.
    /// A change that fails leaves the table as it was (each one fails before it writes),
    /// so the rest of its group still commits.
    fn write<T, F>(&self, change: F) -> KvFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner, &WriteTransaction) -> Result<T, KvError> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let write: Write = Box::new(Pending { change, answer });
        let queued = self.writes.as_ref().is_some_and(|w| w.send(write).is_ok());
        Box::pin(async move {
            if !queued {
                return Err(KvError::Unavailable("the kv writer has stopped".into()));
            }
            answered
                .await
                .map_err(|_| KvError::Unavailable("the kv writer has stopped".into()))?
        })
    }
}

/// The writer thread: takes every write queued so far (up to [`MAX_GROUP`]), applies them
/// in order in one transaction, commits it durably, then answers each. Returns when the
/// store is dropped and the queue is empty.
fn write_groups(inner: &Inner, queue: &mpsc::Receiver<Write>) {
    while let Ok(first) = queue.recv() {
        let group = std::iter::once(first).chain(queue.try_iter().take(MAX_GROUP - 1));
        let txn = match inner.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let e = backend(e);
                tracing::warn!(error = %e, "kv: cannot begin a write transaction");
                for write in group.collect::<Vec<_>>() {
                    write.refuse(e.clone());
                }
                continue;
            }
        };
        let answers: Vec<Answer> = group.map(|write| write.apply(inner, &txn)).collect();
        let committed = txn.commit().map_err(backend);
        if let Err(e) = &committed {
            tracing::warn!(error = %e, writes = answers.len(), "kv: commit failed");
        }
        for answer in answers {
            answer(committed.as_ref().map(|_| ()));
        }
    }
}

impl Drop for EmbeddedKv {
    fn drop(&mut self) {
        drop(self.writes.take());
        if let Some(writer) = self.writer.take() {
            // Joining fails only if the writer panicked; nothing is left to stop then.
            let _ = writer.join();
        }
    }
}

impl KvStore for EmbeddedKv {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        if let Err(e) = self.inner.limits.check_key(namespace, key) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        let (ns, k) = (namespace.clone(), key.clone());
        let read = self.read(move |inner| {
            let now = inner.clock.now_ms();
            let txn = inner.db.begin_read().map_err(backend)?;
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let Some(stored) = table.get((ns.as_str(), k.as_str())).map_err(backend)? else {
                return Ok(Lookup::Absent);
            };
            let record = decode(stored.value())?;
            Ok(if is_live(record.expires_at_ms, now) {
                Lookup::Live(record.value.to_vec())
            } else {
                Lookup::Expired
            })
        });
        Box::pin(async move {
            match read.await? {
                Lookup::Live(value) => Ok(Some(value)),
                Lookup::Absent => Ok(None),
                // Remove it while we know about it. The write re-checks, because a writer
                // may have replaced it in between.
                Lookup::Expired => {
                    self.write(move |inner, txn| {
                        let id = (namespace.as_str(), key.as_str());
                        remove_if_expired(txn, id, inner.clock.now_ms())
                    })
                    .await?;
                    Ok(None)
                }
            }
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
        self.write(move |inner, txn| {
            let stored = encode(expiry_ms(inner.clock.now_ms(), ttl)?, &value);
            let mut table = txn.open_table(ENTRIES).map_err(backend)?;
            table
                .insert((namespace.as_str(), key.as_str()), stored.as_slice())
                .map_err(backend)?;
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
        if let Err(e) = self
            .inner
            .limits
            .check_key(namespace, key)
            .and_then(|()| expiry_ms(0, ttl))
        {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.write(move |inner, txn| {
            let id = (namespace.as_str(), key.as_str());
            // Read the clock on the writer: writes are applied in order, so each incr
            // sees a clock no earlier than the one before it.
            let now = inner.clock.now_ms();
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
            Ok(next)
        })
    }

    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> KvFuture<'a, bool> {
        if let Err(e) = self.inner.limits.check_key(namespace, key) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (namespace, key) = (namespace.to_owned(), key.to_owned());
        self.write(move |inner, txn| {
            let now = inner.clock.now_ms();
            let mut table = txn.open_table(ENTRIES).map_err(backend)?;
            let removed = table
                .remove((namespace.as_str(), key.as_str()))
                .map_err(backend)?;
            Ok(match removed {
                // A corrupt record is gone now either way; count it as existing.
                Some(stored) => {
                    decode(stored.value()).map_or(true, |record| is_live(record.expires_at_ms, now))
                }
                None => false,
            })
        })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        limit: usize,
    ) -> KvFuture<'a, Vec<KvEntry>> {
        if let Err(e) = self.inner.limits.check_key(namespace, prefix) {
            return Box::pin(std::future::ready(Err(e)));
        }
        let (ns, prefix) = (namespace.to_owned(), prefix.to_owned());
        self.read(move |inner| {
            let now = inner.clock.now_ms();
            let txn = inner.db.begin_read().map_err(backend)?;
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let mut out = Vec::new();
            for item in table
                .range((ns.as_str(), prefix.as_str())..)
                .map_err(backend)?
            {
                let (id, stored) = item.map_err(backend)?;
                let (entry_ns, key) = id.value();
                if entry_ns != ns || !key.starts_with(&prefix) || out.len() == limit {
                    break;
                }
                let record = decode(stored.value())?;
                if is_live(record.expires_at_ms, now) {
                    out.push(KvEntry::new(
                        key.to_owned(),
                        record.value.to_vec(),
                        record.expires_at_ms,
                    ));
                }
            }
            Ok(out)
        })
    }
}

/// What a read found.
enum Lookup {
    Live(Vec<u8>),
    Absent,
    Expired,
}

impl fmt::Debug for EmbeddedKv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedKv")
            .field("clock", &OpaqueClock)
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::process::Command;

    use super::*;
    use crate::{ManualClock, SystemClock};

    /// Set for the child process of [`a_crash_loses_no_acknowledged_write`]: the store's path.
    const CHILD_PATH: &str = "POSTRIDER_KV_CRASH_CHILD";

    /// The child half of [`a_crash_loses_no_acknowledged_write`]: writes concurrently, then
    /// exits without closing the store, as a crash would (`process::exit` runs no
    /// destructors). Does nothing in a normal test run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn crash_child() {
        let Some(path) = std::env::var_os(CHILD_PATH) else {
            return;
        };
        let kv = Arc::new(EmbeddedKv::open(Path::new(&path), Arc::new(SystemClock)).unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let kv = Arc::clone(&kv);
                tokio::spawn(async move {
                    kv.set("ns", &format!("k{i}"), vec![i; 10], None)
                        .await
                        .unwrap();
                    kv.incr("ns", "n", 1, None).await.unwrap();
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        std::process::exit(0);
    }

    #[tokio::test]
    async fn a_crash_loses_no_acknowledged_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "embedded::tests::crash_child", "--nocapture"])
            .env(CHILD_PATH, &path)
            .status()
            .unwrap();
        assert!(status.success(), "child: {status}");
        let kv = EmbeddedKv::open(&path, Arc::new(SystemClock)).unwrap();
        assert_eq!(kv.get("ns", "n").await.unwrap(), Some(b"64".to_vec()));
        for i in 0..64u8 {
            let value = kv.get("ns", &format!("k{i}")).await.unwrap();
            assert_eq!(value, Some(vec![i; 10]), "k{i}");
        }
    }

    /// Queues `change` as the store would and returns the caller's end.
    fn queue<T: Send + 'static>(
        writes: &mpsc::Sender<Write>,
        change: impl FnOnce(&Inner, &WriteTransaction) -> Result<T, KvError> + Send + 'static,
    ) -> oneshot::Receiver<Result<T, KvError>> {
        let (answer, answered) = oneshot::channel();
        writes.send(Box::new(Pending { change, answer })).unwrap();
        answered
    }

    fn put(txn: &WriteTransaction, key: &str, value: &[u8]) -> Result<(), KvError> {
        let mut table = txn.open_table(ENTRIES).map_err(backend)?;
        table
            .insert(("ns", key), encode(0, value).as_slice())
            .map_err(backend)?;
        Ok(())
    }

    #[test]
    fn a_group_applies_writes_in_order_and_a_failed_one_spares_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let kv =
            EmbeddedKv::open(&dir.path().join("kv.redb"), Arc::new(ManualClock::new(0))).unwrap();
        let (writes, pending) = mpsc::channel();
        let first = queue(&writes, |_, txn| put(txn, "a", b"1"));
        let failed = queue(&writes, |_, _| -> Result<(), _> {
            Err(KvError::Invalid("not a counter".into()))
        });
        // Sees the write before it in its group.
        let second = queue(&writes, |_, txn| {
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let seen = table.get(("ns", "a")).map_err(backend)?.is_some();
            drop(table);
            put(txn, "b", b"2")?;
            Ok(seen)
        });
        drop(writes);
        write_groups(&kv.inner, &pending);
        assert_eq!(first.blocking_recv().unwrap(), Ok(()));
        assert!(matches!(
            failed.blocking_recv().unwrap(),
            Err(KvError::Invalid(_))
        ));
        assert_eq!(second.blocking_recv().unwrap(), Ok(true));
        let now = kv.inner.db.begin_read().unwrap();
        let table = now.open_table(ENTRIES).unwrap();
        assert!(table.get(("ns", "a")).unwrap().is_some());
        assert!(table.get(("ns", "b")).unwrap().is_some());
    }
}
