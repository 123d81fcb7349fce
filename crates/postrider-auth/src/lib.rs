//! Email authentication for Postrider: SPF, DKIM, DMARC and ARC verification, DKIM signing and
//! ARC sealing, on top of the `mail-auth` crate.
//!
//! [`Verifier`] checks what a client sends us and renders the `Authentication-Results` header;
//! [`strip_forged_results`] removes results that claim to be ours before we add our own;
//! [`Signers`] picks the [`DkimSigner`] for outgoing mail; [`ArcSealer`] adds an ARC set when a
//! relay wants to vouch for what it received.

mod cache;
mod sign;
mod strip;
mod verify;

use std::path::PathBuf;

pub use sign::{
    ArcSealer, DEFAULT_SIGNED_HEADERS, DkimSigner, DkimSignerConfig, Signers, SigningKey,
};
pub use strip::strip_forged_results;
pub use verify::{AuthOutcome, DkimOutcome, DmarcOutcome, DmarcPolicy, SpfOutcome, Verifier};

/// The result of one authentication method, mapping 1:1 to the plugin WIT enum
/// `auth-result { none, pass, fail, softfail, neutral, temperror, permerror, policy }`, so plugins
/// see exactly what the `Authentication-Results` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthResult {
    /// No policy or signature to evaluate (RFC 8601 `none`).
    None,
    /// The check succeeded.
    Pass,
    /// The check failed.
    Fail,
    /// SPF only: the domain believes the host is not authorized, but not strongly.
    SoftFail,
    /// The domain makes no assertion (SPF `?all`, or a DKIM signature that could not be checked).
    Neutral,
    /// A transient error, usually DNS; a later retry may succeed.
    TempError,
    /// A permanent error: a broken record or signature.
    PermError,
    /// RFC 8601 `policy`: the check passed but local policy rejects it. `mail-auth` never
    /// produces it; it exists so that the WIT enum and this one stay the same.
    Policy,
}

impl AuthResult {
    /// Every result, in the WIT enum's order.
    pub const ALL: [AuthResult; 8] = [
        AuthResult::None,
        AuthResult::Pass,
        AuthResult::Fail,
        AuthResult::SoftFail,
        AuthResult::Neutral,
        AuthResult::TempError,
        AuthResult::PermError,
        AuthResult::Policy,
    ];

    /// The lower-case RFC 8601 keyword, as it appears in `Authentication-Results`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::None => "none",
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::SoftFail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::TempError => "temperror",
            AuthResult::PermError => "permerror",
            AuthResult::Policy => "policy",
        }
    }
}

impl std::str::FromStr for AuthResult {
    type Err = String;

    /// Parses the lower-case keyword [`AuthResult::as_str`] gives (e.g. from a spooled envelope).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AuthResult::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown authentication result {s:?}"))
    }
}

impl std::fmt::Display for AuthResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why loading a key, signing or sealing failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key file could not be read.
    #[error("reading DKIM key {path}: {source}")]
    KeyRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key file was read but holds no usable key.
    #[error("DKIM key {path}: {reason}")]
    KeyInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The message could not be parsed as RFC 5322 (no header block).
    #[error("the message has no header block")]
    Unparsable,
    /// `mail-auth` refused to sign (for example: none of the headers to sign is present).
    #[error("DKIM signing failed: {0}")]
    Sign(mail_auth::Error),
    /// ARC sealing is not possible for this message (a failed or broken chain, or a signing
    /// error).
    #[error("ARC sealing failed: {0}")]
    Seal(String),
}
