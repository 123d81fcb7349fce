//! Where a milter listens, as Postfix and Sendmail write it: `inet:host:port` (an IPv6
//! address in brackets, `inet:[::1]:8891`) or `unix:/path/to/socket`.

use std::fmt;
use std::path::PathBuf;

/// A milter's socket address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// TCP to a host name or IP address and port.
    Inet {
        /// Host name or IP address (without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A unix-domain socket.
    Unix(PathBuf),
}

impl Address {
    /// Parses `inet:host:port`, `inet:[v6]:port` or `unix:path`. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".to_owned());
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("inet:") else {
            return Err("must start with inet: or unix:".to_owned());
        };
        let bracketed = rest.starts_with('[');
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, port) = v6
                    .split_once("]:")
                    .ok_or("an IPv6 address needs the form inet:[addr]:port")?;
                host.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
                (host, port)
            }
            None => rest
                .rsplit_once(':')
                .ok_or("needs the form inet:host:port")?,
        };
        let host_ok = !host.is_empty()
            && (bracketed || !host.contains(':'))
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !host_ok {
            return Err(format!("{host:?} is not a host name or address"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
        Ok(Address::Inet {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet { host, port } if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            Address::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postfix_forms_parse_and_print_back() {
        for text in [
            "inet:127.0.0.1:8891",
            "inet:localhost:11332",
            "inet:[::1]:8891",
            "unix:/run/opendkim/opendkim.sock",
        ] {
            let parsed = Address::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.to_string(), text);
        }
        assert_eq!(
            Address::parse("inet:[::1]:8891"),
            Ok(Address::Inet {
                host: "::1".into(),
                port: 8891
            })
        );
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for text in [
            "",
            "127.0.0.1:8891",
            "inet:127.0.0.1",
            "inet:127.0.0.1:0",
            "inet:127.0.0.1:70000",
            "inet::8891",
            "inet:::1:8891",
            "inet:[nothost]:1",
            "inet:a b:1",
            "unix:",
            "local:/x",
        ] {
            assert!(Address::parse(text).is_err(), "{text:?} parsed");
        }
    }
}
