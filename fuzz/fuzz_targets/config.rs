//! `Config::parse` (TOML text to a validated configuration) on arbitrary text: errors are
//! fine, panics are not. Errors must name the file and a line inside the text; an accepted
//! configuration keeps the validation's promises and answers its lookups.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postrider_config::{Config, ConfigError};

const NAME: &str = "fuzz.toml";

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let lines = text.matches('\n').count() + 1;
    let config = match Config::parse(text, NAME, Path::new("/etc/postrider")) {
        Ok(config) => config,
        Err(err) => {
            let shown = err.to_string();
            assert!(shown.starts_with(NAME), "{shown}");
            match err {
                ConfigError::Parse { line, column, .. } => {
                    assert!((1..=lines).contains(&line), "line {line} of {lines}");
                    assert!(column >= 1);
                }
                ConfigError::Invalid { line, .. } => {
                    assert!((1..=lines).contains(&line), "line {line} of {lines}")
                }
                ConfigError::Read { .. } => panic!("parse read a file"),
            }
            return;
        }
    };
    let _ = format!("{config:?}");
    assert_eq!(config.origin, NAME);
    assert!(!config.listeners.is_empty());
    assert!(config.spool_dir.is_absolute() && config.admin_socket.is_absolute());
    for domain in ["example.org", "EXAMPLE.org.", "a.b.example.com", "", "."] {
        let _ = config.route_for(domain);
        let _ = config.relay.is_local_domain(domain);
    }
    for domain in &config.relay.local_domains {
        assert!(config.relay.is_local_domain(domain));
    }
    for route in &config.routes {
        for domain in route.domains.iter().filter(|d| !d.starts_with("*.")) {
            assert!(config.route_for(domain).is_some(), "route for {domain}");
        }
    }
    for ip in [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
    ] {
        let _ = config.relay.is_relay_client(ip);
    }
    for listener in &config.listeners {
        let _ = listener.kind.requires_auth();
    }
});
