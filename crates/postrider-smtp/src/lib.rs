//! Sans-IO SMTP protocol for Postrider: the server session and the SMTP/LMTP client.
//!
//! This crate parses commands and addresses, receives message content and drives the
//! server session state machine and the outbound client session ([`client`]). It performs no IO and reads no clock: the caller
//! feeds received bytes, sends the output, applies timeouts and makes policy decisions.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod deadline;
pub mod reply;
mod sasl;
pub mod server;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath};
pub use command::{Body, Command, CommandError, MailParams, Notify, NotifyOn, RcptParams, Ret};
pub use data::{DataError, LineEndings, to_crlf};
pub use deadline::{DeadlineLimits, ReadDeadline};
pub use reply::{EnhancedCode, Reply, ReplyError};
pub use server::{
    AuthMechanism, Envelope, Event, Misuse, Session, SessionConfig, TimeoutPhase, Transaction,
};
