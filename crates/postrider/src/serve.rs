//! `postrider serve`: opens the spool, builds the first configuration generation, starts the
//! queue manager, the listeners, the admin socket and the reload triggers, and shuts down
//! gracefully on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use postrider_config::Config;
use postrider_queue::{Spool, SpoolOptions};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::admin_http::{self, Readiness};
use crate::admin_socket::{Admin, admin_socket};
use crate::generation::{ConfigSource, Current, GenerationBuilder};
use crate::inbound::Shared;
use crate::inbound::auth_throttle::AuthThrottle;
use crate::inbound::listeners::Listeners;
use crate::inbound::message_memory::MessageMemory;
use crate::inbound::passwords::PasswordChecks;
use crate::plugins::{PluginBuilder, open_redis};
use crate::queue::manager::{self};
use crate::reload::Reloader;
use crate::systemd;
use postrider_delivery::{Deliverer, DeliveryOptions, MtaSts, StsOptions, TrustRoots};
use postrider_kv::{Clock, SystemClock};
use postrider_metrics::Metrics;
use postrider_plugin_host::{Dns, HickoryDns};

/// Tells the metrics how long each spool sync took.
#[derive(Debug)]
struct SpoolSyncs(Arc<Metrics>);

impl postrider_queue::SyncObserver for SpoolSyncs {
    fn synced(&self, op: postrider_queue::SyncOp, elapsed: Duration) {
        self.0.spool_sync(op.as_str(), elapsed);
    }
}

/// The resolver `[dns] nameservers` names, or the system's.
pub fn dns_of(config: &Config) -> anyhow::Result<HickoryDns> {
    if config.nameservers.is_empty() {
        HickoryDns::from_system().context("reading the system resolver configuration")
    } else {
        HickoryDns::with_nameservers(&config.nameservers).context("building the DNS resolver")
    }
}

/// The DNSSEC-validating resolver of DANE: the same nameservers, `[dns] trust_anchor` or
/// the root zone's keys.
fn validating_dns_of(config: &Config) -> anyhow::Result<HickoryDns> {
    let servers = (!config.nameservers.is_empty()).then_some(config.nameservers.as_slice());
    HickoryDns::validating(servers, config.trust_anchor.as_deref())
        .context("building the DNSSEC-validating resolver")
}

/// Runs the relay until SIGTERM/SIGINT, then drains sessions within the grace period.
/// `config` was loaded from `source`, which reloads re-read; with `watch` a change to the
/// config file or a file it names reloads by itself (SIGHUP and `postrider reload` always do).
pub async fn serve(source: ConfigSource, config: Config, watch: bool) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives while starting must not kill the process.
    let shutdown_signal = wait_for_signal()?;
    let hup = crate::watch::sighup_handler()?;
    let started = std::time::SystemTime::now();
    let metrics = Arc::new(Metrics::new(
        env!("CARGO_PKG_VERSION"),
        config.admin.metrics_domains,
    ));
    // The admin HTTP listener comes first: /health answers (and /ready says 503) while the
    // spool is recovered and the plugins are compiled, which can take a while.
    let ready = Arc::new(Readiness::default());
    let (http, http_address) = match config.admin.http {
        Some(address) => {
            let listener = admin_http::bind(address).await?;
            let bound = listener.local_addr().ok();
            let task = admin_http::serve(listener, Arc::clone(&metrics), Arc::clone(&ready));
            (Some(task), bound)
        }
        None => (None, None),
    };
    let (spool, recovery) = Spool::open(&config.spool_dir, SpoolOptions::default())
        .with_context(|| format!("opening spool {}", config.spool_dir.display()))?;
    spool.set_sync_observer(Arc::new(SpoolSyncs(Arc::clone(&metrics))));
    info!(
        dir = %config.spool_dir.display(),
        recovered = recovery.recovered.len(),
        removed_partial = recovery.removed_partial,
        corrupt = recovery.corrupt.len(),
        "spool opened"
    );

    // One resolver for the relay's whole life: plugins and delivery share it, across reloads.
    let hickory = dns_of(&config)?;
    // One resolver (and cache) for delivery, plugins and email authentication.
    let resolver = hickory.resolver();
    let dns: Arc<dyn Dns> = Arc::new(hickory);
    let system_roots = tokio::task::spawn_blocking(TrustRoots::system)
        .await
        .context("loading the system trust store")?
        .context("TLS client configuration")?;
    if system_roots.count() == 0 && verifies_with_system_roots(&config) {
        warn!(
            "tls = \"verify\" without a ca_file, but the system trust store has no certificates \
             (install ca-certificates, or set SSL_CERT_FILE): every verified delivery will be \
             deferred"
        );
    } else {
        info!(roots = system_roots.count(), "system trust store loaded");
    }
    let deliverer = Deliverer::new(
        Arc::clone(&dns),
        DeliveryOptions {
            helo_name: config.hostname.clone(),
            smtp_port: config.delivery.smtp_port,
            connect_timeout: Duration::from_secs(config.delivery.connect_timeout),
            reply_timeout: Duration::from_secs(config.delivery.reply_timeout),
        },
        system_roots.clone(),
    )
    .context("TLS client configuration")?
    .with_secure_dns(Arc::new(validating_dns_of(&config)?))
    .with_mta_sts(Arc::new(MtaSts::new(
        Arc::clone(&dns),
        system_roots.clone(),
        StsOptions {
            port: config.delivery.mta_sts_port,
            timeout: Duration::from_secs(MTA_STS_FETCH_SECONDS),
            cache_dir: Some(config.spool_dir.join("mta-sts")),
        },
    )));
    let reporting = manager::Reporting {
        dns: Arc::clone(&dns),
        roots: system_roots.clone(),
    };
    let builder = GenerationBuilder::new(PluginBuilder::new(dns, Arc::clone(&metrics)), resolver);
    let admin_path = config.admin_socket.clone();
    let max_connections = config.limits.max_connections;
    let smtp_auth = config.smtp_auth.clone();
    let message_memory = config.limits.message_memory;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let auth_throttle = match open_redis(&config.plugin_settings, &clock, &metrics)? {
        Some(redis) => AuthThrottle::shared(redis),
        None => AuthThrottle::in_memory(),
    };
    let grace = Duration::from_secs(config.timeouts.shutdown_grace);
    let first = builder.build(1, config, None).await?;
    metrics.config_loaded(first.number);
    let current: Current = Arc::new(ArcSwap::from_pointee(first));
    let queue = manager::start(
        Arc::clone(&current),
        spool.clone(),
        deliverer,
        Arc::clone(&metrics),
        reporting,
    );

    let password_checks = PasswordChecks::start(
        smtp_auth.max_concurrent_checks,
        smtp_auth.max_waiting_checks,
    )
    .context("starting the password check threads")?;
    info!(
        threads = password_checks.threads(),
        waiting = smtp_auth.max_waiting_checks,
        "password checks"
    );
    let (force_tx, force_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        password_checks,
        auth_throttle,
        message_memory: MessageMemory::new(message_memory),
        current: Arc::clone(&current),
        spool,
        queue: queue.clone(),
        force_close: force_rx,
        metrics: Arc::clone(&metrics),
    });
    let connections = Arc::new(Semaphore::new(max_connections));
    let mut listeners = Listeners::new(Arc::clone(&shared), Arc::clone(&connections));
    let plan = listeners.prepare(&current.load().config.listeners).await?;
    listeners.commit(plan);

    let reloader = Arc::new(Reloader::new(
        source,
        current,
        builder,
        listeners,
        Arc::clone(&metrics),
    ));
    let admin = admin_socket(
        &admin_path,
        Admin {
            queue,
            reloader: Arc::clone(&reloader),
            ready: Arc::clone(&ready),
            started,
            http: http_address,
        },
    )?;
    let sighup = crate::watch::on_sighup(hup, Arc::clone(&reloader));
    let watcher = if watch {
        Some(crate::watch::watch_files(Arc::clone(&reloader))?)
    } else {
        None
    };
    ready.set(true);
    println!("postrider: ready");
    info!("ready");
    systemd::ready(&format!(
        "accepting mail (config generation {})",
        reloader.current().number
    ));

    shutdown_signal.await?;
    systemd::stopping();
    ready.set(false);
    admin.abort();
    sighup.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    let _ = std::fs::remove_file(&admin_path);
    info!("shutting down: no new connections");
    reloader.listeners().lock().await.shutdown().await;
    // Every session holds a connection slot: all slots free again means all sessions ended.
    let max = max_connections as u32;
    let drained = tokio::time::timeout(grace, connections.acquire_many(max)).await;
    if drained.is_err() {
        warn!(
            grace_secs = grace.as_secs(),
            "sessions still open after the grace period: closing them with 421"
        );
        let _ = force_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), connections.acquire_many(max)).await;
    }
    if let Some(http) = http {
        http.abort();
    }
    info!("stopped");
    Ok(())
}

/// Installs the SIGTERM/SIGINT handlers now; the future resolves at the first signal.
fn wait_for_signal() -> anyhow::Result<impl Future<Output = anyhow::Result<()>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM"),
            _ = int.recv() => info!("SIGINT"),
        }
        Ok(())
    })
}

/// Some next hop is verified against the system's roots: `verify` without a `ca_file`, or
/// MTA-STS (`mta-sts`, `auto`).
fn verifies_with_system_roots(config: &Config) -> bool {
    use postrider_config::TlsPolicy;
    config.outbound_tls().any(|(tls, ca_file)| match tls {
        TlsPolicy::Verify => ca_file.is_none(),
        TlsPolicy::MtaSts | TlsPolicy::Auto => true,
        _ => false,
    })
}

/// Limit of one MTA-STS policy fetch (connection, TLS, request and body), as Postfix's
/// mta-sts-resolver and most senders use.
const MTA_STS_FETCH_SECONDS: u64 = 10;
