//! Throughput of the DATA and BDAT receivers alone: a 4 KiB and a 100 KiB message of
//! 76-octet lines, fed in 16 KiB reads as a socket would, many times (BDAT: in one chunk).
//!
//!     cargo run --release -p postrider-smtp --example data_receive [ROUNDS]

use std::time::Instant;

use postrider_smtp::data::{BdatReceiver, DataReceiver, Limits, LineEndings};

fn message(size: usize) -> Vec<u8> {
    let mut m = b"Subject: benchmark\r\nFrom: a@example.com\r\n\r\n".to_vec();
    let line = [b'x'; 76];
    while m.len() < size {
        m.extend_from_slice(&line);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let limits = Limits {
        max_size: 10 << 20,
        max_header_size: 1 << 16,
        line_endings: LineEndings::Reject,
    };
    for size in [4096, 102_400] {
        let input = message(size);
        measure("DATA", size, rounds, input.len(), || {
            let mut rx = DataReceiver::new(limits);
            for piece in input.chunks(16 << 10) {
                if rx.receive(piece).done {
                    break;
                }
            }
            rx.finish().map(|m| m.len()).unwrap_or(0)
        });
        let chunk = input.strip_suffix(b".\r\n").unwrap_or(&input);
        measure("BDAT", size, rounds, chunk.len(), || {
            let mut rx = BdatReceiver::new(limits);
            rx.start_chunk(chunk.len() as u64, true);
            for piece in chunk.chunks(16 << 10) {
                rx.receive(piece);
            }
            rx.finish().map(|m| m.len()).unwrap_or(0)
        });
    }
}

/// Runs `receive` `rounds` times and prints the time per message and the throughput.
fn measure(
    name: &str,
    size: usize,
    rounds: usize,
    octets: usize,
    mut receive: impl FnMut() -> usize,
) {
    let started = Instant::now();
    let stored: usize = (0..rounds).map(|_| receive()).sum();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name} {size:>7} B: {:.1} µs per message, {:.0} MB/s ({stored} octets stored)",
        secs * 1e6 / rounds as f64,
        (octets * rounds) as f64 / secs / 1e6
    );
}
