//! A case's network: the grants the plugin gets (`allow_http`, `allow_connect`, `allow_udp`,
//! as in the relay's `[[plugin]]`) and the peers the harness plays on loopback while the case
//! runs: `[[case.http]]` answers HTTP requests, `[[case.tcp]]` answers a line protocol.
//!
//! ```toml
//! allow_http = ["http://127.0.0.1:11333"]
//! [[case.http]]
//! url = "http://127.0.0.1:11333/checkv2"   # requests whose path starts with this path
//! status = 200
//! body = '{"action": "reject"}'
//!
//! allow_connect = ["127.0.0.1:10023"]
//! [[case.tcp]]
//! address = "127.0.0.1:10023"
//! reply = "action=DUNNO\n\n"               # after each request (read up to an empty line)
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use postrider_config::{HttpGrant, NetworkGrants, SocketGrant};
use serde::Deserialize;

/// One mocked HTTP answer, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpMock {
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) method: Option<String>,
    #[serde(default)]
    pub(crate) status: Option<u16>,
    #[serde(default)]
    pub(crate) body: String,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) delay_ms: u64,
}

/// One mocked TCP peer, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcpMock {
    pub(crate) address: String,
    pub(crate) reply: String,
    #[serde(default)]
    pub(crate) after: ReadUntil,
    #[serde(default)]
    pub(crate) delay_ms: u64,
}

/// What a mocked TCP peer reads before each reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadUntil {
    /// Up to an empty line (Postfix's policy protocol, HTTP-like headers).
    #[default]
    BlankLine,
    /// One line.
    Line,
    /// Nothing: the reply is a greeting, sent once on connect.
    Nothing,
}

/// A mocked HTTP answer, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMock {
    /// Where the harness listens.
    pub addr: SocketAddr,
    /// Requests whose path (and query) starts with this.
    pub path_prefix: String,
    /// Only this method (upper case), or any.
    pub method: Option<String>,
    /// Status code.
    pub status: u16,
    /// Header fields of the answer.
    pub headers: Vec<(String, String)>,
    /// Body of the answer.
    pub body: Vec<u8>,
    /// Wait before answering (a slow service).
    pub delay: Duration,
}

/// A mocked TCP peer, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpMock {
    /// Where the harness listens.
    pub addr: SocketAddr,
    /// What it reads before each reply.
    pub after: ReadUntil,
    /// The reply.
    pub reply: Vec<u8>,
    /// Wait before replying.
    pub delay: Duration,
}

/// A case's network: grants and mocked peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkSpec {
    /// What the plugin may reach.
    pub grants: NetworkGrants,
    /// Mocked HTTP answers, first match wins.
    pub http: Vec<HttpMock>,
    /// Mocked TCP peers, one per address.
    pub tcp: Vec<TcpMock>,
}

/// The grants and mocks of a case (`key` prefixes errors).
pub(crate) fn network(
    allow_http: &[String],
    allow_connect: &[String],
    allow_udp: &[String],
    http: &[RawHttpMock],
    tcp: &[RawTcpMock],
) -> Result<NetworkSpec, String> {
    fn grants<T: std::str::FromStr<Err = postrider_config::GrantError>>(
        list: &[String],
        key: &str,
    ) -> Result<Vec<T>, String> {
        list.iter()
            .enumerate()
            .map(|(i, g)| g.trim().parse().map_err(|e| format!("{key}[{i}]: {e}")))
            .collect()
    }
    let mut spec = NetworkSpec {
        grants: NetworkGrants {
            http: grants::<HttpGrant>(allow_http, "allow_http")?,
            connect: grants::<SocketGrant>(allow_connect, "allow_connect")?,
            udp: grants::<SocketGrant>(allow_udp, "allow_udp")?,
            ..NetworkGrants::default()
        },
        ..NetworkSpec::default()
    };
    for (i, m) in http.iter().enumerate() {
        let key = format!("http[{i}]");
        let rest = m.url.strip_prefix("http://").ok_or_else(|| {
            format!("{key}.url: mocks answer plain http:// URLs (the host's TLS is not mocked)")
        })?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = authority.parse().map_err(|_| {
            format!("{key}.url: the host must be IP:port where the harness can listen")
        })?;
        let status = m.status.unwrap_or(200);
        if !(100..=599).contains(&status) {
            return Err(format!("{key}.status: {status} is no HTTP status"));
        }
        spec.http.push(HttpMock {
            addr,
            path_prefix: if path.is_empty() {
                "/".into()
            } else {
                path.into()
            },
            method: m.method.as_ref().map(|s| s.to_ascii_uppercase()),
            status,
            headers: m.headers.clone().into_iter().collect(),
            body: m.body.clone().into_bytes(),
            delay: Duration::from_millis(m.delay_ms),
        });
    }
    for (i, m) in tcp.iter().enumerate() {
        let key = format!("tcp[{i}]");
        let addr: SocketAddr = m
            .address
            .parse()
            .map_err(|_| format!("{key}.address: must be IP:port"))?;
        if spec.tcp.iter().any(|t| t.addr == addr) || spec.http.iter().any(|h| h.addr == addr) {
            return Err(format!("{key}.address: {addr} is mocked twice"));
        }
        spec.tcp.push(TcpMock {
            addr,
            after: m.after,
            reply: m.reply.clone().into_bytes(),
            delay: Duration::from_millis(m.delay_ms),
        });
    }
    Ok(spec)
}
