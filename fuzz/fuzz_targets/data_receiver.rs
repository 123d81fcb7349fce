//! The DATA receiver: how the input is cut into reads, and whether the stored octets are taken
//! out after each read (as the relay does to keep large messages on disk), must not change
//! what it consumes, when it ends or what it stores; whatever it stores follows the content
//! rules.
//!
//! Input: 6 octets of settings (line-ending policy, message and header size limits, seed for
//! the read sizes), then the octets that follow the 354 reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_fuzz::{Rng, check_content, limits};
use postrider_smtp::data::{DataError, DataReceiver, Limits};

/// What a receiver did with the input: octets consumed, whether the message ended, the result.
type Outcome = (usize, bool, bool, Result<Vec<u8>, DataError>);

fuzz_target!(|input: &[u8]| {
    let Some((settings, data)) = input.split_first_chunk::<6>() else {
        return;
    };
    let limits = limits(settings);
    let seed = u64::from(u16::from_le_bytes([settings[4], settings[5]])) | 1;

    let whole = receive(data, limits, false, |_| data.len().max(1));
    let one_by_one = receive(data, limits, false, |_| 1);
    assert_eq!(one_by_one, whole, "octet by octet differs from one read");
    let mut rng = Rng(seed);
    let max_read = 1 + (settings[5] as usize % 4) * 40;
    let pieces = receive(data, limits, false, |_| 1 + rng.below(max_read));
    assert_eq!(
        pieces, whole,
        "reads of up to {max_read} octets differ from one read"
    );
    let mut rng = Rng(seed);
    let drained = receive(data, limits, true, |_| 1 + rng.below(max_read));
    assert_eq!(
        drained, whole,
        "taking the stored octets after each read differs from one read"
    );

    let (consumed, done, _, result) = whole;
    assert!(consumed <= data.len());
    if !done {
        assert_eq!(consumed, data.len(), "stopped before the input ended");
    } else {
        assert!(data[..consumed].ends_with(b"\r\n.\r\n") || data[..consumed] == *b".\r\n");
    }
    if let Ok(message) = result {
        check_content(&message, limits);
        if done {
            assert!(message.is_empty() || message.ends_with(b"\r\n"));
        }
    }
});

/// Feeds `data` in reads of `next_len(i)` octets until the message ends or the data does;
/// with `drain`, takes the stored octets out after each read and puts them back at the end.
fn receive(
    data: &[u8],
    limits: Limits,
    drain: bool,
    mut next_len: impl FnMut(usize) -> usize,
) -> Outcome {
    let mut rx = DataReceiver::new(limits);
    let mut taken = Vec::new();
    let mut pos = 0;
    let mut done = false;
    let mut reads = 0;
    while pos < data.len() {
        let end = pos.saturating_add(next_len(reads)).min(data.len());
        reads += 1;
        let p = rx.receive(&data[pos..end]);
        assert!(p.consumed <= end - pos);
        assert_eq!(p.done, rx.is_done());
        pos += p.consumed;
        if drain && !p.done {
            taken.extend_from_slice(rx.pending());
            rx.clear_pending();
        }
        if p.done {
            done = true;
            break;
        }
        assert_eq!(pos, end, "a read was not consumed whole before the end");
    }
    let failed = rx.has_failed();
    let result = rx.finish().map(|rest| {
        taken.extend_from_slice(&rest);
        taken
    });
    assert_eq!(failed, result.is_err());
    (pos, done, failed, result)
}
