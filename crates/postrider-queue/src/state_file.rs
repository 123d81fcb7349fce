//! Delivery state files, persisted in `DIR/state/ID` beside each spool entry: the framing
//! (magic, length, JSON, CRC), atomic writes and reads. The format is described in the crate
//! docs ("State files").

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::{CorruptReason, MAX_ENVELOPE_LEN};
use crate::state::MessageState;
use crate::{QueueId, Spool, SpoolError, SyncMode, SyncOp};

/// The state file format version this build writes and reads.
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The first line of every version-1 state file.
const STATE_MAGIC: &[u8] = b"POSTRIDER-STATE 1\r\n";

/// What every version's magic line starts with; the version number and CRLF follow.
const STATE_MAGIC_PREFIX: &[u8] = b"POSTRIDER-STATE ";

/// The longest magic line looked at when sniffing for a version.
const MAX_MAGIC_LINE: usize = 32;

/// Upper bound on a state file's JSON (the same bound as an envelope's).
const MAX_STATE_LEN: u32 = MAX_ENVELOPE_LEN;

/// Permissions of state files (they name other people's correspondents).
const FILE_MODE: u32 = 0o600;

/// Why a state file could not be read.
#[derive(Debug)]
pub(crate) enum StateReadError {
    Io(io::Error),
    Corrupt(CorruptReason),
    UnsupportedVersion(u32),
}

impl From<CorruptReason> for StateReadError {
    fn from(reason: CorruptReason) -> Self {
        Self::Corrupt(reason)
    }
}

/// Frames `state` in state format v1: magic, length, JSON, CRC.
pub(crate) fn encode_state(state: &MessageState) -> Result<Vec<u8>, SpoolError> {
    let json = serde_json::to_vec(state).map_err(crate::EncodeError::Json)?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&len| len <= MAX_STATE_LEN)
        .ok_or(crate::EncodeError::StateTooLarge { len: json.len() })?;
    let mut out = Vec::with_capacity(STATE_MAGIC.len() + 8 + json.len());
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// Parses and verifies a whole state file.
pub(crate) fn decode_state(bytes: &[u8]) -> Result<MessageState, StateReadError> {
    let rest = strip_magic(bytes)?;
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(CorruptReason::Truncated)?;
    let len = u32::from_be_bytes(*len);
    if len > MAX_STATE_LEN {
        return Err(CorruptReason::StateTooLarge { len }.into());
    }
    let expected = (STATE_MAGIC.len() + 4 + 4) as u64 + u64::from(len);
    if expected != bytes.len() as u64 {
        return Err(CorruptReason::Length {
            expected,
            actual: bytes.len() as u64,
        }
        .into());
    }
    let (json, trailer) = rest.split_at(len as usize);
    let stored = trailer
        .first_chunk::<4>()
        .map(|b| u32::from_be_bytes(*b))
        .ok_or(CorruptReason::Truncated)?;
    let computed = crc32fast::hash(&bytes[..bytes.len() - 4]);
    if stored != computed {
        return Err(CorruptReason::Checksum { stored, computed }.into());
    }
    serde_json::from_slice::<MessageState>(json)
        .map(MessageState::upgrade)
        .map_err(|e| CorruptReason::State(e).into())
}

/// Decodes and verifies a whole state file held in memory, as [`Spool::load_state`] reads
/// one from disk.
///
/// Not a stable API: public for the fuzz targets in `fuzz/`. Errors carry an empty path.
#[doc(hidden)]
pub fn decode_state_file(bytes: &[u8]) -> Result<MessageState, SpoolError> {
    let path = std::path::PathBuf::new();
    decode_state(bytes).map_err(|e| match e {
        StateReadError::Io(source) => SpoolError::Io { path, source },
        StateReadError::Corrupt(reason) => SpoolError::Corrupt { path, reason },
        StateReadError::UnsupportedVersion(version) => {
            SpoolError::UnsupportedVersion { path, version }
        }
    })
}

/// Checks the magic line and returns what follows it, telling an unknown version from garbage.
fn strip_magic(bytes: &[u8]) -> Result<&[u8], StateReadError> {
    if let Some(rest) = bytes.strip_prefix(STATE_MAGIC) {
        return Ok(rest);
    }
    let window = &bytes[..bytes.len().min(MAX_MAGIC_LINE)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return Err(if STATE_MAGIC.starts_with(bytes) {
            CorruptReason::Truncated
        } else {
            CorruptReason::BadMagic
        }
        .into());
    };
    let version = window[..=end]
        .strip_prefix(STATE_MAGIC_PREFIX)
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .filter(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<u32>().ok());
    match version {
        Some(v) if v != STATE_FORMAT_VERSION => Err(StateReadError::UnsupportedVersion(v)),
        _ => Err(CorruptReason::BadMagic.into()),
    }
}

/// Reads and verifies the state file at `path`; `Ok(None)` if it does not exist.
pub(crate) fn read_state_file(path: &Path) -> Result<Option<MessageState>, StateReadError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateReadError::Io(e)),
    };
    let len = file.metadata().map_err(StateReadError::Io)?.len();
    let max = (STATE_MAGIC.len() + 8) as u64 + u64::from(MAX_STATE_LEN);
    if len > max {
        return Err(CorruptReason::Length {
            expected: max,
            actual: len,
        }
        .into());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(StateReadError::Io)?;
    decode_state(&bytes).map(Some)
}

/// Distinguishes concurrent temporary files of the same id.
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Spool {
    /// The saved delivery state of entry `id`; `None` if never saved or corrupt (logged).
    /// A newer format version is [`SpoolError::UnsupportedVersion`]: skip the message then.
    pub fn load_state(&self, id: &QueueId) -> Result<Option<MessageState>, SpoolError> {
        let path = self.paths().state.join(id.as_str());
        match read_state_file(&path) {
            Ok(state) => Ok(state),
            Err(StateReadError::Io(e)) => Err(SpoolError::io(path, e)),
            Err(StateReadError::UnsupportedVersion(version)) => {
                Err(SpoolError::UnsupportedVersion { path, version })
            }
            Err(StateReadError::Corrupt(reason)) => {
                tracing::warn!(
                    path = %path.display(),
                    %reason,
                    "corrupt delivery state ignored; every recipient counts as pending"
                );
                Ok(None)
            }
        }
    }

    /// Durably replaces the delivery state of entry `id`: writes a temporary file, fsyncs
    /// it, renames it over `state/ID` and fsyncs `state/`. Blocking: use `spawn_blocking`.
    pub fn save_state(&self, id: &QueueId, state: &MessageState) -> Result<(), SpoolError> {
        let bytes = encode_state(state)?;
        let paths = self.paths();
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        // In tmp/ so that a crash leaves nothing behind: tmp/ is emptied at open.
        let tmp = paths.tmp.join(format!("{id}.state.{seq}"));
        let sync = self.sync_mode() == SyncMode::Group;
        let mut sync_time = std::time::Duration::ZERO;
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                if sync {
                    let started = std::time::Instant::now();
                    file.sync_data()?;
                    sync_time = started.elapsed();
                }
                Ok(())
            });
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::io(tmp, e));
        }
        let target = paths.state.join(id.as_str());
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::io(target, e));
        }
        if sync {
            // Reported as one sync: the file's and the directory's, the time of both.
            let started = std::time::Instant::now();
            let synced = File::open(&paths.state).and_then(|dir| dir.sync_all());
            self.synced(SyncOp::State, sync_time + started.elapsed());
            synced.map_err(|e| SpoolError::io(&paths.state, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::state::RcptStatus;

    fn sample() -> MessageState {
        let mut state = MessageState::new(3, 1_000);
        state.recipients[0].status = RcptStatus::Delivered;
        state.recipients[0].attempts = 1;
        state.recipients[0].last_reply = Some("250 2.0.0 ok".into());
        state.recipients[0].route = Some("relay:smtp.example.net:587".into());
        state.recipients[1].attempts = 2;
        state.recipients[1].next_attempt_ms = 9_000;
        state.recipients[2].next_attempt_ms = 5_000;
        state.delay_warned = true;
        state
    }

    #[test]
    fn new_state_is_all_pending_and_due_now() {
        let state = MessageState::new(2, 42);
        assert_eq!(state.recipients.len(), 2);
        assert!(
            state
                .recipients
                .iter()
                .all(|r| r.status == RcptStatus::Pending
                    && r.attempts == 0
                    && r.next_attempt_ms == 42)
        );
        assert!(!state.held && !state.delay_warned && !state.is_done());
        assert_eq!(state.next_due_ms(), Some(42));
        assert!(MessageState::new(0, 0).is_done());
    }

    #[test]
    fn is_done_once_nothing_is_pending() {
        let mut state = sample();
        assert!(!state.is_done());
        assert_eq!(state.next_due_ms(), Some(5_000));
        state.recipients[1].status = RcptStatus::Expired;
        state.recipients[2].status = RcptStatus::Discarded;
        assert!(state.is_done());
        assert_eq!(state.next_due_ms(), None);
    }

    #[test]
    fn encode_decode_round_trip() {
        let state = sample();
        let bytes = encode_state(&state).unwrap();
        assert!(bytes.starts_with(b"POSTRIDER-STATE 1\r\n"));
        assert_eq!(decode_state(&bytes).unwrap(), state);
    }

    #[test]
    fn json_field_names_are_stable() {
        let bytes = encode_state(&sample()).unwrap();
        let json = std::str::from_utf8(&bytes[STATE_MAGIC.len() + 4..bytes.len() - 4]).unwrap();
        for needle in [
            r#""status":"delivered""#,
            r#""status":"pending""#,
            r#""attempts":2"#,
            r#""last_reply":"250 2.0.0 ok""#,
            r#""next_attempt_ms":9000"#,
            r#""route":"relay:smtp.example.net:587""#,
            r#""held":false"#,
            r#""delay_warned":true"#,
        ] {
            assert!(json.contains(needle), "{needle} not in {json}");
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_options_default() {
        let json = br#"{"recipients":[{"status":"bounced","attempts":1,"next_attempt_ms":5,"future":1}],"later":true}"#;
        let mut bytes = STATE_MAGIC.to_vec();
        bytes.extend_from_slice(&(json.len() as u32).to_be_bytes());
        bytes.extend_from_slice(json);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let state = decode_state(&bytes).unwrap();
        assert_eq!(state.recipients[0].status, RcptStatus::Bounced);
        assert_eq!(state.recipients[0].last_reply, None);
        assert!(!state.held && !state.delay_warned);
    }

    #[test]
    fn damage_is_detected() {
        let good = encode_state(&sample()).unwrap();
        let corrupt = |bytes: &[u8]| matches!(decode_state(bytes), Err(StateReadError::Corrupt(_)));
        // Every truncation.
        for len in 0..good.len() {
            assert!(corrupt(&good[..len]), "truncated to {len}");
        }
        // Every single-byte flip in the JSON or trailer.
        for i in STATE_MAGIC.len()..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x20;
            assert!(corrupt(&bad), "flipped byte {i}");
        }
        // Trailing garbage.
        let mut long = good.clone();
        long.push(0);
        assert!(corrupt(&long));
        assert!(corrupt(b"POSTRIDER-SPOOL 1\r\n"));
        assert!(corrupt(b""));
    }

    #[test]
    fn a_newer_version_is_reported_not_corrupt() {
        let mut bytes = b"POSTRIDER-STATE 2\r\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 2, b'{', b'}', 0, 0, 0, 0]);
        assert!(matches!(
            decode_state(&bytes),
            Err(StateReadError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn hold_released_is_optional_within_version_1() {
        // A recipient as a build before the field wrote it.
        let old = r#"{"recipients":[{"status":"pending","attempts":1,"next_attempt_ms":5}]}"#;
        let mut state: MessageState = serde_json::from_str(old).unwrap();
        assert!(!state.recipients[0].hold_released);
        let written = serde_json::to_string(&state).unwrap();
        assert!(!written.contains("hold_released"), "{written}");
        state.recipients[0].hold_released = true;
        let written = serde_json::to_string(&state).unwrap();
        let back: MessageState = serde_json::from_str(&written).unwrap();
        assert!(back.recipients[0].hold_released, "{written}");
    }
}
