//! Where a connection is accepted: the listeners (bound, rebound and stopped by reloads), the
//! connection limits (total and per client IP), and the hand-off of each connection to its
//! session.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use postrider_config::Listener;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use crate::inbound::Shared;
use crate::inbound::proxy;
use crate::inbound::session::{self, SessionCtx};

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
    /// No listeners yet; sessions get `shared` and take a slot of `connections` each.
    pub fn new(shared: Arc<Shared>, connections: Arc<Semaphore>) -> Listeners {
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
        if let Some(trusted) = &listener.proxy_trusted
            && !trusted
                .iter()
                .any(|n| n.contains(&peer.ip().to_canonical()))
        {
            metrics.connection_refused(&name, "proxy_untrusted");
            warn!(listener = %name, %peer, "closed: a PROXY protocol listener, and this address is not in proxy_trusted");
            continue;
        }
        let ctx = SessionCtx {
            shared: Arc::clone(&shared),
            tls: generation.tls.get(&name).cloned(),
            generation,
            local: stream.local_addr().unwrap_or(listener.address),
            listener,
            peer,
            balancer: None,
        };
        let per_ip = Arc::clone(&per_ip);
        tokio::spawn(async move {
            let Some((ctx, stream)) = through_balancer(ctx, stream).await else {
                return;
            };
            serve(ctx, stream, &per_ip).await;
            drop(slot);
        });
    }
}

/// On a `proxy_protocol` listener, reads the PROXY header and makes the client it names the
/// session's client (and its destination our address); `None`: refused and closed, logged.
async fn through_balancer(
    mut ctx: SessionCtx,
    mut stream: TcpStream,
) -> Option<(SessionCtx, TcpStream)> {
    if ctx.listener.proxy_trusted.is_none() {
        return Some((ctx, stream));
    }
    let limit = Duration::from_secs(ctx.generation.config.timeouts.command);
    let name = &ctx.listener.name;
    match proxy::read_preamble(&mut stream, limit).await {
        Ok(preamble) => {
            let balancer = ctx.peer;
            if let Some((client, destination)) = preamble.addresses {
                ctx.peer = client;
                ctx.local = destination;
            }
            let tls = preamble.tls.as_ref().map(|t| {
                format!(
                    "{} {}",
                    t.version.as_deref().unwrap_or("-"),
                    t.cipher.as_deref().unwrap_or("-")
                )
            });
            debug!(listener = %name, %balancer, client = %ctx.peer, version = preamble.version, balancer_tls = tls.as_deref(), sni = preamble.authority.as_deref(), "PROXY header");
            ctx.balancer = Some(balancer);
            Some((ctx, stream))
        }
        Err(e) => {
            ctx.shared.metrics.connection_refused(name, e.reason());
            warn!(listener = %name, balancer = %ctx.peer, error = %e, "closed: no acceptable PROXY protocol header");
            None
        }
    }
}

/// Runs one session under the per-address limit of its (real) client.
async fn serve(ctx: SessionCtx, stream: TcpStream, per_ip: &Arc<PerIp>) {
    let name = ctx.listener.name.clone();
    let metrics = Arc::clone(&ctx.shared.metrics);
    let peer = ctx.peer;
    let max = ctx.generation.config.limits.max_connections_per_ip;
    let Some(ip_slot) = per_ip.try_acquire(peer.ip(), max) else {
        metrics.connection_refused(&name, "max_connections_per_ip");
        warn!(listener = %name, %peer, "too many connections from this address");
        refuse(
            stream,
            "421 4.7.0 Too many connections from your address\r\n",
        )
        .await;
        return;
    };
    metrics.connection_opened(&name);
    session::run(ctx, stream).await;
    metrics.connection_closed(&name);
    drop(ip_slot);
}

/// Tells a client we cannot serve it now, without reading anything from it.
async fn refuse(mut stream: TcpStream, line: &'static str) {
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(line.as_bytes())).await;
    let _ = stream.shutdown().await;
}
