//! DNSSEC-validated lookups for DANE (RFC 7672): every answer says whether it was proven
//! secure; an answer that fails validation (bogus, or indeterminate) is an error, never
//! data.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, Record, RecordType};

use crate::{DnsError, DnsFuture, HickoryDns};

/// Records and whether DNSSEC proved them (for an empty answer: proved that there are none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated<T> {
    /// The records (empty for NXDOMAIN or no data, where the lookup allows it).
    pub records: T,
    /// Proven by a chain of signatures from the trust anchor ("secure"); otherwise the
    /// zone is provably unsigned ("insecure").
    pub secure: bool,
}

/// One TLSA record (RFC 6698), as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0: the full certificate, 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the data itself, 1: its SHA-256, 2: its SHA-512.
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.usage, self.selector, self.matching)
    }
}

/// DNSSEC-validating lookups: what DANE needs.
pub trait SecureDns: Send + Sync + 'static {
    /// MX records (NXDOMAIN and no data are errors, as with [`crate::Dns::lookup_mx`]).
    fn secure_mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<(u16, String)>>>;
    /// A and AAAA records (NXDOMAIN and no data are errors).
    fn secure_ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<IpAddr>>>;
    /// TLSA records at `name` (e.g. `_25._tcp.mx.example.org`); none for NXDOMAIN or no
    /// data, with the security of that denial.
    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<Tlsa>>>;

    /// Whether validation works at all through the configured nameservers: the root zone's
    /// SOA validates as secure from the trust anchor. Behind a resolver that strips or does
    /// not serve DNSSEC records every answer fails validation, which says nothing about
    /// the names asked (RFC 4033's "indeterminate"). The default says yes.
    fn available(&self) -> DnsFuture<'_, bool> {
        Box::pin(async { Ok(true) })
    }
}

impl HickoryDns {
    /// A validating resolver using the system's nameservers, or `servers`; the trust
    /// anchors are DNSKEY records in zone-file syntax from `trust_anchor`, else the root
    /// zone's keys built into hickory.
    pub fn validating(
        servers: Option<&[std::net::SocketAddr]>,
        trust_anchor: Option<&Path>,
    ) -> Result<HickoryDns, DnsError> {
        let anchors = match trust_anchor {
            Some(path) => TrustAnchors::from_file(path)
                .map_err(|e| DnsError::Failure(format!("trust anchor {}: {e}", path.display())))?,
            None => TrustAnchors::default(),
        };
        let (config, opts) = match servers {
            Some(servers) => crate::nameserver_config(servers),
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| DnsError::Failure(e.to_string()))?,
        };
        crate::build(config, opts, Some(Arc::new(anchors)))
    }

    /// One validated lookup: the records of `rtype` and their security.
    async fn validated(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> Result<Validated<Vec<Record>>, DnsError> {
        // Absolute: no search domains.
        let fqdn = if name.ends_with('.') {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        match self.resolver.lookup(fqdn.as_str(), rtype).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .cloned()
                    .collect();
                let mut secure = !records.is_empty();
                for r in &records {
                    match r.proof {
                        Proof::Secure => {}
                        Proof::Insecure => secure = false,
                        proof => {
                            return Err(DnsError::Bogus(format!("{name} {rtype}: {proof}")));
                        }
                    }
                }
                Ok(Validated { records, secure })
            }
            Err(e) => Err(denial(name, rtype, e)?),
        }
    }
}

/// What a failed validated lookup means: a denial (with its security) is `Ok`, as an
/// `NxDomain`/`NoData` error the caller maps; validation failures are `Bogus`.
fn denial(name: &str, rtype: RecordType, e: NetError) -> Result<DnsError, DnsError> {
    match &e {
        NetError::Dns(HickoryDnsError::Nsec { proof, .. }) if proof.is_insecure() => {
            Ok(DnsError::NoData)
        }
        NetError::Dns(HickoryDnsError::Nsec { proof, .. }) => {
            Err(DnsError::Bogus(format!("{name} {rtype}: denial {proof}")))
        }
        NetError::Dns(HickoryDnsError::DnssecBogus) => Err(DnsError::Bogus(format!(
            "{name} {rtype}: validation failed"
        ))),
        NetError::Dns(HickoryDnsError::NoRecordsFound(no)) => {
            Ok(if no.response_code == ResponseCode::NXDomain {
                DnsError::NxDomain
            } else {
                DnsError::NoData
            })
        }
        _ => Err(crate::map_err(e)),
    }
}

impl SecureDns for HickoryDns {
    fn available(&self) -> DnsFuture<'_, bool> {
        Box::pin(async move {
            Ok(self
                .validated(".", RecordType::SOA)
                .await
                .is_ok_and(|v| v.secure))
        })
    }

    fn secure_mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<(u16, String)>>> {
        Box::pin(async move {
            let v = self.validated(name, RecordType::MX).await?;
            let records = v
                .records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((m.preference, m.exchange.to_utf8())),
                    _ => None,
                })
                .collect();
            Ok(Validated {
                records,
                secure: v.secure,
            })
        })
    }

    fn secure_ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<IpAddr>>> {
        Box::pin(async move {
            let mut records = Vec::new();
            let mut secure = true;
            let mut denied = None;
            for rtype in [RecordType::A, RecordType::AAAA] {
                match self.validated(name, rtype).await {
                    Ok(v) => {
                        secure &= v.secure;
                        records.extend(v.records.iter().filter_map(|r| match &r.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                            _ => None,
                        }));
                    }
                    Err(e @ (DnsError::NxDomain | DnsError::NoData)) => denied = Some(e),
                    Err(e) => return Err(e),
                }
            }
            match denied {
                Some(e) if records.is_empty() => Err(e),
                _ => Ok(Validated { records, secure }),
            }
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Validated<Vec<Tlsa>>> {
        Box::pin(async move {
            let v = match self.validated(name, RecordType::TLSA).await {
                Ok(v) => v,
                // Whether a denial was secure does not change what DANE does: no TLSA.
                Err(DnsError::NxDomain | DnsError::NoData) => {
                    return Ok(Validated {
                        records: Vec::new(),
                        secure: false,
                    });
                }
                Err(e) => return Err(e),
            };
            let records = v
                .records
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TLSA(t) => Some(Tlsa {
                        usage: t.cert_usage.into(),
                        selector: t.selector.into(),
                        matching: t.matching.into(),
                        data: t.cert_data.clone(),
                    }),
                    _ => None,
                })
                .collect();
            Ok(Validated {
                records,
                secure: v.secure,
            })
        })
    }
}
