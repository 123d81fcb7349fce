//! Outbound delivery: where a recipient's mail goes (MX resolution, relay hosts, LMTP,
//! Maildir) and one delivery attempt over SMTP or LMTP, driving `postrider-smtp`'s sans-IO
//! client over tokio, with STARTTLS through rustls, or into local Maildir directories.

mod attempt;
pub mod dane;
pub mod maildir;
mod resolve;
pub mod tls;

pub use attempt::{Attempt, Deliverer, DeliveryOptions, Destination, TlsOutcome};
pub use resolve::{ResolveError, mail_hosts};
pub use tls::{RootsError, TrustRoots};
