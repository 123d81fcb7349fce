//! The spool file reader (format version 1) on arbitrary bytes.
//!
//! Properties checked:
//! - Reading with and without keeping the message agrees (recovery verifies without keeping).
//! - An accepted file is exactly as long as its length fields say, and its envelope survives
//!   a JSON round trip (what the spool writes, it reads back).
//! - The input used as the envelope JSON, framed as the crate docs describe (magic line,
//!   lengths, CRC-32), is accepted, or refused only for its JSON: a well-framed file never
//!   fails the length, checksum or header checks. The framed file read back gives the same
//!   envelope and message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_queue::{CorruptReason, Envelope, SpoolError, decode_entry};

const MAGIC: &[u8] = b"POSTRIDER-SPOOL 1\r\n";
const MESSAGE: &[u8] = b"Subject: fuzz\r\n\r\nbody\r\n";

fuzz_target!(|bytes: &[u8]| {
    // 1. The input as a spool file.
    let kept = decode_entry(bytes, true);
    let checked = decode_entry(bytes, false);
    match (&kept, &checked) {
        (Ok((env, Some(message))), Ok((env2, None))) => {
            assert_eq!(env, env2);
            let json_len = u32::from_be_bytes(bytes[MAGIC.len()..][..4].try_into().unwrap());
            assert_eq!(
                bytes.len(),
                MAGIC.len() + 4 + json_len as usize + 8 + message.len() + 4
            );
            assert!(bytes.starts_with(MAGIC));
            json_round_trip(env);
            // The message sits between the message length and the CRC.
            assert_eq!(
                &bytes[bytes.len() - 4 - message.len()..bytes.len() - 4],
                &message[..]
            );
        }
        (Err(a), Err(b)) => assert_eq!(kind(a), kind(b), "{a:?} vs {b:?}"),
        other => panic!("keep_message changed the outcome: {other:?}"),
    }

    // 2. The input as the envelope JSON of a well-framed file.
    let (message, json) = match bytes.split_first() {
        // A second shape: the first octet says how much of the rest is message.
        Some((&n, rest)) if n < 0x20 && rest.len() >= usize::from(n) * 8 => {
            let (m, j) = rest.split_at(usize::from(n) * 8);
            (m, j)
        }
        _ => (MESSAGE, bytes),
    };
    let file = frame(json, message);
    match decode_entry(&file, true) {
        Ok((env, Some(m))) => {
            assert_eq!(m, message);
            let parsed: Envelope = serde_json::from_slice(json).expect("accepted JSON parses");
            assert_eq!(env, parsed);
            json_round_trip(&env);
            // Written again from what was read, it reads back the same.
            let again = frame(&serde_json::to_vec(&env).unwrap(), &m);
            let (env2, m2) = decode_entry(&again, true).expect("rewritten file reads back");
            assert_eq!((env2, m2.as_deref()), (env, Some(message)));
        }
        Err(SpoolError::Corrupt {
            reason: CorruptReason::Envelope(_),
            ..
        }) => {}
        other => panic!("a well-framed file was refused: {other:?}"),
    }
});

/// A spool file as the crate docs describe format version 1.
fn frame(json: &[u8], message: &[u8]) -> Vec<u8> {
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
    file.extend_from_slice(json);
    file.extend_from_slice(&(message.len() as u64).to_be_bytes());
    file.extend_from_slice(message);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_be_bytes());
    file
}

fn json_round_trip(env: &Envelope) {
    let json = serde_json::to_vec(env).expect("an envelope serializes");
    let back: Envelope = serde_json::from_slice(&json).expect("a serialized envelope parses");
    assert_eq!(&back, env);
}

/// The error without its details (an I/O error cannot happen on a byte slice).
fn kind(e: &SpoolError) -> String {
    match e {
        SpoolError::Corrupt { reason, .. } => format!("corrupt: {reason}"),
        SpoolError::UnsupportedVersion { version, .. } => format!("version {version}"),
        other => panic!("unexpected error {other:?}"),
    }
}
