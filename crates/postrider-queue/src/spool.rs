//! The spool handle: opening and recovery, stores, loads, removals.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::format::{self, CorruptReason, ReadError};
use crate::state_file::{StateReadError, read_state_file};
use crate::writer::{Reply, Request, Shared, Writer};
use crate::{Envelope, QueueId, SpoolError};

/// Permissions of spool directories.
const DIR_MODE: u32 = 0o700;

/// How the spool makes stores durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// One `syncfs` per batch of concurrent stores (group commit); `store` returns only after it.
    #[default]
    Group,
    /// Never sync. A crash or power loss can lose acknowledged mail: tests and benchmarks only,
    /// never production.
    None,
}

/// Which kind of spool sync a [`SyncObserver`] is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOp {
    /// The one `syncfs` of a group-committed batch of stores.
    Commit,
    /// The fsyncs of a delivery state save (file, then `state/`).
    State,
    /// The fsync of `active/` after a removal.
    Remove,
}

impl SyncOp {
    /// A short name for logs and metrics: commit, state, remove.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Commit => "commit",
            SyncOp::State => "state",
            SyncOp::Remove => "remove",
        }
    }
}

/// Told how long each sync took (for latency metrics); called on the syncing thread, so it
/// must be quick.
pub trait SyncObserver: Send + Sync + std::fmt::Debug {
    /// A sync of `op` took `elapsed` (failed syncs included).
    fn synced(&self, op: SyncOp, elapsed: std::time::Duration);
}

/// Tuning for [`Spool::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// How stores are made durable; [`SyncMode::Group`] by default.
    pub sync: SyncMode,
    /// The most entries committed with one sync (default 256); bounds the latency of a batch.
    pub max_batch: usize,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Group,
            max_batch: 256,
        }
    }
}

/// What [`Spool::open`] found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Complete, verified entries in `active/`, sorted; they are queued and need delivery.
    pub recovered: Vec<QueueId>,
    /// Partial writes deleted from `tmp/` (never acknowledged, so safe to drop).
    pub removed_partial: usize,
    /// Files that failed verification, at their new location in `corrupt/`.
    pub corrupt: Vec<PathBuf>,
    /// Entries written by a newer format version, left in `active/` for a newer build;
    /// [`Spool::list`] skips them and [`Spool::load`] reports [`SpoolError::UnsupportedVersion`].
    pub unsupported: Vec<(QueueId, u32)>,
    /// State files in `state/` whose message no longer exists, deleted.
    pub removed_states: usize,
    /// State files that failed verification, at their new location in `corrupt/`
    /// (as `ID.state`); their messages are kept and count as never attempted.
    pub corrupt_states: Vec<PathBuf>,
}

/// The spool's directory layout.
#[derive(Debug)]
pub(crate) struct Paths {
    pub(crate) dir: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) active: PathBuf,
    pub(crate) corrupt: PathBuf,
    pub(crate) state: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tmp: dir.join("tmp"),
            active: dir.join("active"),
            corrupt: dir.join("corrupt"),
            state: dir.join("state"),
        }
    }
}

/// A durable message spool on one directory.
///
/// Cheap to clone (an `Arc` inside); all clones share one writer thread. The writer stops
/// when the last clone is dropped or [`Spool::close`] is called, after finishing the stores
/// already handed to it.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    paths: Arc<Paths>,
    sync: SyncMode,
    tx: RwLock<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
    /// An fd on `active/`, fsynced after removals.
    active_fd: File,
    /// Entries of an unknown format version, hidden from `list`.
    unsupported: BTreeSet<QueueId>,
    /// Holds the exclusive lock on `dir/lock` for as long as the spool is open.
    _lock: File,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, recovers what is on disk and starts
    /// the writer thread.
    ///
    /// Layout: `dir/lock` (held with an exclusive `flock` so two processes cannot share a
    /// spool), `dir/tmp/` (entries being written), `dir/active/` (queued entries) and
    /// `dir/corrupt/` (files that failed verification, kept as evidence) and `dir/state/`
    /// (delivery state). Everything in `tmp/` is deleted; every file in `active/` is verified
    /// and moved to `corrupt/` if bad; state files of vanished messages are deleted and
    /// corrupt ones moved to `corrupt/`.
    pub fn open(dir: &Path, options: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        let paths = Arc::new(Paths::new(dir));
        if create_dir(&paths.dir)?
            && let Some(parent) = paths.dir.parent().filter(|p| !p.as_os_str().is_empty())
        {
            // Make the new spool directory's own entry durable.
            fsync_dir(parent)?;
        }

        let lock_path = paths.dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| SpoolError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked { path: lock_path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(SpoolError::io(lock_path, e)),
        }

        for sub in [&paths.tmp, &paths.active, &paths.corrupt, &paths.state] {
            create_dir(sub)?;
        }
        let dir_fd = open_dir(&paths.dir)?;
        // Make the subdirectories' and lock file's entries durable before anything uses them.
        dir_fd
            .sync_all()
            .map_err(|e| SpoolError::io(&paths.dir, e))?;

        let (recovery, unsupported) = recover(&paths)?;
        if recovery.removed_partial > 0
            || !recovery.corrupt.is_empty()
            || recovery.removed_states > 0
            || !recovery.corrupt_states.is_empty()
        {
            // Persist the cleanup so the same partial files are not found again.
            sync_fs(&dir_fd).map_err(|source| SpoolError::Sync {
                path: paths.dir.clone(),
                source,
            })?;
        }
        tracing::info!(
            dir = %paths.dir.display(),
            recovered = recovery.recovered.len(),
            removed_partial = recovery.removed_partial,
            corrupt = recovery.corrupt.len(),
            unsupported = recovery.unsupported.len(),
            removed_states = recovery.removed_states,
            corrupt_states = recovery.corrupt_states.len(),
            "spool opened"
        );

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            paths: Arc::clone(&paths),
            shared: Arc::clone(&shared),
            dir_fd,
            active_fd: open_dir(&paths.active)?,
            sync: options.sync,
            max_batch: options.max_batch,
        };
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| SpoolError::io(&paths.dir, e))?;

        let inner = Inner {
            active_fd: open_dir(&paths.active)?,
            paths,
            sync: options.sync,
            tx: RwLock::new(Some(tx)),
            writer: Mutex::new(Some(handle)),
            shared,
            unsupported,
            _lock: lock,
        };
        Ok((
            Spool {
                inner: Arc::new(inner),
            },
            recovery,
        ))
    }

    /// Queues a message and resolves once it is durable: only then may the server say "250".
    ///
    /// Cancel-safe: if the future is dropped first, the entry is not written, or is withdrawn.
    pub async fn store(&self, envelope: Envelope, message: Vec<u8>) -> Result<QueueId, SpoolError> {
        let id = QueueId::generate();
        self.store_as(id.clone(), envelope, message).await?;
        Ok(id)
    }

    /// Like [`Spool::store`] under an id the caller generated beforehand with
    /// [`QueueId::generate`] (so the data-stage plugins see the id the message gets).
    pub async fn store_as(
        &self,
        id: QueueId,
        envelope: Envelope,
        message: Vec<u8>,
    ) -> Result<(), SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.submit(id, &envelope, message, Reply::Async(tx))?;
        rx.await.map_err(|_| SpoolError::Closed)??;
        Ok(())
    }

    /// Like [`Spool::store`], blocking the calling thread (safe to call anywhere, even
    /// inside an async runtime, though that stalls the runtime's thread).
    pub fn store_blocking(
        &self,
        envelope: Envelope,
        message: Vec<u8>,
    ) -> Result<QueueId, SpoolError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let id = QueueId::generate();
        self.submit(id.clone(), &envelope, message, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| SpoolError::Closed)??;
        Ok(id)
    }

    /// Encodes an entry on the caller's thread and hands it to the writer.
    fn submit(
        &self,
        id: QueueId,
        envelope: &Envelope,
        message: Vec<u8>,
        reply: Reply,
    ) -> Result<(), SpoolError> {
        let entry = format::encode(envelope, message)?;
        let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
        let tx = tx.as_ref().ok_or(SpoolError::Closed)?;
        tx.send(Request { id, entry, reply })
            .map_err(|_| SpoolError::Closed)?;
        Ok(())
    }

    /// Reads an entry back, verifying its header, lengths and checksum.
    pub fn load(&self, id: &QueueId) -> Result<(Envelope, Vec<u8>), SpoolError> {
        let path = self.inner.paths.active.join(id.as_str());
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound { id: id.clone() },
            _ => SpoolError::io(&path, e),
        })?;
        let len = file.metadata().map_err(|e| SpoolError::io(&path, e))?.len();
        match format::read_entry(BufReader::with_capacity(64 * 1024, file), len, true) {
            Ok((envelope, Some(message))) => Ok((envelope, message)),
            Ok((_, None)) => Err(SpoolError::Corrupt {
                path,
                reason: CorruptReason::Truncated,
            }),
            Err(e) => Err(read_error(path, e)),
        }
    }

    /// Deletes an entry (after delivery or bounce) durably, then its delivery state (a
    /// crash in between leaves an orphaned state file, which the next open deletes).
    pub fn remove(&self, id: &QueueId) -> Result<(), SpoolError> {
        let path = self.inner.paths.active.join(id.as_str());
        fs::remove_file(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SpoolError::NotFound { id: id.clone() },
            _ => SpoolError::io(&path, e),
        })?;
        if self.inner.sync == SyncMode::Group {
            let started = std::time::Instant::now();
            let synced = self.inner.active_fd.sync_all();
            self.inner.shared.synced(SyncOp::Remove, started.elapsed());
            synced.map_err(|e| SpoolError::io(&self.inner.paths.active, e))?;
        }
        let state = self.inner.paths.state.join(id.as_str());
        match fs::remove_file(&state) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SpoolError::io(state, e)),
        }
    }

    /// The ids of all acknowledged entries in `active/`, sorted (oldest first).
    pub fn list(&self) -> Result<Vec<QueueId>, SpoolError> {
        let active = &self.inner.paths.active;
        let mut ids = Vec::new();
        for entry in fs::read_dir(active).map_err(|e| SpoolError::io(active, e))? {
            let entry = entry.map_err(|e| SpoolError::io(active, e))?;
            if let Some(id) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                ids.push(id);
            }
        }
        {
            let in_flight = self.inner.shared.in_flight();
            ids.retain(|id| !in_flight.contains(id) && !self.inner.unsupported.contains(id));
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Where messages still arriving spill ([`crate::Incoming`]): the spool's `tmp/`, on the
    /// same file system as the spool.
    pub fn incoming_dir(&self) -> &Path {
        &self.inner.paths.tmp
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.paths.dir
    }

    /// The directory layout, for the other modules of this crate.
    pub(crate) fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// How this spool makes writes durable.
    pub(crate) fn sync_mode(&self) -> SyncMode {
        self.inner.sync
    }

    /// How many file system syncs the writer has issued; with group commit this grows by
    /// one per batch, so under load it stays well below [`Spool::stored_count`].
    pub fn sync_count(&self) -> u64 {
        self.inner.shared.syncs.load(Ordering::Relaxed)
    }

    /// Sets the observer told about every sync from now on (of every clone of this spool);
    /// false if one was already set, which stays.
    pub fn set_sync_observer(&self, observer: Arc<dyn SyncObserver>) -> bool {
        self.inner.shared.observer.set(observer).is_ok()
    }

    /// Reports a sync of `op` that took `elapsed` to the observer, if any.
    pub(crate) fn synced(&self, op: SyncOp, elapsed: std::time::Duration) {
        self.inner.shared.synced(op, elapsed);
    }

    /// How many batches the writer has committed.
    pub fn batch_count(&self) -> u64 {
        self.inner.shared.batches.load(Ordering::Relaxed)
    }

    /// How many stores have been acknowledged as durable since open.
    pub fn stored_count(&self) -> u64 {
        self.inner.shared.stored.load(Ordering::Relaxed)
    }

    /// Stops the writer thread after it finishes the stores already handed to it; later
    /// stores fail with [`SpoolError::Closed`]. Blocks until the writer has exited.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl Inner {
    fn close(&self) {
        // Dropping the sender lets the writer drain its queue and exit.
        drop(
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(dir = %self.paths.dir.display(), "spool writer thread panicked");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// Attributes a read failure to `path`.
fn read_error(path: PathBuf, e: ReadError) -> SpoolError {
    match e {
        ReadError::Io(source) => SpoolError::Io { path, source },
        ReadError::Corrupt(reason) => SpoolError::Corrupt { path, reason },
        ReadError::UnsupportedVersion(version) => SpoolError::UnsupportedVersion { path, version },
    }
}

/// Deletes `tmp/`'s contents and verifies `active/`, quarantining what fails.
fn recover(paths: &Paths) -> Result<(Recovery, BTreeSet<QueueId>), SpoolError> {
    let mut recovery = Recovery::default();

    for entry in read_dir(&paths.tmp)? {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.map_err(|e| SpoolError::io(&path, e))?;
        tracing::debug!(path = %path.display(), "removed partial spool entry");
        recovery.removed_partial += 1;
    }

    let mut unsupported = BTreeSet::new();
    for entry in read_dir(&paths.active)? {
        let path = entry.path();
        let id = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<QueueId>().ok());
        let Some(id) = id else {
            recovery
                .corrupt
                .push(quarantine(paths, &path, &CorruptReason::BadName)?);
            continue;
        };
        // Whatever happens to it, never hand out this id again.
        id.observe();
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            recovery
                .corrupt
                .push(quarantine(paths, &path, &CorruptReason::NotAFile)?);
            continue;
        }
        match verify(&path) {
            Ok(()) => recovery.recovered.push(id),
            Err(ReadError::Io(e)) => return Err(SpoolError::io(path, e)),
            Err(ReadError::Corrupt(reason)) => {
                recovery.corrupt.push(quarantine(paths, &path, &reason)?);
            }
            Err(ReadError::UnsupportedVersion(version)) => {
                tracing::warn!(
                    path = %path.display(),
                    version,
                    supported = format::FORMAT_VERSION,
                    "spool entry has an unsupported format version; left in place for a newer build"
                );
                unsupported.insert(id.clone());
                recovery.unsupported.push((id, version));
            }
        }
    }
    recovery.recovered.sort_unstable();
    recovery.unsupported.sort_unstable();
    recover_states(paths, &mut recovery)?;
    Ok((recovery, unsupported))
}

/// Deletes state files whose message is gone and quarantines corrupt ones.
fn recover_states(paths: &Paths, recovery: &mut Recovery) -> Result<(), SpoolError> {
    let live: BTreeSet<&QueueId> = recovery
        .recovered
        .iter()
        .chain(recovery.unsupported.iter().map(|(id, _)| id))
        .collect();
    let mut corrupt_states = Vec::new();
    for entry in read_dir(&paths.state)? {
        let path = entry.path();
        let id = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<QueueId>().ok());
        let Some(id) = id else {
            tracing::warn!(path = %path.display(), "ignoring unexpected file in the state directory");
            continue;
        };
        if !live.contains(&id) {
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| SpoolError::io(&path, e))?;
            tracing::debug!(path = %path.display(), "removed state of a vanished spool entry");
            recovery.removed_states += 1;
            continue;
        }
        match read_state_file(&path) {
            Ok(_) => {}
            Err(StateReadError::Io(e)) if e.kind() == io::ErrorKind::IsADirectory => {
                corrupt_states.push(quarantine_as(
                    paths,
                    &path,
                    format!("{id}.state"),
                    &CorruptReason::NotAFile,
                )?);
            }
            Err(StateReadError::Io(e)) => return Err(SpoolError::io(path, e)),
            Err(StateReadError::Corrupt(reason)) => {
                corrupt_states.push(quarantine_as(paths, &path, format!("{id}.state"), &reason)?);
            }
            Err(StateReadError::UnsupportedVersion(version)) => {
                tracing::warn!(
                    path = %path.display(),
                    version,
                    supported = crate::STATE_FORMAT_VERSION,
                    "delivery state has an unsupported format version; left in place for a newer build"
                );
            }
        }
    }
    recovery.corrupt_states = corrupt_states;
    Ok(())
}

/// Verifies one file without keeping its message in memory.
fn verify(path: &Path) -> Result<(), ReadError> {
    let file = File::open(path).map_err(ReadError::Io)?;
    let len = file.metadata().map_err(ReadError::Io)?.len();
    format::read_entry(BufReader::with_capacity(64 * 1024, file), len, false).map(|_| ())
}

/// Moves a bad file into `corrupt/` under a name that does not clobber earlier evidence.
fn quarantine(paths: &Paths, path: &Path, reason: &CorruptReason) -> Result<PathBuf, SpoolError> {
    let name = path.file_name().unwrap_or(path.as_os_str()).to_os_string();
    quarantine_as(paths, path, name, reason)
}

/// Moves a bad file into `corrupt/` as `name` (numbered if that is taken).
fn quarantine_as(
    paths: &Paths,
    path: &Path,
    name: impl Into<std::ffi::OsString>,
    reason: &CorruptReason,
) -> Result<PathBuf, SpoolError> {
    let name: std::ffi::OsString = name.into();
    let mut target = paths.corrupt.join(&name);
    let mut n = 0u32;
    while fs::symlink_metadata(&target).is_ok() {
        n += 1;
        let mut numbered = name.clone();
        numbered.push(format!(".{n}"));
        target = paths.corrupt.join(numbered);
    }
    fs::rename(path, &target).map_err(|e| SpoolError::io(path, e))?;
    tracing::warn!(
        path = %path.display(),
        moved_to = %target.display(),
        %reason,
        "corrupt spool entry quarantined"
    );
    Ok(target)
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, SpoolError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(|e| SpoolError::io(dir, e))
}

/// Creates `dir` (and missing parents) if needed; returns whether it was created.
fn create_dir(dir: &Path) -> Result<bool, SpoolError> {
    match DirBuilder::new()
        .recursive(false)
        .mode(DIR_MODE)
        .create(dir)
    {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| SpoolError::io(dir, e))?;
            Ok(true)
        }
        Err(e) => Err(SpoolError::io(dir, e)),
    }
}

fn open_dir(dir: &Path) -> Result<File, SpoolError> {
    File::open(dir).map_err(|e| SpoolError::io(dir, e))
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    open_dir(dir)?
        .sync_all()
        .map_err(|e| SpoolError::io(dir, e))
}

/// Syncs the file system holding `dir_fd`.
fn sync_fs(dir_fd: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        rustix::fs::syncfs(dir_fd).map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir_fd;
        rustix::fs::sync();
        Ok(())
    }
}
