//! The milter session over a socket with tokio: opens the connection, negotiates, and runs
//! one step at a time under a deadline. Every error leaves the connection unusable; the
//! caller drops it and applies the milter's failure policy.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Address, Answer, Command, Decoder, MilterError, Offer, Received, Session};

/// The longest one step may take while the milter keeps reporting progress.
pub const MAX_STEP: Duration = Duration::from_secs(3600);

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

    /// Sends `cmd` and, if the milter answers that step, waits for its answer: each response
    /// within `timeout` of the last, so a milter that reports progress (`p`, a virus scan
    /// of a large message) may take longer, up to [`MAX_STEP`] in all. `None`: nothing to
    /// wait for (a step the milter left out or does not answer, macros). A response beyond
    /// the answer already buffered is out of order.
    pub async fn step(
        &mut self,
        cmd: &Command,
        timeout: Duration,
    ) -> Result<Option<Answer>, ClientError> {
        let bytes = self.session.send(cmd)?;
        if bytes.is_empty() {
            return Ok(None);
        }
        deadline(timeout, async { Ok(self.io.write_all(&bytes).await?) }).await?;
        if self.session.awaiting().is_none() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        loop {
            match deadline(timeout, self.next_received()).await? {
                Received::Answer(answer) => {
                    if self.decoder.pending() > 0 {
                        return Err(MilterError::OutOfOrder("a response nobody asked for").into());
                    }
                    return Ok(Some(answer));
                }
                Received::Pending if started.elapsed() < MAX_STEP => {}
                Received::Pending => return Err(ClientError::Timeout(MAX_STEP.as_millis())),
                Received::Negotiated { .. } => {
                    return Err(MilterError::OutOfOrder("negotiation again").into());
                }
            }
        }
    }

    /// Says goodbye without waiting: the bytes go out if the socket takes them now.
    pub fn quit(mut self) {
        if let Ok(bytes) = self.session.send(&Command::Quit) {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = std::pin::Pin::new(&mut self.io).poll_write(&mut cx, &bytes);
        }
    }

    /// Negotiation's answer (progress and the like skipped).
    async fn read_answer(&mut self) -> Result<Received, ClientError> {
        loop {
            match self.next_received().await? {
                Received::Pending => continue,
                other => return Ok(other),
            }
        }
    }

    /// The next response, as the session takes it.
    async fn next_received(&mut self) -> Result<Received, ClientError> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some(r) = self.decoder.decode()? {
                return Ok(self.session.receive(r)?);
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
