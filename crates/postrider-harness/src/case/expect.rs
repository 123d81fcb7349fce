//! What a case expects: verdicts per stage, header edits, quarantine, routes, kv.

use std::collections::BTreeMap;
use std::fmt;

use postrider_plugin_host::TlsPolicy;
use regex::Regex;
use serde::Deserialize;

use super::*;

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
    /// A milter could not be reached (the harness runs no milters; for completeness).
    Unavailable,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::Invalid => "invalid",
            FailureKind::Busy => "busy",
            FailureKind::Unavailable => "unavailable",
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
    /// A pattern the whole message must match after the data stage's changes (header edits,
    /// a new body, appended text parts), as the relay would store it (CRLF line ends).
    pub message: Option<Regex>,
    /// Routes by final recipient address.
    pub routes: Vec<(String, RouteExpect)>,
    /// kv entries afterwards.
    pub kv: Option<BTreeMap<String, String>>,
    /// How `kv` is compared.
    pub kv_match: KvMatch,
    /// Keys that must not exist afterwards.
    pub kv_absent: Vec<String>,
}

impl Expectations {
    /// Whether nothing at all is checked.
    pub fn is_empty(&self) -> bool {
        self.connect.is_none()
            && self.helo.is_none()
            && self.mail_from.is_none()
            && self.rcpt.is_empty()
            && self.data.is_none()
            && self.headers.is_none()
            && self.quarantine.is_none()
            && self.message.is_none()
            && self.routes.is_empty()
            && self.kv.is_none()
            && self.kv_absent.is_empty()
    }
}

pub(crate) fn expectations(raw: RawExpect, rcpt: &[String]) -> Result<Expectations, String> {
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
        message: raw
            .message
            .as_deref()
            .map(|m| regex(m, "message"))
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

pub(crate) fn stage_expect(s: RawStage, key: &str) -> Result<StageExpect, String> {
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

pub(crate) fn header_expect(h: RawHeader) -> Result<HeaderExpect, String> {
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

pub(crate) fn route_expect(r: RawRoute) -> Result<RouteExpect, String> {
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
