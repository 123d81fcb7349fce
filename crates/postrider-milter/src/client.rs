//! The milter session over a socket with tokio: opens the connection, negotiates, and runs
//! one step at a time under a deadline. Every error leaves the connection unusable; the
//! caller drops it and applies the milter's failure policy.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Address, Answer, Command, Decoder, MilterError, Offer, Received, Session};

/// What went wrong on a milter connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The milter closed the connection while an answer was due.
    #[error("the milter closed the connection")]
    Closed,
    /// No answer within the deadline.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// The milter broke the protocol.
    #[error(transparent)]
    Protocol(#[from] MilterError),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// One open, negotiated milter connection.
pub struct Connection {
    io: Box<dyn Io>,
    decoder: Decoder,
    session: Session,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `address` and negotiates `offer`, all within `timeout`. A body
    /// replacement over `max_body` bytes is a protocol error.
    pub async fn open(
        address: &Address,
        offer: Offer,
        max_body: usize,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let work = async {
            let io: Box<dyn Io> = match address {
                Address::Inet { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                    stream.set_nodelay(true)?;
                    Box::new(stream)
                }
                #[cfg(unix)]
                Address::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
                #[cfg(not(unix))]
                Address::Unix(_) => {
                    return Err(ClientError::Io(std::io::Error::other(
                        "unix sockets are not supported here",
                    )));
                }
            };
            let (session, hello) = Session::new(offer, max_body);
            let mut conn = Connection {
                io,
                decoder: Decoder::default(),
                session,
            };
            conn.io.write_all(&hello).await?;
            match conn.read_answer().await? {
                Received::Negotiated { .. } => Ok(conn),
                _ => Err(MilterError::OutOfOrder("an answer before negotiation").into()),
            }
        };
        deadline(timeout, work).await
    }

    /// The protocol state: what was negotiated and which steps the milter wants.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Sends `cmd` and, if the milter answers that step, waits for its answer, all within
    /// `timeout`. `None`: nothing to wait for (a step the milter left out or does not
    /// answer, macros). A response beyond the answer already buffered is out of order.
    pub async fn step(
        &mut self,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Option<Answer>, ClientError> {
        deadline(timeout, async {
            let bytes = self.session.send(cmd)?;
            if bytes.is_empty() {
                return Ok(None);
            }
            self.io.write_all(&bytes).await?;
            if self.session.awaiting().is_none() {
                return Ok(None);
            }
            let answer = match self.read_answer().await? {
                Received::Answer(a) => a,
                _ => return Err(MilterError::OutOfOrder("negotiation again").into()),
            };
            if self.decoder.pending() > 0 {
                return Err(MilterError::OutOfOrder("a response nobody asked for").into());
            }
            Ok(Some(answer))
        })
        .await
    }

    /// Says goodbye without waiting: the bytes go out if the socket takes them now.
    pub fn quit(mut self) {
        if let Ok(bytes) = self.session.send(&Command::Quit) {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = std::pin::Pin::new(&mut self.io).poll_write(&mut cx, &bytes);
        }
    }

    async fn read_answer(&mut self) -> Result<Received, ClientError> {
        let mut buf = [0u8; 8192];
        loop {
            while let Some(r) = self.decoder.decode()? {
                match self.session.receive(r)? {
                    Received::Pending => continue,
                    other => return Ok(other),
                }
            }
            let n = self.io.read(&mut buf).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.decoder.feed(&buf[..n]);
        }
    }
}

async fn deadline<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ClientError::Timeout(timeout.as_millis())))
}
