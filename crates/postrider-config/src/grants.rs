//! Network grants of a plugin: the HTTP origins and socket addresses it may reach.
//!
//! A plugin reaches nothing by default; each `[[plugin]]` lists what it may reach:
//! `allow_http = ["http://127.0.0.1:11333", "https://*.rep.example"]` (scheme, host or
//! `*.domain` for the names under it, port), `allow_connect = ["127.0.0.1:10023",
//! "10.0.0.0/8:389", "[::1]:3310"]` (TCP) and `allow_udp` (datagrams), each an address or a
//! network and one port. Sans-IO: parsing and matching only.

use ipnet::{IpNet, Ipv4Net};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

/// A grant that does not parse, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GrantError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, GrantError> {
    Err(GrantError(why.into()))
}

/// Everything one plugin may reach on the network; the default reaches nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGrants {
    /// HTTP origins for `wasi:http/outgoing-handler`.
    pub http: Vec<HttpGrant>,
    /// Addresses for TCP connections (`wasi:sockets`).
    pub connect: Vec<SocketGrant>,
    /// Addresses for UDP datagrams (`wasi:sockets`).
    pub udp: Vec<SocketGrant>,
    /// Roots for HTTPS instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// Largest HTTP response body handed to the plugin, in bytes.
    pub max_http_response_bytes: usize,
}

/// Default of `max_http_response_kb`.
pub const DEFAULT_MAX_HTTP_RESPONSE_KB: u32 = 1024;

impl Default for NetworkGrants {
    fn default() -> Self {
        NetworkGrants {
            http: Vec::new(),
            connect: Vec::new(),
            udp: Vec::new(),
            ca_file: None,
            max_http_response_bytes: DEFAULT_MAX_HTTP_RESPONSE_KB as usize * 1024,
        }
    }
}

impl NetworkGrants {
    /// True when the plugin may reach nothing.
    pub fn is_empty(&self) -> bool {
        self.http.is_empty() && self.connect.is_empty() && self.udp.is_empty()
    }

    /// The first HTTP grant that allows this origin.
    pub fn http_grant(&self, scheme: Scheme, host: &str, port: u16) -> Option<&HttpGrant> {
        self.http.iter().find(|g| g.allows(scheme, host, port))
    }

    /// The first TCP grant that allows a connection to `addr`.
    pub fn connect_grant(&self, addr: SocketAddr) -> Option<&SocketGrant> {
        self.connect.iter().find(|g| g.allows(addr))
    }

    /// The first UDP grant that allows datagrams to `addr`.
    pub fn udp_grant(&self, addr: SocketAddr) -> Option<&SocketGrant> {
        self.udp.iter().find(|g| g.allows(addr))
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over verified TLS.
    Https,
}

impl Scheme {
    /// The port of a URL that names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// The host part of an HTTP grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This address only.
    Ip(IpAddr),
    /// This name only (lower case, no trailing dot).
    Name(String),
    /// Any name under this domain (`*.example.com`: `a.example.com`, `a.b.example.com`,
    /// not `example.com` itself).
    Under(String),
}

/// One `allow_http` entry: scheme, host pattern and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGrant {
    /// The scheme it allows.
    pub scheme: Scheme,
    /// The hosts it allows.
    pub host: HostPattern,
    /// The port it allows (the scheme's default when the grant names none).
    pub port: u16,
}

/// A host name as grants and requests compare it: lower case, without a trailing dot.
fn normal_name(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 bytes (253 in all), the
/// last one not all digits (that would be an address, RFC 3696 section 2).
fn valid_name(name: &str) -> bool {
    name.len() <= 253
        && !name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The address of a URL host: `1.2.3.4` or `[::1]` (as URLs write IPv6 addresses).
fn url_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

impl HttpGrant {
    /// True when a request to `scheme://host:port` is allowed (`host` as in the URL:
    /// a name, an IPv4 address or a bracketed IPv6 address).
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        match &self.host {
            HostPattern::Ip(ip) => url_ip(host).map(|a| a.to_canonical()) == Some(*ip),
            HostPattern::Name(name) => url_ip(host).is_none() && normal_name(host) == *name,
            HostPattern::Under(domain) => {
                let host = normal_name(host);
                url_ip(&host).is_none()
                    && host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
            }
        }
    }
}

impl FromStr for HttpGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, GrantError> {
        let (scheme, rest) = match s.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            _ => return bad("must start with http:// or https://"),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return bad("only scheme, host and port: no path, query or user");
        }
        // The port follows the last colon outside the brackets of an IPv6 address.
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = match authority[i + 1..].parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => return bad("the port must be a number from 1 to 65535"),
                };
                (&authority[..i], port)
            }
            _ => (authority, scheme.default_port()),
        };
        // "127.0.0.1." is the address, as URLs read it.
        let host = if let Some(ip) = url_ip(host).or_else(|| url_ip(host.strip_suffix('.')?)) {
            // [::ffff:0.0.0.0] is 0.0.0.0: canonical first, then checked.
            let ip = ip.to_canonical();
            if ip.is_unspecified() {
                return bad("the unspecified address names no server");
            }
            HostPattern::Ip(ip)
        } else if let Some(domain) = host.strip_prefix("*.") {
            let domain = normal_name(domain);
            if !valid_name(&domain) || !domain.contains('.') {
                return bad("after *. comes a domain of at least two labels (*.example.com)");
            }
            HostPattern::Under(domain)
        } else {
            let name = normal_name(host);
            if !valid_name(&name) {
                return bad("the host must be a name, *.domain, an IPv4 address or [IPv6]");
            }
            HostPattern::Name(name)
        };
        Ok(HttpGrant { scheme, host, port })
    }
}

impl fmt::Display for HttpGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        match &self.host {
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            HostPattern::Ip(ip) => write!(f, "{ip}")?,
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Under(d) => write!(f, "*.{d}")?,
        }
        write!(f, ":{}", self.port)
    }
}

/// One `allow_connect` or `allow_udp` entry: an address or network, and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketGrant {
    /// The network (one address: a /32 or /128), IPv4-mapped IPv6 written as IPv4.
    pub net: IpNet,
    /// The port it allows.
    pub port: u16,
}

impl SocketGrant {
    /// True when `addr` (IPv4-mapped IPv6 taken as IPv4) is in the network, on the port.
    pub fn allows(&self, addr: SocketAddr) -> bool {
        addr.port() == self.port && self.net.contains(&addr.ip().to_canonical())
    }
}

/// The network with an IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as IPv4.
fn canonical(net: IpNet) -> Result<IpNet, GrantError> {
    match net {
        IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
            Some(v4) if v6.prefix_len() >= 96 => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .or_else(|e| bad(e.to_string())),
            _ => Ok(net),
        },
        v4 => Ok(v4),
    }
}

impl FromStr for SocketGrant {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<Self, GrantError> {
        let Some((addr, port)) = s.rsplit_once(':') else {
            return bad("must be ADDRESS:PORT, NETWORK/PREFIX:PORT or [IPv6]:PORT");
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad("the port must be a number from 1 to 65535"),
        };
        let addr = match addr.strip_prefix('[') {
            Some(v6) => match v6.strip_suffix(']') {
                Some(inner) => inner,
                None => return bad("an IPv6 address is written in brackets: [::1]:389"),
            },
            None if addr.contains(':') => {
                return bad("an IPv6 address is written in brackets: [::1]:389");
            }
            None => addr,
        };
        let net = if addr.contains('/') {
            addr.parse::<IpNet>()
                .or_else(|_| bad(format!("{addr:?} is not a network (ADDRESS/PREFIX)")))?
        } else {
            addr.parse::<IpAddr>()
                .map(IpNet::from)
                .or_else(|_| bad(format!("{addr:?} is not an IP address")))?
        };
        let net = canonical(net)?;
        if net.prefix_len() == 0 {
            return bad("a /0 network is the whole internet: name the hosts");
        }
        if net != net.trunc() {
            return bad(format!(
                "{net} has host bits set (the network is {})",
                net.trunc()
            ));
        }
        if net.addr().is_unspecified() {
            return bad("the unspecified address names no server");
        }
        Ok(SocketGrant { net, port })
    }
}

impl fmt::Display for SocketGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.net.prefix_len() == self.net.max_prefix_len();
        match (self.net, host) {
            (IpNet::V4(n), true) => write!(f, "{}:{}", n.addr(), self.port),
            (IpNet::V4(n), false) => write!(f, "{n}:{}", self.port),
            (IpNet::V6(n), true) => write!(f, "[{}]:{}", n.addr(), self.port),
            (IpNet::V6(n), false) => write!(f, "[{n}]:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(s: &str) -> HttpGrant {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn sock(s: &str) -> SocketGrant {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn http_grants_match_scheme_host_and_port() {
        let g = http("http://127.0.0.1:11333");
        assert!(g.allows(Scheme::Http, "127.0.0.1", 11333));
        assert!(!g.allows(Scheme::Https, "127.0.0.1", 11333));
        assert!(!g.allows(Scheme::Http, "127.0.0.1", 80));
        assert!(!g.allows(Scheme::Http, "127.0.0.2", 11333));
        assert!(!g.allows(Scheme::Http, "localhost", 11333));

        let g = http("https://*.Rep.Example/");
        assert_eq!(g.port, 443);
        assert_eq!(g.to_string(), "https://*.rep.example:443");
        assert!(g.allows(Scheme::Https, "a.rep.example", 443));
        assert!(g.allows(Scheme::Https, "A.B.REP.EXAMPLE.", 443));
        assert!(!g.allows(Scheme::Https, "rep.example", 443));
        assert!(!g.allows(Scheme::Https, "evilrep.example", 443));
        assert!(!g.allows(Scheme::Https, "a.rep.example.evil", 443));

        // A trailing dot does not make an address a name (the fuzzer's find).
        let g = http("http://127.0.0.127.");
        assert_eq!(g.host, HostPattern::Ip("127.0.0.127".parse().unwrap()));
        assert_eq!(g.to_string().parse::<HttpGrant>().unwrap(), g);

        let g = http("https://api.example.com");
        assert!(g.allows(Scheme::Https, "API.example.com.", 443));
        assert!(!g.allows(Scheme::Https, "x.api.example.com", 443));

        let g = http("http://[::1]:8080");
        assert_eq!(g.to_string(), "http://[::1]:8080");
        assert!(g.allows(Scheme::Http, "[::1]", 8080));
        assert!(!g.allows(Scheme::Http, "::1", 8080));
        // An IPv4-mapped address is the IPv4 address.
        assert!(http("http://127.0.0.1:80").allows(Scheme::Http, "[::ffff:127.0.0.1]", 80));
    }

    #[test]
    fn bad_http_grants_are_refused() {
        for s in [
            "ftp://x.example",
            "x.example:80",
            "http://x.example/path",
            "http://user@x.example",
            "http://x.example:0",
            "http://x.example:99999",
            "http://x.example:",
            "http://*.com",
            "http://*.",
            "http://a*.example.com",
            "http://-x.example",
            "http://0.0.0.0:80",
            "http://[::]:80",
            "http://",
            "http://[::1",
            "http://1.2.3.4.5",
            // The CI fuzz run's find: the mapped unspecified address.
            "http://[::ffff:0.0.0.0]:80",
            "http://*.1.2",
        ] {
            assert!(s.parse::<HttpGrant>().is_err(), "{s} was accepted");
        }
    }

    #[test]
    fn socket_grants_match_networks_and_ports() {
        let g = sock("127.0.0.1:10023");
        assert!(g.allows(addr("127.0.0.1:10023")));
        assert!(g.allows(addr("[::ffff:127.0.0.1]:10023")));
        assert!(!g.allows(addr("127.0.0.1:10024")));
        assert!(!g.allows(addr("127.0.0.2:10023")));
        assert_eq!(g.to_string(), "127.0.0.1:10023");

        let g = sock("10.0.0.0/8:389");
        assert!(g.allows(addr("10.255.1.2:389")));
        assert!(!g.allows(addr("11.0.0.1:389")));
        assert_eq!(g.to_string(), "10.0.0.0/8:389");

        let g = sock("[fd00::/8]:3310");
        assert!(g.allows(addr("[fd12::1]:3310")));
        assert!(!g.allows(addr("[fe80::1]:3310")));
        assert!(!g.allows(addr("10.0.0.1:3310")));
        assert_eq!(g.to_string(), "[fd00::/8]:3310");

        let g = sock("[::1]:53");
        assert!(g.allows(addr("[::1]:53")));
        assert!(!g.allows(addr("127.0.0.1:53")));
    }

    #[test]
    fn bad_socket_grants_are_refused() {
        for s in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:x",
            "::1:53",
            "[::1:53",
            "0.0.0.0/0:25",
            "[::/0]:25",
            // The fuzzer's find: a mapped /0 is still every address.
            "[::ffff/0]:25",
            "[::ffff:0.0.0.0/0]:25",
            "[::ffff:0.0.0.0/96]:25",
            "10.0.0.1/8:389",
            "10.0.0.0/33:389",
            "0.0.0.0:25",
            "[::]:25",
            "host.example:25",
        ] {
            assert!(s.parse::<SocketGrant>().is_err(), "{s} was accepted");
        }
    }

    #[test]
    fn finders_return_the_matching_grant() {
        let grants = NetworkGrants {
            http: vec![http("http://127.0.0.1:1"), http("http://127.0.0.1:2")],
            connect: vec![sock("127.0.0.1:3")],
            udp: vec![sock("127.0.0.1:4")],
            ..NetworkGrants::default()
        };
        assert!(!grants.is_empty());
        assert!(NetworkGrants::default().is_empty());
        assert_eq!(
            grants.http_grant(Scheme::Http, "127.0.0.1", 2),
            Some(&grants.http[1])
        );
        assert_eq!(grants.http_grant(Scheme::Http, "127.0.0.1", 3), None);
        assert!(grants.connect_grant(addr("127.0.0.1:3")).is_some());
        assert!(grants.connect_grant(addr("127.0.0.1:4")).is_none());
        assert!(grants.udp_grant(addr("127.0.0.1:4")).is_some());
        assert!(grants.udp_grant(addr("127.0.0.1:3")).is_none());
    }
}
