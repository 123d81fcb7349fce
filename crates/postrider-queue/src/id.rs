//! Queue identifiers: unique, time-sortable, filename-safe.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Crockford base32 alphabet; ascending in ASCII, so string order equals numeric order.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Characters encoding the microsecond timestamp (13 × 5 = 65 bits).
const TIME_CHARS: usize = 13;
/// Characters encoding the per-id sequence/random part (4 × 5 = 20 bits).
const SEQ_CHARS: usize = 4;
const SEQ_BITS: u32 = (SEQ_CHARS * 5) as u32;

/// The last id value handed out by this process; ids are strictly increasing.
static LAST: Mutex<u128> = Mutex::new(0);

/// The identifier of one spooled message, e.g. `01JQ8Z3K5M7NP4XYZ`.
///
/// Seventeen Crockford base32 characters: thirteen encode the microseconds since the Unix
/// epoch, four a per-process sequence seeded with randomness. Ids are strictly increasing
/// within a process (so never reused), sort by creation time both as values and as strings,
/// and are safe as file names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueId(String);

impl QueueId {
    /// The fixed length of every id, in characters.
    pub const LEN: usize = TIME_CHARS + SEQ_CHARS;

    /// Generates a fresh id, greater than every id this process generated or observed before.
    pub fn generate() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let candidate = ((micros << SEQ_BITS) | u128::from(random_seq())) & max_value();
        let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        // If the clock stalls or steps back, keep counting up from the last id instead
        // (unless that would overflow, which takes an id planted a million years ahead).
        let value = if candidate > *last {
            candidate
        } else {
            last.checked_add(1)
                .filter(|&v| v <= max_value())
                .unwrap_or(candidate)
        };
        *last = value;
        Self::from_value(value)
    }

    /// Makes every id generated later in this process greater than `self`.
    ///
    /// The spool calls this for the ids it recovers, so a clock that went backwards across a
    /// restart still cannot produce the id of an entry already on disk.
    pub fn observe(&self) {
        let value = self.value();
        let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
        if value > *last {
            *last = value;
        }
    }

    /// The id as text (also its file name in the spool).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The creation time encoded in the id, in microseconds since the Unix epoch.
    pub fn timestamp_micros(&self) -> u128 {
        self.value() >> SEQ_BITS
    }

    fn value(&self) -> u128 {
        self.0.bytes().fold(0u128, |acc, b| {
            // Validated at construction: every byte is in the alphabet.
            let digit = ALPHABET.iter().position(|&a| a == b).unwrap_or(0);
            (acc << 5) | digit as u128
        })
    }

    fn from_value(value: u128) -> Self {
        let mut out = String::with_capacity(Self::LEN);
        for i in (0..Self::LEN).rev() {
            let digit = ((value >> (i * 5)) & 0x1f) as usize;
            out.push(char::from(ALPHABET[digit]));
        }
        Self(out)
    }
}

/// The largest value that fits in [`QueueId::LEN`] base32 characters.
const fn max_value() -> u128 {
    (1u128 << (QueueId::LEN * 5)) - 1
}

/// Twenty random bits, so ids from different processes (or hosts) rarely coincide.
fn random_seq() -> u32 {
    // RandomState is seeded from the OS once per process (and thread); hashing a counter
    // with it gives cheap, well-spread bits without a dependency.
    static STATE: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = STATE.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() & ((1 << SEQ_BITS) - 1)) as u32
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for QueueId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a valid [`QueueId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseQueueIdError {
    /// The string does not have exactly [`QueueId::LEN`] bytes.
    #[error("queue id must be {expected} characters, got {actual}", expected = QueueId::LEN)]
    Length {
        /// The length that was found, in bytes.
        actual: usize,
    },
    /// A character outside the upper-case Crockford base32 alphabet.
    #[error("invalid character {found:?} at position {index} in queue id")]
    Character {
        /// The offending character.
        found: char,
        /// Its byte position.
        index: usize,
    },
}

impl FromStr for QueueId {
    type Err = ParseQueueIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != Self::LEN {
            return Err(ParseQueueIdError::Length { actual: s.len() });
        }
        if let Some((index, found)) = s
            .char_indices()
            .find(|&(_, c)| !c.is_ascii() || !ALPHABET.contains(&(c as u8)))
        {
            return Err(ParseQueueIdError::Character { found, index });
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for QueueId {
    type Error = ParseQueueIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<QueueId> for String {
    fn from(id: QueueId) -> Self {
        id.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn format_parse_round_trip() {
        let id = QueueId::generate();
        assert_eq!(id.as_str().len(), QueueId::LEN);
        let parsed: QueueId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<QueueId>(&json).unwrap(), id);
    }

    #[test]
    fn value_round_trip() {
        for v in [0, 1, 31, 32, 1 << 40, max_value()] {
            assert_eq!(QueueId::from_value(v).value(), v);
        }
        assert_eq!(QueueId::from_value(0).as_str(), "00000000000000000");
        assert_eq!(
            QueueId::from_value(max_value()).as_str(),
            "ZZZZZZZZZZZZZZZZZ"
        );
    }

    #[test]
    fn rejects_invalid() {
        assert_eq!(
            "ABC".parse::<QueueId>(),
            Err(ParseQueueIdError::Length { actual: 3 })
        );
        // Lower case, and the Crockford-excluded letters I, L, O, U.
        for bad in [
            "0000000000000000a",
            "0000000000000000I",
            "U0000000000000000",
        ] {
            assert!(matches!(
                bad.parse::<QueueId>(),
                Err(ParseQueueIdError::Character { .. })
            ));
        }
        assert!("00000000000000/..".parse::<QueueId>().is_err());
        assert!("0000000000000000é".parse::<QueueId>().is_err());
        assert!(serde_json::from_str::<QueueId>("\"../etc/passwd\"").is_err());
    }

    #[test]
    fn strictly_increasing_and_time_sortable() {
        let ids: Vec<QueueId> = (0..10_000).map(|_| QueueId::generate()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
            assert!(pair[0].as_str() < pair[1].as_str());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let ts = ids[0].timestamp_micros();
        assert!(
            ts <= now + 5_000_000 && ts + 60_000_000 > now,
            "{ts} vs {now}"
        );
    }

    #[test]
    fn observe_raises_floor() {
        let far = QueueId::from_value(QueueId::generate().value() + (1 << 30));
        far.observe();
        assert!(QueueId::generate() > far);
    }
}
