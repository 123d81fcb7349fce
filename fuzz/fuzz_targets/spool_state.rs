//! The delivery state file reader (state format version 1) on arbitrary bytes.
//!
//! Properties checked:
//! - An accepted file is exactly as long as its length field says; its state survives a JSON
//!   round trip, and `is_done`, `next_due_ms` and `queue_state` agree with the recipients.
//! - The input used as the state JSON, framed as the crate docs describe (magic line, length,
//!   CRC-32), is accepted, or refused only for its JSON. What is read (older files' route
//!   hold sentinel upgraded) reads back the same after being written again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_queue::{CorruptReason, MessageState, SpoolError, decode_state_file};

const MAGIC: &[u8] = b"POSTRIDER-STATE 1\r\n";

fuzz_target!(|bytes: &[u8]| {
    // 1. The input as a state file.
    match decode_state_file(bytes) {
        Ok(state) => {
            assert!(bytes.starts_with(MAGIC));
            let len = u32::from_be_bytes(bytes[MAGIC.len()..][..4].try_into().unwrap());
            assert_eq!(bytes.len(), MAGIC.len() + 4 + len as usize + 4);
            check(&state);
        }
        Err(SpoolError::Corrupt { reason, .. }) => {
            let _ = reason.to_string();
        }
        Err(SpoolError::UnsupportedVersion { version, .. }) => assert_ne!(version, 1),
        Err(other) => panic!("unexpected error {other:?}"),
    }

    // 2. The input as the JSON of a well-framed file.
    match decode_state_file(&frame(bytes)) {
        Ok(state) => {
            serde_json::from_slice::<MessageState>(bytes).expect("accepted JSON parses");
            check(&state);
            let again = frame(&serde_json::to_vec(&state).unwrap());
            assert_eq!(
                decode_state_file(&again).expect("rewritten file reads back"),
                state
            );
        }
        Err(SpoolError::Corrupt {
            reason: CorruptReason::State(_),
            ..
        }) => {}
        other => panic!("a well-framed file was refused: {other:?}"),
    }
});

/// A state file as the crate docs describe state format version 1.
fn frame(json: &[u8]) -> Vec<u8> {
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
    file.extend_from_slice(json);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_be_bytes());
    file
}

fn check(state: &MessageState) {
    let json = serde_json::to_vec(state).expect("a state serializes");
    let back: MessageState = serde_json::from_slice(&json).expect("a serialized state parses");
    assert_eq!(&back, state);
    let pending: Vec<_> = state
        .recipients
        .iter()
        .filter(|r| r.status.is_pending())
        .collect();
    assert_eq!(state.is_done(), pending.is_empty());
    // What the upgrade on read leaves: no pending recipient with the old hold sentinel.
    assert!(
        pending
            .iter()
            .all(|r| r.route_hold.is_some() || r.next_attempt_ms != u64::MAX)
    );
    let due = pending
        .iter()
        .filter(|r| r.route_hold.is_none())
        .map(|r| r.next_attempt_ms)
        .min();
    assert_eq!(state.next_due_ms(), due);
    for quarantined in [false, true] {
        let _ = state.queue_state(quarantined).name();
    }
    for r in &state.recipients {
        let _ = r.shown_reply();
    }
}
