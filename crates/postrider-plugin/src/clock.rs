//! The relay's clock (the `clock` import). Use it rather than `std::time::SystemTime` so that
//! the host decides what "now" is (e.g. in its tests).
//!
//! Outside a wasm host (native `cargo test`) it reads the system clock.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return crate::bindings::postrider::plugin::clock::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    return std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
}

/// Whole seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
