//! IP address helpers (pure functions, testable natively): parsing, CIDR networks, prefix
//! keys and DNSBL query names.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Parses an IP address as hosts and clients write it: surrounding whitespace, `[...]`
/// brackets and an `IPv6:` prefix (RFC 5321 address literals) are accepted; an IPv4-mapped
/// IPv6 address (`::ffff:192.0.2.1`) reads as the IPv4 address.
///
/// ```
/// use postrider_plugin::net::parse_ip;
/// assert_eq!(parse_ip("::ffff:192.0.2.1"), "192.0.2.1".parse().ok());
/// assert_eq!(parse_ip("[IPv6:2001:db8::1]"), "2001:db8::1".parse().ok());
/// assert_eq!(parse_ip("nope"), None);
/// ```
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let t = text.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    let t = if t.len() > 5 && t[..5].eq_ignore_ascii_case("ipv6:") {
        &t[5..]
    } else {
        t
    };
    t.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A CIDR network such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a host network
/// (`/32` or `/128`). Host bits are cleared on parse (`10.1.2.3/8` is `10.0.0.0/8`).
///
/// It deserializes from such a string, so config structs can hold `Vec<Cidr>` directly.
///
/// ```
/// use postrider_plugin::net::Cidr;
/// let net: Cidr = "192.0.2.0/24".parse().unwrap();
/// assert!(net.contains("192.0.2.77".parse().unwrap()));
/// assert!(!net.contains("2001:db8::1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix` bits; `None` if the prefix is too long for the
    /// address family (over 32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Cidr> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| Cidr {
            network: mask(addr, prefix),
            prefix,
        })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True if `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network
    }
}

/// True if any network in `nets` contains `ip`.
pub fn any_contains(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => {
                let p = p
                    .parse::<u8>()
                    .map_err(|_| format!("bad prefix length in {s:?}"))?;
                (a, Some(p))
            }
            None => (s.trim(), None),
        };
        let ip = parse_ip(addr).ok_or_else(|| format!("bad IP address in {s:?}"))?;
        let prefix = prefix.unwrap_or(if ip.is_ipv4() { 32 } else { 128 });
        Cidr::new(ip, prefix).ok_or_else(|| format!("prefix length too long in {s:?}"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `ip` with all but the first `prefix` bits cleared (prefixes past the family's length keep
/// the whole address).
pub fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// A key for "the client's network": the address masked to `v4_prefix` (IPv4) or
/// `v6_prefix` (IPv6) bits, written as CIDR — e.g. `192.0.2.0/24` or `2001:db8:1:2::/64`.
/// Useful for kv keys that should treat a small provider pool as one client.
pub fn network_key(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> String {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() {
        v4_prefix.min(32)
    } else {
        v6_prefix.min(128)
    };
    format!("{}/{}", mask(ip, prefix), prefix)
}

/// The DNSBL query name for `ip` in `zone`: IPv4 octets reversed
/// (`192.0.2.1` → `1.2.0.192.zone`), IPv6 as 32 reversed nibbles (RFC 5782). A trailing dot on
/// the zone is dropped.
///
/// ```
/// use postrider_plugin::net::dnsbl_name;
/// assert_eq!(dnsbl_name("192.0.2.1".parse().unwrap(), "zen.example"), "1.2.0.192.zen.example");
/// assert!(dnsbl_name("2001:db8::1".parse().unwrap(), "v6.example")
///     .starts_with("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2."));
/// ```
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim().trim_end_matches('.');
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str(zone);
            name
        }
    }
}

/// True for addresses that are never on the public Internet: loopback, private (RFC 1918,
/// ULA `fc00::/7`), link-local, CGNAT `100.64.0.0/10`, unspecified, documentation ranges.
/// DNS blocklists and reputation checks should skip them.
pub fn is_non_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || (a, b, c) == (192, 0, 2)
                || (a, b, c) == (198, 51, 100)
                || (a, b, c) == (203, 0, 113)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0], s[1]) == (0x2001, 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let n: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(n.contains(ip("10.255.0.1")));
        assert!(n.contains(ip("::ffff:10.0.0.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        let h: Cidr = "192.0.2.1".parse().unwrap();
        assert_eq!(h.prefix(), 32);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert!(!all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0/8".parse::<Cidr>().is_err());
        assert!("::/129".parse::<Cidr>().is_err());
        assert!("10.0.0.0/x".parse::<Cidr>().is_err());
        let list: Vec<Cidr> = serde_json::from_str(r#"["10.0.0.0/8", "::1"]"#).unwrap();
        assert!(any_contains(&list, ip("::1")));
        assert!(serde_json::from_str::<Vec<Cidr>>(r#"["bad"]"#).is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(network_key(ip("192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(
            network_key(ip("2001:db8:1:2:3:4:5:6"), 24, 64),
            "2001:db8:1:2::/64"
        );
        assert_eq!(network_key(ip("::ffff:192.0.2.77"), 24, 64), "192.0.2.0/24");
        assert_eq!(network_key(ip("192.0.2.77"), 40, 64), "192.0.2.77/32");
    }

    #[test]
    fn dnsbl_names() {
        assert_eq!(
            dnsbl_name(ip("127.0.0.2"), "zen.example."),
            "2.0.0.127.zen.example"
        );
        let n = dnsbl_name(ip("2001:db8:1:2:3:4:5:6"), "z");
        assert_eq!(
            n,
            "6.0.0.0.5.0.0.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.z"
        );
    }

    #[test]
    fn non_public() {
        for a in [
            "127.0.0.1",
            "10.1.1.1",
            "192.168.0.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_non_public(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "100.128.0.1", "2a00:1450::1"] {
            assert!(!is_non_public(ip(a)), "{a}");
        }
    }
}
