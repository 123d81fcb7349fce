//! The inbound side, along the data path: [`listeners`] accept connections, a [`session`]
//! speaks SMTP on each (through the stage driver, `postrider-stages`) with the relay's own
//! policy: [`relay_control`], [`passwords`] and [`auth_throttle`] for AUTH, [`email_auth`] and [`tls`].

pub mod auth_throttle;
pub mod email_auth;
pub mod listeners;
pub mod message_memory;
pub mod passwords;
pub mod proxy;
pub mod relay_control;
pub mod session;
pub mod tls;

use std::sync::Arc;

use postrider_metrics::Metrics;
use postrider_queue::Spool;
use tokio::sync::watch;

use crate::generation::Current;
use crate::inbound::auth_throttle::AuthThrottle;
use crate::inbound::message_memory::MessageMemory;
use crate::inbound::passwords::PasswordChecks;
use crate::queue::manager::QueueHandle;

/// Everything a session needs that is shared by the whole server.
pub struct Shared {
    /// The threads that check AUTH passwords (sized at start: a restart applies a change).
    pub password_checks: PasswordChecks,
    /// Failed AUTH counts per client and user, across connections.
    pub auth_throttle: AuthThrottle,
    /// The memory complete messages may take while they are checked and stored (sized at
    /// start: a restart applies a change).
    pub message_memory: MessageMemory,
    /// The configuration generation new sessions use (config, passwords, TLS, plugins).
    pub current: Current,
    /// The durable spool.
    pub spool: Spool,
    /// Hands newly spooled messages to the queue manager.
    pub queue: QueueHandle,
    /// Set to true when sessions must close now (end of the shutdown grace period).
    pub force_close: watch::Receiver<bool>,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
}
