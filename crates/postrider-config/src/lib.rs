//! Postrider's configuration: the TOML schema, its defaults and its validation.
//!
//! Unknown keys are errors, and every error names the file, the line and the key, so an
//! operator can go straight to the mistake. Relative paths in a file are resolved against the
//! directory of that file; in the embedded default, against the working directory.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

/// The default configuration shipped in `config/postrider.toml`, embedded in the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/postrider.toml");

/// Name used in errors for the embedded default.
pub const EMBEDDED_NAME: &str = "<embedded config/postrider.toml>";

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{file}:{line}:{column}: key `{key}`: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key at (or nearest before) the error.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The file parses but a value is not acceptable.
    #[error("{file}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line of the value.
        line: usize,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole relay configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration came from (a path or [`EMBEDDED_NAME`]).
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
    /// Settings shared by all plugins.
    pub plugin_settings: PluginSettings,
    /// The plugin chain, in call order.
    pub plugins: Vec<PluginConfig>,
    /// Nameservers for the relay's resolver ("ip:port"); empty: the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Outbound delivery settings.
    pub delivery: Delivery,
    /// Static routes, in config order.
    pub routes: Vec<Route>,
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
    /// TLS towards MX hosts: "none", "opportunistic" or "require".
    pub tls: TlsPolicy,
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
            tls: TlsPolicy::Opportunistic,
        }
    }
}

pub use postrider_smtp::client::TlsPolicy;

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
        /// TLS policy.
        tls: TlsPolicy,
        /// AUTH user and password, sent only over TLS.
        auth: Option<(String, String)>,
    },
    /// LMTP at "host:port" or "unix:/path".
    Lmtp(String),
}

impl Config {
    /// The static route for `domain`, if any (first match in config order).
    pub fn route_for(&self, domain: &str) -> Option<&Route> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.routes.iter().find(|r| {
            r.domains.iter().any(|d| match d.strip_prefix("*.") {
                Some(suffix) => {
                    domain.len() > suffix.len() + 1 && domain.ends_with(&format!(".{suffix}"))
                }
                None => *d == domain,
            })
        })
    }
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
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
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
        }
    }
}

/// Timeouts in seconds (RFC 5321 section 4.5.3.2 for the SMTP ones).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Waiting for the next command.
    pub command: u64,
    /// Waiting for the next block of message content.
    pub data_block: u64,
    /// A TLS handshake, implicit or after STARTTLS.
    pub tls_handshake: u64,
    /// After SIGTERM, how long sessions may go on before they get 421.
    pub shutdown_grace: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            command: 300,
            data_block: 180,
            tls_handshake: 30,
            shutdown_grace: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_hostname")]
    hostname: Spanned<String>,
    #[serde(default = "default_spool_dir")]
    spool_dir: PathBuf,
    #[serde(default = "default_admin_socket")]
    admin_socket: PathBuf,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    listener: Vec<RawListener>,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    plugins: RawPluginSettings,
    #[serde(default)]
    plugin: Vec<RawPlugin>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    delivery: Delivery,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    authentication: RawAuthentication,
    #[serde(default)]
    dkim_sign: Vec<SigningKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuthentication {
    verify: bool,
    authserv_id: Option<String>,
    dmarc_enforce: bool,
    timeout_ms: u64,
    arc_seal: Option<SigningKey>,
}

impl Default for RawAuthentication {
    fn default() -> Self {
        RawAuthentication {
            verify: true,
            authserv_id: None,
            dmarc_enforce: false,
            timeout_ms: 10_000,
            arc_seal: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    http: Option<Spanned<String>>,
    metrics_domains: usize,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin {
            http: None,
            metrics_domains: 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domains: Spanned<Vec<String>>,
    relay: Option<Spanned<String>>,
    lmtp: Option<Spanned<String>>,
    #[serde(default = "default_route_tls")]
    tls: TlsPolicy,
    auth_user: Option<String>,
    auth_password: Option<String>,
}

fn default_route_tls() -> TlsPolicy {
    TlsPolicy::Opportunistic
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPluginSettings {
    cache_dir: PathBuf,
    kv_path: PathBuf,
    kv_url: Option<Spanned<String>>,
    kv_cluster: Spanned<String>,
    kv_ca_file: Option<PathBuf>,
    max_instances: u32,
    kv_timeout_ms: u64,
    dns_timeout_ms: u64,
}

impl Default for RawPluginSettings {
    fn default() -> Self {
        RawPluginSettings {
            cache_dir: PathBuf::from("var/plugin-cache"),
            kv_path: PathBuf::from("var/kv.redb"),
            kv_url: None,
            kv_cluster: Spanned::new(0..0, "default".to_string()),
            kv_ca_file: None,
            max_instances: 1000,
            kv_timeout_ms: 250,
            dns_timeout_ms: 1500,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    path: PathBuf,
    #[serde(default)]
    config: Option<toml::Table>,
    #[serde(default = "default_failure_policy")]
    failure_policy: FailurePolicy,
    #[serde(default = "default_plugin_timeout")]
    timeout_ms: Spanned<u64>,
    #[serde(default = "default_plugin_memory")]
    memory_mb: Spanned<u32>,
    #[serde(default = "default_plugin_reuse")]
    reuse: Spanned<u32>,
    #[serde(default)]
    pool_idle: Option<Spanned<u32>>,
}

fn default_failure_policy() -> FailurePolicy {
    FailurePolicy::Tempfail
}

fn default_plugin_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 2000)
}

fn default_plugin_memory() -> Spanned<u32> {
    Spanned::new(0..0, 32)
}

fn default_plugin_reuse() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// Idle instances kept per plugin when `reuse` > 1 and `pool_idle` is not set.
const DEFAULT_POOL_IDLE: u32 = 8;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    #[serde(default)]
    nameservers: Vec<Spanned<String>>,
}

fn default_hostname() -> Spanned<String> {
    Spanned::new(0..0, "localhost".to_owned())
}

fn default_admin_socket() -> PathBuf {
    PathBuf::from("var/admin.sock")
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("var/spool")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: Spanned<String>,
    address: Spanned<String>,
    kind: ListenerKind,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelay {
    #[serde(default)]
    local_domains: Vec<Spanned<String>>,
    #[serde(default)]
    relay_networks: Vec<Spanned<String>>,
    passwords: Option<PathBuf>,
}

/// Where errors point: the file name and its text, to turn byte offsets into lines.
struct Source<'a> {
    name: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    fn invalid<T>(
        &self,
        span: std::ops::Range<usize>,
        key: &str,
        message: impl fmt::Display,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.name.to_owned(),
            line: self.line_col(span.start).0,
            key: key.to_owned(),
            message: message.to_string(),
        })
    }

    /// The key on the line of `offset`, or the nearest key line above it.
    fn key_near(&self, offset: usize) -> String {
        let before = &self.text[..offset.min(self.text.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let mut lines = self.text[..line_start].lines().rev();
        let current = self.text[line_start..].lines().next().unwrap_or("");
        std::iter::once(current)
            .chain(&mut lines)
            .find_map(|line| {
                let line = line.trim();
                if line.starts_with('#') {
                    return None;
                }
                if line.starts_with('[') {
                    return Some(
                        line.trim_matches(|c| c == '[' || c == ']')
                            .trim()
                            .to_owned(),
                    );
                }
                line.split_once('=').map(|(k, _)| k.trim().to_owned())
            })
            .unwrap_or_default()
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, &path.display().to_string(), base)
    }

    /// The embedded default configuration, with paths relative to the working directory.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(EMBEDDED_DEFAULT, EMBEDDED_NAME, Path::new("."))
    }

    /// Parses and validates `text`; `name` appears in errors, `base` resolves relative paths.
    pub fn parse(text: &str, name: &str, base: &Path) -> Result<Config, ConfigError> {
        let src = Source { name, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = src.line_col(offset);
            ConfigError::Parse {
                file: name.to_owned(),
                line,
                column,
                key: src.key_near(offset),
                message: e.message().trim().to_owned(),
            }
        })?;
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };

        let hostname = raw.hostname.get_ref().trim().to_owned();
        if hostname.is_empty()
            || !hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return src.invalid(
                raw.hostname.span(),
                "hostname",
                "must be a host name (letters, digits, '-', '.')",
            );
        }

        if raw.listener.is_empty() {
            return src.invalid(0..0, "listener", "at least one [[listener]] is needed");
        }
        let mut listeners = Vec::with_capacity(raw.listener.len());
        for (i, l) in raw.listener.into_iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            let address: SocketAddr = match l.address.get_ref().parse() {
                Ok(a) => a,
                Err(e) => {
                    return src.invalid(
                        l.address.span(),
                        &key("address"),
                        format!("not an IP:port socket address: {e}"),
                    );
                }
            };
            let name_span = l.name.span();
            let name = l.name.into_inner();
            if name.is_empty() || listeners.iter().any(|x: &Listener| x.name == name) {
                return src.invalid(
                    name_span,
                    &key("name"),
                    "listener names must be non-empty and unique",
                );
            }
            let tls = match (l.tls_cert, l.tls_key) {
                (Some(cert), Some(key_file)) => Some(TlsFiles {
                    cert: resolve(cert.get_ref()),
                    key: resolve(key_file.get_ref()),
                }),
                (None, None) => None,
                (Some(c), None) => {
                    return src.invalid(c.span(), &key("tls_key"), "tls_cert needs tls_key");
                }
                (None, Some(k)) => {
                    return src.invalid(k.span(), &key("tls_cert"), "tls_key needs tls_cert");
                }
            };
            if tls.is_none() && l.kind != ListenerKind::Smtp {
                return src.invalid(name_span, &key("kind"), "submission and submissions listeners need tls_cert and tls_key (AUTH is only offered over TLS)");
            }
            listeners.push(Listener {
                name,
                address,
                kind: l.kind,
                tls,
            });
        }

        let admin = Admin {
            http: match &raw.admin.http {
                None => None,
                Some(text) => match text.get_ref().trim().parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(e) => {
                        return src.invalid(
                            text.span(),
                            "admin.http",
                            format!("not an IP:port socket address: {e}"),
                        );
                    }
                },
            },
            metrics_domains: raw.admin.metrics_domains,
        };

        let mut local_domains = Vec::new();
        for (i, d) in raw.relay.local_domains.iter().enumerate() {
            let domain = d
                .get_ref()
                .trim()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if domain.is_empty() || domain.contains(|c: char| c.is_whitespace() || c == '@') {
                return src.invalid(
                    d.span(),
                    &format!("relay.local_domains[{i}]"),
                    "not a domain name",
                );
            }
            local_domains.push(domain);
        }
        let mut relay_networks = Vec::new();
        for (i, n) in raw.relay.relay_networks.iter().enumerate() {
            let text = n.get_ref().trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(net) => relay_networks.push(net.trunc()),
                Err(_) => {
                    return src.invalid(
                        n.span(),
                        &format!("relay.relay_networks[{i}]"),
                        "not an IP address or CIDR network",
                    );
                }
            }
        }

        let limits = raw.limits;
        if limits.max_message_size == 0
            || limits.max_recipients == 0
            || limits.max_connections == 0
            || limits.max_connections_per_ip == 0
        {
            return src.invalid(0..0, "limits", "limits must be greater than zero");
        }
        let timeouts = raw.timeouts;
        if timeouts.command == 0 || timeouts.data_block == 0 || timeouts.tls_handshake == 0 {
            return src.invalid(0..0, "timeouts", "timeouts must be greater than zero");
        }

        let settings = raw.plugins;
        if settings.max_instances == 0
            || settings.kv_timeout_ms == 0
            || settings.dns_timeout_ms == 0
        {
            return src.invalid(
                0..0,
                "plugins",
                "max_instances and timeouts must be greater than zero",
            );
        }
        let kv_redis = match &settings.kv_url {
            None => {
                if settings.kv_ca_file.is_some() {
                    return src.invalid(0..0, "plugins.kv_ca_file", "needs plugins.kv_url");
                }
                None
            }
            Some(url) => {
                let scheme = url.get_ref().split_once("://").map(|(s, _)| s);
                if !matches!(scheme, Some("redis" | "rediss")) {
                    return src.invalid(
                        url.span(),
                        "plugins.kv_url",
                        "must be a redis:// or rediss:// URL",
                    );
                }
                let cluster = settings.kv_cluster.get_ref();
                if cluster.is_empty()
                    || !cluster
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return src.invalid(
                        settings.kv_cluster.span(),
                        "plugins.kv_cluster",
                        "must be letters, digits, '-', '_' or '.'",
                    );
                }
                Some(KvRedis {
                    url: url.get_ref().clone(),
                    cluster: cluster.clone(),
                    ca_file: settings.kv_ca_file.as_deref().map(resolve),
                })
            }
        };
        let mut plugins: Vec<PluginConfig> = Vec::new();
        for (i, p) in raw.plugin.into_iter().enumerate() {
            let key = |k: &str| format!("plugin[{i}].{k}");
            let name_span = p.name.span();
            let name = p.name.into_inner();
            let name_ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok || plugins.iter().any(|x| x.name == name) {
                return src.invalid(
                    name_span,
                    &key("name"),
                    "plugin names must be unique and made of letters, digits, '-' and '_'",
                );
            }
            if !(1..=60_000).contains(p.timeout_ms.get_ref()) {
                return src.invalid(
                    p.timeout_ms.span(),
                    &key("timeout_ms"),
                    "must be between 1 and 60000",
                );
            }
            if !(1..=4096).contains(p.memory_mb.get_ref()) {
                return src.invalid(
                    p.memory_mb.span(),
                    &key("memory_mb"),
                    "must be between 1 and 4096",
                );
            }
            if !(1..=1_000_000).contains(p.reuse.get_ref()) {
                return src.invalid(
                    p.reuse.span(),
                    &key("reuse"),
                    "must be between 1 (a fresh instance per transaction) and 1000000",
                );
            }
            let pool_idle = match &p.pool_idle {
                None => DEFAULT_POOL_IDLE.min(settings.max_instances),
                Some(n) if *p.reuse.get_ref() == 1 => {
                    return src.invalid(
                        n.span(),
                        &key("pool_idle"),
                        "needs reuse greater than 1 (without reuse no instance is kept)",
                    );
                }
                Some(n) if !(1..=settings.max_instances).contains(n.get_ref()) => {
                    return src.invalid(
                        n.span(),
                        &key("pool_idle"),
                        "must be between 1 and plugins.max_instances",
                    );
                }
                Some(n) => *n.get_ref(),
            };
            let config_json = match &p.config {
                Some(table) => match serde_json::to_string(table) {
                    Ok(json) => json,
                    Err(e) => {
                        return src.invalid(
                            name_span,
                            &key("config"),
                            format!("cannot be passed to the plugin: {e}"),
                        );
                    }
                },
                None => "{}".to_owned(),
            };
            plugins.push(PluginConfig {
                name,
                path: resolve(&p.path),
                config_json,
                failure_policy: p.failure_policy,
                timeout_ms: *p.timeout_ms.get_ref(),
                memory_mb: *p.memory_mb.get_ref(),
                reuse: *p.reuse.get_ref(),
                pool_idle,
            });
        }
        let mut nameservers = Vec::new();
        for (i, n) in raw.dns.nameservers.iter().enumerate() {
            let text = n.get_ref().trim();
            let addr = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match addr {
                Ok(a) => nameservers.push(a),
                Err(_) => {
                    return src.invalid(
                        n.span(),
                        &format!("dns.nameservers[{i}]"),
                        "not an IP address or IP:port",
                    );
                }
            }
        }

        let delivery = raw.delivery;
        if delivery.concurrency == 0
            || delivery.per_destination == 0
            || delivery.retry_intervals.contains(&0)
            || delivery.retry_intervals.is_empty()
            || delivery.max_age == 0
            || delivery.smtp_port == 0
        {
            return src.invalid(0..0, "delivery", "concurrency, per_destination, smtp_port, max_age and each retry interval must be greater than zero");
        }
        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let domains_span = r.domains.span();
            let domains: Vec<String> = r
                .domains
                .into_inner()
                .iter()
                .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
                .collect();
            if domains.is_empty()
                || domains
                    .iter()
                    .any(|d| d.is_empty() || d.contains(['@', ' ']))
            {
                return src.invalid(
                    domains_span,
                    &key("domains"),
                    "a non-empty list of domain names",
                );
            }
            let to = match (r.relay, r.lmtp) {
                (Some(relay), None) => {
                    let text = relay.get_ref();
                    let (host, port) = match text.rsplit_once(':') {
                        Some((h, p)) if !h.contains(':') || h.starts_with('[') => match p
                            .parse::<u16>()
                        {
                            Ok(port) if port > 0 => (h.trim_matches(['[', ']']).to_owned(), port),
                            _ => {
                                return src.invalid(
                                    relay.span(),
                                    &key("relay"),
                                    "expected host or host:port",
                                );
                            }
                        },
                        _ => (text.clone(), 25),
                    };
                    if host.is_empty() {
                        return src.invalid(
                            relay.span(),
                            &key("relay"),
                            "expected host or host:port",
                        );
                    }
                    let auth = match (r.auth_user, r.auth_password) {
                        (Some(u), Some(p)) => Some((u, p)),
                        (None, None) => None,
                        _ => {
                            return src.invalid(
                                relay.span(),
                                &key("auth_user"),
                                "auth_user and auth_password go together",
                            );
                        }
                    };
                    RouteTarget::Relay {
                        host,
                        port,
                        tls: r.tls,
                        auth,
                    }
                }
                (None, Some(lmtp)) => {
                    let t = lmtp.get_ref();
                    let ok = match t.strip_prefix("unix:") {
                        Some(path) => path.starts_with('/'),
                        None => t.rsplit_once(':').is_some_and(|(h, p)| {
                            !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                        }),
                    };
                    if !ok {
                        return src.invalid(
                            lmtp.span(),
                            &key("lmtp"),
                            "expected host:port or unix:/path",
                        );
                    }
                    RouteTarget::Lmtp(t.clone())
                }
                _ => {
                    return src.invalid(
                        domains_span,
                        &key("relay"),
                        "a route needs exactly one of relay and lmtp",
                    );
                }
            };
            routes.push(Route { domains, to });
        }

        let auth = raw.authentication;
        if auth.timeout_ms == 0 {
            return src.invalid(
                0..0,
                "authentication.timeout_ms",
                "must be greater than zero",
            );
        }
        let authserv_id = auth.authserv_id.unwrap_or_else(|| hostname.clone());
        if authserv_id.is_empty() || authserv_id.chars().any(|c| c.is_whitespace() || c == ';') {
            return src.invalid(
                0..0,
                "authentication.authserv_id",
                "must be a non-empty token (no spaces or ';')",
            );
        }
        let resolve_key = |k: SigningKey| SigningKey {
            key_file: resolve(&k.key_file),
            ..k
        };
        let mut dkim_sign = Vec::with_capacity(raw.dkim_sign.len());
        for (i, k) in raw.dkim_sign.into_iter().enumerate() {
            if dkim_sign
                .iter()
                .any(|d: &SigningKey| d.domain.eq_ignore_ascii_case(&k.domain))
            {
                return src.invalid(
                    0..0,
                    &format!("dkim_sign[{i}].domain"),
                    "a domain can have only one signing key",
                );
            }
            dkim_sign.push(resolve_key(k));
        }
        let authentication = Authentication {
            verify: auth.verify,
            authserv_id,
            dmarc_enforce: auth.dmarc_enforce,
            timeout_ms: auth.timeout_ms,
            arc_seal: auth.arc_seal.map(resolve_key),
            dkim_sign,
        };

        Ok(Config {
            origin: name.to_owned(),
            hostname,
            spool_dir: resolve(&raw.spool_dir),
            admin_socket: resolve(&raw.admin_socket),
            admin,
            listeners,
            relay: Relay {
                local_domains,
                relay_networks,
                passwords: raw.relay.passwords.as_deref().map(resolve),
            },
            limits,
            timeouts,
            plugin_settings: PluginSettings {
                cache_dir: resolve(&settings.cache_dir),
                kv_path: resolve(&settings.kv_path),
                kv_redis,
                max_instances: settings.max_instances,
                kv_timeout_ms: settings.kv_timeout_ms,
                dns_timeout_ms: settings.dns_timeout_ms,
            },
            plugins,
            nameservers,
            delivery,
            routes,
            authentication,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/postrider"))
    }

    const MINIMAL: &str =
        "[[listener]]\nname = \"smtp\"\naddress = \"127.0.0.1:25\"\nkind = \"smtp\"\n";

    #[test]
    fn embedded_default_is_valid_and_loopback_only() {
        let config = Config::embedded().unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(
            config.listeners[0].address,
            "127.0.0.1:2525".parse().unwrap()
        );
        assert!(config.listeners[0].address.ip().is_loopback());
        assert!(
            config.relay.relay_networks.is_empty(),
            "default must not relay for anyone"
        );
        assert!(config.relay.passwords.is_none());
        assert_eq!(config.limits.line_endings, LineEndings::Reject);
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.hostname, "localhost");
        assert_eq!(config.spool_dir, Path::new("/etc/postrider/var/spool"));
        assert_eq!(config.timeouts.command, 300);
        assert_eq!(config.limits.max_message_size, 25 * 1024 * 1024);
    }

    #[test]
    fn kv_redis_settings() {
        assert_eq!(parse(MINIMAL).unwrap().plugin_settings.kv_redis, None);
        let text = format!(
            "{MINIMAL}[plugins]\nkv_url = \"rediss://:pw@10.0.0.5:6380/2\"\nkv_cluster = \"eu-1\"\nkv_ca_file = \"ca.pem\"\n"
        );
        let redis = parse(&text).unwrap().plugin_settings.kv_redis.unwrap();
        assert_eq!(redis.url, "rediss://:pw@10.0.0.5:6380/2");
        assert_eq!(redis.cluster, "eu-1");
        assert_eq!(redis.ca_file.unwrap(), Path::new("/etc/postrider/ca.pem"));

        let text = format!("{MINIMAL}[plugins]\nkv_url = \"redis://h\"\n");
        let redis = parse(&text).unwrap().plugin_settings.kv_redis.unwrap();
        assert_eq!(redis.cluster, "default");

        let text = format!("{MINIMAL}[plugins]\nkv_url = \"http://h\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:6:"), "{err}");
        assert!(err.contains("plugins.kv_url"), "{err}");

        let text = format!("{MINIMAL}[plugins]\nkv_url = \"redis://h\"\nkv_cluster = \"a:b\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:7:"), "{err}");
        assert!(err.contains("plugins.kv_cluster"), "{err}");

        let text = format!("{MINIMAL}[plugins]\nkv_ca_file = \"ca.pem\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("needs plugins.kv_url"), "{err}");
    }

    #[test]
    fn authentication_settings() {
        let auth = parse(MINIMAL).unwrap().authentication;
        assert!(auth.verify);
        assert!(!auth.dmarc_enforce);
        assert_eq!(auth.authserv_id, "localhost");
        assert!(auth.dkim_sign.is_empty() && auth.arc_seal.is_none());
        let text = format!(
            "{MINIMAL}[authentication]\nauthserv_id = \"mx.example.org\"\ndmarc_enforce = true\narc_seal = {{ domain = \"example.org\", selector = \"arc\", key_file = \"arc.pem\" }}\n[[dkim_sign]]\ndomain = \"example.org\"\nselector = \"s1\"\nkey_file = \"keys/s1.pem\"\nheaders = [\"From\", \"Subject\"]\n"
        );
        let auth = parse(&text).unwrap().authentication;
        assert_eq!(auth.authserv_id, "mx.example.org");
        assert!(auth.dmarc_enforce);
        assert_eq!(auth.dkim_sign.len(), 1);
        assert_eq!(
            auth.dkim_sign[0].key_file,
            Path::new("/etc/postrider/keys/s1.pem")
        );
        assert_eq!(auth.dkim_sign[0].headers, ["From", "Subject"]);
        assert_eq!(
            auth.arc_seal.unwrap().key_file,
            Path::new("/etc/postrider/arc.pem")
        );
        let dup = format!(
            "{MINIMAL}[[dkim_sign]]\ndomain = \"a.example\"\nselector = \"s\"\nkey_file = \"k\"\n[[dkim_sign]]\ndomain = \"A.example\"\nselector = \"t\"\nkey_file = \"k\"\n"
        );
        let err = parse(&dup).unwrap_err().to_string();
        assert!(err.contains("dkim_sign[1].domain"), "{err}");
        let bad = format!("{MINIMAL}[authentication]\nauthserv_id = \"a b\"\n");
        assert!(parse(&bad).unwrap_err().to_string().contains("authserv_id"));
        let unknown = format!(
            "{MINIMAL}[[dkim_sign]]\ndomain = \"a\"\nselector = \"s\"\nkey_file = \"k\"\nalgo = 1\n"
        );
        assert!(parse(&unknown).unwrap_err().to_string().contains("algo"));
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let text = format!("{MINIMAL}\n[limits]\nmax_recipients = 10\nmax_frobs = 3\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("test.toml:8:"), "{err}");
        assert!(err.contains("max_frobs"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let text = format!("{MINIMAL}[timeouts]\ncommand = \"soon\"\n");
        let err = parse(&text).unwrap_err();
        match &err {
            ConfigError::Parse { line, key, .. } => {
                assert_eq!(*line, 6);
                assert_eq!(key, "command");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_toml_syntax_is_located() {
        let err = parse("hostname = \n").unwrap_err().to_string();
        assert!(err.starts_with("test.toml:1:"), "{err}");
    }

    #[test]
    fn bad_address_names_listener_key_and_line() {
        let text = "[[listener]]\nname = \"a\"\nkind = \"smtp\"\naddress = \"localhost:25\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml:4: key `listener[0].address`"),
            "{err}"
        );
    }

    #[test]
    fn bad_network_names_index_and_line() {
        let text =
            format!("{MINIMAL}[relay]\nrelay_networks = [\"10.0.0.0/8\",\n  \"300.1.1.1\"]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml:7: key `relay.relay_networks[1]`"),
            "{err}"
        );
    }

    #[test]
    fn submission_needs_tls() {
        let text =
            "[[listener]]\nname = \"sub\"\naddress = \"127.0.0.1:587\"\nkind = \"submission\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("listener[0].kind"), "{err}");
    }

    #[test]
    fn duplicate_listener_names_refused() {
        let text = format!("{MINIMAL}{MINIMAL}");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("listener[1].name")
        );
    }

    #[test]
    fn relay_checks() {
        let text = format!(
            "{MINIMAL}[relay]\nlocal_domains = [\"Example.ORG.\"]\nrelay_networks = [\"192.0.2.0/24\", \"::1\"]\n"
        );
        let relay = parse(&text).unwrap().relay;
        assert!(relay.is_local_domain("example.org"));
        assert!(relay.is_local_domain("EXAMPLE.org."));
        assert!(!relay.is_local_domain("sub.example.org"));
        assert!(relay.is_relay_client("192.0.2.7".parse().unwrap()));
        assert!(relay.is_relay_client("::ffff:192.0.2.7".parse().unwrap()));
        assert!(relay.is_relay_client("::1".parse().unwrap()));
        assert!(!relay.is_relay_client("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn plugins_in_order_with_config_as_json() {
        let text = format!(
            "{MINIMAL}[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\nconfig = {{ zones = [\"x.test\"], n = 3 }}\n\
             [[plugin]]\nname = \"b\"\npath = \"/p/b.wasm\"\nfailure_policy = \"continue\"\ntimeout_ms = 50\nmemory_mb = 8\n\
             reuse = 100\npool_idle = 4\n\
             [dns]\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n"
        );
        let config = parse(&text).unwrap();
        let names: Vec<_> = config.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(config.plugins[0].path, Path::new("/etc/postrider/a.wasm"));
        assert_eq!(
            config.plugins[0].config_json,
            r#"{"n":3,"zones":["x.test"]}"#
        );
        assert_eq!(config.plugins[0].failure_policy, FailurePolicy::Tempfail);
        assert_eq!(
            (config.plugins[1].timeout_ms, config.plugins[1].memory_mb),
            (50, 8)
        );
        assert_eq!(config.plugins[1].failure_policy, FailurePolicy::Continue);
        assert_eq!(
            (config.plugins[0].reuse, config.plugins[0].pool_idle),
            (1, 8)
        );
        assert_eq!(
            (config.plugins[1].reuse, config.plugins[1].pool_idle),
            (100, 4)
        );
        assert_eq!(config.plugins[1].config_json, "{}");
        assert_eq!(
            config.nameservers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            config.plugin_settings.kv_path,
            Path::new("/etc/postrider/var/kv.redb")
        );
    }

    #[test]
    fn bad_plugin_settings_are_located() {
        let base = format!("{MINIMAL}[[plugin]]\nname = \"a\"\npath = \"a.wasm\"\n");
        let err = parse(&format!("{base}timeout_ms = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:8: key `plugin[0].timeout_ms`"),
            "{err}"
        );
        let err = parse(&format!("{base}failure_policy = \"explode\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:8:"), "{err}");
        let err = parse(&format!(
            "{base}[[plugin]]\nname = \"a\"\npath = \"b.wasm\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("plugin[1].name"), "{err}");
        let err = parse(&format!("{base}reuse = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:8: key `plugin[0].reuse`"),
            "{err}"
        );
        let err = parse(&format!("{base}pool_idle = 4\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:8: key `plugin[0].pool_idle`") && err.contains("reuse"),
            "{err}"
        );
        let err = parse(&format!("{base}reuse = 10\npool_idle = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("test.toml:9: key `plugin[0].pool_idle`"),
            "{err}"
        );
        let err = parse(&format!("{base}reuse = 10\npool_size = 4\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pool_size"), "{err}");
    }

    #[test]
    fn routes_and_delivery_settings() {
        let text = format!(
            "{MINIMAL}[delivery]\nsmtp_port = 2525\nretry_intervals = [1, 2]\n\
             [[route]]\ndomains = [\"Relay.Test\", \"*.corp.test\"]\nrelay = \"127.0.0.2:2526\"\ntls = \"none\"\n\
             [[route]]\ndomains = [\"local.test\"]\nlmtp = \"unix:/run/lmtp\"\n"
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.delivery.smtp_port, 2525);
        assert_eq!(config.delivery.retry_intervals, [1, 2]);
        let relay = RouteTarget::Relay {
            host: "127.0.0.2".into(),
            port: 2526,
            tls: TlsPolicy::None,
            auth: None,
        };
        assert_eq!(config.route_for("relay.test.").map(|r| &r.to), Some(&relay));
        assert_eq!(config.route_for("a.corp.test").map(|r| &r.to), Some(&relay));
        assert_eq!(config.route_for("corp.test"), None);
        assert_eq!(
            config.route_for("LOCAL.test").map(|r| &r.to),
            Some(&RouteTarget::Lmtp("unix:/run/lmtp".into()))
        );
        let err = parse(&format!(
            "{MINIMAL}[[route]]\ndomains = [\"x.test\"]\nrelay = \"h:0\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("route[0].relay"), "{err}");
        let err = parse(&format!("{MINIMAL}[[route]]\ndomains = [\"x.test\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("exactly one of relay and lmtp"), "{err}");
    }

    #[test]
    fn admin_http_listener() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(
            config.admin.http, None,
            "no HTTP listener unless configured"
        );
        assert_eq!(config.admin.metrics_domains, 20);
        let text = format!("{MINIMAL}[admin]\nhttp = \"127.0.0.1:9587\"\nmetrics_domains = 5\n");
        let admin = parse(&text).unwrap().admin;
        assert_eq!(admin.http, Some("127.0.0.1:9587".parse().unwrap()));
        assert_eq!(admin.metrics_domains, 5);
        let err = parse(&format!("{MINIMAL}[admin]\nhttp = \"localhost:80\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:6: key `admin.http`"), "{err}");
        let err = parse(&format!("{MINIMAL}[admin]\nlisten = \"127.0.0.1:1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:6:"), "{err}");
        assert!(err.contains("listen"), "{err}");
        let embedded = Config::embedded().unwrap().admin.http.unwrap();
        assert!(embedded.ip().is_loopback(), "{embedded}");
    }

    #[test]
    fn load_reports_missing_file() {
        let err = Config::load(Path::new("/nonexistent/postrider.toml")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/postrider.toml:"));
    }
}
