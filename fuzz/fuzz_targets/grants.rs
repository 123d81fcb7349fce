//! Network grants of plugins (`allow_http`, `allow_connect`, `allow_udp`).
//!
//! Properties checked:
//! - No input panics either parser.
//! - A parsed grant prints as text that parses back to the same grant.
//! - A socket grant never covers a whole address family (no /0, however written), and allows
//!   its own network address on its port and nothing on another port.
//! - An HTTP grant for an IP or a name allows its own origin, on its own scheme and port only.
//!
//! Input: one grant per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postrider_config::{HostPattern, HttpGrant, Scheme, SocketGrant};
use std::net::{IpAddr, SocketAddr};

fuzz_target!(|input: &[u8]| {
    for line in String::from_utf8_lossy(input).lines() {
        if let Ok(g) = line.parse::<SocketGrant>() {
            assert!(g.net.prefix_len() > 0, "{line:?} covers everything");
            let again: SocketGrant = g.to_string().parse().expect("printed grant parses");
            assert_eq!(again, g);
            let own = SocketAddr::new(g.net.network(), g.port);
            assert!(g.allows(own), "{line:?}");
            if g.port < u16::MAX {
                assert!(!g.allows(SocketAddr::new(g.net.network(), g.port + 1)));
            }
        }
        if let Ok(g) = line.parse::<HttpGrant>() {
            let again: HttpGrant = g.to_string().parse().expect("printed grant parses");
            assert_eq!(again, g);
            let host = match &g.host {
                HostPattern::Ip(IpAddr::V6(ip)) => Some(format!("[{ip}]")),
                HostPattern::Ip(ip) => Some(ip.to_string()),
                HostPattern::Name(n) => Some(n.clone()),
                HostPattern::Under(d) => Some(format!("x.{d}")),
            };
            if let Some(host) = host {
                assert!(g.allows(g.scheme, &host, g.port), "{line:?}");
                let other = match g.scheme {
                    Scheme::Http => Scheme::Https,
                    Scheme::Https => Scheme::Http,
                };
                assert!(!g.allows(other, &host, g.port));
                if g.port < u16::MAX {
                    assert!(!g.allows(g.scheme, &host, g.port + 1));
                }
            }
        }
    }
});
