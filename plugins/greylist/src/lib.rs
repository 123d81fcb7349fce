//! Greylisting at `RCPT TO`.
//!
//! The first delivery attempt of a (client network, sender, recipient) triplet is refused with
//! `451 4.7.1`; a retry after `delay_seconds` passes, and the triplet is then remembered for
//! `pass_ttl_days` (refreshed while it keeps being used), so regular correspondents are
//! delayed once. Real MTAs retry; most spamware does not.
//!
//! The client is taken as its /24 (IPv4) or /64 (IPv6) network, so a provider's pool of
//! outbound servers retrying from a neighbour address still matches. Sender addresses are
//! lower-cased and BATV tags (`prvs=TAG=user@...`) stripped, since they change per message.
//!
//! A kv error is logged and, by default, the recipient passes (fail open); with
//! `on_kv_error = "tempfail"` it gets `451 4.3.0` instead.
//!
//! Config (every key optional), under the plugin's `[[plugin]]` entry:
//!
//! ```toml
//! [plugin.config]
//! delay_seconds = 300         # a retry passes after this long
//! pass_ttl_days = 36          # a passed triplet is remembered this long (refreshed daily on use)
//! retry_window_hours = 24     # a first attempt is remembered this long, waiting for its retry
//! ipv4_prefix = 24            # the client is its /24 ...
//! ipv6_prefix = 64            # ... or its /64
//! skip_authenticated = true   # never greylist after AUTH
//! skip_networks = ["10.0.0.0/8", "2001:db8::/32"]
//! skip_senders = ["@partner.example", "alerts@vendor.example"]   # address, @domain or domain
//! skip_recipients = ["postmaster@", "abuse@example.org"]        # ... or local@ (any domain)
//! message = "Greylisted, please try again later"
//! on_kv_error = "continue"    # or "tempfail": 451 4.3.0 while the kv store is down
//! ```

use postrider_plugin::kv::OnKvError;
use postrider_plugin::net::{self, Cidr};
use postrider_plugin::{
    Config, Connection, Envelope, Plugin, RcptOutcome, Stages, addr, clock, kv, log,
};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_delay")]
    delay_seconds: u64,
    #[serde(default = "default_pass_ttl_days")]
    pass_ttl_days: u64,
    #[serde(default = "default_retry_window_hours")]
    retry_window_hours: u64,
    #[serde(default = "default_v4_prefix")]
    ipv4_prefix: u8,
    #[serde(default = "default_v6_prefix")]
    ipv6_prefix: u8,
    #[serde(default = "yes")]
    skip_authenticated: bool,
    #[serde(default)]
    skip_networks: Vec<Cidr>,
    #[serde(default)]
    skip_senders: Vec<String>,
    #[serde(default)]
    skip_recipients: Vec<String>,
    #[serde(default = "default_message")]
    message: String,
    #[serde(default)]
    on_kv_error: OnKvError,
}

fn default_delay() -> u64 {
    300
}
fn default_pass_ttl_days() -> u64 {
    36
}
fn default_retry_window_hours() -> u64 {
    24
}
fn default_v4_prefix() -> u8 {
    24
}
fn default_v6_prefix() -> u8 {
    64
}
fn yes() -> bool {
    true
}
fn default_message() -> String {
    "Greylisted, please try again later".into()
}

/// An address pattern from `skip_senders` / `skip_recipients`.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// `user@domain`: that address.
    Address(String),
    /// `@domain` or `domain`: any address at that domain.
    Domain(String),
    /// `user@`: that local part at any domain.
    Local(String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        let t = text.trim().to_lowercase();
        if t.is_empty() || t == "@" {
            return Err(format!("empty address pattern {text:?}"));
        }
        if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("address pattern {text:?} contains whitespace"));
        }
        Ok(match t.rsplit_once('@') {
            None => Pattern::Domain(addr::normalize_domain(&t)),
            Some(("", d)) => Pattern::Domain(addr::normalize_domain(d)),
            Some((l, "")) => Pattern::Local(l.to_owned()),
            Some(_) => Pattern::Address(addr::normalize(&t)),
        })
    }

    /// `address` must be normalised ([`addr::normalize`]).
    fn matches(&self, address: &str) -> bool {
        match self {
            Pattern::Address(a) => a == address,
            Pattern::Domain(d) => addr::split(address).is_some_and(|(_, ad)| ad == d),
            Pattern::Local(l) => addr::split(address).is_some_and(|(al, _)| al == l),
        }
    }
}

/// The plugin: validated config.
#[derive(Debug)]
pub struct Greylist {
    delay_secs: u64,
    pass_ttl: Duration,
    retry_window: Duration,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    skip_authenticated: bool,
    skip_networks: Vec<Cidr>,
    skip_senders: Vec<Pattern>,
    skip_recipients: Vec<Pattern>,
    message: String,
    on_kv_error: OnKvError,
}

fn parse_config(config: &Config) -> Result<Greylist, String> {
    let raw: RawConfig = config.parse()?;
    if raw.delay_seconds > 86_400 {
        return Err(format!(
            "greylist: delay_seconds = {} is over a day",
            raw.delay_seconds
        ));
    }
    if !(1..=3650).contains(&raw.pass_ttl_days) {
        return Err(format!(
            "greylist: pass_ttl_days must be 1..=3650, not {}",
            raw.pass_ttl_days
        ));
    }
    if !(1..=720).contains(&raw.retry_window_hours) {
        return Err(format!(
            "greylist: retry_window_hours must be 1..=720, not {}",
            raw.retry_window_hours
        ));
    }
    if raw.retry_window_hours * 3600 <= raw.delay_seconds {
        return Err("greylist: retry_window_hours must be longer than delay_seconds".into());
    }
    if raw.ipv4_prefix > 32 || raw.ipv6_prefix > 128 {
        return Err("greylist: ipv4_prefix must be <= 32 and ipv6_prefix <= 128".into());
    }
    if raw.message.trim().is_empty() || raw.message.chars().any(char::is_control) {
        return Err("greylist: message must be one non-empty line of text".into());
    }
    let patterns = |list: &[String], key: &str| -> Result<Vec<Pattern>, String> {
        list.iter()
            .map(|p| Pattern::parse(p).map_err(|e| format!("greylist: {key}: {e}")))
            .collect()
    };
    Ok(Greylist {
        delay_secs: raw.delay_seconds,
        pass_ttl: Duration::from_secs(raw.pass_ttl_days * 86_400),
        retry_window: Duration::from_secs(raw.retry_window_hours * 3600),
        ipv4_prefix: raw.ipv4_prefix,
        ipv6_prefix: raw.ipv6_prefix,
        skip_authenticated: raw.skip_authenticated,
        skip_networks: raw.skip_networks,
        skip_senders: patterns(&raw.skip_senders, "skip_senders")?,
        skip_recipients: patterns(&raw.skip_recipients, "skip_recipients")?,
        message: raw.message,
        on_kv_error: raw.on_kv_error,
    })
}

/// The sender as greylisting should see it: normalised, with a BATV tag
/// (`prvs=TAG=user@domain`, `btv1==TAG==user@domain`) removed.
fn normalize_sender(mail_from: &str) -> String {
    let a = addr::normalize(mail_from);
    let Some((local, domain)) = addr::split(&a) else {
        return a;
    };
    let local = if let Some(rest) = local.strip_prefix("prvs=") {
        rest.split_once('=').map_or(local, |(_, user)| user)
    } else if let Some(rest) = local.strip_prefix("btv1==") {
        rest.split_once("==").map_or(local, |(_, user)| user)
    } else {
        local
    };
    format!("{local}@{domain}")
}

/// The kv key of a triplet.
fn triplet_key(network: &str, sender: &str, recipient: &str) -> String {
    format!("t:{network}|{sender}|{recipient}")
}

/// What to do with a triplet, given its stored state.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Never seen (or unreadable state): record `w:<now>`, tempfail.
    New,
    /// Seen, delay not over: tempfail, keep the original first-seen time.
    Wait { remaining_secs: u64 },
    /// Delay over, first pass: record `p:<now>` with the pass TTL.
    FirstPass,
    /// Already passed; `refresh` when the stored time is over a day old (extend its TTL).
    Passed { refresh: bool },
}

/// The state machine, on the stored value (`w:<unix secs>` waiting, `p:<unix secs>` passed).
fn decide(stored: Option<&str>, now: u64, delay: u64) -> Decision {
    let Some(stored) = stored else {
        return Decision::New;
    };
    let parse = |t: &str| t.parse::<u64>().ok();
    if let Some(first) = stored.strip_prefix("w:").and_then(parse) {
        let elapsed = now.saturating_sub(first);
        return if first <= now && elapsed >= delay {
            Decision::FirstPass
        } else {
            Decision::Wait {
                remaining_secs: delay.saturating_sub(elapsed).max(1),
            }
        };
    }
    if let Some(last) = stored.strip_prefix("p:").and_then(parse) {
        return Decision::Passed {
            refresh: now.saturating_sub(last) >= 86_400,
        };
    }
    Decision::New
}

impl Greylist {
    /// True when this transaction or recipient is exempt.
    fn skipped(&self, conn: &Connection, sender: &str, rcpt: &str) -> bool {
        (self.skip_authenticated && conn.is_authenticated())
            || conn
                .client_addr()
                .is_some_and(|ip| net::any_contains(&self.skip_networks, ip))
            || self.skip_senders.iter().any(|p| p.matches(sender))
            || self.skip_recipients.iter().any(|p| p.matches(rcpt))
    }

    fn greylisted(&self) -> RcptOutcome {
        postrider_plugin::tempfail(451, "4.7.1", self.message.clone()).into()
    }
}

impl Plugin for Greylist {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        Stages::RCPT
    }

    fn on_rcpt(&mut self, conn: &Connection, env: &Envelope, rcpt: &str) -> RcptOutcome {
        let sender = normalize_sender(&env.mail_from);
        let rcpt = addr::normalize(rcpt);
        if self.skipped(conn, &sender, &rcpt) {
            return RcptOutcome::default();
        }
        let Some(ip) = conn.client_addr() else {
            log::warn(format!(
                "greylist: unparsable client address {:?}, not greylisting",
                conn.client_ip
            ));
            return RcptOutcome::default();
        };
        let key = triplet_key(
            &net::network_key(ip, self.ipv4_prefix, self.ipv6_prefix),
            &sender,
            &rcpt,
        );
        let stored = match kv::get_string(&key) {
            Ok(v) => v,
            Err(e) => {
                log::warn(format!(
                    "greylist: kv get failed ({e}); on_kv_error = {:?}",
                    self.on_kv_error
                ));
                return self.on_kv_error.verdict().into();
            }
        };
        let now = clock::now_secs();
        let write = |value: String, ttl: Duration| {
            if let Err(e) = kv::set(&key, value, Some(ttl)) {
                log::warn(format!("greylist: kv set failed ({e})"));
            }
        };
        match decide(stored.as_deref(), now, self.delay_secs) {
            Decision::New => {
                write(format!("w:{now}"), self.retry_window);
                log::info(format!("greylist: new triplet {key}"));
                self.greylisted()
            }
            Decision::Wait { remaining_secs } => {
                log::debug(format!(
                    "greylist: early retry of {key}, {remaining_secs}s to go"
                ));
                self.greylisted()
            }
            Decision::FirstPass => {
                write(format!("p:{now}"), self.pass_ttl);
                log::info(format!("greylist: triplet {key} passed"));
                RcptOutcome::default()
            }
            Decision::Passed { refresh } => {
                if refresh {
                    write(format!("p:{now}"), self.pass_ttl);
                }
                RcptOutcome::default()
            }
        }
    }
}

postrider_plugin::export!(Greylist);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<Greylist, String> {
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

    #[test]
    fn defaults_and_errors() {
        let g = cfg("{}").unwrap();
        assert_eq!(g.delay_secs, 300);
        assert_eq!(g.pass_ttl, Duration::from_secs(36 * 86_400));
        assert!(g.skip_authenticated);
        for (json, needle) in [
            (r#"{"delay_seconds": -1}"#, "invalid value"),
            (r#"{"delay_seconds": 90000}"#, "over a day"),
            (r#"{"pass_ttl_days": 0}"#, "pass_ttl_days"),
            (
                r#"{"retry_window_hours": 1, "delay_seconds": 3600}"#,
                "longer than",
            ),
            (r#"{"ipv4_prefix": 33}"#, "ipv4_prefix"),
            (r#"{"skip_networks": ["10/8"]}"#, "bad IP address"),
            (r#"{"skip_senders": [" "]}"#, "empty address pattern"),
            (r#"{"delay": 5}"#, "unknown field `delay`"),
        ] {
            let err = cfg(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn patterns() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert_eq!(p("@Example.ORG"), Pattern::Domain("example.org".into()));
        assert_eq!(p("example.org"), Pattern::Domain("example.org".into()));
        assert_eq!(p("Postmaster@"), Pattern::Local("postmaster".into()));
        assert!(p("a@example.org").matches("a@example.org"));
        assert!(!p("a@example.org").matches("b@example.org"));
        assert!(p("@example.org").matches("x@example.org"));
        assert!(!p("@example.org").matches("x@sub.example.org"));
        assert!(p("postmaster@").matches("postmaster@any.example"));
    }

    #[test]
    fn skipping() {
        let g = cfg(
            r#"{"skip_networks": ["10.0.0.0/8"], "skip_senders": ["@partner.example"],
                       "skip_recipients": ["postmaster@"]}"#,
        )
        .unwrap();
        let outside = conn("198.51.100.7", None);
        assert!(g.skipped(&conn("10.1.2.3", None), "a@b.example", "c@d.example"));
        assert!(g.skipped(
            &conn("198.51.100.7", Some("alice")),
            "a@b.example",
            "c@d.example"
        ));
        assert!(g.skipped(&outside, "x@partner.example", "c@d.example"));
        assert!(g.skipped(&outside, "a@b.example", "postmaster@d.example"));
        assert!(!g.skipped(&outside, "a@b.example", "c@d.example"));
    }

    #[test]
    fn senders_and_keys() {
        assert_eq!(
            normalize_sender("prvs=1234abcd=Bob@Example.org"),
            "bob@example.org"
        );
        assert_eq!(
            normalize_sender("btv1==0a1b2c3d==bob@example.org"),
            "bob@example.org"
        );
        assert_eq!(normalize_sender("Alice@Example.org"), "alice@example.org");
        assert_eq!(normalize_sender(""), "");
        let ip = "192.0.2.77".parse().unwrap();
        let k = triplet_key(&net::network_key(ip, 24, 64), "a@b", "c@d");
        assert_eq!(k, "t:192.0.2.0/24|a@b|c@d");
        let ip6 = "2001:db8:1:2::99".parse().unwrap();
        assert_eq!(net::network_key(ip6, 24, 64), "2001:db8:1:2::/64");
    }

    #[test]
    fn state_machine() {
        assert_eq!(decide(None, 1000, 300), Decision::New);
        assert_eq!(decide(Some("garbage"), 1000, 300), Decision::New);
        assert_eq!(decide(Some("w:x"), 1000, 300), Decision::New);
        assert_eq!(
            decide(Some("w:1000"), 1100, 300),
            Decision::Wait {
                remaining_secs: 200
            }
        );
        assert_eq!(decide(Some("w:1000"), 1300, 300), Decision::FirstPass);
        assert_eq!(
            decide(Some("w:2000"), 1000, 300),
            Decision::Wait {
                remaining_secs: 300
            }
        );
        assert_eq!(decide(Some("w:1000"), 1000, 0), Decision::FirstPass);
        assert_eq!(
            decide(Some("p:1000"), 2000, 300),
            Decision::Passed { refresh: false }
        );
        assert_eq!(
            decide(Some("p:1000"), 1000 + 86_400, 300),
            Decision::Passed { refresh: true }
        );
    }
}
