//! Postrider's Prometheus metrics, defined in one place.
//!
//! [`Metrics`] holds every metric family of the relay with typed label sets; the server,
//! sessions, queue manager, reloader and plugin code get an `Arc<Metrics>` and call its
//! recording methods, and the admin HTTP listener serves [`Metrics::encode`] at `/metrics`.
//!
//! Names follow the Prometheus conventions: a `postrider_` prefix, `_total` on counters,
//! base units (`_seconds`, `_bytes`) on histograms, and label values from small fixed sets,
//! except plugin and listener names (bounded by the configuration) and the destination
//! domain, which is bounded by [`Metrics::new`]'s `max_domains`: the first domains seen get
//! their own value, every later one counts as `other`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`Metrics::encode`]'s output (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Label value of destination domains beyond the first `max_domains`.
pub const OTHER_DOMAIN: &str = "other";

/// Label value of the relay's own checks in `postrider_verdicts_total{plugin}`.
pub const BUILTIN: &str = "builtin";

/// `{listener}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

/// `{listener, reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: String,
    reason: &'static str,
}

/// `{listener, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerResultLabels {
    listener: String,
    result: &'static str,
}

/// `{stage, plugin, verdict}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    stage: &'static str,
    plugin: String,
    verdict: &'static str,
}

/// `{stage, plugin}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    stage: &'static str,
    plugin: String,
}

/// `{stage, plugin, kind}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    stage: &'static str,
    plugin: String,
    kind: &'static str,
}

/// `{plugin, source}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    plugin: String,
    source: &'static str,
}

/// `{plugin, kind, grant, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetLabels {
    plugin: String,
    kind: String,
    grant: String,
    result: String,
}

/// `{plugin, kind}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetKindLabels {
    plugin: String,
    kind: String,
}

/// `{op}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

/// `{state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// `{result, domain}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    result: &'static str,
    domain: String,
}

/// `{kind}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// `{policy, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    policy: &'static str,
    result: &'static str,
}

/// `{version}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// How a recipient's delivery attempt ended (`postrider_deliveries_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The next hop accepted it.
    Delivered,
    /// A temporary failure: it will be retried.
    Deferred,
    /// A permanent failure (or a route's bounce, or a mail loop): bounced.
    Bounced,
    /// A temporary failure past the queue's maximum age: bounced.
    Expired,
    /// A route discarded it.
    Discarded,
}

impl DeliveryResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Deferred => "deferred",
            DeliveryResult::Bounced => "bounced",
            DeliveryResult::Expired => "expired",
            DeliveryResult::Discarded => "discarded",
        }
    }
}

/// The queue states of `postrider_queue_messages{state}` (those of `postrider queue list`).
pub const QUEUE_STATES: [&str; 4] = ["queued", "deferred", "held", "quarantined"];

/// Every metric of the relay. Cheap to record into from any thread.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    max_domains: usize,
    domains: Mutex<HashSet<String>>,
    connections: Family<ListenerLabels, Counter>,
    connections_refused: Family<RefusedLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    transactions: Family<ListenerResultLabels, Counter>,
    message_size: Histogram,
    auth: Family<ListenerResultLabels, Counter>,
    timeouts: Family<ListenerResultLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    plugin_duration: Family<PluginLabels, Histogram>,
    plugin_failures: Family<FailureLabels, Counter>,
    plugin_instances: Family<InstanceLabels, Counter>,
    plugin_network: Family<NetLabels, Counter>,
    plugin_network_duration: Family<NetKindLabels, Histogram>,
    fsync: Family<OpLabels, Histogram>,
    queue: Family<StateLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
    attempt_duration: Histogram,
    dsns: Family<KindLabels, Counter>,
    outbound_tls: Family<TlsLabels, Counter>,
    kv_failures: Counter,
    reloads: Counter,
    reload_failures: Counter,
    generation: Gauge,
    last_reload: Gauge<f64, std::sync::atomic::AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s: plugin calls, fsyncs and delivery attempts all fall in this range.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Every family registered, at zero; `max_domains` bounds the values of the
    /// destination-domain label (at least 0: then every domain is `other`).
    pub fn new(version: &'static str, max_domains: usize) -> Metrics {
        let mut registry = Registry::with_prefix("postrider");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version }).set(1);
        registry.register(
            "build_info",
            "The running build: always 1, the version as a label",
            build_info,
        );
        let connections = Family::default();
        registry.register(
            "connections",
            "SMTP connections accepted, by listener",
            connections.clone(),
        );
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "SMTP connections refused with 421 by a connection limit, by listener and reason \
             (max_connections, max_connections_per_ip)",
            connections_refused.clone(),
        );
        let connections_open = Family::default();
        registry.register(
            "connections_open",
            "SMTP connections open now, by listener",
            connections_open.clone(),
        );
        let transactions = Family::default();
        registry.register(
            "transactions",
            "Messages received (end of DATA/BDAT), by listener and result: accepted (queued, \
             250), rejected (5xx) or tempfailed (4xx: a data-stage plugin or the spool)",
            transactions.clone(),
        );
        let message_size = Histogram::new(exponential_buckets(1024.0, 4.0, 10));
        registry.register_with_unit(
            "message_size",
            "Size of accepted messages as spooled",
            Unit::Bytes,
            message_size.clone(),
        );
        let auth = Family::default();
        registry.register(
            "auth_attempts",
            "SMTP AUTH attempts, by listener and result: success, failure, authzid (an \
             authorization identity the user may not act as), busy (454: too many password \
             checks waiting), delayed (answered after the failure delay), locked (454: too \
             many recent failures from the client or for the user)",
            auth.clone(),
        );
        let timeouts = Family::default();
        registry.register(
            "session_timeouts",
            "SMTP sessions closed with 421 4.4.2 because a deadline passed, by listener and \
             what was late (command: a command line; data: message content; tls: a handshake)",
            timeouts.clone(),
        );
        let verdicts = Family::default();
        registry.register(
            "verdicts",
            "Verdicts by stage (connect, helo, mail-from, rcpt, data, route), plugin (or \
             \"builtin\" for relay control) and verdict",
            verdicts.clone(),
        );
        let plugin_duration =
            Family::<PluginLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "plugin_call_duration",
            "Wall time of each plugin call, instantiation included, by stage and plugin",
            Unit::Seconds,
            plugin_duration.clone(),
        );
        let plugin_failures = Family::default();
        registry.register(
            "plugin_failures",
            "Failed plugin calls (answered by the plugin's failure_policy), by stage, plugin \
             and kind (trap, timeout, busy, invalid)",
            plugin_failures.clone(),
        );
        let plugin_instances = Family::default();
        registry.register(
            "plugin_instances",
            "Plugin instances taken for a use, by plugin and source: fresh (instantiated) or \
             warm (from the plugin's pool, with reuse > 1)",
            plugin_instances.clone(),
        );
        let plugin_network = Family::default();
        registry.register(
            "plugin_network",
            "Plugins' network requests and connections, by plugin, kind (http, tcp, udp, \
             tcp-listen), grant (the allow_* entry that allowed it, - when none did) and result \
             (denied, allowed, 1xx..5xx, error, timeout)",
            plugin_network.clone(),
        );
        let plugin_network_duration = Family::<NetKindLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        registry.register_with_unit(
            "plugin_network_duration",
            "Time plugins' HTTP requests took until the response head, by plugin and kind",
            Unit::Seconds,
            plugin_network_duration.clone(),
        );
        let fsync =
            Family::<OpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "spool_fsync_duration",
            "Spool sync latency, by op: commit (one syncfs per group-committed batch of \
             received messages), state (a delivery state save), remove (a removal)",
            Unit::Seconds,
            fsync.clone(),
        );
        let queue = Family::<StateLabels, Gauge>::default();
        for state in QUEUE_STATES {
            queue.get_or_create(&StateLabels { state }).set(0);
        }
        registry.register(
            "queue_messages",
            "Messages in the queue, by state (queued, deferred, held, quarantined)",
            queue.clone(),
        );
        let deliveries = Family::default();
        registry.register(
            "deliveries",
            "Per-recipient delivery outcomes, by result (delivered, deferred, bounced, \
             expired, discarded) and destination domain (the first domains seen, then \
             \"other\")",
            deliveries.clone(),
        );
        let attempt_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Wall time of each outbound delivery attempt (connect to last reply)",
            Unit::Seconds,
            attempt_duration.clone(),
        );
        let dsns = Family::default();
        registry.register(
            "dsns",
            "Delivery status notifications queued to senders, by kind (failure, delay)",
            dsns.clone(),
        );
        let outbound_tls = Family::default();
        registry.register(
            "outbound_tls_sessions",
            "New outbound SMTP connections, by TLS policy (none, opportunistic, require, verify) \
             and result (verified, unverified, plaintext, failed: the handshake or the \
             certificate check failed, or TLS was mandatory and not offered)",
            outbound_tls.clone(),
        );
        let kv_failures = Counter::default();
        registry.register(
            "kv_failures",
            "Plugin kv calls that failed because the shared store (Redis) was unreachable, \
             slow or broken",
            kv_failures.clone(),
        );
        let reloads = Counter::default();
        registry.register(
            "reloads",
            "Configuration reloads attempted (file change, SIGHUP, postrider reload)",
            reloads.clone(),
        );
        let reload_failures = Counter::default();
        registry.register(
            "reload_failures",
            "Configuration reloads that failed (the running configuration stayed)",
            reload_failures.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "config_generation",
            "Number of the configuration generation in use (1 at start)",
            generation.clone(),
        );
        let last_reload = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the configuration in use was loaded, as a Unix time",
            Unit::Seconds,
            last_reload.clone(),
        );
        Metrics {
            registry,
            max_domains,
            domains: Mutex::new(HashSet::new()),
            connections,
            connections_refused,
            connections_open,
            transactions,
            message_size,
            auth,
            timeouts,
            verdicts,
            plugin_duration,
            plugin_failures,
            plugin_instances,
            plugin_network,
            plugin_network_duration,
            fsync,
            queue,
            deliveries,
            attempt_duration,
            dsns,
            outbound_tls,
            kv_failures,
            reloads,
            reload_failures,
            generation,
            last_reload,
        }
    }

    /// The whole registry in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// A connection was accepted on `listener`; it counts as open until
    /// [`Metrics::connection_closed`].
    pub fn connection_opened(&self, listener: &str) {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        self.connections.get_or_create(&labels).inc();
        self.connections_open.get_or_create(&labels).inc();
    }

    /// A connection counted by [`Metrics::connection_opened`] ended.
    pub fn connection_closed(&self, listener: &str) {
        self.connections_open
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
            })
            .dec();
    }

    /// A connection was refused by a limit (`max_connections`, `max_connections_per_ip`).
    pub fn connection_refused(&self, listener: &str, reason: &'static str) {
        self.connections_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    /// A message was received; `result` is `accepted`, `rejected` or `tempfailed`;
    /// `size` (octets as spooled) is recorded for accepted ones.
    pub fn transaction(&self, listener: &str, result: &'static str, size: Option<usize>) {
        self.transactions
            .get_or_create(&ListenerResultLabels {
                listener: listener.to_owned(),
                result,
            })
            .inc();
        if let Some(size) = size {
            self.message_size.observe(size as f64);
        }
    }

    /// An AUTH attempt ended (`success` or `failure`).
    pub fn auth(&self, listener: &str, result: &'static str) {
        self.auth
            .get_or_create(&ListenerResultLabels {
                listener: listener.to_owned(),
                result,
            })
            .inc();
    }

    /// A session closed on `listener` because a deadline passed (`what`: command, data, tls).
    pub fn timeout(&self, listener: &str, what: &'static str) {
        self.timeouts
            .get_or_create(&ListenerResultLabels {
                listener: listener.to_owned(),
                result: what,
            })
            .inc();
    }

    /// A verdict at `stage` by `plugin` ([`BUILTIN`] for the relay's own checks).
    pub fn verdict(&self, stage: &'static str, plugin: &str, verdict: &'static str) {
        self.verdicts
            .get_or_create(&VerdictLabels {
                stage,
                plugin: plugin.to_owned(),
                verdict,
            })
            .inc();
    }

    /// A plugin instance taken for a use: `source` is "fresh" or "warm".
    pub fn plugin_instance(&self, plugin: &str, source: &'static str) {
        self.plugin_instances
            .get_or_create(&InstanceLabels {
                plugin: plugin.to_owned(),
                source,
            })
            .inc();
    }

    /// One plugin call: its duration, its verdict, and its failure kind if it failed.
    pub fn plugin_call(
        &self,
        stage: &'static str,
        plugin: &str,
        verdict: &'static str,
        failure: Option<&'static str>,
        elapsed: Duration,
    ) {
        self.plugin_duration
            .get_or_create(&PluginLabels {
                stage,
                plugin: plugin.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
        self.verdict(stage, plugin, verdict);
        if let Some(kind) = failure {
            self.plugin_failures
                .get_or_create(&FailureLabels {
                    stage,
                    plugin: plugin.to_owned(),
                    kind,
                })
                .inc();
        }
    }

    /// One network request or connection of a plugin (see `NetObserver` in the plugin host).
    pub fn plugin_network(
        &self,
        plugin: &str,
        kind: &str,
        grant: Option<&str>,
        result: &str,
        elapsed: Duration,
    ) {
        self.plugin_network
            .get_or_create(&NetLabels {
                plugin: plugin.to_owned(),
                kind: kind.to_owned(),
                grant: grant.unwrap_or("-").to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if kind == "http" && result != "denied" {
            self.plugin_network_duration
                .get_or_create(&NetKindLabels {
                    plugin: plugin.to_owned(),
                    kind: kind.to_owned(),
                })
                .observe(elapsed.as_secs_f64());
        }
    }

    /// One spool sync (`commit`, `state` or `remove`) took `elapsed`.
    pub fn spool_sync(&self, op: &'static str, elapsed: Duration) {
        self.fsync
            .get_or_create(&OpLabels { op })
            .observe(elapsed.as_secs_f64());
    }

    /// A queued message moved from state `from` (none: new) to `to` (none: gone).
    pub fn queue_moved(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if from == to {
            return;
        }
        if let Some(state) = from {
            self.queue.get_or_create(&StateLabels { state }).dec();
        }
        if let Some(state) = to {
            self.queue.get_or_create(&StateLabels { state }).inc();
        }
    }

    /// One recipient's delivery outcome, for a recipient in `domain`.
    pub fn delivery(&self, result: DeliveryResult, domain: &str) {
        let domain = self.domain_label(domain);
        self.deliveries
            .get_or_create(&DeliveryLabels {
                result: result.as_str(),
                domain,
            })
            .inc();
    }

    /// One outbound attempt (one connection's transaction) took `elapsed`.
    pub fn delivery_attempt(&self, elapsed: Duration) {
        self.attempt_duration.observe(elapsed.as_secs_f64());
    }

    /// A new outbound SMTP connection under TLS `policy` ended TLS-wise with `result`.
    pub fn outbound_tls(&self, policy: &'static str, result: &'static str) {
        self.outbound_tls
            .get_or_create(&TlsLabels { policy, result })
            .inc();
    }

    /// A DSN (`failure` or `delay`) was queued.
    pub fn dsn(&self, kind: &'static str) {
        self.dsns.get_or_create(&KindLabels { kind }).inc();
    }

    /// A kv call failed on the shared store.
    pub fn kv_failure(&self) {
        self.kv_failures.inc();
    }

    /// A reload ended; on success `generation` is now in use.
    pub fn reload(&self, outcome: Result<u64, ()>) {
        self.reloads.inc();
        match outcome {
            Ok(generation) => self.config_loaded(generation),
            Err(()) => {
                self.reload_failures.inc();
            }
        }
    }

    /// Configuration generation `generation` is in use from now on.
    pub fn config_loaded(&self, generation: u64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_reload.set(now);
    }

    /// The label value for a destination domain: itself (lower case) while fewer than
    /// `max_domains` distinct domains have been seen, [`OTHER_DOMAIN`] after that.
    pub fn domain_label(&self, domain: &str) -> String {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let domain = if domain.is_empty() {
            "none".to_owned()
        } else {
            domain
        };
        let mut seen = self.domains.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&domain) {
            return domain;
        }
        if seen.len() < self.max_domains {
            seen.insert(domain.clone());
            return domain;
        }
        OTHER_DOMAIN.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name{labels}` (labels as encoded), if present.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new("1.2.3", 10);
        m.connection_opened("mx");
        m.plugin_call(
            "rcpt",
            "greylist",
            "tempfail",
            None,
            Duration::from_millis(3),
        );
        m.plugin_instance("greylist", "warm");
        m.spool_sync("commit", Duration::from_millis(1));
        m.outbound_tls("verify", "failed");
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "postrider_outbound_tls_sessions_total{policy=\"verify\",result=\"failed\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "postrider_plugin_instances_total{plugin=\"greylist\",source=\"warm\"}"
            ),
            Some(1.0)
        );
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let mut parts = line.split(' ').skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("postrider_"), "{line}");
            match kind {
                "counter" => assert!(name.ends_with("_total"), "{line}"),
                "histogram" => assert!(
                    name.ends_with("_seconds") || name.ends_with("_bytes"),
                    "{line}"
                ),
                _ => assert!(!name.ends_with("_total"), "{line}"),
            }
        }
        assert_eq!(
            sample(&text, "postrider_connections_total{listener=\"mx\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "postrider_verdicts_total{stage=\"rcpt\",plugin=\"greylist\",verdict=\"tempfail\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "postrider_plugin_call_duration_seconds_count{stage=\"rcpt\",plugin=\"greylist\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "postrider_build_info{version=\"1.2.3\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "postrider_queue_messages{state=\"held\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn destination_domains_are_bounded() {
        let m = Metrics::new("0", 2);
        assert_eq!(m.domain_label("A.test."), "a.test");
        assert_eq!(m.domain_label("b.test"), "b.test");
        assert_eq!(m.domain_label("c.test"), OTHER_DOMAIN);
        assert_eq!(m.domain_label("a.TEST"), "a.test");
        m.delivery(DeliveryResult::Delivered, "c.test");
        m.delivery(DeliveryResult::Delivered, "d.test");
        let text = m.encode();
        assert_eq!(
            sample(
                &text,
                "postrider_deliveries_total{result=\"delivered\",domain=\"other\"}"
            ),
            Some(2.0)
        );
    }

    #[test]
    fn queue_gauge_follows_moves_and_reloads_count() {
        let m = Metrics::new("0", 2);
        m.queue_moved(None, Some("queued"));
        m.queue_moved(Some("queued"), Some("deferred"));
        m.queue_moved(None, Some("queued"));
        m.queue_moved(Some("queued"), None);
        m.reload(Ok(2));
        m.reload(Err(()));
        let text = m.encode();
        assert_eq!(
            sample(&text, "postrider_queue_messages{state=\"queued\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "postrider_queue_messages{state=\"deferred\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "postrider_reloads_total"), Some(2.0));
        assert_eq!(sample(&text, "postrider_reload_failures_total"), Some(1.0));
        assert_eq!(sample(&text, "postrider_config_generation"), Some(2.0));
    }
}
