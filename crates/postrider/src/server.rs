//! `postrider serve`: binds the listeners, enforces connection limits, runs sessions, and
//! shuts down gracefully on SIGTERM or SIGINT.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use postrider_config::{Config, Listener};
use postrider_queue::{Spool, SpoolOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::outbound::{self, QueueHandle};
use crate::passwords::Passwords;
use crate::plugins;
use crate::session::{self, SessionCtx};
use postrider_delivery::{Deliverer, DeliveryOptions};
use postrider_plugin_host::{Dns, HickoryDns, Pipeline};

/// Everything a session needs that is shared by the whole server.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// The durable spool.
    pub spool: Spool,
    /// AUTH users, when a password file is configured.
    pub passwords: Option<Passwords>,
    /// The plugin chain, when plugins are configured.
    pub pipeline: Option<Arc<Pipeline>>,
    /// Hands newly spooled messages to the queue manager.
    pub queue: QueueHandle,
    /// Set to true when sessions must close now (end of the shutdown grace period).
    pub force_close: watch::Receiver<bool>,
}

/// A bound listener with its TLS acceptor.
struct Bound {
    config: Listener,
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
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
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives while starting must not kill the process.
    let shutdown_signal = wait_for_signal()?;
    let (spool, recovery) = Spool::open(&config.spool_dir, SpoolOptions::default())
        .with_context(|| format!("opening spool {}", config.spool_dir.display()))?;
    info!(
        dir = %config.spool_dir.display(),
        recovered = recovery.recovered.len(),
        removed_partial = recovery.removed_partial,
        corrupt = recovery.corrupt.len(),
        "spool opened"
    );
    let passwords = match &config.relay.passwords {
        Some(path) => Some(Passwords::load(path)?),
        None => None,
    };

    let dns: Arc<dyn Dns> = if config.nameservers.is_empty() {
        Arc::new(HickoryDns::from_system().context("reading the system resolver configuration")?)
    } else {
        Arc::new(HickoryDns::with_nameservers(&config.nameservers))
    };
    let pipeline = plugins::load(&config, Arc::clone(&dns)).await?;
    let deliverer = Deliverer::new(
        dns,
        DeliveryOptions {
            helo_name: config.hostname.clone(),
            smtp_port: config.delivery.smtp_port,
            connect_timeout: Duration::from_secs(config.delivery.connect_timeout),
            reply_timeout: Duration::from_secs(config.delivery.reply_timeout),
        },
    )
    .context("TLS client configuration")?;
    let queue = outbound::start(
        Arc::new(config.clone()),
        spool.clone(),
        deliverer,
        pipeline.clone(),
    );
    let admin = admin_socket(&config.admin_socket, queue.clone())?;

    let mut bound = Vec::new();
    for listener in &config.listeners {
        let socket = TcpListener::bind(listener.address)
            .await
            .with_context(|| format!("listener {}: binding {}", listener.name, listener.address))?;
        let tls = match &listener.tls {
            Some(files) => Some(
                crate::tls::acceptor(files)
                    .with_context(|| format!("listener {}", listener.name))?,
            ),
            None => None,
        };
        bound.push(Bound {
            config: listener.clone(),
            socket,
            tls,
        });
    }

    let (force_tx, force_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        config,
        spool,
        passwords,
        pipeline,
        queue,
        force_close: force_rx,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let connections = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let per_ip = Arc::new(PerIp::default());
    let mut acceptors = JoinSet::new();

    for b in bound {
        let address = b.socket.local_addr().context("listener address")?;
        // The stable contract tests and scripts wait for (see tests/e2e).
        println!("postrider: listening {} {}", b.config.name, address);
        info!(listener = %b.config.name, %address, kind = ?b.config.kind, tls = b.tls.is_some(), "listening");
        let (shared, connections, per_ip, stop) = (
            Arc::clone(&shared),
            Arc::clone(&connections),
            Arc::clone(&per_ip),
            stop_rx.clone(),
        );
        acceptors.spawn(accept_loop(b, shared, connections, per_ip, stop));
    }
    println!("postrider: ready");
    info!("ready");

    shutdown_signal.await?;
    admin.abort();
    let _ = std::fs::remove_file(&shared.config.admin_socket);
    info!("shutting down: no new connections");
    let _ = stop_tx.send(true);
    while acceptors.join_next().await.is_some() {}
    // Every session holds a connection slot: all slots free again means all sessions ended.
    let grace = Duration::from_secs(shared.config.timeouts.shutdown_grace);
    let max = shared.config.limits.max_connections as u32;
    let drained = tokio::time::timeout(grace, connections.acquire_many(max)).await;
    if drained.is_err() {
        warn!(
            grace_secs = grace.as_secs(),
            "sessions still open after the grace period: closing them with 421"
        );
        let _ = force_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), connections.acquire_many(max)).await;
    }
    info!("stopped");
    Ok(())
}

async fn accept_loop(
    b: Bound,
    shared: Arc<Shared>,
    connections: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    mut stop: watch::Receiver<bool>,
) {
    let Bound {
        config,
        socket,
        tls,
    } = b;
    let listener = Arc::new(config);
    loop {
        let accepted = tokio::select! {
            r = socket.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
            warn!(listener = %listener.name, %peer, "too many connections");
            tokio::spawn(refuse(
                stream,
                "421 4.7.0 Too many connections, try again later\r\n",
            ));
            continue;
        };
        let Some(ip_slot) =
            per_ip.try_acquire(peer.ip(), shared.config.limits.max_connections_per_ip)
        else {
            warn!(listener = %listener.name, %peer, "too many connections from this address");
            tokio::spawn(refuse(
                stream,
                "421 4.7.0 Too many connections from your address\r\n",
            ));
            continue;
        };
        let ctx = SessionCtx {
            shared: Arc::clone(&shared),
            listener: Arc::clone(&listener),
            tls: tls.clone(),
            peer,
            local: stream.local_addr().unwrap_or(listener.address),
        };
        tokio::spawn(async move {
            session::run(ctx, stream).await;
            drop(ip_slot);
            drop(slot);
        });
    }
}

/// Serves `postrider queue` on a unix socket only the relay's user can open.
fn admin_socket(
    path: &std::path::Path,
    queue: QueueHandle,
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
            let queue = queue.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), admin_request(stream, queue))
                    .await;
            });
        }
    }))
}

/// One admin request: a JSON line in, a JSON line out.
async fn admin_request(stream: tokio::net::UnixStream, queue: QueueHandle) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(64 * 1024))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<crate::queue_admin::Request>(&line) {
        Ok(request) => queue.admin(request).await,
        Err(e) => crate::queue_admin::Response::Error {
            message: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
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
