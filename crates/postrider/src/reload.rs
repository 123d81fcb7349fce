//! Hot reload: builds a new [`Generation`] when asked (SIGHUP, `postrider reload`, a watched
//! file changed), swaps it in only when all of it succeeded, and rebinds the listeners.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use postrider_config::Config;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::generation::{ConfigSource, Current, Generation, GenerationBuilder, files_of};
use crate::inbound::listeners::Listeners;
use crate::status::ReloadFailure;
use crate::systemd;

/// Builds and swaps generations, one reload at a time.
pub struct Reloader {
    source: ConfigSource,
    current: Current,
    builder: GenerationBuilder,
    listeners: tokio::sync::Mutex<Listeners>,
    /// The files a change to should reload (sent to the watcher).
    watched: watch::Sender<BTreeSet<PathBuf>>,
    metrics: Arc<postrider_metrics::Metrics>,
    /// The last reload's failure, until a reload succeeds.
    failure: std::sync::Mutex<Option<ReloadFailure>>,
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
            failure: std::sync::Mutex::new(None),
        }
    }

    /// The generation in use now.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Why the last reload failed, unless one succeeded since.
    pub fn failure(&self) -> Option<ReloadFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The files whose change should reload, as they change (for the watcher).
    pub fn watched(&self) -> watch::Receiver<BTreeSet<PathBuf>> {
        self.watched.subscribe()
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
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(|e| ReloadFailure {
                at: crate::status::unix_secs(std::time::SystemTime::now()),
                trigger: trigger.to_owned(),
                error: format!("{e:#}"),
            });
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
    if old.trust_anchor != new.trust_anchor {
        changed.push("dns.trust_anchor");
    }
    if old.limits.max_connections != new.limits.max_connections {
        changed.push("limits.max_connections");
    }
    if old.limits.message_memory != new.limits.message_memory {
        changed.push("limits.message_memory");
    }
    if old.smtp_auth.max_concurrent_checks != new.smtp_auth.max_concurrent_checks
        || old.smtp_auth.max_waiting_checks != new.smtp_auth.max_waiting_checks
    {
        changed.push("smtp_auth (max_concurrent_checks, max_waiting_checks)");
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
