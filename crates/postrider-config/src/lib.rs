//! Postrider's configuration: the TOML schema, its defaults and its validation.
//!
//! Unknown keys are errors, and every error names the file, the line and the key, so an
//! operator can go straight to the mistake. Relative paths in a file are resolved against the
//! directory of that file; in the embedded default, against the working directory.

mod error;
mod raw;
mod schema;
mod validate;

pub use error::ConfigError;
pub use schema::*;

/// The default configuration shipped in `config/postrider.toml`, embedded in the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/postrider.toml");

/// Name used in errors for the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded config/postrider.toml>";

#[cfg(test)]
mod tests;
