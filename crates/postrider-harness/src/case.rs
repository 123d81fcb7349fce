//! The case file format: TOML, a `[defaults]` table shared by every case of the file and one
//! `[[case]]` table per case, each with optional `[[case.run]]` sessions played in order
//! against the same kv store and clock.
//!
//! Parsing is strict (unknown keys are errors) and every error names the file and line.
//! [`load_file`] returns resolved [`Case`]s: defaults merged in, messages read and converted
//! to CRLF, regexes compiled, `repeat` expanded.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use postrider_plugin_host::{
    AuthResult, Authentication, DkimCheck, DnsError, FailurePolicy, SpfCheck, StaticDns, TlsPolicy,
};
use regex::Regex;
use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer};
use toml::Spanned;

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

/// A plugin failure kind a case can expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// The guest trapped (panic, out of memory, ...).
    Trap,
    /// The call ran past `timeout_ms`.
    Timeout,
    /// The answer was refused by the host (bad code, CR/LF in text, bad rewrite, ...).
    Invalid,
    /// No instance slot was free.
    Busy,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Invalid => "invalid",
            FailureKind::Busy => "busy",
        })
    }
}

/// A verdict a stage is expected to end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerdictKind {
    /// No plugin objected.
    Continue,
    /// A plugin accepted.
    Accept,
    /// `continue` or `accept`: the command goes through.
    Pass,
    /// 5xx.
    Reject,
    /// 4xx.
    Tempfail,
    /// Reply, then close.
    Disconnect,
    /// The stage was never called (an earlier refusal ended the session or transaction).
    #[serde(rename = "not-reached")]
    NotReached,
}

impl fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerdictKind::Continue => "continue",
            VerdictKind::Accept => "accept",
            VerdictKind::Pass => "pass",
            VerdictKind::Reject => "reject",
            VerdictKind::Tempfail => "tempfail",
            VerdictKind::Disconnect => "disconnect",
            VerdictKind::NotReached => "not-reached",
        })
    }
}

/// Which kv entries the expectation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvMatch {
    /// The listed keys have these values; other keys may exist (the default).
    #[default]
    Subset,
    /// The plugin's namespace holds exactly these entries.
    Exact,
}

/// A DNS error a mocked name answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsFault {
    /// The name does not exist.
    Nxdomain,
    /// The name exists without records of that type.
    Nodata,
    /// No answer in time.
    Timeout,
    /// The server failed.
    Servfail,
}

/// Records, or an error, for one mocked name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// The records, as text ("127.0.0.2", "10 mx.example.org", "v=spf1 -all", a host name).
    Records(Vec<String>),
    /// The lookup fails.
    Fault(DnsFault),
}

/// Mocked DNS: per record type, name → answer. Names not listed are NXDOMAIN.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsMock {
    /// A records by name (merged with `aaaa` for `lookup-ip`).
    #[serde(default)]
    pub a: BTreeMap<String, DnsAnswer>,
    /// AAAA records by name.
    #[serde(default)]
    pub aaaa: BTreeMap<String, DnsAnswer>,
    /// MX records by name, each "PREFERENCE HOST".
    #[serde(default)]
    pub mx: BTreeMap<String, DnsAnswer>,
    /// TXT records by name.
    #[serde(default)]
    pub txt: BTreeMap<String, DnsAnswer>,
    /// PTR records by IP address.
    #[serde(default)]
    pub ptr: BTreeMap<String, DnsAnswer>,
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

/// TLS on the client connection: `true` for TLSv1.3, or the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// e.g. "TLSv1.3".
    pub protocol: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// Server name indication.
    pub sni: Option<String>,
}

/// The client connection; every field optional, merged run ← case ← defaults ← built-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnSpec {
    /// Connection id.
    pub id: Option<String>,
    /// Client address (default 192.0.2.10).
    pub client_ip: Option<IpAddr>,
    /// Client port (default 40000).
    pub client_port: Option<u16>,
    /// Forward-confirmed reverse DNS name of the client.
    #[serde(alias = "reverse_dns")]
    pub client_name: Option<String>,
    /// Listener name (default "mx").
    pub listener: Option<String>,
    /// Our address (default 192.0.2.1).
    pub server_ip: Option<IpAddr>,
    /// Our port (default 25).
    pub server_port: Option<u16>,
    /// TLS: `true`, `false` or `{ protocol, cipher, sni }` (outer `None`: not given).
    #[serde(default, deserialize_with = "de_tls")]
    pub tls: Option<Option<TlsSpec>>,
    /// User name after AUTH.
    pub auth_user: Option<String>,
}

impl ConnSpec {
    /// Fills the fields this one leaves unset from `base`.
    pub fn or(self, base: &ConnSpec) -> ConnSpec {
        let base = base.clone();
        ConnSpec {
            id: self.id.or(base.id),
            client_ip: self.client_ip.or(base.client_ip),
            client_port: self.client_port.or(base.client_port),
            client_name: self.client_name.or(base.client_name),
            listener: self.listener.or(base.listener),
            server_ip: self.server_ip.or(base.server_ip),
            server_port: self.server_port.or(base.server_port),
            tls: self.tls.or(base.tls),
            auth_user: self.auth_user.or(base.auth_user),
        }
    }
}

/// Inputs shared by `[defaults]` and `[[case]]` (the case-only keys are refused in defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInputs {
    name: Option<String>,
    description: Option<String>,
    config: Option<toml::Table>,
    failure_policy: Option<FailurePolicy>,
    timeout_ms: Option<u64>,
    memory_mb: Option<u32>,
    reuse: Option<u32>,
    pool_idle: Option<u32>,
    clock_ms: Option<u64>,
    connection: Option<ConnSpec>,
    helo: Option<String>,
    mail_from: Option<String>,
    mail_params: Option<toml::Table>,
    rcpt: Option<Vec<String>>,
    message: Option<String>,
    message_file: Option<PathBuf>,
    queue_id: Option<String>,
    spf: Option<SpfShort>,
    authentication: Option<RawAuthentication>,
    dns: Option<DnsMock>,
    kv: Option<BTreeMap<String, RawKvPreset>>,
    kv_error: Option<KvFault>,
    expect_load_error: Option<String>,
    expect: Option<RawExpect>,
    run: Option<Vec<RawRun>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    defaults: RawInputs,
    #[serde(default)]
    case: Vec<Spanned<RawInputs>>,
}

/// One session of a case (`[[case.run]]`): what changes, and what to expect.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    label: Option<String>,
    advance_ms: Option<u64>,
    advance_secs: Option<u64>,
    repeat: Option<u32>,
    connection: Option<ConnSpec>,
    helo: Option<String>,
    mail_from: Option<String>,
    mail_params: Option<toml::Table>,
    rcpt: Option<Vec<String>>,
    message: Option<String>,
    message_file: Option<PathBuf>,
    queue_id: Option<String>,
    spf: Option<SpfShort>,
    authentication: Option<RawAuthentication>,
    expect: Option<RawExpect>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    connect: Option<StageShort>,
    helo: Option<StageShort>,
    mail_from: Option<StageShort>,
    rcpt: Option<BTreeMap<String, StageShort>>,
    data: Option<StageShort>,
    headers: Option<Vec<RawHeader>>,
    quarantine: Option<String>,
    routes: Option<BTreeMap<String, RouteShort>>,
    kv: Option<BTreeMap<String, KvValue>>,
    kv_match: Option<KvMatch>,
    kv_absent: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    verdict: VerdictKind,
    code: Option<u16>,
    enhanced: Option<String>,
    text: Option<String>,
    failure: Option<FailureKind>,
    failure_text: Option<String>,
    rewrite: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    prepend: Option<String>,
    append: Option<String>,
    remove: Option<String>,
    replace: Option<String>,
    index: Option<u32>,
    value: Option<String>,
    value_regex: Option<String>,
}

/// `spf = "pass"` or `spf = { result = "pass", domain = "sender.example" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpf {
    result: String,
    domain: Option<String>,
}

/// `authentication = { dkim = [{ result, domain, selector }], dmarc = "...", arc = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthentication {
    dkim: Option<Vec<RawDkim>>,
    dmarc: Option<String>,
    arc: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    result: String,
    domain: String,
    selector: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawRoute {
    Mx,
    Relay {
        host: Option<String>,
        port: Option<u16>,
        tls: Option<TlsPolicy>,
    },
    Lmtp {
        target: Option<String>,
    },
    Hold {
        reason: Option<String>,
    },
    Discard,
    Bounce {
        code: Option<u16>,
        enhanced: Option<String>,
        text: Option<String>,
    },
    Defer {
        reason: Option<String>,
    },
}

/// What a stage is expected to end with.
#[derive(Debug, Clone)]
pub struct StageExpect {
    /// The verdict.
    pub verdict: VerdictKind,
    /// The reply code, when checked.
    pub code: Option<u16>,
    /// The enhanced status code, when checked.
    pub enhanced: Option<String>,
    /// A regex the reply text must match (searched anywhere).
    pub text: Option<Regex>,
    /// The plugin failure expected at this stage; `None`: the call must not fail.
    pub failure: Option<FailureKind>,
    /// A regex the failure message must match.
    pub failure_text: Option<Regex>,
    /// The rewritten recipient (rcpt only), when checked.
    pub rewrite: Option<String>,
}

impl fmt::Display for StageExpect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.verdict)?;
        if let Some(c) = self.code {
            write!(f, " {c}")?;
        }
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        if let Some(t) = &self.text {
            write!(f, " text ~ /{t}/")?;
        }
        if let Some(r) = &self.rewrite {
            write!(f, ", rewrite to <{r}>")?;
        }
        match &self.failure {
            Some(k) => write!(f, ", after a {k} failure")?,
            None if self.verdict == VerdictKind::NotReached => {}
            None => write!(f, ", no plugin failure")?,
        }
        if let Some(t) = &self.failure_text {
            write!(f, " ~ /{t}/")?;
        }
        Ok(())
    }
}

/// One expected header edit (in order; `value_regex` instead of `value` matches loosely).
#[derive(Debug, Clone)]
pub struct HeaderExpect {
    /// "prepend", "append", "remove" or "replace".
    pub op: &'static str,
    /// Header name (compared case-insensitively).
    pub name: String,
    /// For replace.
    pub index: Option<u32>,
    /// Exact value.
    pub value: Option<String>,
    /// Value pattern.
    pub value_regex: Option<Regex>,
}

impl fmt::Display for HeaderExpect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, self.name)?;
        if let Some(i) = self.index {
            write!(f, "[{i}]")?;
        }
        if let Some(v) = &self.value {
            write!(f, ": {v}")?;
        }
        if let Some(r) = &self.value_regex {
            write!(f, " ~ /{r}/")?;
        }
        Ok(())
    }
}

/// The route one recipient is expected to get; unset fields are not checked.
#[derive(Debug, Clone)]
pub enum RouteExpect {
    /// The domain's MX.
    Mx,
    /// A relay host.
    Relay {
        /// Host.
        host: Option<String>,
        /// Port.
        port: Option<u16>,
        /// TLS policy.
        tls: Option<TlsPolicy>,
    },
    /// LMTP.
    Lmtp {
        /// "host:port" or "unix:/path".
        target: Option<String>,
    },
    /// Held, reason matching.
    Hold {
        /// Regex.
        reason: Option<Regex>,
    },
    /// Dropped.
    Discard,
    /// Bounced.
    Bounce {
        /// Code.
        code: Option<u16>,
        /// Enhanced code.
        enhanced: Option<String>,
        /// Regex on the text.
        text: Option<Regex>,
    },
    /// The routing plugin failed; retried later.
    Defer {
        /// Regex on the reason.
        reason: Option<Regex>,
    },
}

impl fmt::Display for RouteExpect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "*".into());
        match self {
            RouteExpect::Mx => f.write_str("mx"),
            RouteExpect::Relay { host, port, tls } => write!(
                f,
                "relay {}:{} tls {}",
                opt(host.clone()),
                opt(port.map(|p| p.to_string())),
                opt(tls.map(|t| format!("{t:?}").to_lowercase()))
            ),
            RouteExpect::Lmtp { target } => write!(f, "lmtp {}", opt(target.clone())),
            RouteExpect::Hold { reason } => {
                write!(
                    f,
                    "hold ~ /{}/",
                    opt(reason.as_ref().map(|r| r.to_string()))
                )
            }
            RouteExpect::Discard => f.write_str("discard"),
            RouteExpect::Bounce {
                code,
                enhanced,
                text,
            } => write!(
                f,
                "bounce {} {} ~ /{}/",
                opt(code.map(|c| c.to_string())),
                opt(enhanced.clone()),
                opt(text.as_ref().map(|r| r.to_string()))
            ),
            RouteExpect::Defer { reason } => {
                write!(
                    f,
                    "defer ~ /{}/",
                    opt(reason.as_ref().map(|r| r.to_string()))
                )
            }
        }
    }
}

/// Everything a run is expected to produce; unset parts are not checked.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Connect stage.
    pub connect: Option<StageExpect>,
    /// HELO stage.
    pub helo: Option<StageExpect>,
    /// MAIL FROM stage.
    pub mail_from: Option<StageExpect>,
    /// RCPT stage, by recipient as given.
    pub rcpt: Vec<(String, StageExpect)>,
    /// DATA stage.
    pub data: Option<StageExpect>,
    /// The exact list of header edits.
    pub headers: Option<Vec<HeaderExpect>>,
    /// Quarantine reason pattern.
    pub quarantine: Option<Regex>,
    /// Routes by final recipient address.
    pub routes: Vec<(String, RouteExpect)>,
    /// kv entries afterwards.
    pub kv: Option<BTreeMap<String, String>>,
    /// How `kv` is compared.
    pub kv_match: KvMatch,
    /// Keys that must not exist afterwards.
    pub kv_absent: Vec<String>,
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
pub fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

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

fn expectations(raw: RawExpect, rcpt: &[String]) -> Result<Expectations, String> {
    let stage = |s: Option<StageShort>, key: &str| -> Result<Option<StageExpect>, String> {
        s.map(|s| stage_expect(s.0, key)).transpose()
    };
    let mut out = Expectations {
        connect: stage(raw.connect, "connect")?,
        helo: stage(raw.helo, "helo")?,
        mail_from: stage(raw.mail_from, "mail_from")?,
        data: stage(raw.data, "data")?,
        kv: raw
            .kv
            .map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()),
        kv_match: raw.kv_match.unwrap_or_default(),
        kv_absent: raw.kv_absent.unwrap_or_default(),
        quarantine: raw
            .quarantine
            .as_deref()
            .map(|q| regex(q, "quarantine"))
            .transpose()?,
        ..Expectations::default()
    };
    for (addr, s) in raw.rcpt.unwrap_or_default() {
        if !rcpt.contains(&addr) {
            return Err(format!(
                "rcpt.{addr:?}: not one of the run's recipients {rcpt:?}"
            ));
        }
        out.rcpt
            .push((addr.clone(), stage_expect(s.0, &format!("rcpt.{addr:?}"))?));
    }
    for (k, s) in [
        ("connect", &out.connect),
        ("helo", &out.helo),
        ("mail_from", &out.mail_from),
        ("data", &out.data),
    ] {
        if s.as_ref().is_some_and(|s| s.rewrite.is_some()) {
            return Err(format!("{k}: `rewrite` applies to rcpt only"));
        }
    }
    if let Some(headers) = raw.headers {
        let mut list = Vec::new();
        for (i, h) in headers.into_iter().enumerate() {
            list.push(header_expect(h).map_err(|e| format!("headers[{i}]: {e}"))?);
        }
        out.headers = Some(list);
    }
    for (addr, r) in raw.routes.unwrap_or_default() {
        out.routes.push((
            addr.clone(),
            route_expect(r.0).map_err(|e| format!("routes.{addr:?}: {e}"))?,
        ));
    }
    Ok(out)
}

fn stage_expect(s: RawStage, key: &str) -> Result<StageExpect, String> {
    let refusing = matches!(
        s.verdict,
        VerdictKind::Reject | VerdictKind::Tempfail | VerdictKind::Disconnect
    );
    if !refusing && (s.code.is_some() || s.enhanced.is_some() || s.text.is_some()) {
        return Err(format!(
            "{key}: code, enhanced and text only apply to reject, tempfail and disconnect"
        ));
    }
    if s.verdict == VerdictKind::NotReached && (s.failure.is_some() || s.rewrite.is_some()) {
        return Err(format!(
            "{key}: a stage not reached has no failure or rewrite"
        ));
    }
    if s.failure.is_none() && s.failure_text.is_some() {
        return Err(format!("{key}: failure_text needs `failure`"));
    }
    Ok(StageExpect {
        verdict: s.verdict,
        code: s.code,
        enhanced: s.enhanced,
        text: s
            .text
            .as_deref()
            .map(|t| regex(t, &format!("{key}.text")))
            .transpose()?,
        failure: s.failure,
        failure_text: s
            .failure_text
            .as_deref()
            .map(|t| regex(t, &format!("{key}.failure_text")))
            .transpose()?,
        rewrite: s.rewrite,
    })
}

fn header_expect(h: RawHeader) -> Result<HeaderExpect, String> {
    let ops = [
        ("prepend", &h.prepend),
        ("append", &h.append),
        ("remove", &h.remove),
        ("replace", &h.replace),
    ];
    let set: Vec<_> = ops.iter().filter(|(_, v)| v.is_some()).collect();
    let [(op, Some(name))] = set.as_slice() else {
        return Err("give exactly one of prepend, append, remove, replace (= header name)".into());
    };
    let has_value = h.value.is_some() || h.value_regex.is_some();
    if h.value.is_some() && h.value_regex.is_some() {
        return Err("give `value` or `value_regex`, not both".into());
    }
    match *op {
        "remove" if has_value || h.index.is_some() => {
            return Err("remove takes only the header name".into());
        }
        "replace" if h.index.is_none() => return Err("replace needs `index`".into()),
        "prepend" | "append" if h.index.is_some() => {
            return Err(format!("{op} takes no `index`"));
        }
        _ => {}
    }
    Ok(HeaderExpect {
        op,
        name: name.clone(),
        index: h.index,
        value: h.value,
        value_regex: h
            .value_regex
            .as_deref()
            .map(|r| regex(r, "value_regex"))
            .transpose()?,
    })
}

fn route_expect(r: RawRoute) -> Result<RouteExpect, String> {
    let re = |v: Option<String>, key: &str| v.as_deref().map(|t| regex(t, key)).transpose();
    Ok(match r {
        RawRoute::Mx => RouteExpect::Mx,
        RawRoute::Relay { host, port, tls } => RouteExpect::Relay { host, port, tls },
        RawRoute::Lmtp { target } => RouteExpect::Lmtp { target },
        RawRoute::Hold { reason } => RouteExpect::Hold {
            reason: re(reason, "reason")?,
        },
        RawRoute::Discard => RouteExpect::Discard,
        RawRoute::Bounce {
            code,
            enhanced,
            text,
        } => RouteExpect::Bounce {
            code,
            enhanced,
            text: re(text, "text")?,
        },
        RawRoute::Defer { reason } => RouteExpect::Defer {
            reason: re(reason, "reason")?,
        },
    })
}

// ---- Values with a short form: `"reject"` or `{ verdict = "reject", code = 550 }`, etc. ----

/// A table, or a string standing for a table with one key set.
trait ShortForm: Sized {
    const EXPECTING: &'static str;
    fn from_short(s: &str) -> Result<Self, String>;
}

/// `T` from either its table form or its short string form.
#[derive(Debug, Clone)]
struct Short<T>(T);

impl<'de, T: Deserialize<'de> + ShortForm> Deserialize<'de> for Short<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de> + ShortForm> Visitor<'de> for V<T> {
            type Value = Short<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                T::from_short(s).map(Short).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Short)
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

type StageShort = Short<RawStage>;
type RouteShort = Short<RawRoute>;
type SpfShort = Short<RawSpf>;

impl ShortForm for RawSpf {
    const EXPECTING: &'static str =
        "a result (\"pass\", \"fail\", \"softfail\", ...) or a table { result, domain }";
    fn from_short(s: &str) -> Result<Self, String> {
        Ok(RawSpf {
            result: s.to_owned(),
            domain: None,
        })
    }
}

impl ShortForm for RawStage {
    const EXPECTING: &'static str = "a verdict (\"continue\", \"accept\", \"pass\", \"reject\", \"tempfail\", \"disconnect\", \"not-reached\") or a table { verdict, code, enhanced, text, failure, failure_text, rewrite }";
    fn from_short(s: &str) -> Result<Self, String> {
        let verdict =
            VerdictKind::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s))
                .map_err(|e| e.to_string())?;
        Ok(RawStage {
            verdict,
            code: None,
            enhanced: None,
            text: None,
            failure: None,
            failure_text: None,
            rewrite: None,
        })
    }
}

impl ShortForm for RawRoute {
    const EXPECTING: &'static str = "\"mx\", \"discard\", or a table { type = \"relay\" | \"lmtp\" | \"hold\" | \"bounce\" | \"defer\", ... }";
    fn from_short(s: &str) -> Result<Self, String> {
        Ok(match s {
            "mx" => RawRoute::Mx,
            "discard" => RawRoute::Discard,
            "relay" => RawRoute::Relay {
                host: None,
                port: None,
                tls: None,
            },
            "lmtp" => RawRoute::Lmtp { target: None },
            "hold" => RawRoute::Hold { reason: None },
            "bounce" => RawRoute::Bounce {
                code: None,
                enhanced: None,
                text: None,
            },
            "defer" => RawRoute::Defer { reason: None },
            other => return Err(format!("unknown route type {other:?}")),
        })
    }
}

/// A kv value: a string or an integer (counters are stored as decimal text).
#[derive(Debug, Clone)]
struct KvValue(String);

impl<'de> Deserialize<'de> for KvValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KvValue, E> {
                Ok(KvValue(s.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<KvValue, E> {
                Ok(KvValue(n.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<KvValue, E> {
                Ok(KvValue(n.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A preset: `"value"`, `42`, or `{ value = "...", ttl_secs = 60 }`.
#[derive(Debug, Clone)]
struct RawKvPreset {
    value: String,
    ttl_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvPresetTable {
    value: KvValue,
    ttl_secs: Option<u64>,
}

impl<'de> Deserialize<'de> for RawKvPreset {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawKvPreset;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer or a table { value, ttl_secs }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawKvPreset, E> {
                Ok(RawKvPreset {
                    value: s.to_owned(),
                    ttl_secs: None,
                })
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<RawKvPreset, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<RawKvPreset, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawKvPreset, A::Error> {
                let t = KvPresetTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawKvPreset {
                    value: t.value.0,
                    ttl_secs: t.ttl_secs,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsTable {
    protocol: Option<String>,
    cipher: Option<String>,
    sni: Option<String>,
}

impl<'de> Deserialize<'de> for TlsSpec {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TlsTable::deserialize(d).map(|t| TlsSpec {
            protocol: t.protocol.unwrap_or_else(|| "TLSv1.3".into()),
            cipher: t
                .cipher
                .unwrap_or_else(|| "TLS13_AES_256_GCM_SHA384".into()),
            sni: t.sni,
        })
    }
}

/// `tls = true | false | { protocol, cipher, sni }` (in [`ConnSpec`], where `Option` is
/// "not given" and the inner `Option` is "no TLS").
fn default_tls() -> TlsSpec {
    TlsSpec {
        protocol: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
        sni: None,
    }
}

fn de_tls<'de, D: de::Deserializer<'de>>(d: D) -> Result<Option<Option<TlsSpec>>, D::Error> {
    TlsField::deserialize(d).map(|t| Some(t.0))
}

/// Deserializes `Option<TlsSpec>` from a bool or a table.
#[derive(Debug)]
struct TlsField(Option<TlsSpec>);

impl<'de> Deserialize<'de> for TlsField {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TlsField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table { protocol, cipher, sni }")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<TlsField, E> {
                Ok(TlsField(b.then(default_tls)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TlsField, A::Error> {
                TlsSpec::deserialize(MapAccessDeserializer::new(map)).map(|t| TlsField(Some(t)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for DnsAnswer {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DnsAnswer;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a list of records, or one of \"nxdomain\", \"nodata\", \"timeout\", \"servfail\"",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DnsAnswer, E> {
                DnsFault::deserialize(de::value::StrDeserializer::<E>::new(s)).map(DnsAnswer::Fault)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DnsAnswer, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(DnsAnswer::Records(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The connection fields after merging, with the built-in defaults filled in.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// Client address.
    pub client_ip: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Reverse DNS name.
    pub client_name: Option<String>,
    /// Listener.
    pub listener: String,
    /// Our address.
    pub server_ip: IpAddr,
    /// Our port.
    pub server_port: u16,
    /// TLS.
    pub tls: Option<TlsSpec>,
    /// Authenticated user.
    pub auth_user: Option<String>,
}

impl ConnSpec {
    /// The connection with built-in defaults for what is unset.
    pub fn resolve(&self, fallback_id: &str) -> Connection {
        Connection {
            id: self.id.clone().unwrap_or_else(|| fallback_id.to_owned()),
            client_ip: self.client_ip.unwrap_or(IpAddr::from([192, 0, 2, 10])),
            client_port: self.client_port.unwrap_or(40000),
            client_name: self.client_name.clone(),
            listener: self.listener.clone().unwrap_or_else(|| "mx".into()),
            server_ip: self.server_ip.unwrap_or(IpAddr::from([192, 0, 2, 1])),
            server_port: self.server_port.unwrap_or(25),
            tls: self.tls.clone().flatten(),
            auth_user: self.auth_user.clone(),
        }
    }
}

/// Parses a `[dns]`-style table on its own (for `run --dns FILE`).
pub fn parse_dns(text: &str, path: &Path) -> Result<StaticDns, CaseError> {
    let shown = path.display().to_string();
    let mock: DnsMock = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        CaseError::Parse {
            path: shown.clone(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    static_dns(&mock).map_err(|message| CaseError::Read {
        path: shown,
        message,
    })
}

fn dns_error(f: DnsFault) -> DnsError {
    match f {
        DnsFault::Nxdomain => DnsError::NxDomain,
        DnsFault::Nodata => DnsError::NoData,
        DnsFault::Timeout => DnsError::Timeout,
        DnsFault::Servfail => DnsError::Failure("SERVFAIL".into()),
    }
}

/// Converts the mock into the host's [`StaticDns`], checking every record.
fn static_dns(m: &DnsMock) -> Result<StaticDns, String> {
    let name = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
    let mut dns = StaticDns::default();
    // A and AAAA of one name answer one lookup-ip: their records are joined; a fault
    // answers only when neither type has records.
    let mut records: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut faults: BTreeMap<String, DnsError> = BTreeMap::new();
    for (kind, table) in [("a", &m.a), ("aaaa", &m.aaaa)] {
        for (n, answer) in table {
            match answer {
                DnsAnswer::Fault(f) => {
                    faults.entry(name(n)).or_insert_with(|| dns_error(*f));
                }
                DnsAnswer::Records(r) => {
                    let list = records.entry(name(n)).or_default();
                    for ip in r {
                        let addr: IpAddr = ip.parse().map_err(|_| {
                            format!("dns.{kind}.{n:?}: {ip:?} is not an IP address")
                        })?;
                        if (kind == "a") != addr.is_ipv4() {
                            return Err(format!(
                                "dns.{kind}.{n:?}: {ip:?} is not an {} address",
                                if kind == "a" { "IPv4" } else { "IPv6" }
                            ));
                        }
                        list.push(addr);
                    }
                }
            }
        }
    }
    for (n, f) in faults {
        if !records.contains_key(&n) {
            dns.ip.insert(n, Err(f));
        }
    }
    for (n, r) in records {
        dns.ip.insert(n, Ok(r));
    }
    for (n, answer) in &m.mx {
        let parsed = match answer {
            DnsAnswer::Fault(f) => Err(dns_error(*f)),
            DnsAnswer::Records(r) => Ok(r
                .iter()
                .map(|rec| {
                    let (pref, host) =
                        rec.trim().split_once(char::is_whitespace).ok_or_else(|| {
                            format!("dns.mx.{n:?}: {rec:?} is not \"PREFERENCE HOST\"")
                        })?;
                    let pref: u16 = pref
                        .parse()
                        .map_err(|_| format!("dns.mx.{n:?}: {rec:?} is not \"PREFERENCE HOST\""))?;
                    Ok((pref, host.trim().to_owned()))
                })
                .collect::<Result<Vec<_>, String>>()?),
        };
        dns.mx.insert(name(n), parsed);
    }
    for (n, answer) in &m.txt {
        let parsed = match answer {
            DnsAnswer::Fault(f) => Err(dns_error(*f)),
            DnsAnswer::Records(r) => Ok(r.clone()),
        };
        dns.txt.insert(name(n), parsed);
    }
    for (ip, answer) in &m.ptr {
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("dns.ptr: key {ip:?} is not an IP address"))?;
        let parsed = match answer {
            DnsAnswer::Fault(f) => Err(dns_error(*f)),
            DnsAnswer::Records(r) => Ok(r.clone()),
        };
        dns.ptr.insert(addr, parsed);
    }
    Ok(dns)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn p(text: &str) -> Result<Vec<Case>, CaseError> {
        parse(text, Path::new("x/cases.toml"))
    }

    #[test]
    fn minimal_case_and_short_forms() {
        let cases = p(r#"
[defaults]
config = { a = 1 }
rcpt = ["a@b.example"]

[[case]]
name = "one"
mail_from = "s@c.example"
expect.rcpt."a@b.example" = "tempfail"
expect.routes."a@b.example" = "mx"
expect.kv = { k = 3 }
"#)
        .unwrap();
        assert_eq!(cases.len(), 1);
        let c = &cases[0];
        assert_eq!(c.line, 6);
        assert_eq!(c.plugin.config_json, r#"{"a":1}"#);
        assert_eq!(c.runs.len(), 1);
        assert_eq!(c.runs[0].rcpt, ["a@b.example"]);
        assert_eq!(c.runs[0].expect.rcpt[0].1.verdict, VerdictKind::Tempfail);
        assert_eq!(c.runs[0].expect.kv.as_ref().unwrap()["k"], "3");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = p("[[case]]\nname = \"x\"\nbogus = 1\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("x/cases.toml:3:"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        let e = p("[[case]]\nname = \"x\"\nrcpt = [\"a@b\"]\nexpect.rcpt.\"c@d\" = \"reject\"\n")
            .unwrap_err();
        assert!(
            e.to_string().starts_with("x/cases.toml:1: case \"x\""),
            "{e}"
        );
        let e =
            p("[[case]]\nname = \"x\"\nexpect.connect = { verdict = \"rejected\" }\n").unwrap_err();
        assert!(e.to_string().contains("x/cases.toml:3"), "{e}");
    }

    #[test]
    fn runs_repeat_and_advance() {
        let c = p(r#"
[[case]]
name = "r"
[[case.run]]
repeat = 3
[[case.run]]
advance_secs = 301
connection = { client_ip = "2001:db8::1", tls = true }
"#)
        .unwrap();
        let runs = &c[0].runs;
        assert_eq!(runs.len(), 4);
        assert_eq!(runs[2].label, "run 1 (3/3)");
        assert_eq!(runs[3].advance_ms, 301_000);
        let conn = runs[3].conn.resolve("c");
        assert_eq!(conn.client_ip.to_string(), "2001:db8::1");
        assert_eq!(conn.tls.unwrap().protocol, "TLSv1.3");
    }

    #[test]
    fn authentication_presets() {
        let c = p(r#"
[defaults]
helo = "mail.sender.example"
mail_from = "alice@sender.example"
spf = "softfail"
authentication = { dmarc = "fail" }

[[case]]
name = "from defaults, spf domain from MAIL FROM"

[[case]]
name = "case and run values"
spf = { result = "pass", domain = "other.example" }
authentication = { dkim = [{ result = "pass", domain = "d.example", selector = "s1" }], arc = "pass" }
[[case.run]]
[[case.run]]
mail_from = "<>"
spf = "none"
authentication = {}
"#)
        .unwrap();
        let spf = c[0].runs[0].spf.clone().unwrap();
        assert_eq!(
            (spf.result, spf.domain.as_str()),
            (AuthResult::Softfail, "sender.example")
        );
        let auth = c[0].runs[0].authentication.clone().unwrap();
        assert_eq!(
            (auth.dmarc, auth.arc, auth.dkim.len()),
            (AuthResult::Fail, AuthResult::None, 0)
        );
        let first = &c[1].runs[0];
        assert_eq!(first.spf.as_ref().unwrap().domain, "other.example");
        let auth = first.authentication.clone().unwrap();
        assert_eq!(auth.dkim[0].domain, "d.example");
        assert_eq!(auth.dkim[0].selector, "s1");
        assert_eq!(
            (auth.dkim[0].result, auth.dmarc, auth.arc),
            (AuthResult::Pass, AuthResult::None, AuthResult::Pass)
        );
        // The null sender's SPF identity is the HELO name.
        let second = &c[1].runs[1];
        let spf = second.spf.clone().unwrap();
        assert_eq!(
            (spf.result, spf.domain.as_str()),
            (AuthResult::None, "mail.sender.example")
        );
        assert!(second.authentication.as_ref().unwrap().dkim.is_empty());
        // Nothing set: not checked.
        let none = p("[[case]]\nname = \"x\"\n").unwrap();
        assert!(none[0].runs[0].spf.is_none() && none[0].runs[0].authentication.is_none());
    }

    #[test]
    fn unknown_results_name_the_key() {
        for (text, needle) in [
            (
                "[[case]]\nname = \"x\"\nspf = \"passed\"\n",
                "spf.result: unknown result \"passed\"",
            ),
            (
                "[defaults]\nspf = { result = \"Pass\" }\n[[case]]\nname = \"x\"\n",
                "[defaults] spf.result: unknown result \"Pass\"",
            ),
            (
                "[[case]]\nname = \"x\"\nauthentication = { dmarc = \"reject\" }\n",
                "authentication.dmarc: unknown result \"reject\"",
            ),
            (
                "[[case]]\nname = \"x\"\nauthentication = { arc = \"ok\" }\n",
                "authentication.arc: unknown result",
            ),
            (
                "[[case]]\nname = \"x\"\nauthentication = { dkim = [{ result = \"pass\", domain = \"a\", selector = \"s\" }, { result = \"good\", domain = \"b\", selector = \"s\" }] }\n",
                "authentication.dkim[1].result: unknown result \"good\"",
            ),
            (
                "[[case]]\nname = \"x\"\n[[case.run]]\nspf = \"maybe\"\n",
                "run 1: spf.result: unknown result",
            ),
        ] {
            let e = p(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert!(e.contains("expected one of none, pass, fail"), "{e}");
        }
        // Unknown keys are refused by the parser with their line.
        let e = p("[[case]]\nname = \"x\"\nauthentication = { spf = \"pass\" }\n").unwrap_err();
        assert!(e.to_string().starts_with("x/cases.toml:3:"), "{e}");
        assert!(e.to_string().contains("spf"), "{e}");
        let e = p("[[case]]\nname = \"x\"\nauthentication = { dkim = [{ result = \"pass\" }] }\n")
            .unwrap_err();
        assert!(e.to_string().contains("domain"), "{e}");
    }

    #[test]
    fn crlf_conversion() {
        assert_eq!(crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
    }
}
