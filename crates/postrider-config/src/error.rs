//! Errors, and where they point: every error names the file, the line and the key.

use std::fmt;
use std::path::PathBuf;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{file}:{line}:{column}: key `{key}`: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key at (or nearest before) the error.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The file parses but a value is not acceptable.
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the value.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Where errors point: the file name and its text, to turn byte offsets into lines.
pub(crate) struct Source<'a> {
    pub(crate) name: &'a str,
    pub(crate) text: &'a str,
}

impl Source<'_> {
    pub(crate) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    pub(crate) fn invalid<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl fmt::Display,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.name.to_owned(),
            line: self.line_col(span.start).0,
            key: key.to_owned(),
            message: message.to_string(),
        })
    }

    /// The key on the line of `offset`, or the nearest key line above it.
    pub(crate) fn key_near(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let mut lines = self.text[..line_start].lines().rev();
        let current = self.text[line_start..].lines().next().unwrap_or("");
        std::iter::once(current)
            .chain(&mut lines)
            .find_map(|line| {
                let line = line.trim();
                if line.starts_with('#') {
                    return None;
                }
                if line.starts_with('[') {
                    return Some(
                        line.trim_matches(|c| c == '[' || c == ']')
                            .trim()
                            .to_owned(),
                    );
                }
                line.split_once('=').map(|(k, _)| k.trim().to_owned())
            })
            .unwrap_or_default()
    }
}
