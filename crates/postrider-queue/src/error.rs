//! Errors returned by the spool.

use std::io;
use std::path::PathBuf;

use crate::QueueId;
use crate::format::{CorruptReason, EncodeError};

/// Everything that can go wrong in the spool.
///
/// A `store` that returns any error has not queued the message: the server must answer
/// with a temporary failure (`451 4.3.0`), never `250`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file system operation failed.
    #[error("spool I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Syncing the spool's file system failed, so the entries of that batch are not durable.
    #[error("spool sync failed on {}: {source}", path.display())]
    Sync {
        /// The spool directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A spool file failed verification (bad header, length or checksum).
    #[error("corrupt spool file {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        reason: CorruptReason,
    },
    /// A spool file written in a format version this build does not understand.
    #[error("spool file {} has format version {version}; this build reads only version {}", path.display(), crate::FORMAT_VERSION)]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in its header.
        version: u32,
    },
    /// No spool entry with this id exists.
    #[error("no spool entry {id}")]
    NotFound {
        /// The id that was looked up.
        id: QueueId,
    },
    /// The envelope could not be serialized.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Another process holds the spool's lock file.
    #[error("spool {} is locked by another process", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The writer thread is gone (the spool was closed, or the thread died).
    #[error("spool writer is closed")]
    Closed,
}

impl SpoolError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
