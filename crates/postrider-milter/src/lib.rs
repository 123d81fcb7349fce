//! The Sendmail milter protocol (version 6, as libmilter, Postfix and every milter speak it),
//! the MTA's side, without I/O: [`codec`] is the wire format, [`session`] one milter
//! connection's state machine. The relay (or a test) owns the socket: it writes what
//! [`Session::send`] returns, feeds what it reads to a [`Decoder`] ([`Decoder::decode`]) and hands each
//! [`Response`] to [`Session::receive`], which says when a step is answered and what the
//! milter decided. With the `tokio` feature, [`client::Connection`] does exactly that over a
//! TCP or unix socket, one step at a time under a deadline.
//!
//! Evaluated first: `milter` (libmilter bindings), `indymilter` and `rmilter` implement the
//! milter's side, not the MTA's. `miltr-client` is the MTA's side, but by its own README a
//! barebone client "to mess around and test behavior with" that does not hold the milter to
//! what was negotiated and owns the I/O (futures-io); a relay facing milters it does not
//! control needs both. So this is the client half, small and tested without sockets.

pub mod address;
#[cfg(feature = "tokio")]
pub mod client;
pub mod codec;
pub mod session;

pub use address::Address;
pub use codec::{Command, Decoder, Family, Response};
pub use session::{Answer, Modification, Offer, Received, Session, Step, Verdict, reply_of};

/// What went wrong talking to a milter. Every error ends the milter connection; the caller
/// applies the milter's failure policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MilterError {
    /// A packet's length is 0 or over the limit.
    #[error("packet length {0} is out of bounds")]
    PacketSize(usize),
    /// A response's data does not fit its command.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// An unknown response command byte.
    #[error("unknown response command {0:#04x}")]
    UnknownResponse(u8),
    /// A response (or command) at the wrong time.
    #[error("out of order: {0}")]
    OutOfOrder(&'static str),
    /// The milter asked for an action that was not negotiated.
    #[error("action {0:#x} was not negotiated")]
    NotNegotiated(u32),
    /// The milter speaks a protocol version this client does not.
    #[error("milter protocol version {0} is not supported")]
    Version(u32),
    /// The replacement body is larger than the message size limit.
    #[error("replacement body over {0} bytes")]
    BodyTooLarge(usize),
    /// More modifications than a message may get.
    #[error("too many modifications")]
    TooManyModifications,
    /// The session is closed.
    #[error("the milter session is closed")]
    Closed,
}

#[cfg(test)]
mod tests;
