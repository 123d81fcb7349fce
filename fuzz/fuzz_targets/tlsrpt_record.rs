//! The TLS-RPT record (RFC 8460 section 3).
//!
//! Properties checked:
//! - No record set panics the parser.
//! - Every address returned is a `mailto:` or `https://` URI of printable ASCII, found in
//!   the input.
//!
//! Input: TXT records, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_tlsrpt::parse_record;

fuzz_target!(|input: &[u8]| {
    let text = String::from_utf8_lossy(input);
    let records: Vec<&str> = text.split('\n').collect();
    if let Ok(uris) = parse_record(&records) {
        assert!(!uris.is_empty());
        for uri in &uris {
            let lower = uri.to_ascii_lowercase();
            assert!(
                lower.starts_with("mailto:") || lower.starts_with("https://"),
                "{uri}"
            );
            assert!(uri.bytes().all(|b| (0x21..=0x7e).contains(&b)));
            assert!(text.contains(uri.as_str()));
        }
    }
});
