//! Tells systemd what the relay is doing (`Type=notify`, see `config/postrider.service`):
//! ready once every listener is open, reloading while a reload runs, stopping when it
//! drains. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use tracing::warn;

/// The relay accepts mail; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload has started; [`ready`] follows when it is over, whatever its outcome.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => warn!(error = %e, "sd_notify: no monotonic clock for RELOADING"),
    }
}

/// The relay stops accepting and lets its sessions finish.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: no new connections"),
    ]);
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "sd_notify failed");
    }
}
