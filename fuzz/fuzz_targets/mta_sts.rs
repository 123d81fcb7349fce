//! MTA-STS: the TXT record, the policy file and the cache file (RFC 8461).
//!
//! Properties checked:
//! - No input panics any of the three parsers.
//! - A parsed policy's patterns are lower case without a trailing dot, each matches a host
//!   made from it, and `none` is the only mode without one.
//! - A policy cached under a valid id reads back from its cache file as the same entry.
//!
//! Input: the text is split at the first NUL: TXT records (one per line) before it, the policy
//! body after it (all of it when there is no NUL).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_mta_sts::{Cached, Mode, parse_policy, parse_record};

fuzz_target!(|input: &[u8]| {
    let (records, body) = match input.iter().position(|&b| b == 0) {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (&b""[..], input),
    };
    let records: Vec<String> = String::from_utf8_lossy(records)
        .split('\n')
        .map(str::to_owned)
        .collect();
    let id = parse_record(&records).ok();
    if let Some(id) = &id {
        assert!(!id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    if let Ok(policy) = parse_policy(body) {
        assert!(policy.mode == Mode::None || !policy.mx.is_empty());
        for pattern in &policy.mx {
            assert_eq!(*pattern, pattern.to_ascii_lowercase());
            assert!(!pattern.ends_with('.'));
            let host = pattern.replacen("*.", "x.", 1);
            assert!(policy.allows(&host), "{pattern} does not match {host}");
            assert!(policy.allows(&host.to_ascii_uppercase()));
        }
        let cached = Cached::new(id.as_deref().unwrap_or("fuzz"), 1_700_000_000, body)
            .expect("a parsed policy caches");
        assert_eq!(Cached::from_text(&cached.to_text()), Ok(cached.clone()));
    }
    let _ = Cached::from_text(&String::from_utf8_lossy(body));
});
