//! The SMTP envelope stored with every message.

use std::net::IpAddr;

use postrider_smtp::command::{Body, Notify, Ret};
use serde::{Deserialize, Serialize};

/// Everything the SMTP transaction said about a message besides its content.
///
/// Stored as JSON in the spool file; see the crate docs for the compatibility rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// When the message was accepted, in milliseconds since the Unix epoch.
    pub received_at_unix_ms: u64,
    /// The reverse-path without angle brackets; `""` is the null sender (bounces).
    pub mail_from: String,
    /// Whether the client asked for `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// The `BODY=` parameter, if given (stored as `"7BIT"` or `"8BITMIME"`).
    pub body: Option<Body>,
    /// The DSN `RET=` parameter, if given (RFC 3461; stored as `"FULL"` or `"HDRS"`).
    pub ret: Option<Ret>,
    /// The DSN `ENVID=` parameter, if given (RFC 3461).
    pub envid: Option<String>,
    /// The `SIZE=` parameter the client declared, if any (RFC 1870).
    pub size_param: Option<u64>,
    /// The accepted recipients, in `RCPT TO` order.
    pub recipients: Vec<Recipient>,
    /// Who submitted the message.
    pub client: ClientInfo,
    /// Why a data-stage plugin quarantined the message: it is kept, not delivered, until an
    /// operator releases it. Absent in older v1 files, which means not quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
    /// SPF of the MAIL FROM identity as checked at acceptance, for the route stage. Absent
    /// in older v1 files and when SPF was not checked (trusted clients).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<SpfRecord>,
    /// `REQUIRETLS` (RFC 8689): relay only over authenticated TLS to servers that support
    /// it, else bounce. Absent in older v1 files and when not asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
}

/// An SPF result as stored: the RFC 8601 keyword (`"pass"`, `"softfail"`, ...) and the domain
/// checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpfRecord {
    /// The result keyword.
    pub result: String,
    /// The domain whose SPF record was evaluated.
    pub domain: String,
}

/// One accepted `RCPT TO` with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward-path without angle brackets.
    pub address: String,
    /// The DSN `NOTIFY=` parameter (stored as `["NEVER"]` or a subset of `SUCCESS`,
    /// `FAILURE`, `DELAY`).
    pub notify: Option<Notify>,
    /// The DSN `ORCPT=` parameter as given, e.g. `"rfc822;user@example.org"`.
    pub orcpt: Option<String>,
}

/// The connection a message arrived on, for `Received:` headers, logs and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client's IP address.
    pub ip: IpAddr,
    /// The client's TCP port.
    pub port: u16,
    /// The name of the listener that accepted the connection.
    pub listener: String,
    /// The `HELO`/`EHLO` argument.
    pub helo: String,
    /// The TLS version and cipher suite, e.g. `"TLSv1.3 TLS13_AES_256_GCM_SHA384"`; `None` if cleartext.
    pub tls: Option<String>,
    /// The SMTP AUTH identity, if the client authenticated.
    pub authenticated: Option<String>,
    /// The verified reverse DNS name of the client, if any.
    pub reverse_dns: Option<String>,
    /// The session id the relay logged for the connection. Absent in files written before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Our address on the connection. Absent in files written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<std::net::SocketAddr>,
    /// The TLS server name (SNI) the client asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

impl Envelope {
    /// The MAIL FROM parameters that describe the message, as the session parsed them (AUTH=
    /// is not kept).
    pub fn mail_params(&self) -> postrider_smtp::MailParams {
        postrider_smtp::MailParams {
            size: self.size_param,
            body: self.body,
            smtputf8: self.smtputf8,
            ret: self.ret,
            envid: self.envid.clone(),
            auth: None,
            require_tls: self.require_tls,
        }
    }
}
