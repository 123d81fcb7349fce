//! Spool file format, version 1 (described in the crate docs).

use std::io::{self, Read};

use crate::Envelope;

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first line of every version-1 spool file.
pub(crate) const MAGIC: &[u8] = b"POSTRIDER-SPOOL 1\r\n";

/// What every version's magic line starts with; the version number and CRLF follow.
const MAGIC_PREFIX: &[u8] = b"POSTRIDER-SPOOL ";

/// The longest magic line we are willing to look at when sniffing for a version.
const MAX_MAGIC_LINE: usize = 32;

/// Upper bound on the envelope JSON, so a corrupt length cannot make us allocate gigabytes.
pub const MAX_ENVELOPE_LEN: u32 = 64 * 1024 * 1024;

/// Bytes in a v1 file besides the envelope JSON and the message.
const FIXED_OVERHEAD: u64 = MAGIC.len() as u64 + 4 + 8 + 4;

/// Why a spool file failed verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The file does not start with a `POSTRIDER-SPOOL <version>` line.
    #[error("missing or malformed POSTRIDER-SPOOL header line")]
    BadMagic,
    /// The file ends before its header is complete.
    #[error("file ends inside its header")]
    Truncated,
    /// The envelope length field is implausibly large.
    #[error("envelope length {len} exceeds the limit of {MAX_ENVELOPE_LEN} bytes")]
    EnvelopeTooLarge {
        /// The length field as read.
        len: u32,
    },
    /// The file size disagrees with the lengths recorded in it (truncated, or trailing bytes).
    #[error("file is {actual} bytes but its length fields add up to {expected}")]
    Length {
        /// The size implied by the header.
        expected: u64,
        /// The size of the file.
        actual: u64,
    },
    /// The trailer CRC32 does not match the contents.
    #[error("checksum mismatch: trailer says {stored:#010x}, contents hash to {computed:#010x}")]
    Checksum {
        /// The CRC stored in the trailer.
        stored: u32,
        /// The CRC of the bytes before the trailer.
        computed: u32,
    },
    /// The checksum matched but the envelope JSON does not describe an [`Envelope`].
    #[error("invalid envelope JSON: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The checksum matched but a state file's JSON does not describe a `MessageState`.
    #[error("invalid delivery state JSON: {0}")]
    State(#[source] serde_json::Error),
    /// A state file's length field is implausibly large.
    #[error("state length {len} exceeds the limit of {MAX_ENVELOPE_LEN} bytes")]
    StateTooLarge {
        /// The length field as read.
        len: u32,
    },
    /// A file in `active/` whose name is not a queue id.
    #[error("file name is not a queue id")]
    BadName,
    /// An entry in `active/` that is not a regular file.
    #[error("not a regular file")]
    NotAFile,
}

/// A failure to read a spool file, before it is attributed to a path.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Corrupt(CorruptReason),
    UnsupportedVersion(u32),
}

impl From<CorruptReason> for ReadError {
    fn from(reason: CorruptReason) -> Self {
        Self::Corrupt(reason)
    }
}

/// A message serialized for the spool, minus the message bytes kept alongside.
///
/// Built on the caller's thread so the writer thread only does I/O.
pub(crate) struct Encoded {
    /// Magic line, envelope length, envelope JSON and message length.
    pub(crate) head: Vec<u8>,
    /// The message content, written between `head` and `trailer`.
    pub(crate) message: Vec<u8>,
    /// Big-endian CRC32 of `head` followed by `message`.
    pub(crate) trailer: [u8; 4],
}

/// Why an entry could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The envelope could not be serialized.
    #[error("cannot serialize envelope: {0}")]
    Json(#[from] serde_json::Error),
    /// The envelope serializes to more than [`MAX_ENVELOPE_LEN`] bytes.
    #[error("envelope is {len} bytes, over the limit of {MAX_ENVELOPE_LEN}")]
    EnvelopeTooLarge {
        /// The serialized size.
        len: usize,
    },
    /// A delivery state serializes to more than [`MAX_ENVELOPE_LEN`] bytes.
    #[error("delivery state is {len} bytes, over the limit of {MAX_ENVELOPE_LEN}")]
    StateTooLarge {
        /// The serialized size.
        len: usize,
    },
}

/// Serializes `envelope` and frames it with `message` in format v1.
pub(crate) fn encode(envelope: &Envelope, message: Vec<u8>) -> Result<Encoded, EncodeError> {
    let json = serde_json::to_vec(envelope)?;
    let env_len = u32::try_from(json.len())
        .ok()
        .filter(|&len| len <= MAX_ENVELOPE_LEN)
        .ok_or(EncodeError::EnvelopeTooLarge { len: json.len() })?;
    let mut head = Vec::with_capacity(MAGIC.len() + 4 + json.len() + 8);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&env_len.to_be_bytes());
    head.extend_from_slice(&json);
    head.extend_from_slice(&(message.len() as u64).to_be_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head);
    hasher.update(&message);
    Ok(Encoded {
        head,
        message,
        trailer: hasher.finalize().to_be_bytes(),
    })
}

impl Encoded {
    /// The total file size.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.message.len() + self.trailer.len()
    }
}

/// Hashes everything read through it.
struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Reads and fully verifies one spool file of `file_len` bytes.
///
/// Returns the envelope and, if `keep_message`, the message; otherwise the message is only
/// checksummed (recovery uses this to verify without holding large messages in memory).
pub(crate) fn read_entry<R: Read>(
    reader: R,
    file_len: u64,
    keep_message: bool,
) -> Result<(Envelope, Option<Vec<u8>>), ReadError> {
    let mut r = CrcReader {
        inner: reader,
        hasher: crc32fast::Hasher::new(),
    };
    read_magic(&mut r)?;

    let env_len = u32::from_be_bytes(read_array(&mut r)?);
    if env_len > MAX_ENVELOPE_LEN {
        return Err(CorruptReason::EnvelopeTooLarge { len: env_len }.into());
    }
    // Check before allocating: the envelope must fit in the file.
    let min_len = FIXED_OVERHEAD + u64::from(env_len);
    if file_len < min_len {
        return Err(CorruptReason::Length {
            expected: min_len,
            actual: file_len,
        }
        .into());
    }
    let mut json = vec![0; env_len as usize];
    read_exact(&mut r, &mut json)?;

    let msg_len = u64::from_be_bytes(read_array(&mut r)?);
    let expected = min_len.saturating_add(msg_len);
    if expected != file_len {
        return Err(CorruptReason::Length {
            expected,
            actual: file_len,
        }
        .into());
    }
    let message = if keep_message {
        // msg_len < file_len here, so this allocation is bounded by the file's real size.
        let mut message = vec![0; usize::try_from(msg_len).map_err(|_| CorruptReason::Truncated)?];
        read_exact(&mut r, &mut message)?;
        Some(message)
    } else {
        let copied =
            io::copy(&mut (&mut r).take(msg_len), &mut io::sink()).map_err(ReadError::Io)?;
        if copied != msg_len {
            return Err(CorruptReason::Length {
                expected,
                actual: file_len,
            }
            .into());
        }
        None
    };

    let computed = r.hasher.clone().finalize();
    let stored = u32::from_be_bytes(read_array(&mut r.inner)?);
    if stored != computed {
        return Err(CorruptReason::Checksum { stored, computed }.into());
    }
    let envelope = serde_json::from_slice(&json).map_err(CorruptReason::Envelope)?;
    Ok((envelope, message))
}

/// Decodes and fully verifies a whole spool file held in memory, as the spool reads one
/// from disk: the envelope and, if `keep_message`, the message.
///
/// Not a stable API: public for the fuzz targets in `fuzz/`. Errors carry an empty path.
#[doc(hidden)]
pub fn decode_entry(
    bytes: &[u8],
    keep_message: bool,
) -> Result<(Envelope, Option<Vec<u8>>), crate::SpoolError> {
    let path = std::path::PathBuf::new();
    read_entry(bytes, bytes.len() as u64, keep_message).map_err(|e| match e {
        ReadError::Io(source) => crate::SpoolError::Io { path, source },
        ReadError::Corrupt(reason) => crate::SpoolError::Corrupt { path, reason },
        ReadError::UnsupportedVersion(version) => {
            crate::SpoolError::UnsupportedVersion { path, version }
        }
    })
}

/// Checks the magic line, telling an unknown version apart from garbage.
fn read_magic<R: Read>(r: &mut R) -> Result<(), ReadError> {
    let mut line = Vec::with_capacity(MAGIC.len());
    let mut byte = [0u8; 1];
    while line.len() < MAX_MAGIC_LINE && line.last() != Some(&b'\n') {
        match r.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
        // Stop early on the first byte that cannot be part of any version's header.
        if line.len() <= MAGIC_PREFIX.len() && !MAGIC_PREFIX.starts_with(&line) {
            return Err(CorruptReason::BadMagic.into());
        }
    }
    if line == MAGIC {
        return Ok(());
    }
    if line.last() != Some(&b'\n') {
        return Err(if MAGIC.starts_with(&line) {
            CorruptReason::Truncated
        } else {
            CorruptReason::BadMagic
        }
        .into());
    }
    let version = line
        .strip_prefix(MAGIC_PREFIX)
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .filter(|digits| !digits.is_empty() && digits.iter().all(u8::is_ascii_digit))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse::<u32>().ok());
    match version {
        Some(v) if v != FORMAT_VERSION => Err(ReadError::UnsupportedVersion(v)),
        _ => Err(CorruptReason::BadMagic.into()),
    }
}

fn read_exact<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CorruptReason::Truncated.into()
        } else {
            ReadError::Io(e)
        }
    })
}

fn read_array<R: Read, const N: usize>(r: &mut R) -> Result<[u8; N], ReadError> {
    let mut buf = [0u8; N];
    read_exact(r, &mut buf)?;
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::{ClientInfo, Recipient};

    pub(crate) fn sample_envelope() -> Envelope {
        Envelope {
            received_at_unix_ms: 1_700_000_000_000,
            mail_from: "alice@example.org".into(),
            smtputf8: false,
            body: Some(postrider_smtp::command::Body::EightBitMime),
            ret: Some(postrider_smtp::command::Ret::Hdrs),
            envid: Some("QQ314159".into()),
            size_param: Some(1234),
            recipients: vec![Recipient {
                address: "bob@example.net".into(),
                notify: Some(postrider_smtp::command::Notify::from_keywords(&[
                    "FAILURE", "DELAY",
                ])),
                orcpt: Some("rfc822;bob@example.net".into()),
            }],
            client: ClientInfo {
                ip: "2001:db8::1".parse().unwrap(),
                port: 50_000,
                listener: "mx".into(),
                helo: "mail.example.org".into(),
                tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
                authenticated: None,
                reverse_dns: Some("mail.example.org".into()),
                session: None,
                server: None,
                sni: None,
            },
            quarantine: None,
            spf: None,
            require_tls: false,
        }
    }

    fn bytes(e: &Encoded) -> Vec<u8> {
        [&e.head[..], &e.message, &e.trailer].concat()
    }

    fn decode(b: &[u8]) -> Result<(Envelope, Option<Vec<u8>>), ReadError> {
        read_entry(b, b.len() as u64, true)
    }

    #[test]
    fn round_trip() {
        let env = sample_envelope();
        let enc = encode(&env, b"Subject: hi\r\n\r\nbody\r\n".to_vec()).unwrap();
        let b = bytes(&enc);
        assert_eq!(b.len(), enc.len());
        assert!(b.starts_with(b"POSTRIDER-SPOOL 1\r\n"));
        let (env2, msg) = decode(&b).unwrap();
        assert_eq!(env2, env);
        assert_eq!(msg.unwrap(), b"Subject: hi\r\n\r\nbody\r\n");
        let (env3, none) = read_entry(&b[..], b.len() as u64, false).unwrap();
        assert_eq!(env3, env);
        assert!(none.is_none());
    }

    #[test]
    fn detects_every_truncation_and_bit_flip() {
        let b = bytes(&encode(&sample_envelope(), vec![0x42; 300]).unwrap());
        for len in 0..b.len() {
            assert!(
                matches!(decode(&b[..len]), Err(ReadError::Corrupt(_))),
                "truncation to {len} accepted"
            );
        }
        for i in 0..b.len() {
            let mut flipped = b.clone();
            flipped[i] ^= 0x04;
            match decode(&flipped) {
                Err(ReadError::Corrupt(_)) => {}
                // Flipping the version digit makes a well-formed header of another version.
                Err(ReadError::UnsupportedVersion(_)) if i == MAGIC.len() - 3 => {}
                other => panic!("bit flip at {i} gave {other:?}"),
            }
        }
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing),
            Err(ReadError::Corrupt(CorruptReason::Length { .. }))
        ));
    }

    #[test]
    fn unknown_version() {
        let mut b = bytes(&encode(&sample_envelope(), vec![]).unwrap());
        b.splice(..MAGIC.len(), b"POSTRIDER-SPOOL 27\r\n".iter().copied());
        assert!(matches!(decode(&b), Err(ReadError::UnsupportedVersion(27))));
        assert!(matches!(
            decode(b"POSTRIDER-SPOOL x\r\n"),
            Err(ReadError::Corrupt(CorruptReason::BadMagic))
        ));
        assert!(matches!(
            decode(b"From alice Mon Jan 1"),
            Err(ReadError::Corrupt(CorruptReason::BadMagic))
        ));
    }

    #[test]
    fn huge_lengths_do_not_allocate() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(MAX_ENVELOPE_LEN - 1).to_be_bytes());
        assert!(matches!(
            decode(&b),
            Err(ReadError::Corrupt(CorruptReason::Length { .. }))
        ));
        let mut b = bytes(&encode(&sample_envelope(), vec![]).unwrap());
        let at = b.len() - 12;
        b[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            decode(&b),
            Err(ReadError::Corrupt(CorruptReason::Length { .. }))
        ));
    }
}
