//! Per-domain recipient allowlists at `RCPT TO`.
//!
//! For each listed domain, only the listed local parts are valid recipients; any other
//! recipient at that domain is refused with `550 5.1.1` (so the relay never accepts mail it
//! would have to bounce later). Recipients at domains not in the list are left to the next
//! plugin (continue). Local parts compare case-insensitively; with `strip_detail` (default on)
//! `alice+news` is checked as `alice`. `postmaster` is always valid at a listed domain
//! (RFC 5321 §4.5.1) unless `allow_postmaster = false`.
//!
//! Config (`domains` required), under the plugin's `[[plugin]]` entry:
//!
//! ```toml
//! [plugin.config]
//! strip_detail = true         # check alice+news as alice
//! detail_separators = "+"
//! allow_postmaster = true
//! message = "Recipient address rejected: user unknown"
//!
//! [plugin.config.domains]
//! "example.org" = ["alice", "bob"]
//! "example.net" = ["info"]
//! ```

use postrider_plugin::{Config, Connection, Envelope, Plugin, RcptOutcome, Stages, addr};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    domains: BTreeMap<String, Vec<String>>,
    #[serde(default = "yes")]
    strip_detail: bool,
    #[serde(default = "default_separators")]
    detail_separators: String,
    #[serde(default = "yes")]
    allow_postmaster: bool,
    #[serde(default = "default_message")]
    message: String,
}

fn yes() -> bool {
    true
}
fn default_separators() -> String {
    "+".into()
}
fn default_message() -> String {
    "Recipient address rejected: user unknown".into()
}

/// The plugin: validated config.
#[derive(Debug)]
pub struct RcptAllowlist {
    /// Normalised domain → lower-cased local parts.
    domains: BTreeMap<String, BTreeSet<String>>,
    /// Separators to strip a detail at; empty when `strip_detail` is off.
    separators: String,
    allow_postmaster: bool,
    message: String,
}

/// What the list says about one recipient.
#[derive(Debug, PartialEq)]
enum Check {
    /// The domain is not listed: not our business.
    OtherDomain,
    Known,
    Unknown,
}

fn parse_config(config: &Config) -> Result<RcptAllowlist, String> {
    let raw: RawConfig = config.parse()?;
    if raw.domains.is_empty() {
        return Err("rcpt-allowlist: `domains` must list at least one domain".into());
    }
    if raw.strip_detail && raw.detail_separators.is_empty() {
        return Err("rcpt-allowlist: `detail_separators` is empty but `strip_detail` is on".into());
    }
    if raw
        .detail_separators
        .chars()
        .any(|c| c == '@' || c.is_whitespace() || c.is_control())
    {
        return Err("rcpt-allowlist: `detail_separators` may not contain '@' or whitespace".into());
    }
    if raw.message.trim().is_empty() || raw.message.chars().any(char::is_control) {
        return Err("rcpt-allowlist: `message` must be one non-empty line of text".into());
    }
    let mut domains = BTreeMap::new();
    for (domain, locals) in raw.domains {
        let d = addr::normalize_domain(&domain);
        if d.is_empty() || d.contains(['@', ' ']) || d.starts_with('.') || d.contains("..") {
            return Err(format!("rcpt-allowlist: {domain:?} is not a domain name"));
        }
        let mut set = BTreeSet::new();
        for local in locals {
            let l = local.trim().to_lowercase();
            if l.is_empty()
                || l.contains('@')
                || l.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "rcpt-allowlist: domains.{domain:?}: {local:?} is not a local part (give \"alice\", not \"alice@{d}\")"
                ));
            }
            set.insert(l);
        }
        if domains.insert(d.clone(), set).is_some() {
            return Err(format!("rcpt-allowlist: domain {d:?} is listed twice"));
        }
    }
    Ok(RcptAllowlist {
        domains,
        separators: if raw.strip_detail {
            raw.detail_separators
        } else {
            String::new()
        },
        allow_postmaster: raw.allow_postmaster,
        message: raw.message,
    })
}

impl RcptAllowlist {
    fn check(&self, rcpt: &str) -> Check {
        let Some((local, domain)) = addr::split(rcpt) else {
            // A bare `postmaster` (RFC 5321 allows it without a domain) is the relay's own.
            return Check::OtherDomain;
        };
        let Some(allowed) = self.domains.get(&addr::normalize_domain(domain)) else {
            return Check::OtherDomain;
        };
        let local = local.to_lowercase();
        let base = addr::strip_detail(&local, &self.separators);
        if allowed.contains(&local)
            || allowed.contains(base)
            || (self.allow_postmaster && base == "postmaster")
        {
            Check::Known
        } else {
            Check::Unknown
        }
    }
}

impl Plugin for RcptAllowlist {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        Stages::RCPT
    }

    fn on_rcpt(&mut self, _conn: &Connection, _env: &Envelope, rcpt: &str) -> RcptOutcome {
        match self.check(rcpt) {
            Check::OtherDomain | Check::Known => RcptOutcome::default(),
            Check::Unknown => {
                postrider_plugin::reject(550, "5.1.1", format!("<{rcpt}>: {}", self.message)).into()
            }
        }
    }
}

postrider_plugin::export!(RcptAllowlist);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<RcptAllowlist, String> {
        parse_config(&Config::new(json))
    }

    #[test]
    fn checks() {
        let a =
            cfg(r#"{"domains": {"Example.ORG": ["Alice", "bob"], "example.net": []}}"#).unwrap();
        assert_eq!(a.check("alice@example.org"), Check::Known);
        assert_eq!(a.check("ALICE@EXAMPLE.ORG."), Check::Known);
        assert_eq!(a.check("alice+news@example.org"), Check::Known);
        assert_eq!(a.check("carol@example.org"), Check::Unknown);
        assert_eq!(a.check("carol+bob@example.org"), Check::Unknown);
        assert_eq!(a.check("postmaster@example.org"), Check::Known);
        assert_eq!(a.check("Postmaster@example.net"), Check::Known);
        assert_eq!(a.check("anyone@example.net"), Check::Unknown);
        assert_eq!(a.check("alice@sub.example.org"), Check::OtherDomain);
        assert_eq!(a.check("postmaster"), Check::OtherDomain);
    }

    #[test]
    fn detail_off_and_postmaster_off() {
        let a = cfg(
            r#"{"domains": {"example.org": ["alice", "a+b"]}, "strip_detail": false,
                       "allow_postmaster": false}"#,
        )
        .unwrap();
        assert_eq!(a.check("alice+news@example.org"), Check::Unknown);
        assert_eq!(a.check("a+b@example.org"), Check::Known);
        assert_eq!(a.check("postmaster@example.org"), Check::Unknown);
        let b =
            cfg(r#"{"domains": {"example.org": ["alice"]}, "detail_separators": "+-"}"#).unwrap();
        assert_eq!(b.check("alice-lists@example.org"), Check::Known);
    }

    #[test]
    fn config_errors() {
        for (json, needle) in [
            ("{}", "missing field `domains`"),
            (r#"{"domains": {}}"#, "at least one domain"),
            (
                r#"{"domains": {"example.org": ["alice@example.org"]}}"#,
                "not a local part",
            ),
            (r#"{"domains": {"example.org": [""]}}"#, "not a local part"),
            (r#"{"domains": {"a b": ["x"]}}"#, "not a domain name"),
            (
                r#"{"domains": {"Example.org": ["x"], "example.org.": ["y"]}}"#,
                "listed twice",
            ),
            (r#"{"domains": {"example.org": "alice"}}"#, "invalid type"),
            (
                r#"{"domains": {"example.org": ["a"]}, "detail_separators": ""}"#,
                "detail_separators",
            ),
            (r#"{"domain": {}}"#, "unknown field `domain`"),
        ] {
            let err = cfg(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
