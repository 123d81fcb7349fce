//! The PROXY protocol header a load balancer (or anyone who reaches a `proxy_protocol`
//! listener's port from a trusted address) sends first.
//!
//! Properties checked:
//! - No input panics the parser.
//! - A whole header's length is within the input and within `MAX_HEADER`, and the header
//!   alone parses to the same result (what follows it is never looked at).
//! - Every shorter prefix of a whole header asks for more or is refused; none parses to a
//!   different header.
//! - An input refused as too long is at least `MAX_HEADER` octets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_proxy::{MAX_HEADER, ProxyError, parse};

fuzz_target!(|input: &[u8]| {
    match parse(input) {
        Ok(Some(p)) => {
            assert!(p.len <= input.len() && p.len <= MAX_HEADER, "{p:?}");
            assert_eq!(parse(&input[..p.len]), Ok(Some(p.clone())));
            for cut in 0..p.len {
                match parse(&input[..cut]) {
                    Ok(Some(other)) => panic!("a prefix of {cut} octets parsed: {other:?}"),
                    Ok(None) | Err(_) => {}
                }
            }
        }
        Ok(None) => assert!(input.len() < MAX_HEADER),
        Err(ProxyError::TooLong) => assert!(input.len() >= MAX_HEADER),
        Err(_) => {}
    }
});
