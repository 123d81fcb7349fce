//! Rate limits with kv counters: messages per client network at `MAIL FROM`, recipients per
//! sender at `RCPT TO`. Over a limit the command gets `450 4.7.1` (the client retries later).
//!
//! Each limit counts in fixed windows of `window_seconds` (kv `incr` on a key that names the
//! window, created with the window as TTL). The sender is the authenticated user when there is
//! one (so a user cannot dodge the limit by changing MAIL FROM), otherwise the MAIL FROM address;
//! the null sender (bounces) is not limited per sender. A kv error is logged and, by default,
//! the command passes (fail open); with `on_kv_error = "tempfail"` it gets `451 4.3.0`, so a
//! limit shared by several relays through Redis holds even while the store is down.
//!
//! Config (at least one of `per_client_ip` and `per_sender`), under the plugin's `[[plugin]]` entry:
//!
//! ```toml
//! [plugin.config]
//! per_client_ip = { limit = 100, window_seconds = 3600 }   # MAIL FROMs per client network
//! per_sender = { limit = 500, window_seconds = 3600 }      # RCPTs per user or sender address
//! ipv4_prefix = 32                 # the client network: the address itself ...
//! ipv6_prefix = 64                 # ... or its /64
//! skip_networks = ["127.0.0.0/8"]
//! skip_authenticated = false
//! message = "Rate limit exceeded, try again later"
//! on_kv_error = "continue"         # or "tempfail": 451 4.3.0 while the kv store is down
//! ```

use postrider_plugin::kv::OnKvError;
use postrider_plugin::net::{self, Cidr};
use postrider_plugin::{
    Config, Connection, Envelope, Plugin, RcptOutcome, Stages, Verdict, addr, clock, kv, log,
};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    per_client_ip: Option<Limit>,
    #[serde(default)]
    per_sender: Option<Limit>,
    #[serde(default = "default_v4_prefix")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6_prefix")]
    ipv6_prefix: u8,
    #[serde(default)]
    skip_networks: Vec<Cidr>,
    #[serde(default)]
    skip_authenticated: bool,
    #[serde(default = "default_message")]
    message: String,
    #[serde(default)]
    on_kv_error: OnKvError,
}

fn default_v4_prefix() -> u8 {
    32
}
fn default_v6_prefix() -> u8 {
    64
}
fn default_message() -> String {
    "Rate limit exceeded, try again later".into()
}

/// At most `limit` events per `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limit {
    limit: u32,
    window_seconds: u32,
}

impl Limit {
    fn validate(&self, key: &str) -> Result<(), String> {
        if self.limit == 0 {
            return Err(format!("rate-limit: {key}.limit must be at least 1"));
        }
        if !(1..=30 * 86_400).contains(&self.window_seconds) {
            return Err(format!(
                "rate-limit: {key}.window_seconds must be 1..=2592000 (30 days)"
            ));
        }
        Ok(())
    }

    /// The key of the window containing `now` (unix seconds) for `subject`.
    fn key(&self, prefix: &str, subject: &str, now: u64) -> String {
        format!(
            "{prefix}:{subject}:{}",
            now / u64::from(self.window_seconds)
        )
    }

    fn over(&self, count: i64) -> bool {
        count > i64::from(self.limit)
    }
}

/// The plugin: validated config.
#[derive(Debug)]
pub struct RateLimit {
    per_client_ip: Option<Limit>,
    per_sender: Option<Limit>,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    skip_networks: Vec<Cidr>,
    skip_authenticated: bool,
    message: String,
    on_kv_error: OnKvError,
}

fn parse_config(config: &Config) -> Result<RateLimit, String> {
    let raw: RawConfig = config.parse()?;
    if raw.per_client_ip.is_none() && raw.per_sender.is_none() {
        return Err("rate-limit: configure `per_client_ip`, `per_sender` or both".into());
    }
    if let Some(l) = &raw.per_client_ip {
        l.validate("per_client_ip")?;
    }
    if let Some(l) = &raw.per_sender {
        l.validate("per_sender")?;
    }
    if raw.ipv4_prefix > 32 || raw.ipv6_prefix > 128 {
        return Err("rate-limit: ipv4_prefix must be <= 32 and ipv6_prefix <= 128".into());
    }
    if raw.message.trim().is_empty() || raw.message.chars().any(char::is_control) {
        return Err("rate-limit: `message` must be one non-empty line of text".into());
    }
    Ok(RateLimit {
        per_client_ip: raw.per_client_ip,
        per_sender: raw.per_sender,
        ipv4_prefix: raw.ipv4_prefix,
        ipv6_prefix: raw.ipv6_prefix,
        skip_networks: raw.skip_networks,
        skip_authenticated: raw.skip_authenticated,
        message: raw.message,
        on_kv_error: raw.on_kv_error,
    })
}

/// Who a recipient is counted against: `auth:USER` or `from:ADDRESS`; `None` for the null
/// sender without AUTH.
fn sender_subject(conn: &Connection, env: &Envelope) -> Option<String> {
    match conn.auth_user.as_deref() {
        Some(user) if !user.is_empty() => Some(format!("auth:{}", user.to_lowercase())),
        _ if env.is_null_sender() => None,
        _ => Some(format!("from:{}", addr::normalize(&env.mail_from))),
    }
}

impl RateLimit {
    fn skipped(&self, conn: &Connection) -> bool {
        (self.skip_authenticated && conn.is_authenticated())
            || conn
                .client_addr()
                .is_some_and(|ip| net::any_contains(&self.skip_networks, ip))
    }

    /// Counts one event against `limit`; the tempfail verdict when over it.
    fn count(&self, limit: &Limit, prefix: &str, subject: &str) -> Verdict {
        let key = limit.key(prefix, subject, clock::now_secs());
        match kv::incr(
            &key,
            1,
            Some(Duration::from_secs(u64::from(limit.window_seconds))),
        ) {
            Ok(n) if limit.over(n) => {
                if n == i64::from(limit.limit) + 1 {
                    log::info(format!(
                        "rate-limit: {prefix} {subject} over {} per {}s",
                        limit.limit, limit.window_seconds
                    ));
                }
                postrider_plugin::tempfail(450, "4.7.1", self.message.clone())
            }
            Ok(_) => Verdict::Continue,
            Err(e) => {
                log::warn(format!(
                    "rate-limit: kv incr failed ({e}); on_kv_error = {:?}",
                    self.on_kv_error
                ));
                self.on_kv_error.verdict()
            }
        }
    }
}

impl Plugin for RateLimit {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        let mut s = Stages::empty();
        if self.per_client_ip.is_some() {
            s |= Stages::MAIL_FROM;
        }
        if self.per_sender.is_some() {
            s |= Stages::RCPT;
        }
        s
    }

    fn on_mail_from(&mut self, conn: &Connection, _env: &Envelope) -> Verdict {
        let Some(limit) = self.per_client_ip else {
            return Verdict::Continue;
        };
        if self.skipped(conn) {
            return Verdict::Continue;
        }
        let Some(ip) = conn.client_addr() else {
            log::warn(format!(
                "rate-limit: unparsable client address {:?}, not limiting",
                conn.client_ip
            ));
            return Verdict::Continue;
        };
        self.count(
            &limit,
            "ip",
            &net::network_key(ip, self.ipv4_prefix, self.ipv6_prefix),
        )
    }

    fn on_rcpt(&mut self, conn: &Connection, env: &Envelope, _rcpt: &str) -> RcptOutcome {
        let Some(limit) = self.per_sender else {
            return RcptOutcome::default();
        };
        if self.skipped(conn) {
            return RcptOutcome::default();
        }
        match sender_subject(conn, env) {
            Some(subject) => self.count(&limit, "sender", &subject).into(),
            None => RcptOutcome::default(),
        }
    }
}

postrider_plugin::export!(RateLimit);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<RateLimit, String> {
        parse_config(&Config::new(json))
    }

    fn conn(ip: &str, user: Option<&str>) -> Connection {
        Connection {
            id: "c1".into(),
            client_ip: ip.into(),
            client_port: 40000,
            client_name: None,
            listener: "mx".into(),
            server_ip: "192.0.2.1".into(),
            server_port: 25,
            helo: None,
            tls: None,
            auth_user: user.map(Into::into),
        }
    }

    fn env(from: &str) -> Envelope {
        Envelope {
            queue_id: None,
            mail_from: from.into(),
            mail_params: vec![],
            recipients: vec![],
            spf: None,
        }
    }

    #[test]
    fn config_and_stages() {
        let r = cfg(r#"{"per_client_ip": {"limit": 10, "window_seconds": 60}}"#).unwrap();
        assert_eq!(r.stages(), Stages::MAIL_FROM);
        let r = cfg(r#"{"per_sender": {"limit": 10, "window_seconds": 60}, "skip_networks": ["10.0.0.0/8"]}"#).unwrap();
        assert_eq!(r.stages(), Stages::RCPT);
        assert!(r.skipped(&conn("10.0.0.1", None)));
        assert!(!r.skipped(&conn("192.0.2.1", Some("alice"))));
        for (json, needle) in [
            ("{}", "per_client_ip`, `per_sender` or both"),
            (
                r#"{"per_sender": {"limit": 0, "window_seconds": 60}}"#,
                "at least 1",
            ),
            (
                r#"{"per_sender": {"limit": 1, "window_seconds": 0}}"#,
                "window_seconds",
            ),
            (
                r#"{"per_sender": {"limit": 1}}"#,
                "missing field `window_seconds`",
            ),
            (
                r#"{"per_sender": {"limit": -1, "window_seconds": 5}}"#,
                "invalid value",
            ),
            (
                r#"{"per_sender": {"limit": 1, "window_seconds": 5}, "ipv6_prefix": 200}"#,
                "ipv6_prefix",
            ),
            (r#"{"per_ip": {}}"#, "unknown field `per_ip`"),
        ] {
            let err = cfg(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn keys_and_limits() {
        let l = Limit {
            limit: 3,
            window_seconds: 60,
        };
        assert_eq!(l.key("ip", "192.0.2.1/32", 119), "ip:192.0.2.1/32:1");
        assert_eq!(l.key("ip", "192.0.2.1/32", 120), "ip:192.0.2.1/32:2");
        assert!(!l.over(3));
        assert!(l.over(4));
        assert_eq!(
            sender_subject(&conn("192.0.2.1", Some("Alice")), &env("x@y")),
            Some("auth:alice".into())
        );
        assert_eq!(
            sender_subject(&conn("192.0.2.1", None), &env("Bob@Example.org")),
            Some("from:bob@example.org".into())
        );
        assert_eq!(sender_subject(&conn("192.0.2.1", None), &env("")), None);
    }

    #[test]
    fn fails_open_without_kv() {
        // Natively the kv wrapper reports `unavailable`: the verdict must be continue.
        let mut r = cfg(r#"{"per_client_ip": {"limit": 1, "window_seconds": 60}, "per_sender": {"limit": 1, "window_seconds": 60}}"#).unwrap();
        assert_eq!(
            r.on_mail_from(&conn("192.0.2.1", None), &env("a@b")),
            Verdict::Continue
        );
        assert_eq!(
            r.on_rcpt(&conn("192.0.2.1", None), &env("a@b"), "c@d"),
            RcptOutcome::default()
        );
    }
}
