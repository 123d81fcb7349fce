//! The BDAT receiver: how a message is cut into BDAT chunks, and each chunk into reads, must
//! not change what is stored; a read never takes more than the chunk has left; whatever is
//! stored follows the content rules.
//!
//! Input: 6 octets of settings (line-ending policy, message and header size limits, seed for
//! the chunk and read sizes), then the message content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_fuzz::{Rng, check_content, limits};
use postrider_smtp::data::{BdatReceiver, DataError, Limits};

fuzz_target!(|input: &[u8]| {
    let Some((settings, data)) = input.split_first_chunk::<6>() else {
        return;
    };
    let limits = limits(settings);
    let seed = u64::from(u16::from_le_bytes([settings[4], settings[5]])) | 1;

    // Reference: the whole message as one last chunk, in one read.
    let whole = bdat(data, limits, &[data.len()], |_| usize::MAX);
    if let Ok(message) = &whole {
        check_content(message, limits);
    }

    // One-octet chunks, and one-octet reads of a single chunk.
    assert_eq!(
        bdat(data, limits, &vec![1; data.len()], |_| usize::MAX),
        whole
    );
    assert_eq!(bdat(data, limits, &[data.len()], |_| 1), whole);

    // Chunks of random sizes (empty ones included), read in random pieces.
    let mut rng = Rng(seed);
    let max_chunk = 1 + (settings[5] as usize % 8) * 64;
    let mut chunks = Vec::new();
    let mut left = data.len();
    while left > 0 {
        let size = rng.below(max_chunk + 1).min(left);
        chunks.push(size);
        left -= size;
    }
    if settings[0] & 4 != 0 {
        // An empty `BDAT 0 LAST` ends the message.
        chunks.push(0);
    }
    let mut reads = Rng(seed.rotate_left(17) | 1);
    let got = bdat(data, limits, &chunks, |_| 1 + reads.below(max_chunk + 8));
    assert_eq!(got, whole, "chunks {chunks:?} differ from one chunk");
});

/// Sends `data` as BDAT chunks of the given sizes (they add up to `data.len()`), the last
/// one marked LAST, or an empty `BDAT 0 LAST` after them when `sizes` ends with a size 0 or
/// is empty. Each read is offered `next_read(i)` octets, past the chunk's end too, as a
/// session offers its whole input buffer.
fn bdat(
    data: &[u8],
    limits: Limits,
    sizes: &[usize],
    mut next_read: impl FnMut(usize) -> usize,
) -> Result<Vec<u8>, DataError> {
    let mut rx = BdatReceiver::new(limits);
    let mut pos = 0;
    let mut reads = 0;
    let last_index = if sizes.last().is_some_and(|&s| s > 0) {
        sizes.len() - 1
    } else {
        usize::MAX
    };
    for (n, &size) in sizes.iter().enumerate() {
        let last = n == last_index;
        rx.start_chunk(size as u64, last);
        assert_eq!(rx.chunk_size(), size as u64);
        assert_eq!(rx.is_last(), last);
        let chunk_end = pos + size;
        loop {
            let offered_end = pos.saturating_add(next_read(reads)).min(data.len());
            reads += 1;
            let p = rx.receive(&data[pos..offered_end]);
            assert!(p.consumed <= chunk_end - pos, "read past the chunk's end");
            assert_eq!(p.consumed, (chunk_end - pos).min(offered_end - pos));
            pos += p.consumed;
            assert_eq!(p.done, pos == chunk_end);
            assert_eq!(rx.has_failed(), rx.failure().is_some());
            if p.done {
                break;
            }
        }
    }
    assert_eq!(pos, data.len());
    if last_index == usize::MAX {
        rx.start_chunk(0, true);
    }
    rx.finish()
}
