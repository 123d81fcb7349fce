//! Configuration generations, built whole and swapped atomically.
//!
//! A [`Generation`] is everything that follows from one configuration file: the validated
//! [`Config`], the password file, the listeners' TLS acceptors, the CA files of verified
//! outbound TLS and the plugin pipeline. The
//! [`crate::reload::Reloader`] builds a new generation when the config or a file it names changes (a
//! debounced `notify` watcher), on SIGHUP, or when `postrider reload` asks on the admin
//! socket. Building parses and validates the config, reads the password file and
//! certificates, and compiles and canary-initialises every changed plugin (unchanged ones are
//! reused); only when all of that succeeded is the generation swapped in. A failed build keeps
//! the running generation, is logged with its reason, and is retried at the next change.
//!
//! Sessions take the generation current when they connect and keep it to their end; new
//! sessions and the queue manager's routing use the current one.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use postrider_config::{Config, RouteTarget};
use postrider_delivery::TrustRoots;
use postrider_plugin_host::{Pipeline, TokioResolver};
use tokio_rustls::TlsAcceptor;

use crate::inbound::email_auth::EmailAuth;
use crate::inbound::passwords::Passwords;
use crate::plugins::PluginBuilder;

/// Everything that follows from one configuration file.
pub struct Generation {
    /// Counts up from 1 (the configuration the relay started with).
    pub number: u64,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// AUTH users, when a password file is configured.
    pub passwords: Option<Arc<Passwords>>,
    /// TLS acceptor of each listener that has a certificate, by listener name.
    pub tls: HashMap<String, TlsAcceptor>,
    /// The roots of each `ca_file` the config names (`[delivery]` and routes), by path.
    pub ca_roots: HashMap<PathBuf, TrustRoots>,
    /// The plugin chain, when plugins are configured.
    pub pipeline: Option<Arc<Pipeline>>,
    /// SPF/DKIM/DMARC/ARC verification and DKIM signing.
    pub auth: Arc<EmailAuth>,
    /// When it was built.
    pub loaded_at: std::time::SystemTime,
}

impl Generation {
    /// The files this generation was built from, which a change to should reload.
    pub fn files(&self, config_path: Option<&Path>) -> BTreeSet<PathBuf> {
        files_of(&self.config, config_path)
    }
}

/// The generation new sessions and the queue manager use; swapped whole by a reload.
pub type Current = Arc<ArcSwap<Generation>>;

/// The config file, every plugin component, certificate, key and the password file.
pub fn files_of(config: &Config, config_path: Option<&Path>) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.extend(config_path.map(Path::to_owned));
    files.extend(
        config
            .plugins
            .iter()
            .filter(|p| p.builtin().is_none())
            .map(|p| p.path.clone()),
    );
    let certificates = config.certificates.iter().map(|c| &c.files);
    for tls in config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .chain(certificates)
    {
        files.insert(tls.cert.clone());
        files.insert(tls.key.clone());
    }
    files.extend(config.relay.passwords.clone());
    files.extend(ca_files(config).map(Path::to_owned));
    let auth = &config.authentication;
    files.extend(
        auth.dkim_sign
            .iter()
            .chain(&auth.arc_seal)
            .map(|k| k.key_file.clone()),
    );
    files
        .into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

/// The CA files of verified outbound TLS.
fn ca_files(config: &Config) -> impl Iterator<Item = &Path> {
    config.outbound_tls().filter_map(|(_, ca_file)| ca_file)
}

/// Builds generations; holds the parts every generation shares.
pub struct GenerationBuilder {
    plugins: PluginBuilder,
    resolver: TokioResolver,
}

impl GenerationBuilder {
    /// A builder whose plugin engine (created at the first config with plugins) is shared.
    pub fn new(plugins: PluginBuilder, resolver: TokioResolver) -> GenerationBuilder {
        GenerationBuilder { plugins, resolver }
    }

    /// Builds generation `number` from `config`, reusing what `previous` already loaded.
    pub async fn build(
        &self,
        number: u64,
        config: Config,
        previous: Option<&Generation>,
    ) -> anyhow::Result<Generation> {
        let passwords = match config.relay.passwords.clone() {
            Some(path) => Some(Arc::new(
                tokio::task::spawn_blocking(move || Passwords::load(&path))
                    .await
                    .context("reading the password file")??,
            )),
            None => None,
        };
        let listeners = config.listeners.clone();
        let certificates = config.certificates.clone();
        let tls = tokio::task::spawn_blocking(move || {
            let mut tls = HashMap::new();
            for listener in &listeners {
                if let Some(files) = &listener.tls {
                    let acceptor = crate::inbound::tls::acceptor(files, &certificates)
                        .with_context(|| format!("listener {}", listener.name))?;
                    tls.insert(listener.name.clone(), acceptor);
                }
            }
            anyhow::Ok(tls)
        })
        .await
        .context("reading the certificates")??;
        let files: Vec<PathBuf> = ca_files(&config).map(Path::to_owned).collect();
        let ca_roots = tokio::task::spawn_blocking(move || {
            let mut roots = HashMap::new();
            for file in files {
                let loaded = TrustRoots::from_file(&file)?;
                roots.insert(file, loaded);
            }
            anyhow::Ok(roots)
        })
        .await
        .context("reading the CA files")??;
        for route in &config.routes {
            if let RouteTarget::Relay {
                host,
                port,
                insecure_auth: true,
                ..
            } = &route.to
            {
                tracing::warn!(
                    domains = ?route.domains,
                    relay = %format!("{host}:{port}"),
                    "insecure_auth: this route sends its credentials over TLS whose certificate \
                     is not verified"
                );
            }
        }
        let auth_config = config.authentication.clone();
        let resolver = self.resolver.clone();
        let auth = tokio::task::spawn_blocking(move || EmailAuth::load(&auth_config, resolver))
            .await
            .context("reading the signing keys")??;
        let pipeline = self
            .plugins
            .build(&config, previous.and_then(|g| g.pipeline.as_ref()))
            .await?;
        Ok(Generation {
            number,
            config: Arc::new(config),
            passwords,
            tls,
            ca_roots,
            pipeline,
            auth: Arc::new(auth),
            loaded_at: std::time::SystemTime::now(),
        })
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file, re-read at every reload.
    File(PathBuf),
    /// The embedded default (only the files it names can change).
    Embedded,
}

impl ConfigSource {
    /// Reads and validates the configuration (on a blocking thread).
    pub async fn load(&self) -> anyhow::Result<Config> {
        let source = self.clone();
        tokio::task::spawn_blocking(move || match source {
            ConfigSource::File(path) => Config::load(&path),
            ConfigSource::Embedded => Config::embedded(),
        })
        .await
        .context("reading the configuration")?
        .map_err(Into::into)
    }

    /// The config file, unless the embedded default runs.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(path) => Some(path),
            ConfigSource::Embedded => None,
        }
    }
}
