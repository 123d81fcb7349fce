//! Mocked DNS answers for a case (and `postrider-harness run --dns`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use postrider_plugin_host::{DnsError, StaticDns};
use serde::Deserialize;

use super::*;

/// A DNS error a mocked name answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsFault {
    /// The name does not exist.
    Nxdomain,
    /// The name exists without records of that type.
    Nodata,
    /// No answer in time.
    Timeout,
    /// The server failed.
    Servfail,
}

/// Records, or an error, for one mocked name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// The records, as text ("127.0.0.2", "10 mx.example.org", "v=spf1 -all", a host name).
    Records(Vec<String>),
    /// The lookup fails.
    Fault(DnsFault),
}

/// Mocked DNS: per record type, name → answer. Names not listed are NXDOMAIN.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsMock {
    /// A records by name (merged with `aaaa` for `lookup-ip`).
    #[serde(default)]
    pub a: BTreeMap<String, DnsAnswer>,
    /// AAAA records by name.
    #[serde(default)]
    pub aaaa: BTreeMap<String, DnsAnswer>,
    /// MX records by name, each "PREFERENCE HOST".
    #[serde(default)]
    pub mx: BTreeMap<String, DnsAnswer>,
    /// TXT records by name.
    #[serde(default)]
    pub txt: BTreeMap<String, DnsAnswer>,
    /// PTR records by IP address.
    #[serde(default)]
    pub ptr: BTreeMap<String, DnsAnswer>,
}

/// Parses a `[dns]`-style table on its own (for `run --dns FILE`).
pub fn parse_dns(text: &str, path: &Path) -> Result<StaticDns, CaseError> {
    let shown = path.display().to_string();
    let mock: DnsMock = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        CaseError::Parse {
            path: shown.clone(),
            line,
            column,
            message: e.message().trim().to_owned(),
        }
    })?;
    static_dns(&mock).map_err(|message| CaseError::Read {
        path: shown,
        message,
    })
}

pub(crate) fn dns_error(f: DnsFault) -> DnsError {
    match f {
        DnsFault::Nxdomain => DnsError::NxDomain,
        DnsFault::Nodata => DnsError::NoData,
        DnsFault::Timeout => DnsError::Timeout,
        DnsFault::Servfail => DnsError::Failure("SERVFAIL".into()),
    }
}

/// Converts the mock into the host's [`StaticDns`], checking every record.
pub(crate) fn static_dns(m: &DnsMock) -> Result<StaticDns, String> {
    let name = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
    let mut dns = StaticDns::default();
    // A and AAAA of one name answer one lookup-ip: their records are joined; a fault
    // answers only when neither type has records.
    let mut records: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut faults: BTreeMap<String, DnsError> = BTreeMap::new();
    for (kind, table) in [("a", &m.a), ("aaaa", &m.aaaa)] {
        for (n, answer) in table {
            match answer {
                DnsAnswer::Fault(f) => {
                    faults.entry(name(n)).or_insert_with(|| dns_error(*f));
                }
                DnsAnswer::Records(r) => {
                    let list = records.entry(name(n)).or_default();
                    for ip in r {
                        let addr: IpAddr = ip.parse().map_err(|_| {
                            format!("dns.{kind}.{n:?}: {ip:?} is not an IP address")
                        })?;
                        if (kind == "a") != addr.is_ipv4() {
                            return Err(format!(
                                "dns.{kind}.{n:?}: {ip:?} is not an {} address",
                                if kind == "a" { "IPv4" } else { "IPv6" }
                            ));
                        }
                        list.push(addr);
                    }
                }
            }
        }
    }
    for (n, f) in faults {
        if !records.contains_key(&n) {
            dns.ip.insert(n, Err(f));
        }
    }
    for (n, r) in records {
        dns.ip.insert(n, Ok(r));
    }
    for (n, answer) in &m.mx {
        let parsed = match answer {
            DnsAnswer::Fault(f) => Err(dns_error(*f)),
            DnsAnswer::Records(r) => Ok(r
                .iter()
                .map(|rec| {
                    let (pref, host) =
                        rec.trim().split_once(char::is_whitespace).ok_or_else(|| {
                            format!("dns.mx.{n:?}: {rec:?} is not \"PREFERENCE HOST\"")
                        })?;
                    let pref: u16 = pref
                        .parse()
                        .map_err(|_| format!("dns.mx.{n:?}: {rec:?} is not \"PREFERENCE HOST\""))?;
                    Ok((pref, host.trim().to_owned()))
                })
                .collect::<Result<Vec<_>, String>>()?),
        };
        dns.mx.insert(name(n), parsed);
    }
    for (n, answer) in &m.txt {
        let parsed = match answer {
            DnsAnswer::Fault(f) => Err(dns_error(*f)),
            DnsAnswer::Records(r) => Ok(r.clone()),
        };
        dns.txt.insert(name(n), parsed);
    }
    for (ip, answer) in &m.ptr {
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("dns.ptr: key {ip:?} is not an IP address"))?;
        let parsed = match answer {
            DnsAnswer::Fault(f) => Err(dns_error(*f)),
            DnsAnswer::Records(r) => Ok(r.clone()),
        };
        dns.ptr.insert(addr, parsed);
    }
    Ok(dns)
}
