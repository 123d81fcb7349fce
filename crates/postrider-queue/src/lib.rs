//! The durable spool of the Postrider mail relay.
//!
//! The server answers `250 queued as ID` only after [`Spool::store`] has returned `Ok`. By
//! then the entry's data *and* its directory entry are on stable storage, so an
//! acknowledged message survives a crash or power loss. Concurrent stores share one sync
//! (group commit). [`Spool::open`] recovers every complete entry and clears out partial
//! ones.
//!
//! Two halves, kept apart: **storage** — the spool and its file format (`spool`, `format`,
//! `writer` for group commit and recovery, `state_file`, and [`Incoming`] for a message
//! still arriving), and **queue logic** with no IO —
//! the typed delivery [`state`], the manager's [`decide`]ions, the retry [`schedule`] and
//! the [`dsn`]s.
//!
//! # Directory layout
//!
//! ```text
//! DIR/lock        held with an exclusive flock(2) while a Spool is open
//! DIR/tmp/ID      an entry being written; anything here at open is deleted
//!                 (messages still arriving spill here into unnamed files, see Incoming)
//! DIR/active/ID   a complete entry: queued for delivery
//! DIR/corrupt/    files from active/ that failed verification, kept as evidence
//!                 (corrupt state files land here as ID.state)
//! DIR/state/ID    the delivery state of active/ID, once the queue manager saved one
//! ```
//!
//! `ID` is a [`QueueId`]: 17 Crockford base32 characters, time-sortable, and strictly
//! increasing within a process. Ids recovered at open raise the floor for new ids, and the
//! lock keeps other processes out, so an id is never reused for a different entry.
//!
//! # File format, version 1
//!
//! All integers are big-endian.
//!
//! ```text
//! "POSTRIDER-SPOOL 1\r\n"   magic line; the decimal number is the format version
//! u32 envelope_len          length of the envelope JSON (at most 64 MiB)
//! envelope_len bytes        the Envelope as UTF-8 JSON
//! u64 message_len           length of the message
//! message_len bytes         the message exactly as received (after dot-unstuffing)
//! u32 crc                   CRC-32 (IEEE, as computed by crc32fast) of every byte above
//! ```
//!
//! A reader accepts a file only if its size equals exactly what the two length fields
//! imply and the CRC matches; only then does it parse the JSON.
//!
//! ## Versioning
//!
//! The number in the magic line governs compatibility. A reader that finds a version it
//! does not know rejects the file with [`SpoolError::UnsupportedVersion`]; at open such
//! files are reported in [`Recovery::unsupported`] and left in `active/` (not treated as
//! corrupt), so rolling back to an older build keeps them for the newer one to deliver.
//!
//! Within version 1 the envelope may gain fields, provided they are `Option`s whose absence
//! means the old behaviour: the envelope is deliberately *not* `deny_unknown_fields`, so an
//! older v1 reader ignores them, and a newer reader sees `None` in older files. A change an
//! older reader must not ignore (new semantics, a renamed or retyped field, a different
//! framing or checksum) needs a new version number.
//!
//! # Write path: group commit
//!
//! Callers encode the entry (JSON and CRC) on their own thread and send it to one writer
//! thread. The writer blocks for the first request, drains whatever else is queued (up to
//! [`SpoolOptions::max_batch`]) into a batch, and for each entry writes `tmp/ID` completely
//! and renames it to `active/ID`. Then a single `syncfs(2)` on the spool directory makes
//! the whole batch durable, and only then is every waiter answered `Ok`. While a batch
//! syncs, the next one queues up, so the number of syncs tracks the disk's latency rather
//! than the message rate ([`Spool::sync_count`]).
//!
//! **Why `syncfs` rather than an `fsync` per file.** Durability needs both each file's
//! data and the directory entries created by the renames. Doing that per entry costs
//! `fsync(file)` plus `fsync(dir)`, and every one of those forces its own journal commit
//! and disk cache flush, which is what limits a spool's throughput. One `syncfs` writes back
//! all dirty data of the file system and commits the journal (renames included) once, with
//! one cache flush, for the whole batch. It also reports writeback errors that happened
//! since the spool was opened (Linux 5.8 and later), so a failed page write is not
//! silently lost. Its cost is that it also flushes other dirty data on the same file
//! system: give the spool its own file system if other heavy writers share it.
//!
//! **Why the trailer makes crashes detectable.** Between the rename and the sync, a crash
//! can leave `active/ID` with its name persisted but its data missing, zero-filled or
//! short. Such an entry was never acknowledged (its sync never returned), and the length
//! check and trailer CRC catch it at the next open, which moves it to `corrupt/`. A
//! renamed entry whose data did reach the disk is recovered and delivered: at worst a
//! duplicate of a message the client will retry, never a loss.
//!
//! If the sync fails, every entry of the batch is withdrawn (best effort) and its waiter
//! gets [`SpoolError::Sync`]; the server must answer `451 4.3.0`. A failure writing one
//! entry fails only that entry. [`SyncMode::None`] skips syncing, for tests and benchmarks
//! only.
//!
//! # State files, version 1
//!
//! [`Spool::save_state`] records which recipients of `active/ID` were delivered, bounced
//! or are still pending ([`MessageState`]) in `state/ID`, so a restart never re-delivers a
//! recipient already delivered. Across a crash in the middle of an attempt delivery is
//! at-least-once: the state is saved after the attempt. Integers are big-endian:
//!
//! ```text
//! "POSTRIDER-STATE 1\r\n"   magic line; the decimal number is the state format version
//! u32 json_len              length of the JSON (at most 64 MiB)
//! json_len bytes            the MessageState as UTF-8 JSON
//! u32 crc                   CRC-32 (IEEE) of every byte above
//! ```
//!
//! A save writes `tmp/ID.state.N`, fsyncs it, renames it over `state/ID` and fsyncs
//! `state/` (no syncs in [`SyncMode::None`]), so a reader sees the old or the new state,
//! never a mix. [`Spool::remove`] deletes the entry first and then its state.
//!
//! At open, state files whose entry is gone from `active/` are deleted
//! ([`Recovery::removed_states`]) and corrupt ones are moved to `corrupt/ID.state`
//! ([`Recovery::corrupt_states`]). A state file that is missing or corrupt reads as `None`
//! (corrupt ones with a warning): the message is kept and every recipient counts as
//! pending, which may deliver a recipient twice but never loses one.
//!
//! Versioning follows the spool's rules. The state format version is independent of the
//! spool's ([`STATE_FORMAT_VERSION`]). Within version 1, new fields must be optional with
//! absence meaning the old behaviour (`MessageState` is not `deny_unknown_fields`). A new
//! [`RcptStatus`] variant or a changed meaning needs a new version, since an older reader
//! would take the file for corrupt and re-deliver. [`Spool::load_state`] reports a state
//! file of an unknown version as [`SpoolError::UnsupportedVersion`] (never as `None`,
//! which would re-deliver what a newer build delivered), and open leaves it in place.

pub mod decide;
pub mod dsn;
mod envelope;
mod error;
mod format;
mod id;
mod incoming;
pub mod schedule;
mod spool;
pub mod state;
mod state_file;
mod writer;

pub use dsn::{
    DEFAULT_MAX_RETURNED_LEN, DsnKind, DsnOptions, DsnRecipient, build_dsn, build_dsn_with,
    dsn_needs_smtputf8, wants_dsn,
};
pub use envelope::{ClientInfo, Envelope, Recipient, SpfRecord};
pub use error::SpoolError;
/// Decoders of whole files in memory, for the fuzz targets; not a stable API.
#[doc(hidden)]
pub use format::decode_entry;
pub use format::{CorruptReason, EncodeError, FORMAT_VERSION, MAX_ENVELOPE_LEN};
pub use id::{ParseQueueIdError, QueueId};
pub use incoming::Incoming;
pub use schedule::{FALLBACK_INTERVAL, Retry, RetryPolicy};
pub use spool::{Recovery, Spool, SpoolOptions, SyncMode, SyncObserver, SyncOp};
pub use state::{MessageState, QueueState, RcptState, RcptStatus};
pub use state_file::STATE_FORMAT_VERSION;
#[doc(hidden)]
pub use state_file::decode_state_file;
