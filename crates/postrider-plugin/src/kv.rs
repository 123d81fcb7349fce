//! The plugin's key-value store (the `kv` import), with idiomatic signatures.
//!
//! Keys are namespaced per plugin by the host: a plugin never sees another plugin's keys.
//! The store is embedded and persistent by default, or shared between relays when the
//! operator configures a networked backend. **Every call can fail** ([`KvError`]): decide what
//! that means for your policy — most filters log it and fail open ([`Verdict::Continue`](crate::Verdict)).
//!
//! TTLs are [`Duration`]s, rounded up to whole seconds (at least 1) and capped at `u32::MAX`
//! seconds.
//!
//! Outside a wasm host (native `cargo test`) every call returns
//! `KvError::Unavailable("not running inside a Postrider host")`.

use std::time::Duration;

pub use crate::bindings::postrider::plugin::kv::KvError;

#[cfg(target_arch = "wasm32")]
use crate::bindings::postrider::plugin::kv as raw;

/// What a filter does when the kv store fails, for a plugin's `on_kv_error` setting:
/// `"continue"` (fail open: the mail passes unfiltered) or `"tempfail"` (451 4.3.0, the
/// client retries later, so a shared limit is never bypassed during an outage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnKvError {
    /// Fail open: log and let the mail pass.
    #[default]
    Continue,
    /// Refuse temporarily with `451 4.3.0`.
    Tempfail,
}

impl OnKvError {
    /// The verdict for a failed kv call under this setting.
    pub fn verdict(self) -> crate::Verdict {
        match self {
            OnKvError::Continue => crate::Verdict::Continue,
            OnKvError::Tempfail => crate::tempfail(
                451,
                "4.3.0",
                "Policy state temporarily unavailable, try again later",
            ),
        }
    }
}

/// The value of `key`, if set and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
    #[cfg(target_arch = "wasm32")]
    return raw::get(key);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = key;
        Err(no_host())
    };
}

/// The value of `key` as UTF-8 text; a value that is not UTF-8 is `KvError::Invalid`.
pub fn get_string(key: &str) -> Result<Option<String>, KvError> {
    match get(key)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| KvError::Invalid(format!("value of {key:?} is not UTF-8"))),
    }
}

/// Sets `key` to `value`; with a `ttl` it expires that long from now.
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), KvError> {
    let ttl = ttl.map(ttl_seconds);
    #[cfg(target_arch = "wasm32")]
    return raw::set(key, value.as_ref(), ttl);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = (key, value, ttl);
        Err(no_host())
    };
}

/// Adds `delta` to the counter at `key` (created at 0) and returns the new value. The `ttl`
/// applies when the key is created, which makes a fixed window: `incr(key, 1, Some(window))`.
/// Counters are stored as decimal ASCII, so [`get_string`] reads them.
pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
    let ttl = ttl.map(ttl_seconds);
    #[cfg(target_arch = "wasm32")]
    return raw::incr(key, delta, ttl);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = (key, delta, ttl);
        Err(no_host())
    };
}

/// Removes `key`; `true` if it existed.
pub fn delete(key: &str) -> Result<bool, KvError> {
    #[cfg(target_arch = "wasm32")]
    return raw::delete(key);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = key;
        Err(no_host())
    };
}

/// A TTL in whole seconds as the contract wants it: rounded up, at least 1, capped.
pub fn ttl_seconds(ttl: Duration) -> u32 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0))
        .max(1);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

#[cfg(not(target_arch = "wasm32"))]
fn no_host() -> KvError {
    KvError::Unavailable("not running inside a Postrider host".to_owned())
}

impl KvError {
    /// The backend's message.
    pub fn message(&self) -> &str {
        match self {
            KvError::Unavailable(m) | KvError::Invalid(m) => m,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounding() {
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(300)), 300);
        assert_eq!(ttl_seconds(Duration::from_secs(u64::MAX)), u32::MAX);
    }

    #[test]
    fn native_is_unavailable() {
        assert!(matches!(get("k"), Err(KvError::Unavailable(_))));
        assert!(matches!(incr("k", 1, None), Err(KvError::Unavailable(_))));
    }
}
