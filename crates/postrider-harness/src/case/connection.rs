//! The client connection a case plays: what it sets, merged over the defaults.

use std::net::IpAddr;

use serde::Deserialize;

use super::*;

/// TLS on the client connection: `true` for TLSv1.3, or the details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// e.g. "TLSv1.3".
    pub protocol: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// Server name indication.
    pub sni: Option<String>,
}

/// The client connection; every field optional, merged run ← case ← defaults ← built-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnSpec {
    /// Connection id.
    pub id: Option<String>,
    /// Client address (default 192.0.2.10).
    pub client_ip: Option<IpAddr>,
    /// Client port (default 40000).
    pub client_port: Option<u16>,
    /// Forward-confirmed reverse DNS name of the client.
    #[serde(alias = "reverse_dns")]
    pub client_name: Option<String>,
    /// Listener name (default "mx").
    pub listener: Option<String>,
    /// Our address (default 192.0.2.1).
    pub server_ip: Option<IpAddr>,
    /// Our port (default 25).
    pub server_port: Option<u16>,
    /// TLS: `true`, `false` or `{ protocol, cipher, sni }` (outer `None`: not given).
    #[serde(default, deserialize_with = "de_tls")]
    pub tls: Option<Option<TlsSpec>>,
    /// User name after AUTH.
    pub auth_user: Option<String>,
}

impl ConnSpec {
    /// Fills the fields this one leaves unset from `base`.
    pub fn or(self, base: &ConnSpec) -> ConnSpec {
        let base = base.clone();
        ConnSpec {
            id: self.id.or(base.id),
            client_ip: self.client_ip.or(base.client_ip),
            client_port: self.client_port.or(base.client_port),
            client_name: self.client_name.or(base.client_name),
            listener: self.listener.or(base.listener),
            server_ip: self.server_ip.or(base.server_ip),
            server_port: self.server_port.or(base.server_port),
            tls: self.tls.or(base.tls),
            auth_user: self.auth_user.or(base.auth_user),
        }
    }
}

/// The connection fields after merging, with the built-in defaults filled in.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Connection id.
    pub id: String,
    /// Client address.
    pub client_ip: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Reverse DNS name.
    pub client_name: Option<String>,
    /// Listener.
    pub listener: String,
    /// Our address.
    pub server_ip: IpAddr,
    /// Our port.
    pub server_port: u16,
    /// TLS.
    pub tls: Option<TlsSpec>,
    /// Authenticated user.
    pub auth_user: Option<String>,
}

impl ConnSpec {
    /// The connection with built-in defaults for what is unset.
    pub fn resolve(&self, fallback_id: &str) -> Connection {
        Connection {
            id: self.id.clone().unwrap_or_else(|| fallback_id.to_owned()),
            client_ip: self.client_ip.unwrap_or(IpAddr::from([192, 0, 2, 10])),
            client_port: self.client_port.unwrap_or(40000),
            client_name: self.client_name.clone(),
            listener: self.listener.clone().unwrap_or_else(|| "mx".into()),
            server_ip: self.server_ip.unwrap_or(IpAddr::from([192, 0, 2, 1])),
            server_port: self.server_port.unwrap_or(25),
            tls: self.tls.clone().flatten(),
            auth_user: self.auth_user.clone(),
        }
    }
}
