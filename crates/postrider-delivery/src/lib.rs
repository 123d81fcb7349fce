//! Outbound delivery: where a recipient's mail goes (MX resolution, relay hosts, LMTP,
//! Maildir) and one delivery attempt over SMTP or LMTP, driving `postrider-smtp`'s sans-IO
//! client over tokio, with STARTTLS through rustls (verified against roots, DANE or
//! MTA-STS as the destination's level says), or into local Maildir directories.

mod attempt;
pub mod dane;
pub mod https;
pub mod maildir;
mod resolve;
pub mod sts;
pub mod tls;

pub use attempt::{Attempt, Deliverer, DeliveryOptions, Destination, TlsOutcome};
pub use postrider_tls_roots::{RootsError, TrustRoots};
pub use resolve::{ResolveError, mail_hosts};
pub use sts::{FetchError, MtaSts, StsOptions};
