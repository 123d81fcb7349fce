//! `postrider serve`: binds the listeners, enforces connection limits, runs sessions, reloads
//! its configuration (see [`crate::reload`]), and shuts down gracefully on SIGTERM or SIGINT.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use postrider_config::{Config, Listener};
use postrider_queue::{Spool, SpoolOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::admin_http::{self, Readiness};
use crate::outbound::{self, QueueHandle};
use crate::plugins::PluginBuilder;
use crate::reload::{self, ConfigSource, Current, GenerationBuilder, Reloader};
use crate::session::{self, SessionCtx};
use crate::systemd;
use postrider_delivery::{Deliverer, DeliveryOptions};
use postrider_metrics::Metrics;
use postrider_plugin_host::{Dns, HickoryDns};

/// Everything a session needs that is shared by the whole server.
pub struct Shared {
    /// The configuration generation new sessions use (config, passwords, TLS, plugins).
    pub current: Current,
    /// The durable spool.
    pub spool: Spool,
    /// Hands newly spooled messages to the queue manager.
    pub queue: QueueHandle,
    /// Set to true when sessions must close now (end of the shutdown grace period).
    pub force_close: watch::Receiver<bool>,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
}

/// Tells the metrics how long each spool sync took.
#[derive(Debug)]
struct SpoolSyncs(Arc<Metrics>);

impl postrider_queue::SyncObserver for SpoolSyncs {
    fn synced(&self, op: postrider_queue::SyncOp, elapsed: Duration) {
        self.0.spool_sync(op.as_str(), elapsed);
    }
}

/// Counts connections per client IP; the guard gives the slot back when dropped.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct PerIpGuard {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PerIpGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard {
            table: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Runs the relay until SIGTERM/SIGINT, then drains sessions within the grace period.
/// `config` was loaded from `source`, which reloads re-read; with `watch` a change to the
/// config file or a file it names reloads by itself (SIGHUP and `postrider reload` always do).
pub async fn serve(source: ConfigSource, config: Config, watch: bool) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives while starting must not kill the process.
    let shutdown_signal = wait_for_signal()?;
    let hup = reload::sighup_handler()?;
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
    let hickory = if config.nameservers.is_empty() {
        HickoryDns::from_system().context("reading the system resolver configuration")?
    } else {
        HickoryDns::with_nameservers(&config.nameservers).context("building the DNS resolver")?
    };
    // One resolver (and cache) for delivery, plugins and email authentication.
    let resolver = hickory.resolver();
    let dns: Arc<dyn Dns> = Arc::new(hickory);
    let deliverer = Deliverer::new(
        Arc::clone(&dns),
        DeliveryOptions {
            helo_name: config.hostname.clone(),
            smtp_port: config.delivery.smtp_port,
            connect_timeout: Duration::from_secs(config.delivery.connect_timeout),
            reply_timeout: Duration::from_secs(config.delivery.reply_timeout),
        },
    )
    .context("TLS client configuration")?;
    let builder = GenerationBuilder::new(PluginBuilder::new(dns, Arc::clone(&metrics)), resolver);
    let admin_path = config.admin_socket.clone();
    let max_connections = config.limits.max_connections;
    let grace = Duration::from_secs(config.timeouts.shutdown_grace);
    let first = builder.build(1, config, None).await?;
    metrics.config_loaded(first.number);
    let current: Current = Arc::new(ArcSwap::from_pointee(first));
    let queue = outbound::start(
        Arc::clone(&current),
        spool.clone(),
        deliverer,
        Arc::clone(&metrics),
    );

    let (force_tx, force_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
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
    let sighup = reload::on_sighup(hup, Arc::clone(&reloader));
    let watcher = if watch {
        Some(reload::watch_files(Arc::clone(&reloader))?)
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

/// A listener accepting connections.
struct Running {
    /// The address it was configured with (port 0 stays 0 here).
    configured: SocketAddr,
    /// The address it is bound to.
    bound: SocketAddr,
    /// Tells its accept loop to stop.
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// What a reload changes in the listeners: new sockets are bound before the generation is
/// swapped in, so a failure to bind fails the reload and nothing changes.
pub struct ListenerPlan {
    start: Vec<(Listener, TcpListener)>,
    stop: Vec<String>,
}

/// The running listeners by name. A reload starts added ones, stops removed ones (their
/// sessions go on) and rebinds those whose address changed; a changed kind or certificate
/// needs no rebinding, since each connection takes both from the current generation.
pub struct Listeners {
    running: HashMap<String, Running>,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
}

impl Listeners {
    /// No listener running yet.
    fn new(shared: Arc<Shared>, connections: Arc<Semaphore>) -> Listeners {
        Listeners {
            running: HashMap::new(),
            shared,
            connections,
            per_ip: Arc::new(PerIp::default()),
        }
    }

    /// Binds what `wanted` adds or moves; nothing changes until [`Listeners::commit`].
    pub async fn prepare(&self, wanted: &[Listener]) -> anyhow::Result<ListenerPlan> {
        let mut plan = ListenerPlan {
            start: Vec::new(),
            stop: Vec::new(),
        };
        for (name, running) in &self.running {
            if !wanted
                .iter()
                .any(|l| &l.name == name && l.address == running.configured)
            {
                plan.stop.push(name.clone());
            }
        }
        for listener in wanted {
            if self
                .running
                .get(&listener.name)
                .is_some_and(|r| r.configured == listener.address)
            {
                continue;
            }
            let socket = TcpListener::bind(listener.address).await.with_context(|| {
                format!("listener {}: binding {}", listener.name, listener.address)
            })?;
            plan.start.push((listener.clone(), socket));
        }
        Ok(plan)
    }

    /// Stops and starts what `plan` says.
    pub fn commit(&mut self, plan: ListenerPlan) {
        for name in plan.stop {
            if let Some(running) = self.running.remove(&name) {
                info!(listener = %name, "listener stopped: no new connections; its sessions go on");
                let _ = running.stop.send(true);
            }
        }
        for (listener, socket) in plan.start {
            let address = socket.local_addr().unwrap_or(listener.address);
            // The stable contract tests and scripts wait for (see tests/e2e). Nobody may be
            // reading any more after a reload: a closed stdout must not stop the relay.
            {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stdout(),
                    "postrider: listening {} {}",
                    listener.name,
                    address
                );
            }
            info!(listener = %listener.name, %address, kind = ?listener.kind, tls = listener.tls.is_some(), "listening");
            let (stop, stop_rx) = watch::channel(false);
            let configured = listener.address;
            let name = listener.name.clone();
            let task = tokio::spawn(accept_loop(
                listener,
                socket,
                Arc::clone(&self.shared),
                Arc::clone(&self.connections),
                Arc::clone(&self.per_ip),
                stop_rx,
            ));
            self.running.insert(
                name,
                Running {
                    configured,
                    bound: address,
                    stop,
                    task,
                },
            );
        }
    }

    /// The bound address of each running listener, by name.
    pub fn bound(&self) -> HashMap<String, SocketAddr> {
        self.running
            .iter()
            .map(|(name, r)| (name.clone(), r.bound))
            .collect()
    }

    /// Stops every listener and waits until none accepts any more.
    pub async fn shutdown(&mut self) {
        for (_, running) in self.running.drain() {
            let _ = running.stop.send(true);
            let _ = running.task.await;
        }
    }
}

async fn accept_loop(
    started_as: Listener,
    socket: TcpListener,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    mut stop: watch::Receiver<bool>,
) {
    let name = started_as.name.clone();
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The connection belongs to the generation current now, to its end.
        let generation = shared.current.load_full();
        let listener = Arc::new(
            generation
                .config
                .listeners
                .iter()
                .find(|l| l.name == name)
                .unwrap_or(&started_as)
                .clone(),
        );
        let metrics = &shared.metrics;
        let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
            metrics.connection_refused(&name, "max_connections");
            warn!(listener = %name, %peer, "too many connections");
            tokio::spawn(refuse(
                stream,
                "421 4.7.0 Too many connections, try again later\r\n",
            ));
            continue;
        };
        let Some(ip_slot) =
            per_ip.try_acquire(peer.ip(), generation.config.limits.max_connections_per_ip)
        else {
            metrics.connection_refused(&name, "max_connections_per_ip");
            warn!(listener = %name, %peer, "too many connections from this address");
            tokio::spawn(refuse(
                stream,
                "421 4.7.0 Too many connections from your address\r\n",
            ));
            continue;
        };
        let ctx = SessionCtx {
            shared: Arc::clone(&shared),
            tls: generation.tls.get(&name).cloned(),
            generation,
            local: stream.local_addr().unwrap_or(listener.address),
            listener,
            peer,
        };
        metrics.connection_opened(&name);
        let (metrics, name) = (Arc::clone(metrics), name.clone());
        tokio::spawn(async move {
            session::run(ctx, stream).await;
            metrics.connection_closed(&name);
            drop(ip_slot);
            drop(slot);
        });
    }
}

/// What the admin socket answers from.
#[derive(Clone)]
struct Admin {
    queue: QueueHandle,
    reloader: Arc<Reloader>,
    ready: Arc<Readiness>,
    started: std::time::SystemTime,
    http: Option<SocketAddr>,
}

/// Serves `postrider queue`, `status` and `reload` on a unix socket only the relay's user
/// can open.
fn admin_socket(
    path: &std::path::Path,
    admin: Admin,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a relay that died; the spool lock already guarantees we are alone.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("securing {}", path.display()))?;
    info!(path = %path.display(), "admin socket");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), admin_request(stream, admin))
                    .await;
            });
        }
    }))
}

/// One admin request: a JSON line in, a JSON line out.
async fn admin_request(stream: tokio::net::UnixStream, admin: Admin) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(64 * 1024))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<crate::queue_admin::Request>(&line) {
        Ok(crate::queue_admin::Request::Reload) => {
            match admin.reloader.reload("admin socket").await {
                Ok(generation) => crate::queue_admin::Response::Ok { generation },
                Err(e) => crate::queue_admin::Response::Error {
                    message: format!("{e:#}"),
                },
            }
        }
        Ok(crate::queue_admin::Request::Status) => crate::queue_admin::Response::Status {
            status: Box::new(status(&admin).await),
        },
        Ok(request) => admin.queue.admin(request).await,
        Err(e) => crate::queue_admin::Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

/// The relay's state for `postrider status`.
async fn status(admin: &Admin) -> crate::status::Status {
    use crate::status::{ListenerStatus, PluginStatus, Status, unix_secs};
    let bound = admin.reloader.listeners().lock().await.bound();
    let generation = admin.reloader.current();
    let config = &generation.config;
    let listeners = config
        .listeners
        .iter()
        .map(|l| ListenerStatus {
            name: l.name.clone(),
            kind: format!("{:?}", l.kind).to_lowercase(),
            address: bound.get(&l.name).unwrap_or(&l.address).to_string(),
            tls: l.tls.is_some(),
        })
        .collect();
    let plugins = generation
        .pipeline
        .as_ref()
        .map(|p| {
            p.plugins()
                .iter()
                .map(|p| PluginStatus {
                    name: p.spec().name.clone(),
                    path: p.spec().path.display().to_string(),
                    hash: p.hash.clone(),
                    loaded_at: unix_secs(p.loaded_at),
                    stages: p.stage_names().into_iter().map(str::to_owned).collect(),
                    failure_policy: p.spec().failure_policy.name().to_owned(),
                    timeout_ms: p.spec().timeout.as_millis() as u64,
                })
                .collect()
        })
        .unwrap_or_default();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: unix_secs(admin.started),
        ready: admin.ready.get(),
        config: config.origin.clone(),
        generation: generation.number,
        config_loaded_at: unix_secs(generation.loaded_at),
        admin_http: admin.http.map(|a| a.to_string()),
        listeners,
        plugins,
        queue: admin.queue.summary(),
    }
}

/// Tells a client we cannot serve it now, without reading anything from it.
async fn refuse(mut stream: TcpStream, line: &'static str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
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
