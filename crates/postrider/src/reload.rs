//! Hot reload: configuration generations, built whole and swapped atomically.
//!
//! A [`Generation`] is everything that follows from one configuration file: the validated
//! [`Config`], the password file, the listeners' TLS acceptors and the plugin pipeline. The
//! [`Reloader`] builds a new generation when the config or a file it names changes (a
//! debounced `notify` watcher), on SIGHUP, or when `postrider reload` asks on the admin
//! socket. Building parses and validates the config, reads the password file and
//! certificates, and compiles and canary-initialises every changed plugin (unchanged ones are
//! reused); only when all of that succeeded is the generation swapped in. A failed build keeps
//! the running generation, is logged with its reason, and is retried at the next change.
//!
//! Sessions take the generation current when they connect and keep it to their end; new
//! sessions and the queue manager's routing use the current one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use postrider_config::Config;
use postrider_plugin_host::{Pipeline, TokioResolver};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::email_auth::EmailAuth;
use crate::passwords::Passwords;
use crate::plugins::PluginBuilder;
use crate::server::Listeners;
use crate::systemd;

/// How long the watched files must be quiet before a change is acted on: an editor's or a
/// copy's several writes make one reload, and a half-written file is not read.
pub const DEBOUNCE: Duration = Duration::from_millis(400);

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
    /// The plugin chain, when plugins are configured.
    pub pipeline: Option<Arc<Pipeline>>,
    /// SPF/DKIM/DMARC/ARC verification and DKIM signing.
    pub auth: Arc<EmailAuth>,
    /// When it was built.
    pub loaded_at: std::time::SystemTime,
}

impl Generation {
    /// The files this generation was built from, which a change to should reload.
    fn files(&self, config_path: Option<&Path>) -> BTreeSet<PathBuf> {
        files_of(&self.config, config_path)
    }
}

/// The generation new sessions and the queue manager use; swapped whole by a reload.
pub type Current = Arc<ArcSwap<Generation>>;

/// The config file, every plugin component, certificate, key and the password file.
fn files_of(config: &Config, config_path: Option<&Path>) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.extend(config_path.map(Path::to_owned));
    files.extend(config.plugins.iter().map(|p| p.path.clone()));
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            files.insert(tls.cert.clone());
            files.insert(tls.key.clone());
        }
    }
    files.extend(config.relay.passwords.clone());
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
        let tls = tokio::task::spawn_blocking(move || {
            let mut tls = HashMap::new();
            for listener in &listeners {
                if let Some(files) = &listener.tls {
                    let acceptor = crate::tls::acceptor(files)
                        .with_context(|| format!("listener {}", listener.name))?;
                    tls.insert(listener.name.clone(), acceptor);
                }
            }
            anyhow::Ok(tls)
        })
        .await
        .context("reading the certificates")??;
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

    fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(path) => Some(path),
            ConfigSource::Embedded => None,
        }
    }
}

/// Builds and swaps generations, one reload at a time.
pub struct Reloader {
    source: ConfigSource,
    current: Current,
    builder: GenerationBuilder,
    listeners: tokio::sync::Mutex<Listeners>,
    /// The files a change to should reload (sent to the watcher).
    watched: watch::Sender<BTreeSet<PathBuf>>,
    metrics: Arc<postrider_metrics::Metrics>,
}

impl Reloader {
    /// A reloader for the running generation `current` and its running `listeners`.
    pub fn new(
        source: ConfigSource,
        current: Current,
        builder: GenerationBuilder,
        listeners: Listeners,
        metrics: Arc<postrider_metrics::Metrics>,
    ) -> Reloader {
        let files = current.load().files(source.path());
        Reloader {
            source,
            current,
            builder,
            listeners: tokio::sync::Mutex::new(listeners),
            watched: watch::Sender::new(files),
            metrics,
        }
    }

    /// The generation in use now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The running listeners (the shutdown stops them).
    pub fn listeners(&self) -> &tokio::sync::Mutex<Listeners> {
        &self.listeners
    }

    /// Builds a new generation and swaps it in; on failure the running one stays, and the
    /// failure is logged. `trigger` says what asked (for the log). Returns the new number.
    pub async fn reload(&self, trigger: &str) -> anyhow::Result<u64> {
        // Holding the listeners for the whole reload also serialises reloads.
        let mut listeners = self.listeners.lock().await;
        let started = Instant::now();
        let previous = self.current.load_full();
        let number = previous.number + 1;
        info!(trigger, generation = number, "reloading");
        systemd::reloading();
        let result = self.try_reload(&previous, number, &mut listeners).await;
        self.metrics
            .reload(result.as_ref().map(|()| number).map_err(|_| ()));
        match &result {
            Ok(()) => {
                info!(
                    trigger,
                    generation = number,
                    ms = started.elapsed().as_millis() as u64,
                    "reload done: new sessions use the new configuration"
                );
                systemd::ready(&format!("accepting mail (config generation {number})"));
            }
            Err(e) => {
                error!(
                    trigger,
                    generation = previous.number,
                    error = %format!("{e:#}"),
                    "reload failed: keeping the running configuration"
                );
                systemd::ready(&format!(
                    "accepting mail (config generation {}; the last reload failed)",
                    previous.number
                ));
            }
        }
        result.map(|()| number)
    }

    async fn try_reload(
        &self,
        previous: &Arc<Generation>,
        number: u64,
        listeners: &mut Listeners,
    ) -> anyhow::Result<()> {
        let config = self.source.load().await;
        // Watch what the new config names too, so that fixing a file it names retries.
        let mut files = previous.files(self.source.path());
        if let Ok(config) = &config {
            files.extend(files_of(config, self.source.path()));
        }
        self.watched.send_if_modified(|w| {
            let changed = *w != files;
            *w = files;
            changed
        });
        let config = config?;
        warn_restart_only(&previous.config, &config);
        let generation = self.builder.build(number, config, Some(previous)).await?;
        let plan = listeners
            .prepare(&generation.config.listeners)
            .await
            .context("listeners")?;
        let generation = Arc::new(generation);
        self.current.store(Arc::clone(&generation));
        listeners.commit(plan);
        // Warm instances of plugins the new generation replaced must not serve it.
        if let Some(old) = &previous.pipeline {
            old.retire_replaced(generation.pipeline.as_deref());
        }
        // From now on only what the running generation names is watched.
        let files = generation.files(self.source.path());
        self.watched.send_if_modified(|w| {
            let changed = *w != files;
            *w = files;
            changed
        });
        Ok(())
    }
}

/// Logs the settings a reload cannot change in a running relay.
fn warn_restart_only(old: &Config, new: &Config) {
    let mut changed = Vec::new();
    if old.spool_dir != new.spool_dir {
        changed.push("spool_dir");
    }
    if old.admin_socket != new.admin_socket {
        changed.push("admin_socket");
    }
    if old.admin != new.admin {
        changed.push("admin (http, metrics_domains)");
    }
    if old.nameservers != new.nameservers {
        changed.push("dns.nameservers");
    }
    if old.limits.max_connections != new.limits.max_connections {
        changed.push("limits.max_connections");
    }
    if old.timeouts.shutdown_grace != new.timeouts.shutdown_grace {
        changed.push("timeouts.shutdown_grace");
    }
    let (od, nd) = (&old.delivery, &new.delivery);
    if od.concurrency != nd.concurrency
        || od.retry_intervals != nd.retry_intervals
        || od.max_age != nd.max_age
        || od.delay_warning != nd.delay_warning
        || od.smtp_port != nd.smtp_port
        || od.connect_timeout != nd.connect_timeout
        || od.reply_timeout != nd.reply_timeout
    {
        changed.push("delivery (concurrency, retries, ports, timeouts)");
    }
    if old.hostname != new.hostname {
        // Sessions use the new name at once; outbound HELO keeps the old one.
        changed.push("hostname (for outbound HELO)");
    }
    if !changed.is_empty() {
        warn!(
            settings = changed.join(", "),
            "changed settings need a restart to take effect; the running values stay"
        );
    }
}

/// Installs the SIGHUP handler (before anything else starts: the default action of SIGHUP
/// would end the process); hand it to [`on_sighup`] once the relay runs.
pub fn sighup_handler() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup()).context("SIGHUP handler")
}

/// Reloads at every SIGHUP `hup` receives.
pub fn on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: Arc<Reloader>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP");
            // A failure is logged by reload; the next SIGHUP or change retries.
            let _ = reloader.reload("SIGHUP").await;
        }
    })
}

/// Watches the config file and every file it names, and reloads once they have been quiet
/// for [`DEBOUNCE`] after a change. Parent directories are watched, not the files: editors,
/// `cp` and `mv` replace a file's inode, and a watch on the old inode would see nothing.
pub fn watch_files(reloader: Arc<Reloader>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let filter = Arc::clone(&files);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        match res {
            // Reads (ours included) are not changes.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            Ok(event) => {
                let files = filter.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(path) = event.paths.iter().find(|p| files.contains(*p)) {
                    let _ = tx.send(path.clone());
                }
            }
            Err(e) => warn!(error = %e, "file watcher error"),
        }
    })
    .context("starting the file watcher")?;
    let mut paths = reloader.watched.subscribe();
    Ok(tokio::spawn(async move {
        let mut dirs = HashSet::new();
        let wanted = paths.borrow_and_update().clone();
        rewatch(&mut watcher, &mut dirs, &files, wanted);
        loop {
            tokio::select! {
                changed = paths.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let wanted = paths.borrow_and_update().clone();
                    rewatch(&mut watcher, &mut dirs, &files, wanted);
                }
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    debug!(file = %first.display(), "watched file changed");
                    let mut changed = BTreeSet::from([first]);
                    // Act only once the files have been quiet for the debounce period.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some(path)) => {
                                changed.insert(path);
                            }
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    let names: Vec<String> =
                        changed.iter().map(|p| p.display().to_string()).collect();
                    info!(files = names.join(", "), "watched files changed");
                    // A failure is logged by reload; the next change retries.
                    let _ = reloader.reload("file change").await;
                }
            }
        }
    }))
}

/// Makes the watcher watch the parent directory of every file in `wanted`, and nothing else.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    dirs: &mut HashSet<PathBuf>,
    files: &Mutex<HashSet<PathBuf>>,
    wanted: BTreeSet<PathBuf>,
) {
    let new_dirs: HashSet<PathBuf> = wanted
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .collect();
    for dir in dirs.difference(&new_dirs) {
        if let Err(e) = watcher.unwatch(dir) {
            debug!(dir = %dir.display(), error = %e, "unwatching");
        }
    }
    dirs.retain(|d| new_dirs.contains(d));
    for dir in new_dirs {
        if dirs.contains(&dir) {
            continue;
        }
        // A directory that cannot be watched now (missing) is tried again next time.
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                debug!(dir = %dir.display(), "watching");
                dirs.insert(dir);
            }
            Err(e) => warn!(dir = %dir.display(), error = %e, "cannot watch directory"),
        }
    }
    *files.lock().unwrap_or_else(|p| p.into_inner()) = wanted.into_iter().collect();
}
