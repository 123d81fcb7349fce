//! Runs cases through the relay's own plugin host: one [`PluginEngine`] for the whole
//! process, a fresh kv store, clock and DNS table per case, the plugin loaded with the
//! case's config and limits, and each run played stage by stage like the relay's session
//! does (a refusal ends what it ends there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postrider_kv::{KvEntry, KvError, KvFuture, KvStore, ManualClock, MemoryKv};
use postrider_plugin_host::Dns;
use postrider_plugin_host::{
    Authentication, CallFailure, ConnInfo, Decision, EngineOptions, EnvelopeInfo, FailurePolicy,
    HeaderEdit, HostCall, HostError, LoadedPlugin, Pipeline, PluginEngine, PluginSpec,
    RouteDecision, Services, Stage, StaticDns, TlsInfo, append_text_part, apply_edits,
    replace_body,
};
use postrider_smtp::server::{Misuse, Session, SessionConfig};
use postrider_stages::{Driver, Policy as _, StageRun, auth_result_keyword};
use serde::Serialize;

use crate::case::{
    Case, Connection, Expectations, FailureKind, HeaderExpect, KvFault, KvMatch, RouteExpect, Run,
    StageExpect, VerdictKind, bare_path,
};
use crate::policy::{DEFAULT_HELO, HOSTNAME, HarnessPolicy, answer_events};

/// The relay's default bound on kv calls (`[plugins] kv_timeout_ms`).
pub const KV_TIMEOUT: Duration = Duration::from_millis(250);
/// The relay's default bound on DNS lookups (`[plugins] dns_timeout_ms`).
pub const DNS_TIMEOUT: Duration = Duration::from_millis(1500);

/// Why the harness could not start.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The wasm engine could not be built.
    #[error(transparent)]
    Engine(#[from] HostError),
    /// The compiled-plugin cache directory could not be created.
    #[error("creating a cache directory: {0}")]
    Cache(std::io::Error),
}

/// The plugin under test and the engine that runs it.
pub struct Harness {
    engine: Arc<PluginEngine>,
    wasm: PathBuf,
    name: String,
    cache_dir: PathBuf,
    _temp_cache: Option<tempfile::TempDir>,
}

/// A plugin's setting for [`Harness::load`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Config JSON.
    pub config_json: String,
    /// Failure policy.
    pub failure_policy: FailurePolicy,
    /// Per-call deadline.
    pub timeout_ms: u64,
    /// Memory cap.
    pub memory_mb: u32,
    /// Transactions one instance may serve (1: a fresh instance each).
    pub reuse: u32,
    /// Most idle instances kept for reuse.
    pub pool_idle: u32,
    /// What the plugin may reach on the network.
    pub network: postrider_config::NetworkGrants,
}

/// A case's services, kept so the harness can read the kv store and move the clock.
pub struct World {
    /// The kv store the plugin writes (also when a kv fault is injected).
    pub kv: Arc<MemoryKv>,
    /// The case's clock.
    pub clock: Arc<ManualClock>,
    /// What the plugin is given.
    pub services: Services,
}

impl World {
    /// Fresh services: an empty kv store, the clock at `clock_ms`, the DNS table.
    pub fn new(clock_ms: u64, dns: StaticDns, kv_fault: Option<KvFault>) -> World {
        let clock = Arc::new(ManualClock::new(clock_ms));
        let kv = Arc::new(MemoryKv::new(clock.clone()));
        let plugin_kv: Arc<dyn KvStore> = match kv_fault {
            Some(fault) => Arc::new(FaultyKv(fault)),
            None => kv.clone(),
        };
        let dns: Arc<dyn Dns> = Arc::new(dns);
        let services = Services {
            kv: plugin_kv,
            dns,
            clock: clock.clone(),
            kv_timeout: KV_TIMEOUT,
            dns_timeout: DNS_TIMEOUT,
            net_observer: None,
        };
        World {
            kv,
            clock,
            services,
        }
    }
}

impl Harness {
    /// An engine sized for instances of up to `max_memory_mb`; compiled plugins are cached in
    /// `cache_dir`, or in a temporary directory removed when the harness is dropped.
    pub fn new(
        wasm: &Path,
        name: &str,
        max_memory_mb: u32,
        cache_dir: Option<PathBuf>,
    ) -> Result<Harness, HarnessError> {
        let engine = Arc::new(PluginEngine::new(&EngineOptions {
            max_instances: crate::case::MAX_INSTANCES,
            max_memory_bytes: (max_memory_mb.max(1) as usize) << 20,
        })?);
        let (cache_dir, temp) = match cache_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("postrider-harness-")
                    .tempdir()
                    .map_err(HarnessError::Cache)?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(Harness {
            engine,
            wasm: wasm.to_path_buf(),
            name: name.to_owned(),
            cache_dir,
            _temp_cache: temp,
        })
    }

    /// The plugin's name (its kv namespace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads the plugin as the relay does (compile or cache, canary `init`) into a pipeline.
    pub async fn load(
        &self,
        options: &LoadOptions,
        services: &Services,
    ) -> Result<Arc<Pipeline>, HostError> {
        let spec = PluginSpec {
            name: self.name.clone(),
            path: self.wasm.clone(),
            config_json: options.config_json.clone(),
            failure_policy: options.failure_policy,
            timeout: Duration::from_millis(options.timeout_ms),
            memory_bytes: (options.memory_mb as usize) << 20,
            reuse: options.reuse,
            pool_idle: options.pool_idle,
            log_level: None,
            network: options.network.clone(),
        };
        let plugin =
            LoadedPlugin::load(&self.engine, spec, Some(&self.cache_dir), services).await?;
        Ok(Arc::new(Pipeline::new(
            Arc::clone(&self.engine),
            vec![Arc::new(plugin)],
            services.clone(),
        )))
    }

    /// Runs one case and compares it with its expectations; the peers it mocks serve while
    /// it runs, and are gone (their addresses free) when this returns.
    pub async fn run_case(&self, case: &Case) -> CaseReport {
        match crate::mocks::MockServers::start(&case.network).await {
            Ok(mocks) => {
                let report = self.run_case_with_peers(case).await;
                mocks.stop().await;
                report
            }
            Err(e) => {
                let mut report = empty_report(case);
                report
                    .mismatches
                    .push(Mismatch::new("setup", "mocked peers".into(), e));
                report
            }
        }
    }

    async fn run_case_with_peers(&self, case: &Case) -> CaseReport {
        let mut report = empty_report(case);
        let world = World::new(case.clock_ms, case.dns.clone(), case.kv_error);
        for p in &case.kv {
            let ttl = p.ttl_secs.map(Duration::from_secs);
            if let Err(e) = world
                .kv
                .set(&self.name, &p.key, p.value.clone().into_bytes(), ttl)
                .await
            {
                report.mismatches.push(Mismatch::new(
                    "setup",
                    format!("kv preset {:?}", p.key),
                    e.to_string(),
                ));
            }
        }
        let options = LoadOptions {
            config_json: case.plugin.config_json.clone(),
            failure_policy: case.plugin.failure_policy,
            timeout_ms: case.plugin.timeout_ms,
            memory_mb: case.plugin.memory_mb,
            reuse: case.plugin.reuse,
            pool_idle: case.plugin.pool_idle,
            network: case.network.grants.clone(),
        };
        let pipeline = match (
            self.load(&options, &world.services).await,
            &case.expect_load_error,
        ) {
            (Ok(p), None) => p,
            (Ok(_), Some(re)) => {
                report.mismatches.push(Mismatch::new(
                    "load",
                    format!("load error ~ /{re}/"),
                    "the plugin loaded".into(),
                ));
                report.passed = false;
                return report;
            }
            (Err(e), expected) => {
                let text = e.to_string();
                match expected {
                    Some(re) if re.is_match(&text) => {}
                    Some(re) => report.mismatches.push(Mismatch::new(
                        "load",
                        format!("load error ~ /{re}/"),
                        text.clone(),
                    )),
                    None => report.mismatches.push(Mismatch::new(
                        "load",
                        "the plugin loads".into(),
                        text.clone(),
                    )),
                }
                report.load_error = Some(text);
                report.passed = report.mismatches.is_empty();
                return report;
            }
        };
        for (i, run) in case.runs.iter().enumerate() {
            world.clock.advance(Duration::from_millis(run.advance_ms));
            let mut played = play(&pipeline, run, i + 1, &world.clock).await;
            played.kv = namespace_entries(&world.kv, &self.name);
            report
                .mismatches
                .extend(check(&run.expect, &played, &run.label));
            report.runs.push(played);
        }
        report.passed = report.mismatches.is_empty();
        report
    }
}

/// The live kv entries of one namespace, values as (lossy) UTF-8.
pub fn namespace_entries(kv: &MemoryKv, namespace: &str) -> BTreeMap<String, String> {
    kv.entries()
        .into_iter()
        .filter(|(ns, _, _)| ns == namespace)
        .map(|(_, k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// A kv store whose every call fails, to test a plugin's fail-open path.
struct FaultyKv(KvFault);

impl FaultyKv {
    fn error(&self) -> KvError {
        match self.0 {
            KvFault::Unavailable => KvError::Unavailable("injected by the test case".into()),
            KvFault::Invalid => KvError::Invalid("injected by the test case".into()),
        }
    }
}

impl KvStore for FaultyKv {
    fn get<'a>(&'a self, _: &'a str, _: &'a str) -> KvFuture<'a, Option<Vec<u8>>> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
    fn set<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Vec<u8>,
        _: Option<Duration>,
    ) -> KvFuture<'a, ()> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
    fn incr<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: i64,
        _: Option<Duration>,
    ) -> KvFuture<'a, i64> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
    fn delete<'a>(&'a self, _: &'a str, _: &'a str) -> KvFuture<'a, bool> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
    fn list<'a>(&'a self, _: &'a str, _: &'a str, _: usize) -> KvFuture<'a, Vec<KvEntry>> {
        let e = self.error();
        Box::pin(async move { Err(e) })
    }
}

/// One expectation that did not hold.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// Where: "run 2, rcpt <b@example.org>".
    pub at: String,
    /// What the case expected.
    pub expected: String,
    /// What happened.
    pub actual: String,
}

/// A report of `case` with nothing run yet.
fn empty_report(case: &Case) -> CaseReport {
    CaseReport {
        name: case.name.clone(),
        file: case.file.display().to_string(),
        line: case.line,
        passed: false,
        load_error: None,
        mismatches: Vec::new(),
        runs: Vec::new(),
    }
}

impl Mismatch {
    fn new(at: &str, expected: String, actual: String) -> Mismatch {
        Mismatch {
            at: at.to_owned(),
            expected,
            actual,
        }
    }
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Case name.
    pub name: String,
    /// Case file.
    pub file: String,
    /// Line of the case in it.
    pub line: usize,
    /// Whether every expectation held.
    pub passed: bool,
    /// The load error, when the plugin did not load.
    pub load_error: Option<String>,
    /// What did not hold.
    pub mismatches: Vec<Mismatch>,
    /// What happened, run by run.
    pub runs: Vec<RunReport>,
}

/// What one run did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// "run 1", or the run's label.
    pub label: String,
    /// The clock during the run, Unix ms.
    pub clock_ms: u64,
    /// Every stage that ran, in order.
    pub stages: Vec<StageReport>,
    /// The plugin's kv entries after the run.
    pub kv: BTreeMap<String, String>,
}

/// A reply-bearing verdict, for reports.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerdictReport {
    /// continue, accept, reject, tempfail or disconnect.
    pub verdict: &'static str,
    /// Reply code.
    pub code: Option<u16>,
    /// Enhanced status code.
    pub enhanced: Option<String>,
    /// Reply text.
    pub text: Option<String>,
}

impl VerdictReport {
    fn of(d: &Decision) -> VerdictReport {
        let (verdict, reply) = match d {
            Decision::Continue => ("continue", None),
            Decision::Accept => ("accept", None),
            Decision::Reject(r) => ("reject", Some(r)),
            Decision::Tempfail(r) => ("tempfail", Some(r)),
            Decision::Disconnect(r) => ("disconnect", Some(r)),
        };
        VerdictReport {
            verdict,
            code: reply.map(|r| r.code()),
            enhanced: reply.and_then(|r| r.enhanced()).map(|e| e.to_string()),
            text: reply.map(|r| r.text().to_owned()),
        }
    }

    fn passes(&self) -> bool {
        matches!(self.verdict, "continue" | "accept")
    }
}

impl std::fmt::Display for VerdictReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.verdict)?;
        if let Some(c) = self.code {
            write!(f, " {c}")?;
        }
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        if let Some(t) = &self.text {
            write!(f, " {t:?}")?;
        }
        Ok(())
    }
}

/// One stage call of the chain in a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// connect, helo, mail-from, rcpt, data or route.
    pub stage: &'static str,
    /// The recipient, for rcpt and route.
    pub subject: Option<String>,
    /// The stage's input, for people.
    pub input: String,
    /// The chain's decision (verdict stages).
    pub verdict: Option<VerdictReport>,
    /// The recipient rewrite (rcpt).
    pub rewrite: Option<String>,
    /// Header edits (data).
    pub edits: Vec<String>,
    /// The message's header block after the edits (data).
    pub headers_after: Option<String>,
    /// Quarantine reason (data).
    pub quarantine: Option<String>,
    /// The body after the data stage, when a plugin set one or appended text (data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_after: Option<String>,
    /// The route (route).
    pub route: Option<String>,
    /// Each plugin call.
    pub calls: Vec<CallReport>,
    #[serde(skip)]
    raw_edits: Vec<HeaderEdit>,
    /// The whole message after every change of the data stage, as it would be stored.
    #[serde(skip)]
    message_after: Option<Vec<u8>>,
    #[serde(skip)]
    raw_route: Option<RouteDecision>,
}

/// One plugin call.
#[derive(Debug, Clone, Serialize)]
pub struct CallReport {
    /// Plugin name.
    pub plugin: String,
    /// Stage.
    pub stage: &'static str,
    /// What the plugin answered (or its policy made of a failure).
    pub outcome: String,
    /// The failure, if the call failed.
    pub failure: Option<String>,
    /// Its kind.
    pub failure_kind: Option<FailureKind>,
    /// Wall time, instantiation included, µs.
    pub elapsed_us: u64,
    /// Host calls (dns, kv, log) in order.
    pub host_calls: Vec<HostCallReport>,
}

/// One host call a plugin made.
#[derive(Debug, Clone, Serialize)]
pub struct HostCallReport {
    /// "kv.get", "dns.lookup-ip", "log.info", ...
    pub call: String,
    /// Arguments.
    pub args: String,
    /// Result.
    pub result: String,
    /// Host time, µs.
    pub elapsed_us: u64,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The kind of a call failure. The chain reports failures at the rcpt and data stages as
/// `Invalid` with the original failure's text, so the text is read too.
pub fn failure_kind(f: &CallFailure) -> FailureKind {
    match f {
        CallFailure::Trap(_) => FailureKind::Trap,
        CallFailure::Timeout(_) => FailureKind::Timeout,
        CallFailure::Busy => FailureKind::Busy,
        CallFailure::Invalid(m) if m.starts_with("trap: ") => FailureKind::Trap,
        CallFailure::Invalid(m) if m.starts_with("timed out after ") => FailureKind::Timeout,
        CallFailure::Invalid(m) if m.starts_with("no free instance slot") => FailureKind::Busy,
        CallFailure::Invalid(_) => FailureKind::Invalid,
        CallFailure::Unavailable(_) => FailureKind::Unavailable,
    }
}

/// Converts the chain's `PluginCall`s (a type the host crate does not re-export, so it is
/// reached through inference here) into reports.
macro_rules! call_reports {
    ($calls:expr) => {
        $calls
            .into_iter()
            .map(|c| $crate::runner::CallReport {
                plugin: c.plugin,
                stage: c.stage.name(),
                outcome: c.outcome,
                failure_kind: c.failure.as_ref().map($crate::runner::failure_kind),
                failure: c.failure.map(|f| f.to_string()),
                elapsed_us: $crate::runner::micros(c.elapsed),
                host_calls: c
                    .host_calls
                    .into_iter()
                    .map($crate::runner::host_call)
                    .collect(),
            })
            .collect::<Vec<$crate::runner::CallReport>>()
    };
}
pub(crate) use call_reports;

pub(crate) fn host_call(h: HostCall) -> HostCallReport {
    HostCallReport {
        // The host names log calls after the level's Debug form ("log.level::warn").
        call: h.call.replace("log.level::", "log."),
        args: h.args,
        result: h.result,
        elapsed_us: micros(h.elapsed),
    }
}

impl StageReport {
    fn new(stage: Stage, subject: Option<String>, input: String) -> StageReport {
        StageReport {
            stage: stage.name(),
            subject,
            input,
            verdict: None,
            rewrite: None,
            edits: Vec::new(),
            headers_after: None,
            quarantine: None,
            body_after: None,
            route: None,
            calls: Vec::new(),
            raw_edits: Vec::new(),
            message_after: None,
            raw_route: None,
        }
    }

    fn failure(&self) -> Option<&CallReport> {
        self.calls.iter().find(|c| c.failure.is_some())
    }
}

/// The host's view of the connection.
pub fn conn_info(c: &Connection) -> ConnInfo {
    ConnInfo {
        id: c.id.clone(),
        client_ip: c.client_ip,
        client_port: c.client_port,
        client_name: c.client_name.clone(),
        listener: c.listener.clone(),
        server_ip: c.server_ip,
        server_port: c.server_port,
        helo: None,
        tls: c.tls.as_ref().map(|t| TlsInfo {
            protocol: t.protocol.clone(),
            cipher: t.cipher.clone(),
            sni: t.sni.clone(),
        }),
        auth_user: c.auth_user.clone(),
    }
}

/// The connection, for traces.
pub fn describe_conn(c: &ConnInfo) -> String {
    format!(
        "client [{}]:{}{} -> {} [{}]:{}, helo {}, tls {}, auth {}",
        c.client_ip,
        c.client_port,
        c.client_name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        c.listener,
        c.server_ip,
        c.server_port,
        c.helo.as_deref().unwrap_or("-"),
        c.tls.as_ref().map_or("no", |t| t.protocol.as_str()),
        c.auth_user.as_deref().unwrap_or("-"),
    )
}

/// The envelope, for traces.
pub fn describe_env(e: &EnvelopeInfo) -> String {
    let params: Vec<String> = e
        .mail_params
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    format!(
        "from <{}>{}, recipients [{}]{}{}",
        e.mail_from,
        if params.is_empty() {
            String::new()
        } else {
            format!(" {}", params.join(" "))
        },
        e.recipients
            .iter()
            .map(|r| format!("<{r}>"))
            .collect::<Vec<_>>()
            .join(", "),
        e.queue_id
            .as_ref()
            .map(|q| format!(", queue id {q}"))
            .unwrap_or_default(),
        e.spf
            .as_ref()
            .map(|s| format!(", spf {} ({})", auth_result_keyword(s.result), s.domain))
            .unwrap_or_default(),
    )
}

/// DKIM, DMARC and ARC results, for traces: `dkim pass (d.example/s1), dmarc fail, arc none`.
pub fn describe_authentication(a: &Authentication) -> String {
    let dkim = if a.dkim.is_empty() {
        "none".to_owned()
    } else {
        a.dkim
            .iter()
            .map(|d| {
                format!(
                    "{} ({}/{})",
                    auth_result_keyword(d.result),
                    d.domain,
                    d.selector
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "dkim {dkim}, dmarc {}, arc {}",
        auth_result_keyword(a.dmarc),
        auth_result_keyword(a.arc)
    )
}

/// A header edit, for reports.
pub fn describe_edit(e: &HeaderEdit) -> String {
    match e {
        HeaderEdit::Prepend { name, value } => format!("prepend {name}: {value}"),
        HeaderEdit::Append { name, value } => format!("append {name}: {value}"),
        HeaderEdit::Remove { name } => format!("remove {name}"),
        HeaderEdit::Replace { name, index, value } => format!("replace {name}[{index}]: {value}"),
        HeaderEdit::Insert { index, name, value } => format!("insert [{index}] {name}: {value}"),
        HeaderEdit::Delete { name, index } => format!("delete {name}[{index}]"),
        HeaderEdit::Change { name, index, value } => format!("change {name}[{index}]: {value}"),
    }
}

/// A route, for reports.
pub fn describe_route(r: &RouteDecision) -> String {
    match r {
        RouteDecision::Mx => "mx".into(),
        RouteDecision::Relay { host, port, tls } => {
            format!("relay {host}:{port} tls {}", tls.name())
        }
        RouteDecision::Lmtp(t) => format!("lmtp {t}"),
        RouteDecision::Hold(r) => format!("hold {r:?}"),
        RouteDecision::Discard => "discard".into(),
        RouteDecision::Bounce(r) => format!(
            "bounce {} {} {:?}",
            r.code(),
            r.enhanced().map(|e| e.to_string()).unwrap_or_default(),
            r.text()
        ),
        RouteDecision::Defer(r) => format!("defer {r:?}"),
    }
}

/// The header block of a message (up to the blank line), for traces.
fn header_block(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 2);
    text[..end].replace("\r\n", "\n")
}

/// Plays one run as an SMTP client would, through the relay's stage driver: EHLO, MAIL FROM
/// with its parameters, each RCPT TO, DATA; each command only if the one before it was
/// accepted, as a client would. The route stage runs for the accepted recipients once the
/// message is stored, or when the run has no message, once the recipients are in.
async fn play(pipeline: &Arc<Pipeline>, run: &Run, n: usize, clock: &ManualClock) -> RunReport {
    use postrider_kv::Clock;
    let mut report = RunReport {
        label: run.label.clone(),
        clock_ms: clock.now_ms(),
        stages: Vec::new(),
        kv: BTreeMap::new(),
    };
    let conn = conn_info(&run.conn.resolve(&format!("harness-{n}")));
    let mut client = Client::new(pipeline, conn, run, n, report.clock_ms);
    if let Err(e) = client.play(run, &mut report).await {
        report.stages.push(StageReport::new(
            Stage::Connect,
            None,
            format!("the harness drove the SMTP state machine wrongly: {e}"),
        ));
    }
    client.driver.end_transaction();
    report
}

/// The client side of one run.
struct Client<'a> {
    pipeline: &'a Arc<Pipeline>,
    session: Session,
    driver: Driver,
    policy: HarnessPolicy,
}

impl<'a> Client<'a> {
    fn new(
        pipeline: &'a Arc<Pipeline>,
        conn: ConnInfo,
        run: &Run,
        n: usize,
        clock_ms: u64,
    ) -> Client<'a> {
        let config = SessionConfig {
            hostname: HOSTNAME.into(),
            ..SessionConfig::default()
        };
        let session = Session::new(config, conn.tls.is_some());
        let driver = Driver::new(Some(pipeline.session(true)), conn, HOSTNAME);
        let mut policy = HarnessPolicy::new(
            run.queue_id.clone().unwrap_or_else(|| format!("H{n:05}")),
            clock_ms,
        );
        policy.spf = run.spf.clone();
        policy.authentication = run.authentication.clone();
        Client {
            pipeline,
            session,
            driver,
            policy,
        }
    }

    async fn play(&mut self, run: &Run, report: &mut RunReport) -> Result<(), Misuse> {
        self.driver.connect(&mut self.session).await?;
        self.collect(report, None);
        if !self.positive() {
            return Ok(());
        }
        let helo = run.helo.as_deref().unwrap_or(DEFAULT_HELO);
        if !self.command(&format!("EHLO {helo}"), report, None).await? {
            return Ok(());
        }
        let Some(from) = &run.mail_from else {
            return Ok(());
        };
        let params: String = run
            .mail_params
            .iter()
            .map(|(k, v)| match v {
                Some(v) => format!(" {k}={v}"),
                None => format!(" {k}"),
            })
            .collect();
        let mail = format!("MAIL FROM:<{}>{params}", bare_path(from));
        if !self.command(&mail, report, None).await? {
            return Ok(());
        }
        for rcpt in &run.rcpt {
            let line = format!("RCPT TO:<{}>", bare_path(rcpt));
            self.command(&line, report, Some(rcpt)).await?;
            if self.session.is_closed() {
                return Ok(());
            }
        }
        let routes = self.pipeline.wants(Stage::Route) || !run.expect.routes.is_empty();
        let Some(message) = &run.message else {
            // No message: route what the transaction holds, as if it were stored.
            if routes && let Some(tx) = self.session.transaction() {
                let envelope = postrider_smtp::server::Envelope {
                    from: tx.from.clone(),
                    mail_params: tx.mail_params.clone(),
                    recipients: tx.recipients.clone(),
                    data: Vec::new(),
                };
                let (spool, _) = postrider_stages::spool_entry(
                    self.policy.now(),
                    HOSTNAME,
                    self.driver.conn(),
                    &self.session,
                    envelope,
                    "",
                    run.spf.as_ref(),
                );
                let id = self.policy.queue_id.clone();
                self.route(&id, &spool, report).await;
            }
            return Ok(());
        };
        if self
            .session
            .transaction()
            .is_none_or(|tx| tx.recipients.is_empty())
        {
            return Ok(());
        }
        if !self.command("DATA", report, None).await? {
            return Ok(());
        }
        let mut body = Vec::with_capacity(message.len() + 8);
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                body.push(b'.');
            }
            body.extend_from_slice(line);
        }
        if !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b".\r\n");
        self.session.feed(&body);
        let stored = self.pump(report, None).await?;
        if routes && let Some((id, envelope)) = stored {
            self.route(&id, &envelope, report).await;
        }
        Ok(())
    }

    /// Routes every recipient of a stored message.
    async fn route(
        &mut self,
        id: &str,
        envelope: &postrider_queue::Envelope,
        report: &mut RunReport,
    ) {
        for rcpt in &envelope.recipients {
            let run =
                postrider_stages::route(self.pipeline, id, envelope, &rcpt.address, true).await;
            report.stages.push(stage_report(run, None));
        }
    }

    /// Sends one command line; true when the reply was positive (2xx or 3xx).
    async fn command(
        &mut self,
        line: &str,
        report: &mut RunReport,
        subject: Option<&String>,
    ) -> Result<bool, Misuse> {
        self.session.feed(format!("{line}\r\n").as_bytes());
        self.pump(report, subject).await?;
        Ok(self.positive())
    }

    /// Answers every pending event through the driver; returns the stored message, if any.
    async fn pump(
        &mut self,
        report: &mut RunReport,
        subject: Option<&String>,
    ) -> Result<Option<(String, postrider_queue::Envelope)>, Misuse> {
        let stored = answer_events(
            &mut self.session,
            &mut self.driver,
            &mut self.policy,
            |runs| {
                report
                    .stages
                    .extend(runs.into_iter().map(|r| stage_report(r, subject)))
            },
        )
        .await?;
        Ok(stored.into_iter().last())
    }

    fn collect(&mut self, report: &mut RunReport, subject: Option<&String>) {
        for run in self.driver.take_runs() {
            report.stages.push(stage_report(run, subject));
        }
    }

    /// Whether the last reply the session wrote was positive.
    fn positive(&mut self) -> bool {
        let out = self.session.take_output();
        let last = out
            .split(|&b| b == b'\n')
            .rev()
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        !self.session.is_closed() && matches!(last.first(), Some(b'2' | b'3'))
    }
}

/// A stage as the driver ran it, as the harness reports it; `subject` names the recipient
/// as the case wrote it (rcpt).
fn stage_report(run: StageRun, subject: Option<&String>) -> StageReport {
    let input = match (run.stage, &run.envelope) {
        (Stage::Connect, _) | (_, None) => describe_conn(&run.conn),
        (Stage::Helo, _) => run.conn.helo.clone().unwrap_or_default(),
        (Stage::Rcpt, Some(env)) => format!(
            "<{}>, {}",
            run.rcpt.as_deref().unwrap_or_default(),
            describe_env(env)
        ),
        (Stage::Data, Some(env)) => format!(
            "{} bytes, {}",
            run.message.as_ref().map_or(0, |m| m.len()),
            describe_env(env)
        ),
        (_, Some(env)) => describe_env(env),
    };
    let subject = match run.stage {
        Stage::Rcpt => subject.cloned().or(run.rcpt.clone()),
        Stage::Route => run.rcpt.clone(),
        _ => None,
    };
    let mut stage = StageReport::new(run.stage, subject, input);
    if run.stage != Stage::Route {
        stage.verdict = Some(VerdictReport::of(&run.decision));
    }
    stage.rewrite = run.rewrite;
    stage.edits = run.edits.iter().map(describe_edit).collect();
    stage.headers_after = run
        .message
        .as_ref()
        .map(|m| header_block(&apply_edits(m, &run.edits)));
    stage.message_after = run.message.as_ref().map(|m| {
        let mut message = apply_edits(m, &run.edits);
        if let Some(body) = &run.body {
            message = replace_body(&message, body);
        }
        for text in &run.texts {
            message = append_text_part(&message, text);
        }
        message
    });
    if run.body.is_some() || !run.texts.is_empty() {
        stage.body_after = stage.message_after.as_deref().map(|m| {
            let text = String::from_utf8_lossy(m);
            text.split_once("\r\n\r\n")
                .map_or(String::new(), |(_, body)| body.to_owned())
        });
    }
    stage.raw_edits = run.edits;
    stage.quarantine = run.quarantine;
    stage.route = run.route.as_ref().map(describe_route);
    stage.raw_route = run.route;
    stage.calls = call_reports!(run.calls);
    stage
}

// ---- Comparison ----

fn check_stage(exp: &StageExpect, actual: Option<&StageReport>, at: &str, out: &mut Vec<Mismatch>) {
    let Some(actual) = actual else {
        if exp.verdict != VerdictKind::NotReached {
            out.push(Mismatch::new(
                at,
                exp.to_string(),
                "stage not reached".into(),
            ));
        }
        return;
    };
    let Some(v) = &actual.verdict else {
        out.push(Mismatch::new(at, exp.to_string(), "no verdict".into()));
        return;
    };
    let failure = actual.failure();
    let verdict_ok = match exp.verdict {
        VerdictKind::Pass => v.passes(),
        VerdictKind::NotReached => false,
        other => v.verdict == other.to_string(),
    };
    let ok = verdict_ok
        && exp.code.is_none_or(|c| v.code == Some(c))
        && exp
            .enhanced
            .as_ref()
            .is_none_or(|e| v.enhanced.as_ref() == Some(e))
        && exp
            .text
            .as_ref()
            .is_none_or(|re| v.text.as_ref().is_some_and(|t| re.is_match(t)))
        && exp.failure == failure.and_then(|f| f.failure_kind)
        && exp.failure_text.as_ref().is_none_or(|re| {
            failure
                .and_then(|f| f.failure.as_ref())
                .is_some_and(|t| re.is_match(t))
        })
        && exp
            .rewrite
            .as_ref()
            .is_none_or(|r| actual.rewrite.as_deref() == Some(bare_path(r).as_str()));
    if !ok {
        let mut text = v.to_string();
        if let Some(r) = &actual.rewrite {
            text.push_str(&format!(", rewrite to <{r}>"));
        } else if exp.rewrite.is_some() {
            text.push_str(", no rewrite");
        }
        match failure {
            Some(f) => text.push_str(&format!(
                ", after a {} failure: {}",
                f.failure_kind.map_or("?".into(), |k| k.to_string()),
                f.failure.as_deref().unwrap_or("")
            )),
            None => text.push_str(", no plugin failure"),
        }
        out.push(Mismatch::new(at, exp.to_string(), text));
    }
}

fn header_matches(exp: &HeaderExpect, actual: &HeaderEdit) -> bool {
    let (op, name, index, value) = match actual {
        HeaderEdit::Prepend { name, value } => ("prepend", name, None, Some(value)),
        HeaderEdit::Append { name, value } => ("append", name, None, Some(value)),
        HeaderEdit::Remove { name } => ("remove", name, None, None),
        HeaderEdit::Replace { name, index, value } => ("replace", name, Some(*index), Some(value)),
        HeaderEdit::Insert { index, name, value } => ("insert", name, Some(*index), Some(value)),
        HeaderEdit::Delete { name, index } => ("delete", name, Some(*index), None),
        HeaderEdit::Change { name, index, value } => ("change", name, Some(*index), Some(value)),
    };
    op == exp.op
        && name.eq_ignore_ascii_case(&exp.name)
        && (exp.op != "replace" || exp.index == index)
        && exp.value.as_ref().is_none_or(|v| value == Some(v))
        && exp
            .value_regex
            .as_ref()
            .is_none_or(|re| value.is_some_and(|v| re.is_match(v)))
}

fn route_matches(exp: &RouteExpect, actual: &RouteDecision) -> bool {
    match (exp, actual) {
        (RouteExpect::Mx, RouteDecision::Mx) | (RouteExpect::Discard, RouteDecision::Discard) => {
            true
        }
        (
            RouteExpect::Relay {
                host: eh,
                port: ep,
                tls: et,
            },
            RouteDecision::Relay { host, port, tls: t },
        ) => {
            eh.as_ref().is_none_or(|h| h == host)
                && ep.is_none_or(|p| p == *port)
                && et.is_none_or(|e| e == *t)
        }
        (RouteExpect::Lmtp { target: e }, RouteDecision::Lmtp(t)) => {
            e.as_ref().is_none_or(|e| e == t)
        }
        (RouteExpect::Hold { reason: e }, RouteDecision::Hold(r))
        | (RouteExpect::Defer { reason: e }, RouteDecision::Defer(r)) => {
            e.as_ref().is_none_or(|re| re.is_match(r))
        }
        (
            RouteExpect::Bounce {
                code,
                enhanced,
                text,
            },
            RouteDecision::Bounce(r),
        ) => {
            code.is_none_or(|c| c == r.code())
                && enhanced
                    .as_ref()
                    .is_none_or(|e| r.enhanced().is_some_and(|re| re.to_string() == *e))
                && text.as_ref().is_none_or(|re| re.is_match(r.text()))
        }
        _ => false,
    }
}

fn lines(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().collect();
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join("\n")
    }
}

/// Compares one run's report with its expectations.
pub fn check(exp: &Expectations, run: &RunReport, label: &str) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let find = |stage: &str| run.stages.iter().find(|s| s.stage == stage);
    for (key, stage, e) in [
        ("connect", "connect", &exp.connect),
        ("helo", "helo", &exp.helo),
        ("mail_from", "mail-from", &exp.mail_from),
        ("data", "data", &exp.data),
    ] {
        if let Some(e) = e {
            check_stage(e, find(stage), &format!("{label}, {key}"), &mut out);
        }
    }
    for (addr, e) in &exp.rcpt {
        let actual = run
            .stages
            .iter()
            .find(|s| s.stage == "rcpt" && s.subject.as_deref() == Some(addr.as_str()));
        check_stage(e, actual, &format!("{label}, rcpt <{addr}>"), &mut out);
    }
    // A plugin failure nobody expected is a finding even where the case checks nothing.
    for s in &run.stages {
        let named = match s.stage {
            "connect" => exp.connect.is_some(),
            "helo" => exp.helo.is_some(),
            "mail-from" => exp.mail_from.is_some(),
            "data" => exp.data.is_some(),
            "rcpt" => exp
                .rcpt
                .iter()
                .any(|(a, _)| s.subject.as_deref() == Some(a.as_str())),
            _ => true, // routes: a failure is a `defer` route, checked there
        };
        if let (false, Some(f)) = (named, s.failure()) {
            out.push(Mismatch::new(
                &format!(
                    "{label}, {}{}",
                    s.stage,
                    s.subject
                        .as_ref()
                        .map(|a| format!(" <{a}>"))
                        .unwrap_or_default()
                ),
                "no plugin failure".into(),
                f.failure.clone().unwrap_or_default(),
            ));
        }
    }
    if let Some(headers) = &exp.headers {
        let actual = find("data");
        let edits = actual.map(|s| s.raw_edits.as_slice()).unwrap_or_default();
        let ok = actual.is_some()
            && headers.len() == edits.len()
            && headers.iter().zip(edits).all(|(e, a)| header_matches(e, a));
        if !ok {
            out.push(Mismatch::new(
                &format!("{label}, header edits"),
                lines(headers.iter().map(ToString::to_string)),
                match actual {
                    Some(_) => lines(edits.iter().map(describe_edit)),
                    None => "data stage not reached".into(),
                },
            ));
        }
    }
    if let Some(re) = &exp.message {
        let actual = find("data").and_then(|s| s.message_after.as_deref());
        let text = actual.map(String::from_utf8_lossy);
        if !text.as_ref().is_some_and(|t| re.is_match(t)) {
            out.push(Mismatch::new(
                &format!("{label}, message"),
                format!("message ~ /{re}/"),
                text.map_or("data stage not reached".into(), |t| t.into_owned()),
            ));
        }
    }
    if let Some(re) = &exp.quarantine {
        let actual = find("data").and_then(|s| s.quarantine.clone());
        if !actual.as_ref().is_some_and(|q| re.is_match(q)) {
            out.push(Mismatch::new(
                &format!("{label}, quarantine"),
                format!("quarantine ~ /{re}/"),
                actual.map_or("not quarantined".into(), |q| format!("quarantine {q:?}")),
            ));
        }
    }
    for (addr, e) in &exp.routes {
        let actual = run
            .stages
            .iter()
            .find(|s| s.stage == "route" && s.subject.as_deref() == Some(bare_path(addr).as_str()));
        let route = actual.and_then(|s| s.raw_route.as_ref());
        if !route.is_some_and(|r| route_matches(e, r)) {
            out.push(Mismatch::new(
                &format!("{label}, route <{addr}>"),
                e.to_string(),
                route.map_or(
                    "not routed (recipient not accepted?)".into(),
                    describe_route,
                ),
            ));
        }
    }
    if let Some(kv) = &exp.kv {
        let mut problems = Vec::new();
        for (k, v) in kv {
            match run.kv.get(k) {
                Some(a) if a == v => {}
                Some(a) => problems.push(format!("{k:?}: expected {v:?}, found {a:?}")),
                None => problems.push(format!("{k:?}: expected {v:?}, missing")),
            }
        }
        if exp.kv_match == KvMatch::Exact {
            for (k, a) in &run.kv {
                if !kv.contains_key(k) {
                    problems.push(format!("{k:?}: unexpected entry {a:?}"));
                }
            }
        }
        if !problems.is_empty() {
            out.push(Mismatch::new(
                &format!(
                    "{label}, kv ({})",
                    match exp.kv_match {
                        KvMatch::Exact => "exact",
                        KvMatch::Subset => "subset",
                    }
                ),
                lines(kv.iter().map(|(k, v)| format!("{k} = {v:?}"))),
                format!(
                    "{}\n{}",
                    lines(run.kv.iter().map(|(k, v)| format!("{k} = {v:?}"))),
                    problems
                        .iter()
                        .map(|p| format!("! {p}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            ));
        }
    }
    for k in &exp.kv_absent {
        if let Some(v) = run.kv.get(k) {
            out.push(Mismatch::new(
                &format!("{label}, kv"),
                format!("no key {k:?}"),
                format!("{k} = {v:?}"),
            ));
        }
    }
    out
}
