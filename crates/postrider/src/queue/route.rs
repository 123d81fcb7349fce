//! Where a recipient goes: a static `[[route]]`, then the route-stage plugins (through the stage
//! driver, with the connection and envelope the spool kept), then the domain's MX.

use postrider_config::RouteTarget;
use postrider_delivery::{Destination, TrustRoots};
use postrider_metrics::Metrics;
use postrider_plugin_host::RouteDecision;
use postrider_queue::{Envelope, QueueId};
use postrider_smtp::client::Credentials;
use tracing::info;

use crate::generation::Generation;

/// One recipient's route, as a destination key plus how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Deliver to this destination.
    Deliver(Destination),
    /// Held by a route plugin, with its reason.
    Hold(String),
    /// Dropped by a route plugin.
    Discard,
    /// Bounce: enhanced status and reply text.
    Bounce(String, String),
    /// Try again later, for this reason.
    Defer(String),
}

/// An LMTP target, "host:port" or "unix:/path", as a destination.
pub fn lmtp_destination(target: &str) -> Option<Destination> {
    if let Some(path) = target.strip_prefix("unix:") {
        return Some(Destination::LmtpUnix(path.into()));
    }
    let (host, port) = target.rsplit_once(':')?;
    Some(Destination::LmtpTcp {
        host: host.trim_matches(['[', ']']).to_owned(),
        port: port.parse().ok()?,
    })
}

/// The domain of an address (after the last `@`).
pub fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map_or("", |(_, d)| d)
}

/// Where one recipient goes: static route, then route plugins, then MX. With
/// `hold_released` (an operator released a route hold) a plugin's hold gives way to
/// the default route.
pub async fn route(
    generation: &Generation,
    metrics: &Metrics,
    id: &QueueId,
    envelope: &Envelope,
    address: &str,
    hold_released: bool,
) -> Plan {
    let config = &generation.config;
    let domain = domain_of(address);
    if let Some(route) = config.route_for(domain) {
        return match &route.to {
            RouteTarget::Relay {
                host,
                port,
                tls,
                ca_file,
                auth,
                insecure_auth: _,
            } => Plan::Deliver(Destination::Relay {
                host: host.clone(),
                port: *port,
                tls: *tls,
                roots: roots(generation, ca_file.as_deref()),
                auth: auth.as_ref().map(|(u, p)| Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
            }),
            RouteTarget::Lmtp(t) => lmtp_destination(t).map_or_else(
                || Plan::Defer(format!("bad LMTP target {t}")),
                Plan::Deliver,
            ),
            RouteTarget::Maildir(root) => Plan::Deliver(Destination::Maildir(root.clone())),
        };
    }
    if let Some(pipeline) = &generation.pipeline
        && pipeline.wants(postrider_plugin_host::Stage::Route)
    {
        let run = postrider_stages::route(pipeline, id.as_str(), envelope, address, false).await;
        let (decision, calls) = (run.route.unwrap_or(RouteDecision::Mx), run.calls);
        crate::plugins::record_calls(metrics, &calls);
        match decision {
            RouteDecision::Mx => {}
            RouteDecision::Relay { host, port, tls } => {
                return Plan::Deliver(Destination::Relay {
                    host,
                    port,
                    tls,
                    roots: None,
                    auth: None,
                });
            }
            RouteDecision::Lmtp(t) => {
                return lmtp_destination(&t).map_or_else(
                    || Plan::Defer(format!("bad LMTP target {t}")),
                    Plan::Deliver,
                );
            }
            RouteDecision::Hold(r) if !hold_released => return Plan::Hold(r),
            RouteDecision::Hold(r) => {
                info!(rcpt = %address, reason = %r, "route hold released by an operator: default route");
            }
            RouteDecision::Discard => return Plan::Discard,
            RouteDecision::Bounce(r) => {
                return Plan::Bounce(
                    r.enhanced()
                        .map_or_else(|| "5.0.0".to_owned(), |e| e.to_string()),
                    reply_text(&r),
                );
            }
            RouteDecision::Defer(reason) => return Plan::Defer(reason),
        }
    }
    if config.relay.is_local_domain(domain) {
        // Delivering a local domain by MX would loop back to us. A configuration gap is
        // retried (and in the end bounced) like any temporary failure.
        return Plan::Defer(format!(
            "no route for local domain {domain}: add a [[route]] or a route plugin"
        ));
    }
    let (tls, ca_file) = config.mx_tls_for(domain);
    Plan::Deliver(Destination::Mx {
        domain: domain.to_ascii_lowercase(),
        tls,
        roots: roots(generation, ca_file),
    })
}

/// The roots the generation loaded from `ca_file` (`None`: the system store).
fn roots(generation: &Generation, ca_file: Option<&std::path::Path>) -> Option<TrustRoots> {
    ca_file.and_then(|f| generation.ca_roots.get(f).cloned())
}

/// A reply as one line of text, for logs, state and DSNs.
pub fn reply_text(r: &postrider_smtp::reply::Reply) -> String {
    let mut out = Vec::new();
    r.write_to(&mut out);
    String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join(" ")
}
