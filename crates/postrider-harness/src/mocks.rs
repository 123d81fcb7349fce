//! The peers a case mocks, served on loopback for as long as the case runs: an HTTP/1.1
//! server (hyper) per mocked origin and a line-protocol peer per mocked TCP address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::case::{HttpMock, NetworkSpec, ReadUntil, TcpMock};

/// Largest request body a mock reads (a plugin's upload of the message).
const MAX_REQUEST_BODY: usize = 64 << 20;
/// Longest line a mocked TCP peer reads.
const MAX_LINE: u64 = 64 << 10;

/// The running mocks; [`MockServers::stop`] ends them (dropping only asks them to stop).
pub struct MockServers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for MockServers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!(
            "cannot listen on {addr} for a mocked peer: {e} (is a real service there? use \
             another 127.0.0.x address)"
        )
    })
}

impl MockServers {
    /// Starts every mock of `net`.
    pub async fn start(net: &NetworkSpec) -> Result<MockServers, String> {
        let mut servers = MockServers { tasks: Vec::new() };
        // One server per origin, however the case file orders its mocks.
        let mut origins: Vec<SocketAddr> = net.http.iter().map(|m| m.addr).collect();
        origins.sort_unstable();
        origins.dedup();
        for addr in origins {
            let listener = bind(addr).await?;
            let mocks: Arc<[HttpMock]> = net
                .http
                .iter()
                .filter(|m| m.addr == addr)
                .cloned()
                .collect();
            servers
                .tasks
                .push(tokio::spawn(serve_http(listener, mocks)));
        }
        for m in &net.tcp {
            let listener = bind(m.addr).await?;
            servers
                .tasks
                .push(tokio::spawn(serve_tcp(listener, m.clone())));
        }
        Ok(servers)
    }

    /// Stops every mock and waits until their listening sockets are closed.
    pub async fn stop(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn serve_http(listener: TcpListener, mocks: Arc<[HttpMock]>) {
    while let Ok((stream, _)) = listener.accept().await {
        let mocks = Arc::clone(&mocks);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(Arc::clone(&mocks), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The first mock for the request's method and path; 404 without one.
async fn answer(
    mocks: Arc<[HttpMock]>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    // Read the whole upload first, as a real service does before it answers.
    let _ = Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await;
    let found = mocks.iter().find(|m| {
        path.starts_with(&m.path_prefix) && m.method.as_ref().is_none_or(|x| *x == method)
    });
    let Some(m) = found else {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"no mock for this path\n")));
        *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
        return Ok(resp);
    };
    tokio::time::sleep(m.delay).await;
    let mut resp = Response::new(Full::new(Bytes::from(m.body.clone())));
    *resp.status_mut() =
        hyper::StatusCode::from_u16(m.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &m.headers {
        if let (Ok(n), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

async fn serve_tcp(listener: TcpListener, mock: TcpMock) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(tcp_peer(stream, mock.clone()));
    }
}

/// Answers each request (as `after` delimits it) with the reply, until the client closes.
async fn tcp_peer(stream: TcpStream, mock: TcpMock) {
    let mut io = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        match mock.after {
            ReadUntil::Nothing => {}
            ReadUntil::Line | ReadUntil::BlankLine => loop {
                line.clear();
                match (&mut io).take(MAX_LINE).read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let blank = line == b"\n" || line == b"\r\n";
                if mock.after == ReadUntil::Line || blank {
                    break;
                }
            },
        }
        tokio::time::sleep(mock.delay).await;
        if io.get_mut().write_all(&mock.reply).await.is_err() {
            return;
        }
        if mock.after == ReadUntil::Nothing {
            // A greeting: then only wait for the client to go.
            let _ = tokio::io::copy(&mut io, &mut tokio::io::sink()).await;
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;
    use std::time::Duration;

    fn http(addr: SocketAddr, path: &str) -> HttpMock {
        HttpMock {
            addr,
            path_prefix: path.into(),
            method: None,
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn mocks_of_one_origin_share_its_server_in_any_order() {
        let free = |ip: &str| {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.local_addr().unwrap()
        };
        let (a, b) = (free("127.0.0.1"), free("127.0.0.1"));
        let net = NetworkSpec {
            http: vec![http(a, "/x"), http(b, "/y"), http(a, "/z")],
            ..NetworkSpec::default()
        };
        let servers = MockServers::start(&net).await.unwrap();
        assert_eq!(servers.tasks.len(), 2);
        servers.stop().await;
        // Stopped: the addresses are free again.
        MockServers::start(&net).await.unwrap().stop().await;
    }
}
