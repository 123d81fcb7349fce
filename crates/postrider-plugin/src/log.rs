//! Logging through the relay's log (the `log` import). The host tags each line with the
//! plugin's name and the connection; keep messages short and free of secrets.
//!
//! Outside a wasm host (native `cargo test`) lines go to stderr.
//!
//! ```ignore
//! postrider_plugin::log::warn(format!("kv unavailable, not greylisting: {e}"));
//! ```

pub use crate::bindings::postrider::plugin::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    #[cfg(target_arch = "wasm32")]
    crate::bindings::postrider::plugin::log::log(level, message.as_ref());
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {}", message.as_ref());
}

/// Logs at [`Level::Trace`].
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message)
}

/// Logs at [`Level::Debug`].
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message)
}

/// Logs at [`Level::Info`].
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message)
}

/// Logs at [`Level::Warn`].
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message)
}

/// Logs at [`Level::Error`].
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message)
}
