//! The group-commit writer thread.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, mpsc};

use tokio::sync::oneshot;

use crate::format::Encoded;
use crate::spool::Paths;
use crate::{QueueId, SpoolError, SyncMode, SyncObserver, SyncOp};

/// Permissions of spool files: they hold other people's mail.
const FILE_MODE: u32 = 0o600;

/// State shared between the writer thread and [`crate::Spool`] handles.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// File system syncs issued by the writer (one per batch in [`SyncMode::Group`]).
    pub(crate) syncs: AtomicU64,
    /// Batches committed.
    pub(crate) batches: AtomicU64,
    /// Entries acknowledged as durable.
    pub(crate) stored: AtomicU64,
    /// Ids renamed into `active/` whose batch is not yet acknowledged; hidden from `list`.
    in_flight: Mutex<HashSet<QueueId>>,
    /// Told how long each sync took, once set ([`crate::Spool::set_sync_observer`]).
    pub(crate) observer: std::sync::OnceLock<std::sync::Arc<dyn SyncObserver>>,
}

impl Shared {
    /// Reports a sync of `op` that took `elapsed` to the observer, if any.
    pub(crate) fn synced(&self, op: SyncOp, elapsed: std::time::Duration) {
        if let Some(observer) = self.observer.get() {
            observer.synced(op, elapsed);
        }
    }

    pub(crate) fn in_flight(&self) -> MutexGuard<'_, HashSet<QueueId>> {
        // The set stays consistent even if a holder panicked: every operation is one call.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the writer sends the outcome of one store.
pub(crate) enum Reply {
    /// From [`crate::Spool::store`].
    Async(oneshot::Sender<Result<(), SpoolError>>),
    /// From [`crate::Spool::store_blocking`]; a std channel, because tokio's
    /// `blocking_recv` panics inside a runtime.
    Blocking(mpsc::SyncSender<Result<(), SpoolError>>),
}

impl Reply {
    /// Whether the waiter has gone away (a dropped `store` future).
    fn is_closed(&self) -> bool {
        match self {
            Self::Async(tx) => tx.is_closed(),
            Self::Blocking(_) => false,
        }
    }

    /// Delivers the outcome; returns false if nobody is waiting any more.
    fn send(self, result: Result<(), SpoolError>) -> bool {
        match self {
            Self::Async(tx) => tx.send(result).is_ok(),
            Self::Blocking(tx) => tx.send(result).is_ok(),
        }
    }
}

/// One entry to make durable.
pub(crate) struct Request {
    pub(crate) id: QueueId,
    pub(crate) entry: Encoded,
    pub(crate) reply: Reply,
}

/// An entry renamed into `active/` and awaiting the batch's sync.
struct Pending {
    id: QueueId,
    reply: Reply,
    /// Kept open for the per-file fallback where `syncfs` does not exist.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    file: File,
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) paths: std::sync::Arc<Paths>,
    pub(crate) shared: std::sync::Arc<Shared>,
    /// An fd on the spool directory: `syncfs` syncs the file system it lives on.
    pub(crate) dir_fd: File,
    /// An fd on `active/`, for the fallback where `syncfs` does not exist.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    pub(crate) active_fd: File,
    pub(crate) sync: SyncMode,
    pub(crate) max_batch: usize,
}

impl Writer {
    /// Commits batches until every sender is gone.
    pub(crate) fn run(self, rx: mpsc::Receiver<Request>) {
        let max_batch = self.max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch.min(1024));
        // Block for the first request, then take whatever queued up meanwhile: while one
        // batch syncs, the next one accumulates.
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
        tracing::debug!(dir = %self.paths.dir.display(), "spool writer stopped");
    }

    /// Writes, renames and syncs one batch, then answers its waiters.
    fn commit(&self, batch: &mut Vec<Request>) {
        let mut pending = Vec::with_capacity(batch.len());
        for Request { id, entry, reply } in batch.drain(..) {
            if reply.is_closed() {
                // The caller gave up before we started: never written, never acknowledged.
                continue;
            }
            // Hide the id from `list` until it is acknowledged.
            self.shared.in_flight().insert(id.clone());
            match self.write(&id, &entry) {
                Ok(file) => pending.push(Pending { id, reply, file }),
                Err(e) => {
                    self.shared.in_flight().remove(&id);
                    reply.send(Err(e));
                }
            }
        }
        if pending.is_empty() {
            return;
        }

        let synced = match self.sync {
            SyncMode::Group => {
                self.shared.syncs.fetch_add(1, Ordering::Relaxed);
                let started = std::time::Instant::now();
                let synced = self.sync_batch(&pending);
                self.shared.synced(SyncOp::Commit, started.elapsed());
                synced
            }
            SyncMode::None => Ok(()),
        };
        self.shared.batches.fetch_add(1, Ordering::Relaxed);

        match synced {
            Ok(()) => {
                for Pending { id, reply, .. } in pending {
                    // Counted and visible to `list` before the waiter wakes, so a caller
                    // sees its own store reflected as soon as `store` returns.
                    self.shared.stored.fetch_add(1, Ordering::Relaxed);
                    if !reply.is_closed() {
                        self.shared.in_flight().remove(&id);
                    }
                    if !reply.send(Ok(())) {
                        self.shared.stored.fetch_sub(1, Ordering::Relaxed);
                        // The waiter is gone, so the client never saw "250": withdraw the
                        // entry rather than deliver a message the client will send again.
                        self.discard(&id);
                        self.shared.in_flight().remove(&id);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(
                    dir = %self.paths.dir.display(),
                    entries = pending.len(),
                    error = %e,
                    "spool sync failed; rejecting the whole batch"
                );
                for Pending { id, reply, .. } in pending {
                    self.discard(&id);
                    self.shared.in_flight().remove(&id);
                    reply.send(Err(SpoolError::Sync {
                        path: self.paths.dir.clone(),
                        source: clone_io_error(&e),
                    }));
                }
            }
        }
    }

    /// Writes `tmp/ID` completely, then renames it to `active/ID`; no sync.
    fn write(&self, id: &QueueId, entry: &Encoded) -> Result<File, SpoolError> {
        let tmp = self.paths.tmp.join(id.as_str());
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(&entry.head)?;
                file.write_all(&entry.message)?;
                file.write_all(&entry.trailer)?;
                Ok(file)
            });
        let file = match written {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(SpoolError::io(tmp, e));
            }
        };
        // Ids are strictly increasing and above every id recovered at open, and the spool
        // lock excludes other writers, so this rename never replaces an entry.
        let active = self.paths.active.join(id.as_str());
        if let Err(e) = fs::rename(&tmp, &active) {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::io(active, e));
        }
        Ok(file)
    }

    /// Makes the batch's file data and directory entries durable.
    #[cfg(target_os = "linux")]
    fn sync_batch(&self, _pending: &[Pending]) -> io::Result<()> {
        // One syncfs writes back every dirty inode of the file system and commits the
        // journal once; since Linux 5.8 it also reports writeback errors.
        rustix::fs::syncfs(&self.dir_fd).map_err(io::Error::from)
    }

    /// Makes the batch's file data and directory entries durable.
    #[cfg(not(target_os = "linux"))]
    fn sync_batch(&self, pending: &[Pending]) -> io::Result<()> {
        // No syncfs here: fall back to one fsync per file plus one for `active/`.
        let _ = &self.dir_fd;
        for p in pending {
            p.file.sync_data()?;
        }
        self.active_fd.sync_all()
    }

    /// Best-effort removal of an entry that must not be delivered.
    fn discard(&self, id: &QueueId) {
        let path = self.paths.active.join(id.as_str());
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot withdraw unacknowledged spool entry");
        }
    }
}

/// Copies an I/O error for each waiter of a failed batch (`io::Error` is not `Clone`).
fn clone_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
