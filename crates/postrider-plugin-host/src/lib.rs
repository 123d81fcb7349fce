//! Runs Postrider's WebAssembly filter plugins.
//!
//! One [`PluginEngine`] (pooling allocator, epoch deadlines) compiles each plugin once into a
//! [`LoadedPlugin`] (cached on disk by content hash and engine version); a [`Pipeline`] is the
//! ordered chain of plugins from the config. Each SMTP transaction gets a [`ChainSession`]
//! that takes one instance of every plugin and keeps it across the transaction's stages;
//! each routing call takes its own. The instance is fresh, or with [`PluginSpec::reuse`] > 1
//! a warm one from the plugin's pool, `init` called again. A trap, a timeout or an answer
//! the host refuses is contained to that call: the instance is dropped (never pooled) and
//! the plugin's [`FailurePolicy`] decides.

mod bindings;
mod chain;
mod edits;
mod engine;
mod error;
mod host;
mod message;
mod milter;
mod net;
mod plugin;
mod pool;
mod state;
mod validate;

use postrider_smtp::reply::Reply;
use postrider_smtp::server::{Misuse, Session};

/// Authentication results as plugins see them (the WIT records, shared by host and guests).
pub use bindings::postrider::plugin::message::{Authentication, DkimCheck};
pub use bindings::postrider::plugin::types::{AuthResult, SpfCheck};
pub use chain::{
    ChainSession, DataOutcome, InstanceSource, Pipeline, PluginCall, RcptOutcome, StageOutcome,
};
pub use edits::{append_text_part, apply_edits, replace_body};
pub use engine::{EPOCH_TICK, EngineOptions, PluginEngine};
pub use error::{CallFailure, HostError};
pub use message::{BodyChanges, MessageView};
pub use milter::MilterSpec;
pub use net::NetObserver;
pub use plugin::{FailurePolicy, LoadedPlugin, PluginLogLevel, PluginSpec, Stage, component_hash};
pub use postrider_dns::{Dns, DnsError, DnsFuture, HickoryDns, StaticDns, TokioResolver};
pub use state::{HostCall, Services};

/// What the chain decided at a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No plugin objected: the relay's own rules decide.
    Continue,
    /// A plugin accepted: later plugins at this stage were not asked.
    Accept,
    /// Refuse with this 5xx reply.
    Reject(Reply),
    /// Refuse with this 4xx reply.
    Tempfail(Reply),
    /// Send this reply (421 or 554) and close the connection.
    Disconnect(Reply),
}

impl Decision {
    /// Applies the decision to the pending command of an SMTP session, as the relay does:
    /// reject and tempfail answer it, disconnect answers and closes. Returns false when the
    /// command should go on (continue, accept).
    pub fn refuse(self, session: &mut Session) -> Result<bool, Misuse> {
        match self {
            Decision::Continue | Decision::Accept => Ok(false),
            Decision::Reject(r) | Decision::Tempfail(r) => session.reject(r).map(|()| true),
            Decision::Disconnect(r) => session.disconnect(r).map(|()| true),
        }
    }

    /// A short name for logs and metrics: continue, accept, reject, tempfail, disconnect.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Accept => "accept",
            Decision::Reject(_) => "reject",
            Decision::Tempfail(_) => "tempfail",
            Decision::Disconnect(_) => "disconnect",
        }
    }

    /// Greets the client or refuses it at connect (RFC 5321 section 3.1): a rejection is a
    /// 554 greeting (then only QUIT works), a tempfail a 421 that closes the connection.
    pub fn greet(self, session: &mut Session) -> Result<(), Misuse> {
        let with_code = |r: &Reply, code| {
            Reply::new(code, r.enhanced(), r.text()).unwrap_or_else(|_| r.clone())
        };
        match self {
            Decision::Continue | Decision::Accept => session.greet(),
            Decision::Reject(r) => session.greet_reject(with_code(&r, 554)),
            Decision::Tempfail(r) => session.disconnect(with_code(&r, 421))?,
            Decision::Disconnect(r) => session.disconnect(r)?,
        }
        Ok(())
    }
}

/// A header change from the data stage. A value is the field body after `name:`: one line
/// from a plugin; from a milter it may be folded (CRLF and a space or tab). One starting with
/// a space or tab is written as it is, any other after a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    /// Insert at the top of the header block.
    Prepend {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// Add at the end of the header block.
    Append {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// Insert before the `index`th (0-based) header field; past the end, append (a milter's
    /// `insheader`).
    Insert {
        /// Position.
        index: u32,
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
    /// Replace the `index`th (0-based) header of this name, or add one at the end when there
    /// are not that many (a milter's `chgheader`, as libmilter documents it).
    Change {
        /// Header name (case-insensitive).
        name: String,
        /// Which one.
        index: u32,
        /// The new value.
        value: String,
    },
    /// Remove the `index`th (0-based) header of this name (a milter's `chgheader` with an
    /// empty value).
    Delete {
        /// Header name (case-insensitive).
        name: String,
        /// Which one.
        index: u32,
    },
    /// Remove every header of this name.
    Remove {
        /// Header name (case-insensitive).
        name: String,
    },
    /// Replace the value of the `index`th (0-based) header of this name.
    Replace {
        /// Header name (case-insensitive).
        name: String,
        /// Which one.
        index: u32,
        /// The new value.
        value: String,
    },
}

/// An envelope change from the data stage (a milter's `addrcpt`, `delrcpt`, `chgfrom`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeEdit {
    /// Add this recipient (an address without angle brackets).
    AddRcpt(String),
    /// Remove this recipient (compared without regard to case).
    DeleteRcpt(String),
    /// Make this the sender; empty is the null sender.
    ChangeFrom(String),
}

pub use postrider_smtp::client::TlsPolicy;

/// Where one recipient goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// The recipient domain's MX hosts.
    Mx,
    /// A fixed relay host.
    Relay {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
        /// TLS policy.
        tls: TlsPolicy,
    },
    /// LMTP to "host:port" or "unix:/path".
    Lmtp(String),
    /// Keep in the queue until released.
    Hold(String),
    /// Drop without delivery.
    Discard,
    /// Bounce with this reply.
    Bounce(Reply),
    /// The routing plugin failed: keep the recipient queued and try again later.
    Defer(String),
}

impl RouteDecision {
    /// A short name for logs and metrics: mx, relay, lmtp, hold, discard, bounce, defer.
    pub fn kind(&self) -> &'static str {
        match self {
            RouteDecision::Mx => "mx",
            RouteDecision::Relay { .. } => "relay",
            RouteDecision::Lmtp(_) => "lmtp",
            RouteDecision::Hold(_) => "hold",
            RouteDecision::Discard => "discard",
            RouteDecision::Bounce(_) => "bounce",
            RouteDecision::Defer(_) => "defer",
        }
    }
}

/// TLS details of the client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3".
    pub protocol: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// Server name the client asked for.
    pub sni: Option<String>,
}

/// The client connection as plugins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Unique per connection; also in the relay's logs.
    pub id: String,
    /// Client address.
    pub client_ip: std::net::IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Verified reverse DNS name.
    pub client_name: Option<String>,
    /// Listener name.
    pub listener: String,
    /// Our address.
    pub server_ip: std::net::IpAddr,
    /// Our port.
    pub server_port: u16,
    /// HELO/EHLO argument.
    pub helo: Option<String>,
    /// TLS, once up.
    pub tls: Option<TlsInfo>,
    /// Authenticated user.
    pub auth_user: Option<String>,
}

/// The transaction's envelope as plugins see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// Queue id, once spooled.
    pub queue_id: Option<String>,
    /// Reverse path; empty for `<>`.
    pub mail_from: String,
    /// MAIL FROM parameters, names upper-case.
    pub mail_params: Vec<(String, Option<String>)>,
    /// Recipients accepted so far.
    pub recipients: Vec<String>,
    /// Whether the transaction has SMTPUTF8 (rewrites may then use UTF-8).
    pub smtputf8: bool,
    /// SPF for the MAIL FROM identity, once checked.
    pub spf: Option<SpfCheck>,
}

impl EnvelopeInfo {
    /// The envelope of an SMTP transaction as received so far (no queue id, no SPF yet).
    pub fn from_transaction(
        from: &postrider_smtp::ReversePath,
        params: &postrider_smtp::MailParams,
        recipients: &[(postrider_smtp::ForwardPath, postrider_smtp::RcptParams)],
    ) -> EnvelopeInfo {
        EnvelopeInfo {
            queue_id: None,
            mail_from: from.address(),
            mail_params: params.keywords(),
            recipients: recipients.iter().map(|(to, _)| to.address()).collect(),
            smtputf8: params.smtputf8,
            spf: None,
        }
    }
}
