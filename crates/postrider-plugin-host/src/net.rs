//! Network access of plugins, by grant only (`allow_http`, `allow_connect`, `allow_udp`).
//!
//! TCP and UDP go through `wasi:sockets` with wasmtime-wasi's address check: a socket may
//! reach only granted addresses, binds only implicitly (the wildcard address, port 0), never
//! listens or accepts, and names are not resolved (plugins resolve through `dns`). HTTP goes
//! through `wasi:http/outgoing-handler` (wasmtime-wasi-http) with our `send_request`: the
//! origin is checked against the grants, the request is sent over one pooled client per
//! plugin (hyper-util with hyper-rustls, certificates verified against the system store or
//! the plugin's `ca_file`, host names resolved by the relay's resolver as `dns` is), and the
//! response body is capped. A refusal is an error value for
//! the guest (`access-denied`, `HTTP-request-denied`), never a trap.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use postrider_config::{NetworkGrants, Scheme};
use postrider_dns::Dns;
use postrider_tls_roots::TrustRoots;
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::error::HostError;

/// Wait for a response's head when the guest sets no `first-byte-timeout` (the call's own
/// deadline, usually shorter, still applies).
const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(30);

/// Idle pooled connections kept per origin, and for how long.
const POOL_IDLE_PER_HOST: usize = 16;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a plugin's network use is counted by (the relay's metrics implement it).
pub trait NetObserver: Send + Sync {
    /// One request or connection: `kind` "http", "tcp" or "udp"; `grant` the grant that
    /// allowed it (None when refused); `result` "denied", "allowed", "2xx".."5xx", "error"
    /// or "timeout"; `elapsed` until the response head (HTTP) or the check (sockets).
    fn observe(
        &self,
        plugin: &str,
        kind: &str,
        grant: Option<&str>,
        result: &str,
        elapsed: Duration,
    );
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector<RelayResolver>>, WasiBody>;

/// Resolves the host names of HTTP requests through the relay's resolver (bounded like the
/// `dns` import), not the system's: one resolver, one configuration, one set of timeouts.
#[derive(Clone)]
struct RelayResolver {
    dns: Arc<dyn Dns>,
    timeout: Duration,
}

type Resolving =
    Pin<Box<dyn Future<Output = std::io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for RelayResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (dns, timeout) = (Arc::clone(&self.dns), self.timeout);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let ips = tokio::time::timeout(timeout, dns.lookup_ip(&host))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{host}: DNS timeout"),
                    )
                })?
                .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
            // The connector puts the URL's port on each address.
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(addrs.into_iter())
        })
    }
}

/// One plugin's grants and its HTTP client (shared by all its instances).
pub(crate) struct PluginNet {
    plugin: Arc<str>,
    grants: NetworkGrants,
    /// Built when the plugin has HTTP grants.
    http: Option<HttpClient>,
}

impl PluginNet {
    /// The network of plugin `plugin` with these grants (reads the `ca_file`, if any); host
    /// names of HTTP requests resolve through `dns`, each lookup bounded by `dns_timeout`.
    pub(crate) fn new(
        plugin: &str,
        grants: NetworkGrants,
        dns: Arc<dyn Dns>,
        dns_timeout: Duration,
    ) -> Result<PluginNet, HostError> {
        let http = if grants.http.is_empty() {
            None
        } else {
            let roots = match &grants.ca_file {
                Some(path) => TrustRoots::from_file(path),
                None => TrustRoots::system(),
            }
            .map_err(|e| HostError::Network {
                plugin: plugin.to_owned(),
                message: e.to_string(),
            })?;
            let mut http = HttpConnector::new_with_resolver(RelayResolver {
                dns,
                timeout: dns_timeout,
            });
            // https URLs go through the TLS layer around it.
            http.enforce_http(false);
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config((**roots.config()).clone())
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            Some(
                Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .build(connector),
            )
        };
        Ok(PluginNet {
            plugin: plugin.into(),
            grants,
            http,
        })
    }

    /// A WASI context for one instance: sockets as the grants allow, nothing else.
    pub(crate) fn wasi_ctx(self: &Arc<Self>, observer: Option<Arc<dyn NetObserver>>) -> WasiCtx {
        let mut builder = WasiCtx::builder();
        if self.grants.connect.is_empty() && self.grants.udp.is_empty() {
            return builder.build();
        }
        let net = Arc::clone(self);
        builder
            .allow_tcp(!self.grants.connect.is_empty())
            .allow_udp(!self.grants.udp.is_empty())
            .allow_ip_name_lookup(false)
            .socket_addr_check(move |addr, usage| {
                let allowed = net.socket_allowed(addr, usage, observer.as_deref());
                Box::pin(std::future::ready(allowed))
            });
        builder.build()
    }

    /// The address check of every socket operation.
    fn socket_allowed(
        &self,
        addr: SocketAddr,
        usage: SocketAddrUse,
        observer: Option<&dyn NetObserver>,
    ) -> bool {
        let (kind, grant) = match usage {
            // Implicit binds (by connect and send) use the wildcard address and port 0;
            // anything else is a bind the guest chose, which no grant covers.
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                return addr.ip().is_unspecified() && addr.port() == 0;
            }
            SocketAddrUse::TcpConnect => ("tcp", self.grants.connect_grant(addr)),
            // Datagrams from granted peers only; not counted (one per reply).
            SocketAddrUse::UdpReceive => return self.grants.udp_grant(addr).is_some(),
            SocketAddrUse::UdpSend => ("udp", self.grants.udp_grant(addr)),
            SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => ("tcp-listen", None),
        };
        let grant = grant.map(|g| g.to_string());
        if grant.is_none() {
            tracing::info!(plugin = %self.plugin, kind, %addr, "plugin network access denied");
        }
        if let Some(o) = observer {
            let result = if grant.is_some() { "allowed" } else { "denied" };
            o.observe(&self.plugin, kind, grant.as_deref(), result, Duration::ZERO);
        }
        grant.is_some()
    }

    /// Sends one request of the guest, if a grant allows its origin.
    async fn send(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        observer: Option<&dyn NetObserver>,
    ) -> Result<http::Response<WasiBody>, HttpError> {
        let started = Instant::now();
        let uri = request.uri();
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(HttpError::HttpProtocolError),
        };
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let grant = self
            .grants
            .http_grant(scheme, host, port)
            .map(|g| g.to_string());
        let observe = |result: &str| {
            if let Some(o) = observer {
                o.observe(
                    &self.plugin,
                    "http",
                    grant.as_deref(),
                    result,
                    started.elapsed(),
                );
            }
        };
        let (Some(client), Some(_)) = (&self.http, &grant) else {
            tracing::info!(plugin = %self.plugin, origin = %format_args!("{scheme}://{host}:{port}"),
                "plugin network access denied");
            observe("denied");
            return Err(HttpError::HttpRequestDenied);
        };
        let wait = options
            .and_then(|o| o.first_byte_timeout)
            .unwrap_or(DEFAULT_FIRST_BYTE);
        let response = match tokio::time::timeout(wait, client.request(request)).await {
            Err(_) => {
                observe("timeout");
                return Err(HttpError::ConnectionReadTimeout);
            }
            Ok(Err(e)) => {
                observe("error");
                return Err(if e.is_connect() {
                    HttpError::ConnectionRefused
                } else {
                    HttpError::InternalError(Some(e.to_string()))
                });
            }
            Ok(Ok(r)) => r,
        };
        observe(match response.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        });
        let cap = self.grants.max_http_response_bytes;
        Ok(response.map(|body| {
            Limited::new(body, cap)
                .map_err(move |e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::HttpResponseBodySize(Some(cap as u64))
                    } else {
                        HttpError::InternalError(Some(e.to_string()))
                    }
                })
                .boxed_unsync()
        }))
    }
}

/// The `wasi:http` hooks of one instance: its plugin's network and the relay's observer.
pub(crate) struct HttpHooks {
    pub(crate) net: Arc<PluginNet>,
    pub(crate) observer: Option<Arc<dyn NetObserver>>,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_done: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        let net = Arc::clone(&self.net);
        let observer = self.observer.clone();
        Box::new(async move {
            let response = net.send(request, options, observer.as_deref()).await?;
            let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                Box::new(std::future::ready(Ok(())));
            Ok((response, io))
        })
    }
}
