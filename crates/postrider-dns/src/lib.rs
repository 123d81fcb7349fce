//! DNS behind one trait, for plugins and for delivery: hickory in the relay, a fixed table in
//! tests and the plugin harness.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use hickory_resolver::ResolveErrorKind;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::op::ResponseCode;

/// A boxed lookup future, so the trait is object-safe.
pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist.
    #[error("NXDOMAIN")]
    NxDomain,
    /// The name exists but has no record of that type.
    #[error("no data")]
    NoData,
    /// No answer in time.
    #[error("timeout")]
    Timeout,
    /// Anything else (SERVFAIL, refused, network error).
    #[error("{0}")]
    Failure(String),
}

/// The lookups plugins may make.
pub trait Dns: Send + Sync + 'static {
    /// A and AAAA records.
    fn lookup_ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<IpAddr>>;
    /// MX records: preference and exchange.
    fn lookup_mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<(u16, String)>>;
    /// TXT records, each one's strings joined.
    fn lookup_txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<String>>;
    /// PTR records of an address.
    fn lookup_ptr<'a>(&'a self, ip: IpAddr) -> DnsFuture<'a, Vec<String>>;
}

/// The relay's resolver.
pub struct HickoryDns {
    resolver: hickory_resolver::TokioResolver,
}

impl HickoryDns {
    /// Uses the system configuration (/etc/resolv.conf).
    pub fn from_system() -> Result<HickoryDns, DnsError> {
        let resolver = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| DnsError::Failure(e.to_string()))?
            .build();
        Ok(HickoryDns { resolver })
    }

    /// Uses the given nameservers (UDP and TCP), e.g. a local test server on 127.0.0.1:5353.
    pub fn with_nameservers(servers: &[std::net::SocketAddr]) -> HickoryDns {
        use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
        let mut group = NameServerConfigGroup::new();
        for s in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[s.ip()],
                s.port(),
                true,
            ));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let mut opts = ResolverOpts::default();
        opts.attempts = 1;
        let resolver = hickory_resolver::Resolver::builder_with_config(
            config,
            hickory_resolver::name_server::TokioConnectionProvider::default(),
        )
        .with_options(opts)
        .build();
        HickoryDns { resolver }
    }
}

fn map_err(e: hickory_resolver::ResolveError) -> DnsError {
    if let ResolveErrorKind::Proto(proto) = e.kind() {
        match proto.kind() {
            ProtoErrorKind::NoRecordsFound { response_code, .. } => {
                return if *response_code == ResponseCode::NXDomain {
                    DnsError::NxDomain
                } else {
                    DnsError::NoData
                };
            }
            ProtoErrorKind::Timeout => return DnsError::Timeout,
            _ => {}
        }
    }
    DnsError::Failure(e.to_string())
}

impl Dns for HickoryDns {
    fn lookup_ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<IpAddr>> {
        Box::pin(async move {
            Ok(self
                .resolver
                .lookup_ip(name)
                .await
                .map_err(map_err)?
                .iter()
                .collect())
        })
    }

    fn lookup_mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<(u16, String)>> {
        Box::pin(async move {
            let mx = self.resolver.mx_lookup(name).await.map_err(map_err)?;
            Ok(mx
                .iter()
                .map(|m| (m.preference(), m.exchange().to_utf8()))
                .collect())
        })
    }

    fn lookup_txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<String>> {
        Box::pin(async move {
            let txt = self.resolver.txt_lookup(name).await.map_err(map_err)?;
            Ok(txt
                .iter()
                .map(|t| {
                    t.iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect::<String>()
                })
                .collect())
        })
    }

    fn lookup_ptr<'a>(&'a self, ip: IpAddr) -> DnsFuture<'a, Vec<String>> {
        Box::pin(async move {
            let ptr = self.resolver.reverse_lookup(ip).await.map_err(map_err)?;
            Ok(ptr.iter().map(|n| n.to_utf8()).collect())
        })
    }
}

/// Fixed answers, for unit tests and the plugin test harness: names are matched
/// case-insensitively without the trailing dot; a missing name is NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct StaticDns {
    /// "A"/"AAAA" answers by name.
    pub ip: HashMap<String, Result<Vec<IpAddr>, DnsError>>,
    /// MX answers by name.
    pub mx: HashMap<String, Result<Vec<(u16, String)>, DnsError>>,
    /// TXT answers by name.
    pub txt: HashMap<String, Result<Vec<String>, DnsError>>,
    /// PTR answers by address.
    pub ptr: HashMap<IpAddr, Result<Vec<String>, DnsError>>,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn answer<T: Clone>(found: Option<&Result<T, DnsError>>) -> Result<T, DnsError> {
    found.cloned().unwrap_or(Err(DnsError::NxDomain))
}

impl Dns for StaticDns {
    fn lookup_ip<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<IpAddr>> {
        Box::pin(async move { answer(self.ip.get(&key(name))) })
    }
    fn lookup_mx<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<(u16, String)>> {
        Box::pin(async move { answer(self.mx.get(&key(name))) })
    }
    fn lookup_txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<String>> {
        Box::pin(async move { answer(self.txt.get(&key(name))) })
    }
    fn lookup_ptr<'a>(&'a self, ip: IpAddr) -> DnsFuture<'a, Vec<String>> {
        Box::pin(async move { answer(self.ptr.get(&ip)) })
    }
}
