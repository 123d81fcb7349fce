//! The validated configuration the relay runs on: what every section means once checked.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::NetworkGrants;

/// The whole relay configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration came from (a path or [`crate::EMBEDDED_NAME`]).
    pub origin: String,
    /// Our host name, used in the greeting, EHLO reply and Received headers.
    pub hostname: String,
    /// Directory of the durable spool.
    pub spool_dir: PathBuf,
    /// Unix socket of the admin interface (`postrider queue` talks to it; owner-only).
    pub admin_socket: PathBuf,
    /// The admin HTTP listener (metrics, health) and metric settings.
    pub admin: Admin,
    /// The listeners.
    pub listeners: Vec<Listener>,
    /// Who may send mail where.
    pub relay: Relay,
    /// Protocol and resource limits.
    pub limits: Limits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// SMTP AUTH: password checks, authorization identities, failure throttling.
    pub smtp_auth: SmtpAuth,
    /// Settings shared by all plugins.
    pub plugin_settings: PluginSettings,
    /// The plugin chain, in call order.
    pub plugins: Vec<PluginConfig>,
    /// Milters, each placed in the chain after the plugin or milter it names.
    pub milters: Vec<MilterConfig>,
    /// Nameservers for the relay's resolver ("ip:port"); empty: the system's.
    pub nameservers: Vec<SocketAddr>,
    /// DNSSEC trust anchors for DANE: DNSKEY records in zone-file syntax; `None`: the root
    /// zone's keys.
    pub trust_anchor: Option<PathBuf>,
    /// Outbound delivery settings.
    pub delivery: Delivery,
    /// Static routes, in config order.
    pub routes: Vec<Route>,
    /// TLS towards the MX hosts of some domains, instead of `[delivery]`'s, in config order.
    pub tls_policies: Vec<DomainTls>,
    /// More certificates for the TLS listeners, chosen by the server name the client asks for
    /// (SNI); the listener's own is the default.
    pub certificates: Vec<Certificate>,
    /// SPF, DKIM, DMARC and ARC verification of incoming mail; DKIM signing and ARC sealing.
    pub authentication: Authentication,
}

/// Email authentication settings (`[authentication]` and `[[dkim_sign]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    /// Verify SPF, DKIM, ARC and DMARC of mail from clients that are neither authenticated
    /// nor in `relay_networks`, and add an `Authentication-Results` header.
    pub verify: bool,
    /// The authserv-id of our `Authentication-Results` headers (default: `hostname`); incoming
    /// headers claiming it are removed.
    pub authserv_id: String,
    /// Honour DMARC `p=reject` (550 5.7.1) and `p=quarantine` (the message is quarantined).
    pub dmarc_enforce: bool,
    /// Bound on each verification step (SPF, or the message's DKIM/ARC/DMARC); past it the
    /// result is `temperror`.
    pub timeout_ms: u64,
    /// Seal verified incoming mail with ARC (RFC 8617) with this key.
    pub arc_seal: Option<SigningKey>,
    /// DKIM keys: mail from authenticated or `relay_networks` clients whose From domain has
    /// one is signed with it.
    pub dkim_sign: Vec<SigningKey>,
}

/// A DKIM (or ARC) signing key and what it signs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at `{selector}._domainkey.{domain}`.
    pub selector: String,
    /// PEM file with the private key: RSA (2048 bits or more) or Ed25519.
    pub key_file: PathBuf,
    /// Headers to sign; empty means the default list.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// The `[admin]` table: the HTTP listener for `/metrics`, `/health` and `/ready`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Address of the HTTP listener; `None`: no HTTP listener.
    pub http: Option<SocketAddr>,
    /// Destination domains with their own label value in the delivery metrics; later
    /// domains count as "other".
    pub metrics_domains: usize,
}

/// Settings shared by all plugins.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Where compiled plugins are cached (by content hash and engine version).
    pub cache_dir: PathBuf,
    /// The embedded kv store's file (used when no Redis is configured).
    pub kv_path: PathBuf,
    /// A shared Redis for the kv store instead of the embedded file.
    pub kv_redis: Option<KvRedis>,
    /// Most plugin instances alive at once.
    pub max_instances: u32,
    /// Bound on each kv call a plugin makes.
    pub kv_timeout_ms: u64,
    /// Bound on each DNS lookup a plugin makes.
    pub dns_timeout_ms: u64,
}

/// Where several relays keep their shared plugin state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRedis {
    /// `redis://[user:password@]host:port/db` or `rediss://...` (TLS).
    pub url: String,
    /// Key prefix of this relay cluster, so several clusters can share one Redis.
    pub cluster: String,
    /// PEM file of the CA to trust for `rediss://` instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// What the relay does when a plugin call traps, times out or answers something invalid: the
/// one failure policy type (config, plugin host, harness cases and command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// 451 4.3.0: the client retries later (the default: nothing is lost, nothing slips by).
    #[default]
    Tempfail,
    /// Ignore the plugin for this call, as if it answered `continue`.
    Continue,
    /// 550 5.7.1: refuse.
    Reject,
}

impl FailurePolicy {
    /// The config word: tempfail, continue or reject.
    pub fn name(self) -> &'static str {
        match self {
            FailurePolicy::Tempfail => "tempfail",
            FailurePolicy::Continue => "continue",
            FailurePolicy::Reject => "reject",
        }
    }
}

impl std::str::FromStr for FailurePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FailurePolicy::Tempfail,
            FailurePolicy::Continue,
            FailurePolicy::Reject,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| format!("{s:?}: expected tempfail, continue or reject"))
    }
}

/// The lowest level of a plugin's `log` lines the relay writes (`[[plugin]] log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginLogLevel {
    /// Everything.
    Trace,
    /// Debug and above.
    Debug,
    /// Info and above.
    Info,
    /// Warnings and errors.
    Warn,
    /// Errors only.
    Error,
}

/// A stage of the SMTP transaction a plugin (or milter) can be called at; its config word is
/// its [`Stage::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Client connected.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    MailFrom,
    /// Each RCPT TO.
    Rcpt,
    /// Message received.
    Data,
    /// Routing of a queued recipient.
    Route,
}

impl Stage {
    /// Name used in logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::MailFrom => "mail-from",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::Route => "route",
        }
    }
}

/// One `[[plugin]]`: a WebAssembly component called at the stages it asks for, in config order.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    /// Name in logs; also its kv namespace.
    pub name: String,
    /// The component file.
    pub path: PathBuf,
    /// Its `config` table, as JSON text for its `init`.
    pub config_json: String,
    /// What a failed call means.
    pub failure_policy: FailurePolicy,
    /// Deadline of each call, in milliseconds.
    pub timeout_ms: u64,
    /// Memory cap of each instance, in MiB.
    pub memory_mb: u32,
    /// Transactions (or routing calls) one instance may serve before it is recycled; 1 (the
    /// default) is a fresh instance for each.
    pub reuse: u32,
    /// Most idle instances kept warm for reuse (default 8; only with `reuse` > 1).
    pub pool_idle: u32,
    /// When set, the plugin's log lines below this level are dropped and the others are
    /// written at least at `info`, so one plugin's debug lines show without raising the
    /// relay's own level. Unset: each line at its own level, filtered by POSTRIDER_LOG.
    pub log_level: Option<PluginLogLevel>,
    /// What it may reach on the network (`allow_http`, `allow_connect`, `allow_udp`);
    /// nothing by default.
    pub network: NetworkGrants,
}

/// One `[[certificate]]`: a chain and key served to clients asking for one of its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Server names, lower-case: `mail.example.org`, or `*.example.org` for any one label
    /// under it.
    pub names: Vec<String>,
    /// The PEM files.
    pub files: TlsFiles,
}

/// One `[[milter]]`: a Sendmail milter (protocol 6) consulted in the chain beside the plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MilterConfig {
    /// Name in logs, verdict lists and metrics (unique among plugins and milters).
    pub name: String,
    /// Where it listens: `inet:host:port` or `unix:path`.
    pub address: postrider_milter::Address,
    /// The stages it is consulted at (never `route`). It is connected at the first of them a
    /// session reaches and then told what came before (connect, HELO, sender, recipients).
    pub stages: Vec<Stage>,
    /// Its place: right after this plugin or earlier milter; `None`: after every plugin.
    pub after: Option<String>,
    /// What a milter that is down, too slow or breaks the protocol means.
    pub failure_policy: FailurePolicy,
    /// Deadline to connect and negotiate, in milliseconds.
    pub connect_timeout_ms: u64,
    /// Deadline of each answer but the last, in milliseconds.
    pub command_timeout_ms: u64,
    /// Deadline of the answer to the end of the message, in milliseconds.
    pub content_timeout_ms: u64,
}

/// Outbound delivery settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Port used for MX hosts (25; tests point it elsewhere).
    pub smtp_port: u16,
    /// Seconds to connect to one address.
    pub connect_timeout: u64,
    /// Seconds to wait for each reply.
    pub reply_timeout: u64,
    /// Most delivery attempts at once.
    pub concurrency: usize,
    /// Most attempts at once to one destination (domain, relay host or LMTP target).
    pub per_destination: usize,
    /// Retry intervals in seconds after the 1st, 2nd, ... failure; the last repeats.
    pub retry_intervals: Vec<u64>,
    /// After this many seconds in the queue a message is bounced.
    pub max_age: u64,
    /// Send a delay warning after this many seconds (0: never).
    pub delay_warning: u64,
    /// A message with more Received headers than this is bounced as a mail loop.
    pub max_hops: usize,
    /// TLS towards MX hosts: "none", "opportunistic", "require", "verify", "dane",
    /// "mta-sts" or "auto".
    pub tls: TlsPolicy,
    /// For `verify`: trust only the CA certificates in this PEM file instead of the
    /// system's store.
    pub ca_file: Option<PathBuf>,
    /// HTTPS port of `mta-sts.DOMAIN` policy hosts (443; tests point it elsewhere).
    pub mta_sts_port: u16,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            smtp_port: 25,
            connect_timeout: 30,
            reply_timeout: 300,
            concurrency: 20,
            per_destination: 5,
            retry_intervals: vec![300, 600, 1200, 2400, 3600],
            max_age: 5 * 24 * 3600,
            delay_warning: 4 * 3600,
            max_hops: 50,
            tls: TlsPolicy::Auto,
            ca_file: None,
            mta_sts_port: 443,
        }
    }
}

pub use postrider_smtp::client::TlsPolicy;

/// The TLS policy for the MX hosts of some recipient domains (`[[tls_policy]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainTls {
    /// Recipient domains (lower case; "*.example.org" matches subdomains).
    pub domains: Vec<String>,
    /// The policy.
    pub tls: TlsPolicy,
    /// For `verify`: trust only the CA certificates in this PEM file.
    pub ca_file: Option<PathBuf>,
}

/// A static route: mail for these domains goes to a fixed next hop instead of their MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Recipient domains (lower case; "*.example.org" matches subdomains).
    pub domains: Vec<String>,
    /// Where to.
    pub to: RouteTarget,
}

/// The next hop of a static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// SMTP relay (smarthost).
    Relay {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
        /// TLS policy (`verify` by default when there are credentials).
        tls: TlsPolicy,
        /// For `verify`: trust only the CA certificates in this PEM file.
        ca_file: Option<PathBuf>,
        /// AUTH user and password, sent only over verified TLS, or with `insecure_auth`
        /// over unverified TLS (`require`).
        auth: Option<(String, String)>,
        /// The operator chose to send credentials over TLS whose certificate is not checked.
        insecure_auth: bool,
    },
    /// LMTP at "host:port" or "unix:/path".
    Lmtp(String),
    /// Local Maildir delivery: one directory per recipient local part under this root.
    Maildir(PathBuf),
}

impl PluginConfig {
    /// The name of the builtin plugin this entry uses (`path = "builtin:NAME"`), if it does.
    pub fn builtin(&self) -> Option<&str> {
        crate::builtin_name(&self.path)
    }
}

impl Config {
    /// The static route for `domain`, if any (first match in config order).
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.routes
            .iter()
            .find(|r| matches_domain(&r.domains, &domain))
    }

    /// Every outbound TLS setting of the config, as (policy, CA file): `[delivery]`'s, the
    /// `[[tls_policy]]`s' and the relay routes'.
    pub fn outbound_tls(&self) -> impl Iterator<Item = (TlsPolicy, Option<&Path>)> {
        let delivery = (self.delivery.tls, self.delivery.ca_file.as_deref());
        let domains = self
            .tls_policies
            .iter()
            .map(|p| (p.tls, p.ca_file.as_deref()));
        let routes = self.routes.iter().filter_map(|r| match &r.to {
            RouteTarget::Relay { tls, ca_file, .. } => Some((*tls, ca_file.as_deref())),
            RouteTarget::Lmtp(_) | RouteTarget::Maildir(_) => None,
        });
        std::iter::once(delivery).chain(domains).chain(routes)
    }

    /// The TLS policy and CA file towards `domain`'s MX hosts: its `[[tls_policy]]` (first
    /// match in config order), else `[delivery]`'s.
    pub fn mx_tls_for(&self, domain: &str) -> (TlsPolicy, Option<&Path>) {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        match self
            .tls_policies
            .iter()
            .find(|p| matches_domain(&p.domains, &domain))
        {
            Some(p) => (p.tls, p.ca_file.as_deref()),
            None => (self.delivery.tls, self.delivery.ca_file.as_deref()),
        }
    }
}

/// `domain` (lower case, no trailing dot) is one of `patterns` or, for "*.suffix", below it.
fn matches_domain(patterns: &[String], domain: &str) -> bool {
    patterns.iter().any(|d| match d.strip_prefix("*.") {
        Some(suffix) => domain.len() > suffix.len() + 1 && domain.ends_with(&format!(".{suffix}")),
        None => d == domain,
    })
}

/// What a listener is for, which decides TLS and AUTH behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port 25 style: plain text, STARTTLS when a certificate is configured, AUTH optional.
    Smtp,
    /// Port 587 style: STARTTLS, and AUTH is required before MAIL.
    Submission,
    /// Port 465 style: implicit TLS from the first byte, AUTH required before MAIL.
    Submissions,
}

impl ListenerKind {
    /// Whether clients must authenticate before a mail transaction.
    pub fn requires_auth(self) -> bool {
        !matches!(self, ListenerKind::Smtp)
    }
}

/// One listening socket.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name used in logs and passed to plugins.
    pub name: String,
    /// Address to bind; port 0 picks a free port.
    pub address: SocketAddr,
    /// What the listener is for.
    pub kind: ListenerKind,
    /// Certificate chain and key (PEM), enabling STARTTLS or implicit TLS.
    pub tls: Option<TlsFiles>,
    /// `proxy_protocol = true`: every connection starts with a PROXY protocol header (v1 or
    /// v2) from one of these balancer networks (`proxy_trusted`), and the client it names is
    /// the client for everything (relay control, limits, plugins, logs, `Received`). `None`:
    /// no PROXY header is read.
    pub proxy_trusted: Option<Vec<IpNet>>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Relay control: who may send to which domains.
#[derive(Debug, Clone)]
pub struct Relay {
    /// Domains we accept mail for from anyone (lower case).
    pub local_domains: Vec<String>,
    /// Client networks allowed to relay to any domain.
    pub relay_networks: Vec<IpNet>,
    /// File of `user:argon2-hash` lines; without it AUTH is not offered.
    pub passwords: Option<PathBuf>,
}

impl Relay {
    /// Whether `domain` is one of ours (ASCII case-insensitive).
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether a client at `ip` may relay without authenticating.
    pub fn is_relay_client(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_networks.iter().any(|net| net.contains(&ip))
    }
}

pub use postrider_smtp::LineEndings;

/// Protocol and resource limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted, in octets (advertised with SIZE).
    pub max_message_size: u64,
    /// Most recipients in one transaction.
    pub max_recipients: usize,
    /// Error replies tolerated before the session is closed with 421.
    pub max_bad_commands: u32,
    /// Largest header section, in octets.
    pub max_header_size: usize,
    /// Most concurrent connections over all listeners.
    pub max_connections: usize,
    /// Most concurrent connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Bare CR/LF policy for message content.
    pub line_endings: LineEndings,
    /// Memory, in bytes, that complete messages may take together while they are checked
    /// and stored (each takes about 4 times its size); messages beyond wait their turn.
    /// Messages still arriving are kept on disk once past 32 KiB.
    pub message_memory: u64,
    /// Milliseconds the greeting waits (0: none). A client that talks in that time is an
    /// early talker: real MTAs wait for the greeting, spam engines often do not.
    pub greet_delay_ms: u64,
    /// What becomes of an early talker.
    pub early_talkers: EarlyTalkers,
}

/// What becomes of a client that talks before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyTalkers {
    /// `554 5.5.1` and the connection is closed (the default).
    #[default]
    Reject,
    /// Logged and counted, then served (its commands are answered after the greeting).
    Allow,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_bad_commands: 20,
            max_header_size: 64 * 1024,
            max_connections: 1000,
            max_connections_per_ip: 50,
            line_endings: LineEndings::Reject,
            message_memory: 128 * 1024 * 1024,
            greet_delay_ms: 0,
            early_talkers: EarlyTalkers::Reject,
        }
    }
}

/// SMTP AUTH against the password file, hardened for a port open to the Internet.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpAuth {
    /// Password checks running at once (each argon2id check takes its memory cost, 19 MiB
    /// for `hash-password`'s hashes, and tens of ms of CPU); 0: one per CPU.
    pub max_concurrent_checks: usize,
    /// Checks that may wait for a free slot; beyond them AUTH gets 454 4.7.0 at once.
    pub max_waiting_checks: usize,
    /// User name → the other identities it may act as (the RFC 4616 authorization
    /// identity); any other authzid than the user's own gets 535 5.7.8.
    pub act_as: std::collections::BTreeMap<String, Vec<String>>,
    /// Seconds over which failures are counted, per client (IPv6: per /64) and per user,
    /// across connections; the count starts with the first failure and ends with the window.
    pub failure_window: u64,
    /// Failures in the window after which each AUTH answer waits, doubling from `delay_ms`.
    pub delay_after: u32,
    /// First delay, in milliseconds.
    pub delay_ms: u64,
    /// Longest delay, in milliseconds.
    pub max_delay_ms: u64,
    /// Failures from one client in the window after which AUTH gets 454 4.7.0 without a
    /// password check until the window ends; 0: never.
    pub lockout_client: u32,
    /// Failures for one user in the window after which AUTH as that user gets 454 4.7.0;
    /// higher than `lockout_client`, since anyone can lock a user out; 0: never.
    pub lockout_user: u32,
    /// Failed attempts one connection may make: the last of them is answered 421 4.7.0 and
    /// the connection closed (the others 535 5.7.8); 0: no limit.
    pub session_failures: u32,
}

impl Default for SmtpAuth {
    fn default() -> Self {
        SmtpAuth {
            max_concurrent_checks: 0,
            max_waiting_checks: 64,
            act_as: Default::default(),
            failure_window: 900,
            delay_after: 3,
            delay_ms: 1000,
            max_delay_ms: 16_000,
            lockout_client: 10,
            lockout_user: 30,
            session_failures: 3,
        }
    }
}

/// Timeouts in seconds (RFC 5321 section 4.5.3.2 for the SMTP ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// One whole command line (or SASL response), from our previous reply: a total, not
    /// reset by each byte that arrives.
    pub command: u64,
    /// Message content budget: spent by time, earned back at `min_data_rate`, never above this.
    pub data_block: u64,
    /// One whole message (DATA body, or all BDAT chunks), whatever the rate.
    pub data_total: u64,
    /// Octets per second of message content that keep `data_block` from running down
    /// (Postfix's `smtpd_min_data_rate`); 0: the budget only runs down.
    pub min_data_rate: u64,
    /// A whole TLS handshake, implicit or after STARTTLS.
    pub tls_handshake: u64,
    /// After SIGTERM, how long sessions may go on before they get 421.
    pub shutdown_grace: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: 300,
            data_block: 180,
            data_total: 3600,
            min_data_rate: 500,
            tls_handshake: 30,
            shutdown_grace: 30,
        }
    }
}
