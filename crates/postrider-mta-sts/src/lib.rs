//! MTA-STS (RFC 8461) without I/O: the `_mta-sts` TXT record, the policy file served at
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, its MX patterns, and what a sender does
//! with a cached policy when the TXT record changes or disappears. The delivery agent does
//! the DNS and HTTPS around it.

use std::fmt;

/// Largest policy body a sender reads (RFC 8461 section 3.3 suggests 64 KiB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Largest `max_age` the RFC allows, in seconds (about a year).
pub const MAX_MAX_AGE: u64 = 31_557_600;

/// The longest value read from a cache file's or policy's line; anything longer is refused.
const MAX_LINE: usize = 1024;

/// The path of the policy under `https://mta-sts.DOMAIN`.
pub const WELL_KNOWN_PATH: &str = "/.well-known/mta-sts.txt";

/// Why a TXT record set gives no policy announcement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No record starts with `v=STSv1`.
    #[error("no v=STSv1 record")]
    Missing,
    /// More than one record starts with `v=STSv1` (RFC 8461 section 3.1: no policy).
    #[error("{0} v=STSv1 records")]
    Several(usize),
    /// The record does not follow the grammar.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// The policy id of the one `v=STSv1` record among a name's TXT records (RFC 8461 section
/// 3.1): records that do not start with `v=STSv1;` are ignored; none, several, or a
/// malformed one mean the domain has no available policy.
pub fn parse_record<S: AsRef<str>>(records: &[S]) -> Result<String, RecordError> {
    let sts: Vec<&str> = records
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| starts_with_version(r))
        .collect();
    match sts.as_slice() {
        [] => Err(RecordError::Missing),
        [one] => record_id(one),
        many => Err(RecordError::Several(many.len())),
    }
}

/// `v=STSv1` followed by a field delimiter or the end.
fn starts_with_version(record: &str) -> bool {
    record
        .strip_prefix("v=STSv1")
        .is_some_and(|rest| rest.trim_start_matches([' ', '\t']).starts_with(';'))
}

/// The `id` of one `v=STSv1; ...` record.
fn record_id(record: &str) -> Result<String, RecordError> {
    let mut fields = record.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err(RecordError::Malformed("does not start with v=STSv1"));
    }
    let mut id = None;
    let mut last_empty = false;
    for field in fields {
        if last_empty {
            return Err(RecordError::Malformed("empty field"));
        }
        if field.is_empty() {
            // Only a trailing delimiter may leave an empty field.
            last_empty = true;
            continue;
        }
        let (name, value) = field
            .split_once('=')
            .ok_or(RecordError::Malformed("field without '='"))?;
        if name == "id" {
            if id.is_some() {
                return Err(RecordError::Malformed("two ids"));
            }
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(RecordError::Malformed(
                    "id is not 1 to 32 letters and digits",
                ));
            }
            id = Some(value.to_owned());
        } else if !extension_name(name)
            || value.is_empty()
            || !value
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=')
        {
            return Err(RecordError::Malformed("bad extension field"));
        }
    }
    id.ok_or(RecordError::Malformed("no id"))
}

/// An extension field name: 1 to 32 of letters, digits, `_`, `-`, `.`.
fn extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to MX hosts matching the policy, over TLS with a verified certificate.
    Enforce,
    /// Deliver as without a policy, and report what would have failed.
    Testing,
    /// The domain has withdrawn its policy.
    None,
}

impl Mode {
    /// The mode's name in the policy file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// What to do.
    pub mode: Mode,
    /// MX host patterns, lower case, without a trailing dot: `mx.example.com` or
    /// `*.example.net` (one leftmost label).
    pub mx: Vec<String>,
    /// Seconds a sender may keep the policy.
    pub max_age: u64,
}

/// Why a policy body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Larger than [`MAX_POLICY_BYTES`].
    #[error("policy larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge,
    /// Not UTF-8 text.
    #[error("policy is not UTF-8 text")]
    NotText,
    /// A line is not `key: value`.
    #[error("line {0}: not a key: value pair")]
    BadLine(usize),
    /// A required field is missing.
    #[error("no {0} field")]
    Missing(&'static str),
    /// A field that may appear once appears twice.
    #[error("two {0} fields")]
    Duplicate(&'static str),
    /// A field has a value the RFC does not allow.
    #[error("bad {field} value {value:?}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// Its value (cut to 64 characters).
        value: String,
    },
}

/// Parses a policy file (RFC 8461 section 3.2): `key: value` lines ended by LF or CRLF;
/// `version: STSv1`, `mode` and `max_age` exactly once, `mx` one or more times (none needed
/// with `mode: none`); unknown keys are ignored.
pub fn parse_policy(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim_matches([' ', '\t']).is_empty() {
            continue;
        }
        let (key, value) = line.split_once(':').ok_or(PolicyError::BadLine(i + 1))?;
        if !extension_name(key) {
            return Err(PolicyError::BadLine(i + 1));
        }
        let value = value.trim_matches([' ', '\t']);
        match key {
            "version" => set_once(&mut version, "version", value)?,
            "mode" => set_once(&mut mode, "mode", value)?,
            "max_age" => set_once(&mut max_age, "max_age", value)?,
            "mx" => mx.push(mx_pattern(value)?),
            _ => {}
        }
    }
    if version.ok_or(PolicyError::Missing("version"))? != "STSv1" {
        return Err(bad("version", version.unwrap_or_default()));
    }
    let mode = match mode.ok_or(PolicyError::Missing("mode"))? {
        "enforce" => Mode::Enforce,
        "testing" => Mode::Testing,
        "none" => Mode::None,
        other => return Err(bad("mode", other)),
    };
    let max_age_text = max_age.ok_or(PolicyError::Missing("max_age"))?;
    let max_age = (!max_age_text.is_empty()
        && max_age_text.len() <= 10
        && max_age_text.bytes().all(|b| b.is_ascii_digit()))
    .then(|| max_age_text.parse::<u64>().ok())
    .flatten()
    .filter(|age| *age <= MAX_MAX_AGE)
    .ok_or_else(|| bad("max_age", max_age_text))?;
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError::Missing("mx"));
    }
    Ok(Policy { mode, mx, max_age })
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    field: &'static str,
    value: &'a str,
) -> Result<(), PolicyError> {
    if slot.replace(value).is_some() {
        return Err(PolicyError::Duplicate(field));
    }
    Ok(())
}

fn bad(field: &'static str, value: &str) -> PolicyError {
    PolicyError::BadValue {
        field,
        value: value.chars().take(64).collect(),
    }
}

/// An `mx` value: a domain name, optionally with a leading `*.`.
fn mx_pattern(value: &str) -> Result<String, PolicyError> {
    let name = value.strip_prefix("*.").unwrap_or(value);
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(bad("mx", value));
    }
    let pattern = value.strip_suffix('.').unwrap_or(value);
    Ok(pattern.to_ascii_lowercase())
}

impl Policy {
    /// Whether the MX host `host` matches one of the policy's patterns (RFC 8461 section
    /// 4.1): exactly, or `*.example.net` for one label more; case and a trailing dot do
    /// not count.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// A policy as a sender keeps it: the body fetched, the id of the TXT record it was fetched
/// under, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The TXT record's id when the policy was fetched.
    pub id: String,
    /// When it was fetched, in seconds since the Unix epoch.
    pub fetched: u64,
    /// The policy.
    pub policy: Policy,
    /// The body as served, parsed again when the cache is read.
    pub body: String,
}

/// Why a cache file could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The header lines are missing or malformed.
    #[error("malformed cache header")]
    Header,
    /// The stored body is no longer a valid policy.
    #[error("stored policy: {0}")]
    Policy(#[from] PolicyError),
}

impl Cached {
    /// A policy fetched at `now` under the record id `id`.
    pub fn new(id: &str, now: u64, body: &[u8]) -> Result<Cached, PolicyError> {
        let policy = parse_policy(body)?;
        let body = String::from_utf8(body.to_vec()).map_err(|_| PolicyError::NotText)?;
        Ok(Cached {
            id: id.to_owned(),
            fetched: now,
            policy,
            body,
        })
    }

    /// Until when (seconds since the epoch) the policy may be used.
    pub fn expires(&self) -> u64 {
        self.fetched.saturating_add(self.policy.max_age)
    }

    /// The policy has not expired at `now`.
    pub fn fresh(&self, now: u64) -> bool {
        now < self.expires()
    }

    /// The cache file: `id:` and `fetched:` lines, an empty line, then the body.
    pub fn to_text(&self) -> String {
        format!(
            "id: {}\nfetched: {}\n\n{}",
            self.id, self.fetched, self.body
        )
    }

    /// Reads a cache file written by [`Cached::to_text`].
    pub fn from_text(text: &str) -> Result<Cached, CacheError> {
        let (header, body) = text.split_once("\n\n").ok_or(CacheError::Header)?;
        let mut lines = header.split('\n');
        let field = |line: Option<&str>, key: &str| -> Result<String, CacheError> {
            line.and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(": "))
                .filter(|v| v.len() <= MAX_LINE)
                .map(str::to_owned)
                .ok_or(CacheError::Header)
        };
        let id = field(lines.next(), "id")?;
        let fetched = field(lines.next(), "fetched")?
            .parse()
            .map_err(|_| CacheError::Header)?;
        if lines.next().is_some() || record_id(&format!("v=STSv1; id={id}")).is_err() {
            return Err(CacheError::Header);
        }
        Ok(Cached::new(&id, fetched, body.as_bytes())?)
    }
}

/// What the `_mta-sts` TXT lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announcement {
    /// One valid record with this id.
    Id(String),
    /// No record, or none valid: the domain announces no policy.
    Absent,
    /// The lookup failed (timeout, SERVFAIL): nothing is known.
    Unknown,
}

/// What to do before delivering to a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Use the cached policy as it is.
    UseCached,
    /// Fetch the policy over HTTPS and cache it under this id; if the fetch fails, use the
    /// cached policy when it is still fresh, else deliver without a policy.
    Fetch(String),
    /// The domain has no policy: deliver as without MTA-STS.
    NoPolicy,
}

/// A cached policy older than this (or than half its `max_age`) is fetched again while the
/// record still announces it, so that it does not expire while the domain keeps it (RFC 8461
/// section 10.3); if that fetch fails the cached one stays.
pub const REFRESH_AFTER: u64 = 86_400;

/// RFC 8461 section 5.1: a fresh cached policy is used while the TXT id is unchanged, and
/// also when the record disappears or cannot be looked up (an attacker who removes the
/// record must not turn enforcement off before the policy expires); a new id, or no fresh
/// policy, means fetching; so does an old one still announced ([`REFRESH_AFTER`]).
pub fn next_step(found: &Announcement, cached: Option<&Cached>, now: u64) -> Step {
    let fresh = cached.filter(|c| c.fresh(now));
    match (found, fresh) {
        (Announcement::Id(id), Some(c))
            if *id == c.id
                && now.saturating_sub(c.fetched) < REFRESH_AFTER.min(c.policy.max_age / 2) =>
        {
            Step::UseCached
        }
        (Announcement::Id(id), _) => Step::Fetch(id.clone()),
        (Announcement::Absent | Announcement::Unknown, Some(_)) => Step::UseCached,
        (Announcement::Absent | Announcement::Unknown, None) => Step::NoPolicy,
    }
}

impl fmt::Display for Policy {
    /// "enforce (mx: a.example, *.b.example; max_age 86400)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (mx: {}; max_age {})",
            self.mode.as_str(),
            self.mx.join(", "),
            self.max_age
        )
    }
}

#[cfg(test)]
mod tests;
