//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use postrider_smtp::data::{Limits, LineEndings, MAX_TEXT_LINE};

/// Receiver limits from the first octets of an input: small limits half the time, so that
/// the fuzzer crosses them, else the relay's defaults.
pub fn limits(s: &[u8; 6]) -> Limits {
    let small = s[0] & 2 != 0;
    let max_size = u64::from(u16::from_le_bytes([s[1], s[2]]));
    let max_header_size = usize::from(s[3]) * 8;
    Limits {
        max_size: if small { max_size } else { 1 << 20 },
        max_header_size: if small { max_header_size } else { 1 << 16 },
        line_endings: if s[0] & 1 == 0 {
            LineEndings::Reject
        } else {
            LineEndings::Normalize
        },
    }
}

/// Asserts that stored content is canonical: CRLF line ends only, no NUL, lines within the
/// 1000-octet limit, and within the size and header limits.
pub fn check_content(message: &[u8], limits: Limits) {
    assert!(message.len() as u64 <= limits.max_size, "over max_size");
    assert!(!message.contains(&0), "NUL stored");
    let mut line = 0usize;
    for (i, &b) in message.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(message.get(i + 1), Some(&b'\n'), "bare CR stored at {i}"),
            b'\n' => {
                assert!(i > 0 && message[i - 1] == b'\r', "bare LF stored at {i}");
                line = 0;
            }
            _ => {
                line += 1;
                assert!(line + 2 <= MAX_TEXT_LINE, "line too long stored");
            }
        }
    }
    // The header section: up to the first empty line, not counting that line.
    let header = if message.starts_with(b"\r\n") {
        0
    } else {
        message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(message.len(), |i| i + 2)
    };
    assert!(header <= limits.max_header_size, "over max_header_size");
}

/// A small xorshift generator, so that one input always replays the same way.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
