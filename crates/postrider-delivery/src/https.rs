//! One HTTPS request from the relay itself (MTA-STS policies, TLS reports): the host's
//! addresses through the relay's resolver, its certificate verified against trust roots for
//! its name, HTTP/1.1 through hyper, the response body capped. Callers set the time limit.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use postrider_dns::{Dns, DnsError};
use tokio::net::TcpStream;

use postrider_tls_roots::TrustRoots;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    /// The host has no address.
    #[error("no address for {host}: {error}")]
    NoAddress {
        /// The host.
        host: String,
        /// The DNS answer.
        error: DnsError,
    },
    /// No connection, no TLS (an invalid certificate among them), or no HTTP answer.
    #[error("{0}")]
    Transport(String),
    /// The body is larger than the cap.
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

/// A response: status, `Content-Type` ("" without one), body.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The `Content-Type` field.
    pub content_type: String,
    /// The body, at most the cap.
    pub body: Vec<u8>,
}

/// Sends `request` (its URI a path; `Host` is set here) to `host`:`port` over TLS verified
/// against `roots`, and reads at most `max_body` bytes of the response.
pub async fn send(
    dns: &dyn Dns,
    roots: &TrustRoots,
    host: &str,
    port: u16,
    mut request: hyper::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Response, HttpsError> {
    let transport = |e: &dyn std::fmt::Display| HttpsError::Transport(e.to_string());
    let ips = dns
        .lookup_ip(host)
        .await
        .map_err(|error| HttpsError::NoAddress {
            host: host.to_owned(),
            error,
        })?;
    let mut last = HttpsError::Transport(format!("no address for {host}"));
    let mut tcp = None;
    for ip in ips {
        match TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = transport(&format_args!("connect to {ip}: {e}")),
        }
    }
    let tcp = tcp.ok_or(last)?;
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| transport(&e))?;
    let tls = roots
        .connector()
        .connect(name, tcp)
        .await
        .map_err(|e| transport(&format_args!("TLS with {host}: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| transport(&e))?;
    let driver = tokio::spawn(conn);
    let value = hyper::header::HeaderValue::from_str(host).map_err(|e| transport(&e))?;
    request.headers_mut().insert(hyper::header::HOST, value);
    request.headers_mut().insert(
        hyper::header::USER_AGENT,
        hyper::header::HeaderValue::from_static("Postrider"),
    );
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| transport(&e))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        match Limited::new(response.into_body(), max_body).collect().await {
            Ok(body) => Ok(Response {
                status,
                content_type,
                body: body.to_bytes().to_vec(),
            }),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(HttpsError::TooLarge(max_body))
            }
            Err(e) => Err(transport(&e)),
        }
    }
    .await;
    driver.abort();
    result
}
