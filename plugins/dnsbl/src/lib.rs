//! DNS blocklist check at connect.
//!
//! Looks the client address up in each configured zone (IPv4 as reversed octets, IPv6 as
//! reversed nibbles, RFC 5782) and refuses the session with `554 5.7.1` naming the first zone
//! that lists it. DNS timeouts and failures never refuse mail: they are logged and the next
//! zone is asked (fail open).
//!
//! Config (all keys but `zones` optional), under the plugin's `[[plugin]]` entry:
//!
//! ```toml
//! [plugin.config]
//! zones = [
//!     { zone = "zen.spamhaus.org", answers = ["127.0.0.2", "127.0.0.3", "127.0.0.4/30", "127.0.0.9"] },
//!     { zone = "bl.spamcop.net", ipv6 = false },
//! ]
//! require_loopback_answer = true   # only answers in 127.0.0.0/8 count (per zone too)
//! skip_non_public = true           # never look up loopback, private, link-local, ... clients
//! skip_networks = ["192.0.2.0/24"]
//! message = "Client host [{ip}] blocked using {zone}"   # also per zone; {answer} too
//! ```
//!
//! Per zone: `zone` (required), `ipv4`/`ipv6` (default true), `answers` (addresses or CIDR
//! networks an answer must fall in; default: any, except the lists' error codes
//! 127.255.255.0/24, which are logged), `require_loopback_answer`, `message`.

use postrider_plugin::net::{self, Cidr};
use postrider_plugin::{Config, Connection, Plugin, Stages, Verdict, dns, log};
use serde::Deserialize;
use std::net::IpAddr;

/// Reply text used when neither the zone nor the top level sets `message`.
const DEFAULT_MESSAGE: &str = "Service unavailable; client host [{ip}] blocked using {zone}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    zones: Vec<RawZone>,
    #[serde(default = "yes")]
    require_loopback_answer: bool,
    #[serde(default = "yes")]
    skip_non_public: bool,
    #[serde(default)]
    skip_networks: Vec<Cidr>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawZone {
    zone: String,
    #[serde(default = "yes")]
    ipv4: bool,
    #[serde(default = "yes")]
    ipv6: bool,
    #[serde(default)]
    answers: Vec<Cidr>,
    #[serde(default)]
    require_loopback_answer: Option<bool>,
    #[serde(default)]
    message: Option<String>,
}

fn yes() -> bool {
    true
}

/// One blocklist zone, validated.
#[derive(Debug, Clone, PartialEq)]
struct Zone {
    name: String,
    ipv4: bool,
    ipv6: bool,
    /// When non-empty, only answers inside one of these count as "listed".
    answers: Vec<Cidr>,
    require_loopback_answer: bool,
    message: String,
}

/// The plugin: validated config.
#[derive(Debug)]
pub struct Dnsbl {
    zones: Vec<Zone>,
    skip_non_public: bool,
    skip_networks: Vec<Cidr>,
}

/// Parses and validates the config table.
fn parse_config(config: &Config) -> Result<Dnsbl, String> {
    let raw: RawConfig = config.parse()?;
    if raw.zones.is_empty() {
        return Err("dnsbl: `zones` must list at least one zone".into());
    }
    let mut zones = Vec::with_capacity(raw.zones.len());
    for (i, z) in raw.zones.into_iter().enumerate() {
        let name = z.zone.trim().trim_end_matches('.').to_ascii_lowercase();
        validate_zone_name(&name).map_err(|e| format!("dnsbl: zones[{i}].zone: {e}"))?;
        if !z.ipv4 && !z.ipv6 {
            return Err(format!(
                "dnsbl: zones[{i}] ({name}) has both ipv4 and ipv6 off"
            ));
        }
        let message = z
            .message
            .or_else(|| raw.message.clone())
            .unwrap_or_else(|| DEFAULT_MESSAGE.into());
        validate_message(&message).map_err(|e| format!("dnsbl: zones[{i}].message: {e}"))?;
        zones.push(Zone {
            name,
            ipv4: z.ipv4,
            ipv6: z.ipv6,
            answers: z.answers,
            require_loopback_answer: z
                .require_loopback_answer
                .unwrap_or(raw.require_loopback_answer),
            message,
        });
    }
    Ok(Dnsbl {
        zones,
        skip_non_public: raw.skip_non_public,
        skip_networks: raw.skip_networks,
    })
}

/// A DNS zone name: labels of letters, digits, `-` and `_`, 1–63 bytes each, at most 190
/// bytes in all (a 64-byte IPv6 nibble prefix must still fit in 253).
fn validate_zone_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty zone name".into());
    }
    if name.len() > 190 {
        return Err(format!("zone name {name:?} is too long"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "zone name {name:?} has an empty or over-long label"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "zone name {name:?} has characters outside letters, digits, '-' and '_'"
            ));
        }
    }
    Ok(())
}

fn validate_message(message: &str) -> Result<(), String> {
    if message.trim().is_empty() {
        return Err("empty message".into());
    }
    if message.chars().any(char::is_control) {
        return Err("message must be one line of printable text".into());
    }
    Ok(())
}

/// What a zone's answers mean for one client address.
#[derive(Debug, PartialEq)]
enum Listing {
    /// Listed; the first answer that counted.
    Listed(IpAddr),
    /// Answers came back but none counted (outside 127/8, not in `answers`).
    Ignored,
    /// The list refused the query (127.255.255.0/24: typically a public resolver, or over
    /// the query limit): treated as not listed, and worth a warning.
    QueryRefused(IpAddr),
}

/// Decides whether `answers` (the A records of the query name) mean "listed" for `zone`.
fn classify(zone: &Zone, answers: &[IpAddr]) -> Listing {
    let mut refused_answer = None;
    for &a in answers {
        let v4 = match a.to_canonical() {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        };
        if zone.require_loopback_answer && !matches!(v4, Some([127, ..])) {
            continue;
        }
        if zone.answers.is_empty() {
            // Without an explicit list, 127.255.255.x are the lists' error codes, not listings.
            if matches!(v4, Some([127, 255, 255, _])) {
                refused_answer.get_or_insert(a);
                continue;
            }
            return Listing::Listed(a);
        }
        if net::any_contains(&zone.answers, a) {
            return Listing::Listed(a);
        }
    }
    match refused_answer {
        Some(a) => Listing::QueryRefused(a),
        None => Listing::Ignored,
    }
}

/// Fills `{ip}`, `{zone}` and `{answer}` into a message template.
fn render(template: &str, ip: IpAddr, zone: &str, answer: IpAddr) -> String {
    template
        .replace("{ip}", &ip.to_string())
        .replace("{zone}", zone)
        .replace("{answer}", &answer.to_string())
}

impl Dnsbl {
    /// The zones that apply to this address family.
    fn zones_for(&self, ip: IpAddr) -> impl Iterator<Item = &Zone> {
        self.zones
            .iter()
            .filter(move |z| if ip.is_ipv4() { z.ipv4 } else { z.ipv6 })
    }

    /// True when the client is exempt from lookups.
    fn skipped(&self, ip: IpAddr) -> bool {
        (self.skip_non_public && net::is_non_public(ip))
            || net::any_contains(&self.skip_networks, ip)
    }
}

impl Plugin for Dnsbl {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        Stages::CONNECT
    }

    fn on_connect(&mut self, conn: &Connection) -> Verdict {
        let Some(ip) = conn.client_addr() else {
            log::warn(format!(
                "dnsbl: unparsable client address {:?}, not checked",
                conn.client_ip
            ));
            return Verdict::Continue;
        };
        if self.skipped(ip) {
            return Verdict::Continue;
        }
        for zone in self.zones_for(ip) {
            let query = net::dnsbl_name(ip, &zone.name);
            match dns::lookup_ip(&query) {
                Ok(answers) => match classify(zone, &answers) {
                    Listing::Listed(answer) => {
                        log::info(format!("dnsbl: {ip} listed in {} ({answer})", zone.name));
                        return postrider_plugin::reject(
                            554,
                            "5.7.1",
                            render(&zone.message, ip, &zone.name, answer),
                        );
                    }
                    Listing::QueryRefused(answer) => {
                        log::warn(format!(
                            "dnsbl: {} refused the query for {ip} (answer {answer}); check the resolver or the list's terms",
                            zone.name
                        ));
                    }
                    Listing::Ignored => {}
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => log::warn(format!(
                    "dnsbl: lookup of {query} failed ({e}); not listed (fail open)"
                )),
            }
        }
        Verdict::Continue
    }
}

postrider_plugin::export!(Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg(json: &str) -> Result<Dnsbl, String> {
        parse_config(&Config::new(json))
    }

    #[test]
    fn config_parsing() {
        let d = cfg(r#"{"zones": [{"zone": "Zen.Spamhaus.org."}, {"zone": "bl.example", "ipv6": false,
            "answers": ["127.0.0.2", "127.0.0.4/30"], "require_loopback_answer": false, "message": "no {ip}"}]}"#)
        .unwrap();
        assert_eq!(d.zones[0].name, "zen.spamhaus.org");
        assert!(d.zones[0].require_loopback_answer && d.zones[0].ipv6);
        assert_eq!(d.zones[0].message, DEFAULT_MESSAGE);
        assert_eq!(d.zones[1].answers.len(), 2);
        assert!(!d.zones[1].require_loopback_answer);
        assert_eq!(d.zones_for(ip("2001:db8::1")).count(), 1);
        assert!(d.skipped(ip("10.0.0.1")));
        assert!(!d.skipped(ip("8.8.8.8")));
    }

    #[test]
    fn config_errors() {
        for (json, needle) in [
            ("{}", "missing field `zones`"),
            (r#"{"zones": []}"#, "at least one zone"),
            (r#"{"zones": [{"zone": ""}]}"#, "empty zone name"),
            (
                r#"{"zones": [{"zone": "a..b"}]}"#,
                "empty or over-long label",
            ),
            (r#"{"zones": [{"zone": "a b"}]}"#, "characters outside"),
            (
                r#"{"zones": [{"zone": "x", "ipv4": false, "ipv6": false}]}"#,
                "both ipv4 and ipv6 off",
            ),
            (
                r#"{"zones": [{"zone": "x", "answers": ["127.0.0.300"]}]}"#,
                "bad IP address",
            ),
            (
                r#"{"zones": [{"zone": "x", "answer": []}]}"#,
                "unknown field `answer`",
            ),
            (
                r#"{"zones": [{"zone": "x"}], "message": "a\nb"}"#,
                "one line",
            ),
            (r#"{"zones": ["x"]}"#, "invalid type"),
        ] {
            let err = cfg(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    fn zone(answers: &[&str], loopback: bool) -> Zone {
        Zone {
            name: "z".into(),
            ipv4: true,
            ipv6: true,
            answers: answers.iter().map(|a| a.parse().unwrap()).collect(),
            require_loopback_answer: loopback,
            message: DEFAULT_MESSAGE.into(),
        }
    }

    #[test]
    fn classification() {
        let any = zone(&[], true);
        assert_eq!(
            classify(&any, &[ip("127.0.0.2")]),
            Listing::Listed(ip("127.0.0.2"))
        );
        assert_eq!(classify(&any, &[ip("10.0.0.1")]), Listing::Ignored);
        assert_eq!(classify(&any, &[]), Listing::Ignored);
        assert_eq!(
            classify(&any, &[ip("127.255.255.254")]),
            Listing::QueryRefused(ip("127.255.255.254"))
        );
        assert_eq!(
            classify(&any, &[ip("127.255.255.254"), ip("127.0.0.4")]),
            Listing::Listed(ip("127.0.0.4"))
        );
        let open = zone(&[], false);
        assert_eq!(
            classify(&open, &[ip("10.0.0.1")]),
            Listing::Listed(ip("10.0.0.1"))
        );
        let only = zone(&["127.0.0.2", "127.0.0.4/30"], true);
        assert_eq!(classify(&only, &[ip("127.0.0.10")]), Listing::Ignored);
        assert_eq!(
            classify(&only, &[ip("127.0.0.6")]),
            Listing::Listed(ip("127.0.0.6"))
        );
        assert_eq!(
            classify(&only, &[ip("127.0.0.2")]),
            Listing::Listed(ip("127.0.0.2"))
        );
    }

    #[test]
    fn query_names_and_messages() {
        assert_eq!(
            net::dnsbl_name(ip("192.0.2.99"), "zen.example"),
            "99.2.0.192.zen.example"
        );
        assert_eq!(
            render(
                DEFAULT_MESSAGE,
                ip("192.0.2.99"),
                "zen.example",
                ip("127.0.0.2")
            ),
            "Service unavailable; client host [192.0.2.99] blocked using zen.example"
        );
    }
}
