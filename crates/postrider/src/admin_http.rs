//! The admin HTTP listener (`[admin] http`): `GET /metrics` (Prometheus text format),
//! `GET /health` (200 while the process runs) and `GET /ready` (200 once the listeners are
//! bound, the spool recovered and the plugins loaded; 503 before that and while shutting
//! down). Anything else is 404 (405 for a method other than GET or HEAD). Bounded: a few
//! connections at a time, each with a header read timeout and a lifetime limit.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use postrider_metrics::Metrics;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

/// Most admin HTTP connections served at once; more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection (keep-alive included) is closed after this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Whether the relay is ready for traffic, as `/ready` answers.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Sets whether the relay is ready.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Whether the relay is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Binds the admin HTTP listener; fails the start if the address is taken.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("admin.http: binding {address}"))
}

/// Serves the admin endpoints on `listener` until the task is aborted.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
) -> tokio::task::JoinHandle<()> {
    if let Ok(address) = listener.local_addr() {
        // Like the SMTP listeners' line: tests and scripts read the bound address here.
        {
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "postrider: admin http {address}");
        }
        info!(%address, "admin http listening: /metrics /health /ready");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "admin http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
                    async move { Ok::<_, Infallible>(answer(&req, &metrics, &ready)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(stream), service);
                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "admin http connection"),
                    Err(_) => debug!(%peer, "admin http connection closed: lifetime limit"),
                }
                drop(slot);
            });
        }
    })
}

/// The response to one request.
fn answer(req: &Request<Incoming>, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n", false);
        res.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return res;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut res = Response::new(Full::new(Bytes::from(if head {
                String::new()
            } else {
                metrics.encode()
            })));
            res.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(postrider_metrics::CONTENT_TYPE),
            );
            res
        }
        "/health" => text(StatusCode::OK, "ok\n", head),
        "/ready" if ready.get() => text(StatusCode::OK, "ready\n", head),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n", head),
        _ => text(StatusCode::NOT_FOUND, "not found\n", head),
    }
}

fn text(status: StatusCode, body: &'static str, head: bool) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(if head {
        b""
    } else {
        body.as_bytes()
    })));
    *res.status_mut() = status;
    res.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
