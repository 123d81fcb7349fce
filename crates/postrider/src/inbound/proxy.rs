//! The PROXY protocol header at the start of a connection on a `proxy_protocol` listener:
//! peeked at until whole, then consumed to its last octet and no further, so that what
//! follows (SMTP, or the client's TLS handshake on an implicit-TLS listener) is untouched.

use std::time::Duration;

use postrider_proxy::{MAX_HEADER, Preamble, ProxyError, parse};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Why a connection's PROXY header was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    /// Not a header, or not one a relay can use.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// Nothing whole arrived in time.
    #[error("no whole PROXY header within {0} s")]
    Timeout(u64),
    /// The balancer closed the connection first.
    #[error("closed before a whole PROXY header")]
    Closed,
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl PreambleError {
    /// The metrics label of the refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            PreambleError::Proxy(ProxyError::Missing) => "proxy_missing",
            PreambleError::Proxy(_) => "proxy_malformed",
            PreambleError::Timeout(_) | PreambleError::Closed | PreambleError::Io(_) => {
                "proxy_incomplete"
            }
        }
    }
}

/// Reads the header, within `limit`.
pub async fn read_preamble(
    stream: &mut TcpStream,
    limit: Duration,
) -> Result<Preamble, PreambleError> {
    let work = async {
        let mut buf = vec![0u8; MAX_HEADER];
        let mut seen = 0;
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(PreambleError::Closed);
            }
            if let Some(preamble) = parse(&buf[..n])? {
                stream.read_exact(&mut buf[..preamble.len]).await?;
                return Ok(preamble);
            }
            // Peeking again returns at once with the same octets: wait for more.
            if n == seen {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen = n;
        }
    };
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(PreambleError::Timeout(limit.as_secs())))
}
