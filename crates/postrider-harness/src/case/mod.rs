//! The case file format: TOML, a `[defaults]` table shared by every case of the file and one
//! `[[case]]` table per case, each with optional `[[case.run]]` sessions played in order
//! against the same kv store and clock.
//!
//! Parsing is strict (unknown keys are errors) and every error names the file and line.
//! [`load_file`] returns resolved [`Case`]s: defaults merged in, messages read and converted
//! to CRLF, regexes compiled, `repeat` expanded.

use std::path::{Path, PathBuf};

use postrider_plugin_host::{
    AuthResult, Authentication, DkimCheck, FailurePolicy, SpfCheck, StaticDns,
};
use regex::Regex;
use serde::Deserialize;

mod connection;
mod dns;
mod expect;
mod net;
mod raw;
#[cfg(test)]
mod tests;

pub use connection::*;
pub use dns::*;
pub use expect::*;
pub use net::{HttpMock, NetworkSpec, ReadUntil, TcpMock};
use net::{RawHttpMock, RawTcpMock};
use raw::*;

/// The clock of a case that sets none: 2023-11-14T22:13:20Z, in Unix milliseconds.
pub const DEFAULT_CLOCK_MS: u64 = 1_700_000_000_000;
/// Per-call deadline when a case sets none (the relay's default `timeout_ms`).
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// Memory cap when a case sets none (the relay's default `memory_mb`).
pub const DEFAULT_MEMORY_MB: u32 = 32;
/// Idle instances kept when a case sets `reuse` above 1 but no `pool_idle` (as the relay).
pub const DEFAULT_POOL_IDLE: u32 = 8;
/// Most instances the harness's engine runs at once (so the bound of `pool_idle`).
pub const MAX_INSTANCES: u32 = 64;

/// Why a case file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// The file (or a message file it names) could not be read.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The TOML is malformed or does not fit the format.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The case file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A case is well-formed TOML but makes no sense (bad regex, unknown recipient, ...).
    #[error("{path}:{line}: case {case:?}: {message}")]
    Invalid {
        /// The case file.
        path: String,
        /// Line of the `[[case]]` table.
        line: usize,
        /// The case's name.
        case: String,
        /// What is wrong.
        message: String,
    },
}

/// Every kv call of the plugin fails with this error (to test fail-open code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvFault {
    /// `kv-error::unavailable`.
    Unavailable,
    /// `kv-error::invalid`.
    Invalid,
}

/// A preset kv entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvPreset {
    /// The key, in the plugin's namespace.
    pub key: String,
    /// The value.
    pub value: String,
    /// Expires this long after the case's start clock.
    pub ttl_secs: Option<u64>,
}

/// One session of a case, resolved.
#[derive(Debug, Clone)]
pub struct Run {
    /// "run 2" or the run's label.
    pub label: String,
    /// Clock advance before the run.
    pub advance_ms: u64,
    /// The connection.
    pub conn: ConnSpec,
    /// HELO/EHLO argument; the stage is skipped without one.
    pub helo: Option<String>,
    /// MAIL FROM (empty string: `<>`); the transaction is skipped without one.
    pub mail_from: Option<String>,
    /// MAIL FROM parameters, names upper-case.
    pub mail_params: Vec<(String, Option<String>)>,
    /// Recipients, in order.
    pub rcpt: Vec<String>,
    /// The message (CRLF); the data stage is skipped without one.
    pub message: Option<Vec<u8>>,
    /// Queue id shown to data and route stages.
    pub queue_id: Option<String>,
    /// The SPF result the envelope carries from MAIL FROM on (`None`: not checked, as for
    /// authenticated and relay_networks clients).
    pub spf: Option<SpfCheck>,
    /// DKIM, DMARC and ARC results the message shows at the data stage (`None`: the
    /// defaults of an unverified message: no signatures, dmarc and arc `none`).
    pub authentication: Option<Authentication>,
    /// What to check.
    pub expect: Expectations,
}

/// The plugin settings of a case, as in the relay's `[[plugin]]`.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// `config` as JSON.
    pub config_json: String,
    /// What a failed call means.
    pub failure_policy: FailurePolicy,
    /// Deadline of each call.
    pub timeout_ms: u64,
    /// Memory cap of each instance.
    pub memory_mb: u32,
    /// Transactions one instance may serve (the relay's `reuse`; 1: a fresh one each).
    pub reuse: u32,
    /// Most idle instances kept for reuse (the relay's `pool_idle`).
    pub pool_idle: u32,
}

/// One case, resolved and validated.
#[derive(Debug, Clone)]
pub struct Case {
    /// Its name.
    pub name: String,
    /// The case file.
    pub file: PathBuf,
    /// Line of its `[[case]]` table.
    pub line: usize,
    /// Plugin settings.
    pub plugin: PluginSettings,
    /// Start clock, Unix ms.
    pub clock_ms: u64,
    /// DNS answers.
    pub dns: StaticDns,
    /// Preset kv entries.
    pub kv: Vec<KvPreset>,
    /// Every kv call fails.
    pub kv_error: Option<KvFault>,
    /// The plugin's network grants and the peers the harness mocks.
    pub network: NetworkSpec,
    /// Loading must fail with an error matching this.
    pub expect_load_error: Option<Regex>,
    /// The sessions, in order (repeats expanded).
    pub runs: Vec<Run>,
}

/// Reads and resolves every case of one file.
pub fn load_file(path: &Path) -> Result<Vec<Case>, CaseError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| CaseError::Read {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    parse(&text, path)
}

/// Resolves the cases of `text`, read from `path` (message files are relative to it).
pub fn parse(text: &str, path: &Path) -> Result<Vec<Case>, CaseError> {
    let shown = path.display().to_string();
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        CaseError::Parse {
            path: shown.clone(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    let d = &raw.defaults;
    let misplaced = [
        ("name", d.name.is_some()),
        ("description", d.description.is_some()),
        ("expect", d.expect.is_some()),
        ("run", d.run.is_some()),
        ("expect_load_error", d.expect_load_error.is_some()),
    ];
    if let Some((key, _)) = misplaced.iter().find(|(_, set)| *set) {
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with("[defaults"))
            .map_or(1, |i| i + 1);
        return Err(CaseError::Parse {
            path: shown,
            line,
            column: 1,
            message: format!("`{key}` belongs in a [[case]], not in [defaults]"),
        });
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut cases = Vec::new();
    for spanned in raw.case {
        let line = line_col(text, spanned.span().start).0;
        let case = spanned.into_inner();
        let name = case.name.clone().unwrap_or_default();
        let invalid = |message: String| CaseError::Invalid {
            path: shown.clone(),
            line,
            case: name.clone(),
            message,
        };
        if name.trim().is_empty() {
            return Err(invalid("every [[case]] needs a `name`".into()));
        }
        if cases.iter().any(|c: &Case| c.name == name) {
            return Err(invalid(
                "another case of this file has the same name".into(),
            ));
        }
        cases.push(resolve(case, &raw.defaults, dir, path, line).map_err(invalid)?);
    }
    Ok(cases)
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

fn resolve(
    case: RawInputs,
    defaults: &RawInputs,
    dir: &Path,
    file: &Path,
    line: usize,
) -> Result<Case, String> {
    let d = defaults.clone();
    let name = case.name.clone().unwrap_or_default();
    let config = case.config.or(d.config).unwrap_or_default();
    let config_json =
        serde_json::to_string(&config).map_err(|e| format!("config: cannot be JSON: {e}"))?;
    let timeout_ms = case
        .timeout_ms
        .or(d.timeout_ms)
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    if !(1..=60_000).contains(&timeout_ms) {
        return Err(format!("timeout_ms must be 1..=60000, not {timeout_ms}"));
    }
    let memory_mb = case.memory_mb.or(d.memory_mb).unwrap_or(DEFAULT_MEMORY_MB);
    if !(1..=4096).contains(&memory_mb) {
        return Err(format!("memory_mb must be 1..=4096, not {memory_mb}"));
    }
    let reuse = case.reuse.or(d.reuse).unwrap_or(1);
    if !(1..=1_000_000).contains(&reuse) {
        return Err(format!("reuse must be 1..=1000000, not {reuse}"));
    }
    let pool_idle = match case.pool_idle.or(d.pool_idle) {
        None => DEFAULT_POOL_IDLE,
        Some(_) if reuse == 1 => return Err("pool_idle needs reuse greater than 1".into()),
        Some(n) if !(1..=MAX_INSTANCES).contains(&n) => {
            return Err(format!("pool_idle must be 1..={MAX_INSTANCES}, not {n}"));
        }
        Some(n) => n,
    };
    let kv = case
        .kv
        .or(d.kv)
        .unwrap_or_default()
        .into_iter()
        .map(|(key, p)| KvPreset {
            key,
            value: p.value,
            ttl_secs: p.ttl_secs,
        })
        .collect::<Vec<_>>();
    if let Some(p) = kv.iter().find(|p| p.ttl_secs == Some(0)) {
        return Err(format!("kv.{:?}: ttl_secs must be positive", p.key));
    }
    let network = net::network(
        &case.allow_http.or(d.allow_http).unwrap_or_default(),
        &case.allow_connect.or(d.allow_connect).unwrap_or_default(),
        &case.allow_udp.or(d.allow_udp).unwrap_or_default(),
        &case.http.or(d.http).unwrap_or_default(),
        &case.tcp.or(d.tcp).unwrap_or_default(),
    )?;
    let expect_load_error = case
        .expect_load_error
        .as_deref()
        .map(|r| regex(r, "expect_load_error"))
        .transpose()?;

    // What every run starts from: the case's inputs over the defaults.
    let base = RawRun {
        label: None,
        advance_ms: None,
        advance_secs: None,
        repeat: None,
        connection: Some(
            case.connection
                .unwrap_or_default()
                .or(&d.connection.unwrap_or_default()),
        ),
        helo: case.helo.or(d.helo),
        mail_from: case.mail_from.or(d.mail_from),
        mail_params: case.mail_params.or(d.mail_params),
        rcpt: case.rcpt.or(d.rcpt),
        message: None,
        message_file: None,
        queue_id: case.queue_id.or(d.queue_id),
        spf: None,
        authentication: None,
        expect: None,
    };
    // Authentication presets are checked where they are written, so errors name that place.
    let base_spf = match (case.spf, d.spf) {
        (Some(s), _) => Some(spf_preset(s.0, "spf")?),
        (None, Some(s)) => Some(spf_preset(s.0, "[defaults] spf")?),
        (None, None) => None,
    };
    let base_auth = match (case.authentication, d.authentication) {
        (Some(a), _) => Some(authentication(a, "authentication")?),
        (None, Some(a)) => Some(authentication(a, "[defaults] authentication")?),
        (None, None) => None,
    };
    // A message set on the case wins over the defaults, inline or file alike.
    let (message, message_file) = if case.message.is_some() || case.message_file.is_some() {
        (case.message, case.message_file)
    } else {
        (d.message, d.message_file)
    };
    let base_message = load_message(message, message_file, dir)?;

    let raw_runs = match (case.run, case.expect) {
        (Some(_), Some(_)) => {
            return Err(
                "give either [case.expect] (one run) or [[case.run]] entries, not both".into(),
            );
        }
        (Some(runs), None) if runs.is_empty() => return Err("`run` is empty".into()),
        (Some(runs), None) => runs,
        (None, expect) => vec![RawRun {
            expect: expect.or_else(|| Some(RawExpect::default())),
            ..RawRun::default()
        }],
    };
    let mut runs = Vec::new();
    for (i, r) in raw_runs.into_iter().enumerate() {
        let where_ = format!("run {}", i + 1);
        let repeat = r.repeat.unwrap_or(1);
        if repeat == 0 {
            return Err(format!("{where_}: repeat must be at least 1"));
        }
        if r.advance_ms.is_some() && r.advance_secs.is_some() {
            return Err(format!(
                "{where_}: give advance_ms or advance_secs, not both"
            ));
        }
        let advance_ms = r
            .advance_ms
            .or(r.advance_secs.map(|s| s.saturating_mul(1000)))
            .unwrap_or(0);
        let message = if r.message.is_some() || r.message_file.is_some() {
            load_message(r.message, r.message_file, dir).map_err(|e| format!("{where_}: {e}"))?
        } else {
            base_message.clone()
        };
        let mail_params = params(r.mail_params.as_ref().or(base.mail_params.as_ref()))
            .map_err(|e| format!("{where_}: {e}"))?;
        let rcpt = r.rcpt.or(base.rcpt.clone()).unwrap_or_default();
        let expect = expectations(r.expect.unwrap_or_default(), &rcpt)
            .map_err(|e| format!("{where_}: expect.{e}"))?;
        let spf = match r.spf {
            Some(s) => Some(spf_preset(s.0, &format!("{where_}: spf"))?),
            None => base_spf.clone(),
        };
        let auth = match r.authentication {
            Some(a) => Some(authentication(a, &format!("{where_}: authentication"))?),
            None => base_auth.clone(),
        };
        let helo = r.helo.clone().or(base.helo.clone());
        let mail_from = r.mail_from.clone().or(base.mail_from.clone());
        let spf = spf.map(|(result, domain)| SpfCheck {
            result,
            domain: domain.unwrap_or_else(|| spf_identity(mail_from.as_deref(), helo.as_deref())),
        });
        let label = r.label.unwrap_or(where_);
        let conn = r
            .connection
            .unwrap_or_default()
            .or(base.connection.as_ref().unwrap_or(&ConnSpec::default()));
        for n in 0..repeat {
            runs.push(Run {
                label: if repeat > 1 {
                    format!("{label} ({}/{repeat})", n + 1)
                } else {
                    label.clone()
                },
                advance_ms: if n == 0 { advance_ms } else { 0 },
                conn: conn.clone(),
                helo: helo.clone(),
                mail_from: mail_from.clone(),
                mail_params: mail_params.clone(),
                rcpt: rcpt.clone(),
                message: message.clone(),
                queue_id: r.queue_id.clone().or(base.queue_id.clone()),
                spf: spf.clone(),
                authentication: auth.clone(),
                expect: expect.clone(),
            });
        }
    }
    if expect_load_error.is_none() && runs.iter().all(|r| r.expect.is_empty()) {
        return Err(
            "expects nothing, so it would always pass: give [case.expect] (or \
             expect_load_error) at least one stage, header, route or kv check"
                .into(),
        );
    }
    Ok(Case {
        name,
        file: file.to_path_buf(),
        line,
        plugin: PluginSettings {
            config_json,
            failure_policy: case.failure_policy.or(d.failure_policy).unwrap_or_default(),
            timeout_ms,
            memory_mb,
            reuse,
            pool_idle,
        },
        clock_ms: case.clock_ms.or(d.clock_ms).unwrap_or(DEFAULT_CLOCK_MS),
        dns: static_dns(&case.dns.or(d.dns).unwrap_or_default())?,
        kv,
        kv_error: case.kv_error.or(d.kv_error),
        network,
        expect_load_error,
        runs,
    })
}

fn regex(pattern: &str, key: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| format!("{key}: bad regex {pattern:?}: {e}"))
}

/// The result names a case may use, as in `Authentication-Results` (RFC 8601) and the WIT.
pub const AUTH_RESULTS: [&str; 8] = [
    "none",
    "pass",
    "fail",
    "softfail",
    "neutral",
    "temperror",
    "permerror",
    "policy",
];

/// An authentication result by its RFC 8601 name; `key` names the case-file key in errors.
fn auth_result(name: &str, key: &str) -> Result<AuthResult, String> {
    Ok(match name {
        "none" => AuthResult::None,
        "pass" => AuthResult::Pass,
        "fail" => AuthResult::Fail,
        "softfail" => AuthResult::Softfail,
        "neutral" => AuthResult::Neutral,
        "temperror" => AuthResult::Temperror,
        "permerror" => AuthResult::Permerror,
        "policy" => AuthResult::Policy,
        other => {
            return Err(format!(
                "{key}: unknown result {other:?} (expected one of {})",
                AUTH_RESULTS.join(", ")
            ));
        }
    })
}

/// The SPF preset: its result, and its domain when the case names one.
fn spf_preset(raw: RawSpf, key: &str) -> Result<(AuthResult, Option<String>), String> {
    let result = auth_result(&raw.result, &format!("{key}.result"))?;
    if let Some(d) = &raw.domain
        && (d.trim().is_empty() || d.chars().any(char::is_control))
    {
        return Err(format!("{key}.domain: {d:?} is not a domain"));
    }
    Ok((result, raw.domain))
}

/// The identity SPF checks when the case names no domain: the MAIL FROM domain, or the HELO
/// name for the null sender (RFC 7208 §2.4).
fn spf_identity(mail_from: Option<&str>, helo: Option<&str>) -> String {
    let from = mail_from.map(bare_path).unwrap_or_default();
    match from.rsplit_once('@') {
        Some((_, domain)) => domain.to_owned(),
        None => helo.unwrap_or_default().trim().to_owned(),
    }
}

/// `<>` and `<a@b>` as an envelope holds them: `""` and `"a@b"`.
pub(crate) fn bare_path(p: &str) -> String {
    let t = p.trim();
    t.strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(t)
        .to_owned()
}

fn authentication(raw: RawAuthentication, key: &str) -> Result<Authentication, String> {
    let mut dkim = Vec::new();
    for (i, d) in raw.dkim.unwrap_or_default().into_iter().enumerate() {
        dkim.push(DkimCheck {
            result: auth_result(&d.result, &format!("{key}.dkim[{i}].result"))?,
            domain: d.domain,
            selector: d.selector,
        });
    }
    let result = |v: Option<String>, k: &str| {
        v.map_or(Ok(AuthResult::None), |v| {
            auth_result(&v, &format!("{key}.{k}"))
        })
    };
    Ok(Authentication {
        dkim,
        dmarc: result(raw.dmarc, "dmarc")?,
        arc: result(raw.arc, "arc")?,
    })
}

/// Reads the message (inline or file relative to the case file) and makes its line ends CRLF.
fn load_message(
    inline: Option<String>,
    file: Option<PathBuf>,
    dir: &Path,
) -> Result<Option<Vec<u8>>, String> {
    match (inline, file) {
        (Some(_), Some(_)) => Err("give `message` or `message_file`, not both".into()),
        (Some(text), None) => Ok(Some(crlf(text.as_bytes()))),
        (None, Some(f)) => {
            let path = dir.join(&f);
            let bytes = std::fs::read(&path)
                .map_err(|e| format!("message_file {}: {e}", path.display()))?;
            Ok(Some(crlf(&bytes)))
        }
        (None, None) => Ok(None),
    }
}

/// Converts bare LF (and bare CR) line ends to CRLF, as a client's DATA would deliver them.
pub use postrider_smtp::to_crlf as crlf;

/// MAIL FROM parameters: `{ SIZE = 1234, BODY = "8BITMIME", SMTPUTF8 = true }`.
fn params(table: Option<&toml::Table>) -> Result<Vec<(String, Option<String>)>, String> {
    let Some(table) = table else {
        return Ok(Vec::new());
    };
    table
        .iter()
        .map(|(k, v)| {
            let value = match v {
                toml::Value::Boolean(true) => None,
                toml::Value::String(s) => Some(s.clone()),
                toml::Value::Integer(n) => Some(n.to_string()),
                other => {
                    return Err(format!(
                        "mail_params.{k}: expected a string, an integer or true, found {}",
                        other.type_str()
                    ));
                }
            };
            Ok((k.to_ascii_uppercase(), value))
        })
        .collect()
}
