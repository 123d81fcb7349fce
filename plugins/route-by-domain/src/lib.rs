//! Routes recipients by domain, at the route stage (called by the queue manager for each
//! recipient of a spooled message).
//!
//! A recipient domain is looked up exactly first, then against `*.suffix` patterns (longest
//! suffix wins; `*.example.org` matches `a.example.org` and `a.b.example.org`, not
//! `example.org` itself), then `default` applies (the domain's MX unless configured).
//!
//! Config (`routes` required; every route is a table with a `type`):
//!
//! ```toml
//! [plugin.config.routes]
//! "example.org"   = { type = "lmtp", target = "unix:/run/dovecot/lmtp" }
//! "*.example.org" = { type = "relay", host = "mail.example.org", port = 25, tls = "require" }
//! "partner.example" = { type = "relay", host = "10.0.0.5" }   # port 25, tls opportunistic
//! "old.example"   = { type = "bounce", code = 550, enhanced = "5.1.6", text = "Domain moved" }
//! "review.example" = { type = "hold", reason = "manual review" }
//! "sink.example"  = { type = "discard" }
//! # and optionally: default = { type = "relay", host = "smarthost.example", port = 587, tls = "require" }
//! ```

use postrider_plugin::{
    Config, Connection, Envelope, NextHop, Plugin, Reply, Route, Stages, TlsPolicy, addr,
};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    routes: BTreeMap<String, Spec>,
    #[serde(default)]
    default: Option<Spec>,
}

/// One route as written in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Spec {
    /// The domain's MX hosts.
    Mx,
    /// A fixed next hop.
    Relay {
        host: String,
        #[serde(default = "default_port")]
        port: u16,
        #[serde(default)]
        tls: Tls,
    },
    /// LMTP to `host:port` or `unix:/path`.
    Lmtp { target: String },
    /// Keep in the queue until an operator releases it (it then takes the default route).
    Hold { reason: String },
    /// Drop without delivery.
    Discard,
    /// Return to the sender as a DSN.
    Bounce {
        #[serde(default = "default_bounce_code")]
        code: u16,
        #[serde(default)]
        enhanced: Option<String>,
        text: String,
    },
}

fn default_port() -> u16 {
    25
}
fn default_bounce_code() -> u16 {
    550
}

/// TLS policy toward a relay host.
#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Tls {
    None,
    #[default]
    Opportunistic,
    Require,
}

impl Spec {
    fn validate(&self) -> Result<(), String> {
        let one_line = |what: &str, s: &str| {
            if s.trim().is_empty() || s.chars().any(char::is_control) {
                Err(format!("{what} must be one non-empty line"))
            } else {
                Ok(())
            }
        };
        match self {
            Spec::Mx | Spec::Discard => Ok(()),
            Spec::Relay { host, port, .. } => {
                if host.trim().is_empty()
                    || host.contains(|c: char| c.is_whitespace() || c.is_control() || c == '/')
                {
                    return Err(format!("relay host {host:?} is not a host name or address"));
                }
                if *port == 0 {
                    return Err("relay port must be 1..=65535".into());
                }
                Ok(())
            }
            Spec::Lmtp { target } => validate_lmtp_target(target),
            Spec::Hold { reason } => one_line("hold reason", reason),
            Spec::Bounce {
                code,
                enhanced,
                text,
            } => {
                if !(500..=599).contains(code) {
                    return Err(format!("bounce code {code} must be 5xx"));
                }
                if let Some(e) = enhanced {
                    let parts: Vec<&str> = e.split('.').collect();
                    if parts.len() != 3
                        || parts[0] != "5"
                        || !parts
                            .iter()
                            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    {
                        return Err(format!(
                            "bounce enhanced code {e:?} must look like \"5.1.1\""
                        ));
                    }
                }
                one_line("bounce text", text)
            }
        }
    }

    fn to_route(&self) -> Route {
        match self {
            Spec::Mx => Route::Mx,
            Spec::Relay { host, port, tls } => Route::Relay(NextHop {
                host: host.clone(),
                port: *port,
                tls: match tls {
                    Tls::None => TlsPolicy::None,
                    Tls::Opportunistic => TlsPolicy::Opportunistic,
                    Tls::Require => TlsPolicy::Require,
                },
            }),
            Spec::Lmtp { target } => Route::Lmtp(target.clone()),
            Spec::Hold { reason } => Route::Hold(reason.clone()),
            Spec::Discard => Route::Discard,
            Spec::Bounce {
                code,
                enhanced,
                text,
            } => Route::Bounce(Reply::new(
                *code,
                enhanced.as_deref().unwrap_or(""),
                text.clone(),
            )),
        }
    }
}

/// `unix:/absolute/path` or `host:port` (`[v6]:port` for an IPv6 literal).
fn validate_lmtp_target(target: &str) -> Result<(), String> {
    if let Some(path) = target.strip_prefix("unix:") {
        return if path.starts_with('/') && !path.contains(|c: char| c.is_control()) {
            Ok(())
        } else {
            Err(format!(
                "lmtp target {target:?}: a unix socket needs an absolute path"
            ))
        };
    }
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("lmtp target {target:?} must be \"host:port\" or \"unix:/path\""))?;
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(format!(
            "lmtp target {target:?} must be \"host:port\" or \"unix:/path\""
        ));
    }
    Ok(())
}

/// The plugin: the routing table.
#[derive(Debug)]
pub struct RouteByDomain {
    exact: BTreeMap<String, Route>,
    /// `(suffix with leading dot, route)`, longest suffix first.
    wildcard: Vec<(String, Route)>,
    default: Route,
}

fn parse_config(config: &Config) -> Result<RouteByDomain, String> {
    let raw: RawConfig = config.parse()?;
    if raw.routes.is_empty() {
        return Err("route-by-domain: `routes` must list at least one domain".into());
    }
    let mut exact = BTreeMap::new();
    let mut wildcard: Vec<(String, Route)> = Vec::new();
    for (pattern, spec) in &raw.routes {
        spec.validate()
            .map_err(|e| format!("route-by-domain: routes.{pattern:?}: {e}"))?;
        let (is_wild, domain) = match pattern.trim().strip_prefix("*.") {
            Some(rest) => (true, addr::normalize_domain(rest)),
            None => (false, addr::normalize_domain(pattern)),
        };
        if domain.is_empty()
            || domain.starts_with('.')
            || domain.contains("..")
            || domain
                .contains(|c: char| c == '*' || c == '@' || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "route-by-domain: {pattern:?} is not a domain or \"*.domain\" pattern"
            ));
        }
        let duplicate = if is_wild {
            let suffix = format!(".{domain}");
            let dup = wildcard.iter().any(|(s, _)| *s == suffix);
            wildcard.push((suffix, spec.to_route()));
            dup
        } else {
            exact.insert(domain, spec.to_route()).is_some()
        };
        if duplicate {
            return Err(format!(
                "route-by-domain: {pattern:?} is listed twice (domains are case-insensitive)"
            ));
        }
    }
    wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    let default = match raw.default {
        Some(spec) => {
            spec.validate()
                .map_err(|e| format!("route-by-domain: default: {e}"))?;
            spec.to_route()
        }
        None => Route::Mx,
    };
    Ok(RouteByDomain {
        exact,
        wildcard,
        default,
    })
}

impl RouteByDomain {
    /// The route for a recipient address.
    fn route_for(&self, rcpt: &str) -> &Route {
        let Some(domain) = addr::domain(rcpt) else {
            return &self.default;
        };
        if let Some(route) = self.exact.get(&domain) {
            return route;
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| domain.len() > suffix.len() && domain.ends_with(suffix.as_str()))
            .map_or(&self.default, |(_, route)| route)
    }
}

impl Plugin for RouteByDomain {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        Stages::ROUTE
    }

    fn on_route(&mut self, _conn: &Connection, _env: &Envelope, rcpt: &str) -> Route {
        self.route_for(rcpt).clone()
    }
}

postrider_plugin::export!(RouteByDomain);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<RouteByDomain, String> {
        parse_config(&Config::new(json))
    }

    #[test]
    fn matching() {
        let r = cfg(r#"{"routes": {
            "Example.org": {"type": "lmtp", "target": "unix:/run/dovecot/lmtp"},
            "*.example.org": {"type": "relay", "host": "mail.example.org", "tls": "require"},
            "*.deep.example.org": {"type": "hold", "reason": "review"},
            "sink.example": {"type": "discard"},
            "old.example": {"type": "bounce", "enhanced": "5.1.6", "text": "Domain moved"}
        }, "default": {"type": "relay", "host": "smarthost.example", "port": 587}}"#)
        .unwrap();
        assert_eq!(
            r.route_for("a@EXAMPLE.org"),
            &Route::Lmtp("unix:/run/dovecot/lmtp".into())
        );
        assert_eq!(
            r.route_for("a@x.example.org"),
            &Route::relay("mail.example.org", 25, TlsPolicy::Require)
        );
        assert_eq!(
            r.route_for("a@x.deep.example.org"),
            &Route::Hold("review".into())
        );
        assert_eq!(
            r.route_for("a@deep.example.org"),
            &Route::relay("mail.example.org", 25, TlsPolicy::Require)
        );
        assert_eq!(r.route_for("a@sink.example"), &Route::Discard);
        assert_eq!(
            r.route_for("a@old.example"),
            &Route::Bounce(Reply::new(550, "5.1.6", "Domain moved"))
        );
        assert_eq!(
            r.route_for("a@notexample.org"),
            &Route::relay("smarthost.example", 587, TlsPolicy::Opportunistic)
        );
        assert_eq!(
            r.route_for("postmaster"),
            &Route::relay("smarthost.example", 587, TlsPolicy::Opportunistic)
        );
        let m = cfg(r#"{"routes": {"*.example.org": {"type": "mx"}}}"#).unwrap();
        assert_eq!(m.route_for("a@example.org"), &Route::Mx);
    }

    #[test]
    fn errors() {
        for (json, needle) in [
            ("{}", "missing field `routes`"),
            (r#"{"routes": {}}"#, "at least one domain"),
            (
                r#"{"routes": {"a.example": {"type": "smtp"}}}"#,
                "unknown variant `smtp`",
            ),
            (
                r#"{"routes": {"a.example": {"type": "relay"}}}"#,
                "missing field `host`",
            ),
            (
                r#"{"routes": {"a.example": {"type": "relay", "host": "h", "port": 0}}}"#,
                "port",
            ),
            (
                r#"{"routes": {"a.example": {"type": "relay", "host": "h", "tls": "maybe"}}}"#,
                "unknown variant `maybe`",
            ),
            (
                r#"{"routes": {"a.example": {"type": "relay", "host": "h", "prot": 1}}}"#,
                "unknown field `prot`",
            ),
            (
                r#"{"routes": {"a.example": {"type": "lmtp", "target": "nohost"}}}"#,
                "host:port",
            ),
            (
                r#"{"routes": {"a.example": {"type": "lmtp", "target": "unix:rel"}}}"#,
                "absolute path",
            ),
            (
                r#"{"routes": {"a.example": {"type": "bounce", "code": 450, "text": "x"}}}"#,
                "5xx",
            ),
            (
                r#"{"routes": {"a.example": {"type": "bounce", "enhanced": "4.1.1", "text": "x"}}}"#,
                "5.1.1",
            ),
            (r#"{"routes": {"*": {"type": "mx"}}}"#, "not a domain"),
            (r#"{"routes": {"*.": {"type": "mx"}}}"#, "not a domain"),
            (
                r#"{"routes": {"A.example": {"type": "mx"}, "a.example": {"type": "mx"}}}"#,
                "twice",
            ),
            (
                r#"{"routes": {"a.example": {"type": "mx"}}, "default": {"type": "lmtp", "target": ""}}"#,
                "default",
            ),
        ] {
            let err = cfg(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
        assert!(validate_lmtp_target("[::1]:24").is_ok());
        assert!(validate_lmtp_target("127.0.0.1:24").is_ok());
        assert!(validate_lmtp_target("127.0.0.1:0").is_err());
    }
}
