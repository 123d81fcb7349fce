//! DNS behind one trait, for plugins and for delivery: hickory in the relay, a fixed table in
//! tests and the plugin harness.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

mod dnssec;

pub use dnssec::{SecureDns, Tlsa, Validated};

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
    /// The answer failed DNSSEC validation (a validating resolver only).
    #[error("DNSSEC: {0}")]
    Bogus(String),
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
        let (config, opts) = hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| DnsError::Failure(e.to_string()))?;
        build(config, opts, None)
    }

    /// Uses the given nameservers (UDP and TCP), e.g. a local test server on 127.0.0.1:5353.
    pub fn with_nameservers(servers: &[std::net::SocketAddr]) -> Result<HickoryDns, DnsError> {
        let (config, opts) = nameserver_config(servers);
        build(config, opts, None)
    }

    /// The underlying hickory resolver (a cheap clone: its state is shared), so that email
    /// authentication queries the same configured nameservers and shares the same cache.
    pub fn resolver(&self) -> hickory_resolver::TokioResolver {
        self.resolver.clone()
    }
}

/// A configuration with `servers` (UDP and TCP) and one attempt.
fn nameserver_config(
    servers: &[std::net::SocketAddr],
) -> (
    hickory_resolver::config::ResolverConfig,
    hickory_resolver::config::ResolverOpts,
) {
    use hickory_resolver::config::{
        ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
    };
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut udp = ConnectionConfig::udp();
            udp.port = s.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = s.port();
            NameServerConfig::new(s.ip(), true, vec![udp, tcp])
        })
        .collect();
    let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
    let mut opts = ResolverOpts::default();
    opts.attempts = 1;
    (config, opts)
}

/// Builds the resolver, validating with `anchors` when given. hickory's TLS transports are compiled in (mail-auth enables them), and
/// without a TLS configuration of ours hickory would load the system's CA store at build time
/// and fail where there is none, although we only ever talk plain UDP/TCP DNS. So we hand it a
/// configuration that trusts nothing: DNS over TLS is never configured here.
fn build(
    config: hickory_resolver::config::ResolverConfig,
    opts: hickory_resolver::config::ResolverOpts,
    anchors: Option<std::sync::Arc<hickory_resolver::proto::dnssec::TrustAnchors>>,
) -> Result<HickoryDns, DnsError> {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DnsError::Failure(e.to_string()))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        config,
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .with_tls_config(tls);
    if let Some(anchors) = anchors {
        builder = builder.with_trust_anchor(anchors);
    }
    let resolver = builder
        .build()
        .map_err(|e| DnsError::Failure(e.to_string()))?;
    Ok(HickoryDns { resolver })
}

fn map_err(e: NetError) -> DnsError {
    match &e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(no_records)) => {
            if no_records.response_code == ResponseCode::NXDomain {
                DnsError::NxDomain
            } else {
                DnsError::NoData
            }
        }
        NetError::Timeout => DnsError::Timeout,
        _ => DnsError::Failure(e.to_string()),
    }
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
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(m) => Some((m.preference, m.exchange.to_utf8())),
                    _ => None,
                })
                .collect())
        })
    }

    fn lookup_txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Vec<String>> {
        Box::pin(async move {
            let txt = self.resolver.txt_lookup(name).await.map_err(map_err)?;
            Ok(txt
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect())
        })
    }

    fn lookup_ptr<'a>(&'a self, ip: IpAddr) -> DnsFuture<'a, Vec<String>> {
        Box::pin(async move {
            let ptr = self.resolver.reverse_lookup(ip).await.map_err(map_err)?;
            Ok(ptr
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(n) => Some(n.to_utf8()),
                    _ => None,
                })
                .collect())
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
