//! Lookups through the relay's own resolver (the `dns` import): cached, with the relay's
//! timeouts.
//!
//! [`DnsError::NxDomain`] and [`DnsError::NoData`] are answers ("no such name", "no such
//! record"); [`DnsError::Timeout`] and [`DnsError::Failure`] mean the question could not be
//! answered — see [`DnsError::is_not_found`].
//!
//! Outside a wasm host (native `cargo test`) every lookup returns
//! `DnsError::Failure("not running inside a Postrider host")`.

use std::net::IpAddr;

pub use crate::bindings::postrider::plugin::dns::DnsError;

#[cfg(target_arch = "wasm32")]
use crate::bindings::postrider::plugin::dns as raw;

/// The addresses (A and AAAA) of `name`. Entries the host sent that do not parse as IP
/// addresses are dropped.
pub fn lookup_ip(name: &str) -> Result<Vec<IpAddr>, DnsError> {
    Ok(lookup_ip_raw(name)?
        .iter()
        .filter_map(|a| crate::net::parse_ip(a))
        .collect())
}

/// The addresses of `name` as the host returned them (text).
pub fn lookup_ip_raw(name: &str) -> Result<Vec<String>, DnsError> {
    #[cfg(target_arch = "wasm32")]
    return raw::lookup_ip(name);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = name;
        Err(no_host())
    };
}

/// The MX records of `name` as `(preference, exchange)`, lowest preference first.
pub fn lookup_mx(name: &str) -> Result<Vec<(u16, String)>, DnsError> {
    #[cfg(target_arch = "wasm32")]
    let answer = raw::lookup_mx(name);
    #[cfg(not(target_arch = "wasm32"))]
    let answer: Result<Vec<(u16, String)>, DnsError> = {
        let _ = name;
        Err(no_host())
    };
    let mut mx = answer?;
    mx.sort_by_key(|(pref, _)| *pref);
    Ok(mx)
}

/// The TXT records of `name`, each record's strings joined.
pub fn lookup_txt(name: &str) -> Result<Vec<String>, DnsError> {
    #[cfg(target_arch = "wasm32")]
    return raw::lookup_txt(name);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = name;
        Err(no_host())
    };
}

/// The PTR names of `ip` (reverse DNS; not forward-confirmed — the host's
/// [`Connection::client_name`](crate::Connection) is).
pub fn lookup_ptr(ip: IpAddr) -> Result<Vec<String>, DnsError> {
    let ip = ip.to_string();
    #[cfg(target_arch = "wasm32")]
    return raw::lookup_ptr(&ip);
    #[cfg(not(target_arch = "wasm32"))]
    return {
        let _ = ip;
        Err(no_host())
    };
}

#[cfg(not(target_arch = "wasm32"))]
fn no_host() -> DnsError {
    DnsError::Failure("not running inside a Postrider host".to_owned())
}

impl DnsError {
    /// True for the two definite answers "no such name" and "no such record": the name is
    /// not there. False for timeouts and failures, where nothing is known.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DnsError::NxDomain | DnsError::NoData)
    }
}
