//! Postrider's configuration: the TOML schema, its defaults and its validation.
//!
//! Unknown keys are errors, and every error names the file, the line and the key, so an
//! operator can go straight to the mistake. Relative paths in a file are resolved against the
//! directory of that file; in the embedded default, against the working directory.

mod error;
mod grants;
mod raw;
mod schema;
mod validate;

pub use error::ConfigError;
pub use grants::{
    DEFAULT_MAX_HTTP_RESPONSE_KB, GrantError, HostPattern, HttpGrant, NetworkGrants, Scheme,
    SocketGrant,
};
pub use schema::*;

/// A plugin `path` starting with this names a plugin built into the relay binary
/// (`builtin:header-stamp`), not a file.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// The builtin plugin a plugin path names (`builtin:NAME` → `NAME`), if it names one.
pub fn builtin_name(path: &std::path::Path) -> Option<&str> {
    path.to_str().and_then(|p| p.strip_prefix(BUILTIN_PREFIX))
}

/// The default configuration shipped in `config/postrider.toml`, embedded in the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/postrider.toml");

/// Name used in errors for the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded config/postrider.toml>";

#[cfg(test)]
mod tests;
