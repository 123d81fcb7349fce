//! The TOML as written: serde's input types, with spans for error locations and the
//! defaults of every key. [`crate::validate`] turns them into [`crate::Config`].

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::schema::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default = "default_hostname")]
    pub(crate) hostname: Spanned<String>,
    #[serde(default = "default_spool_dir")]
    pub(crate) spool_dir: PathBuf,
    #[serde(default = "default_admin_socket")]
    pub(crate) admin_socket: PathBuf,
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) listener: Vec<RawListener>,
    #[serde(default)]
    pub(crate) certificate: Vec<RawCertificate>,
    #[serde(default)]
    pub(crate) relay: RawRelay,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) timeouts: Timeouts,
    #[serde(default)]
    pub(crate) smtp_auth: SmtpAuth,
    #[serde(default)]
    pub(crate) plugins: RawPluginSettings,
    #[serde(default)]
    pub(crate) plugin: Vec<RawPlugin>,
    #[serde(default)]
    pub(crate) milter: Vec<RawMilter>,
    #[serde(default)]
    pub(crate) dns: RawDns,
    #[serde(default)]
    pub(crate) delivery: Delivery,
    #[serde(default)]
    pub(crate) route: Vec<RawRoute>,
    #[serde(default)]
    pub(crate) tls_policy: Vec<RawTlsPolicy>,
    #[serde(default)]
    pub(crate) authentication: RawAuthentication,
    #[serde(default)]
    pub(crate) dkim_sign: Vec<SigningKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuthentication {
    pub(crate) verify: bool,
    pub(crate) authserv_id: Option<String>,
    pub(crate) dmarc_enforce: bool,
    pub(crate) timeout_ms: u64,
    pub(crate) arc_seal: Option<SigningKey>,
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
pub(crate) struct RawAdmin {
    pub(crate) http: Option<Spanned<String>>,
    pub(crate) metrics_domains: usize,
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
pub(crate) struct RawTlsPolicy {
    pub(crate) domains: Spanned<Vec<String>>,
    pub(crate) tls: TlsPolicy,
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) domains: Spanned<Vec<String>>,
    pub(crate) relay: Option<Spanned<String>>,
    pub(crate) lmtp: Option<Spanned<String>>,
    pub(crate) maildir: Option<Spanned<PathBuf>>,
    pub(crate) tls: Option<Spanned<TlsPolicy>>,
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
    pub(crate) auth_user: Option<String>,
    pub(crate) auth_password: Option<String>,
    pub(crate) insecure_auth: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPluginSettings {
    pub(crate) cache_dir: PathBuf,
    pub(crate) kv_path: PathBuf,
    pub(crate) kv_url: Option<Spanned<String>>,
    pub(crate) kv_cluster: Spanned<String>,
    pub(crate) kv_ca_file: Option<PathBuf>,
    pub(crate) max_instances: u32,
    pub(crate) kv_timeout_ms: u64,
    pub(crate) dns_timeout_ms: u64,
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
pub(crate) struct RawPlugin {
    pub(crate) name: Spanned<String>,
    pub(crate) path: PathBuf,
    #[serde(default)]
    pub(crate) config: Option<toml::Table>,
    #[serde(default = "default_failure_policy")]
    pub(crate) failure_policy: FailurePolicy,
    #[serde(default = "default_plugin_timeout")]
    pub(crate) timeout_ms: Spanned<u64>,
    #[serde(default = "default_plugin_memory")]
    pub(crate) memory_mb: Spanned<u32>,
    #[serde(default = "default_plugin_reuse")]
    pub(crate) reuse: Spanned<u32>,
    #[serde(default)]
    pub(crate) pool_idle: Option<Spanned<u32>>,
    #[serde(default)]
    pub(crate) log_level: Option<crate::PluginLogLevel>,
    #[serde(default)]
    pub(crate) allow_http: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) allow_connect: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) allow_udp: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(crate) max_http_response_kb: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMilter {
    pub(crate) name: Spanned<String>,
    pub(crate) address: Spanned<String>,
    #[serde(default = "default_milter_stages")]
    pub(crate) stages: Spanned<Vec<crate::Stage>>,
    #[serde(default)]
    pub(crate) after: Option<Spanned<String>>,
    #[serde(default = "default_failure_policy")]
    pub(crate) failure_policy: FailurePolicy,
    #[serde(default = "default_milter_connect_timeout")]
    pub(crate) connect_timeout_ms: Spanned<u64>,
    #[serde(default = "default_milter_command_timeout")]
    pub(crate) command_timeout_ms: Spanned<u64>,
    #[serde(default = "default_milter_content_timeout")]
    pub(crate) content_timeout_ms: Spanned<u64>,
}

fn default_milter_stages() -> Spanned<Vec<crate::Stage>> {
    use crate::Stage::*;
    Spanned::new(0..0, vec![Connect, Helo, MailFrom, Rcpt, Data])
}

// Postfix's milter_connect_timeout, milter_command_timeout and milter_content_timeout.
fn default_milter_connect_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}

fn default_milter_command_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}

fn default_milter_content_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 300_000)
}

pub(crate) fn default_failure_policy() -> FailurePolicy {
    FailurePolicy::Tempfail
}

pub(crate) fn default_plugin_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 2000)
}

pub(crate) fn default_plugin_memory() -> Spanned<u32> {
    Spanned::new(0..0, 32)
}

pub(crate) fn default_plugin_reuse() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// Idle instances kept per plugin when `reuse` > 1 and `pool_idle` is not set.
pub(crate) const DEFAULT_POOL_IDLE: u32 = 8;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    #[serde(default)]
    pub(crate) nameservers: Vec<Spanned<String>>,
    pub(crate) trust_anchor: Option<PathBuf>,
}

pub(crate) fn default_hostname() -> Spanned<String> {
    Spanned::new(0..0, "localhost".to_owned())
}

pub(crate) fn default_admin_socket() -> PathBuf {
    PathBuf::from("var/admin.sock")
}

pub(crate) fn default_spool_dir() -> PathBuf {
    PathBuf::from("var/spool")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Spanned<String>,
    pub(crate) address: Spanned<String>,
    pub(crate) kind: ListenerKind,
    pub(crate) tls_cert: Option<Spanned<PathBuf>>,
    pub(crate) tls_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(crate) proxy_protocol: Option<Spanned<bool>>,
    #[serde(default)]
    pub(crate) proxy_trusted: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) names: Spanned<Vec<String>>,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRelay {
    #[serde(default)]
    pub(crate) local_domains: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) relay_networks: Vec<Spanned<String>>,
    pub(crate) passwords: Option<PathBuf>,
}
