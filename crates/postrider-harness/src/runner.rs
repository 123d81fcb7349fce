//! Runs cases through the relay's own plugin host: one [`PluginEngine`] for the whole
//! process, a fresh kv store, clock and DNS table per case, the plugin loaded with the
//! case's config and limits, and each run played stage by stage like the relay's session
//! does (a refusal ends what it ends there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postrider_kv::{KvError, KvFuture, KvStore, ManualClock, MemoryKv};
use postrider_plugin_host::Dns;
use postrider_plugin_host::{
    AuthResult, Authentication, CallFailure, ChainSession, ConnInfo, Decision, EngineOptions,
    EnvelopeInfo, FailurePolicy, HeaderEdit, HostCall, HostError, LoadedPlugin, MessageView,
    Pipeline, PluginEngine, PluginSpec, RouteDecision, Services, Stage, StaticDns, TlsInfo,
    TlsPolicy, apply_edits,
};
use serde::Serialize;

use crate::case::{
    Case, Connection, Expectations, FailureKind, HeaderExpect, KvFault, KvMatch, Policy,
    RouteExpect, Run, StageExpect, TlsKind, VerdictKind, bare_path,
};

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
    pub failure_policy: Policy,
    /// Per-call deadline.
    pub timeout_ms: u64,
    /// Memory cap.
    pub memory_mb: u32,
    /// Transactions one instance may serve (1: a fresh instance each).
    pub reuse: u32,
    /// Most idle instances kept for reuse.
    pub pool_idle: u32,
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
            failure_policy: match options.failure_policy {
                Policy::Tempfail => FailurePolicy::Tempfail,
                Policy::Continue => FailurePolicy::Continue,
                Policy::Reject => FailurePolicy::Reject,
            },
            timeout: Duration::from_millis(options.timeout_ms),
            memory_bytes: (options.memory_mb as usize) << 20,
            reuse: options.reuse,
            pool_idle: options.pool_idle,
        };
        let plugin =
            LoadedPlugin::load(&self.engine, spec, Some(&self.cache_dir), services).await?;
        Ok(Arc::new(Pipeline::new(
            Arc::clone(&self.engine),
            vec![Arc::new(plugin)],
            services.clone(),
        )))
    }

    /// Runs one case and compares it with its expectations.
    pub async fn run_case(&self, case: &Case) -> CaseReport {
        let mut report = CaseReport {
            name: case.name.clone(),
            file: case.file.display().to_string(),
            line: case.line,
            passed: false,
            load_error: None,
            mismatches: Vec::new(),
            runs: Vec::new(),
        };
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
    /// The route (route).
    pub route: Option<String>,
    /// Each plugin call.
    pub calls: Vec<CallReport>,
    #[serde(skip)]
    raw_edits: Vec<HeaderEdit>,
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
            route: None,
            calls: Vec::new(),
            raw_edits: Vec::new(),
            raw_route: None,
        }
    }

    fn passes(&self) -> bool {
        self.verdict.as_ref().is_none_or(VerdictReport::passes)
    }

    fn disconnects(&self) -> bool {
        self.verdict
            .as_ref()
            .is_some_and(|v| v.verdict == "disconnect")
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
            .map(|s| format!(", spf {} ({})", result_name(s.result), s.domain))
            .unwrap_or_default(),
    )
}

/// The RFC 8601 name of a result, as case files write it.
pub fn result_name(r: AuthResult) -> &'static str {
    match r {
        AuthResult::None => "none",
        AuthResult::Pass => "pass",
        AuthResult::Fail => "fail",
        AuthResult::Softfail => "softfail",
        AuthResult::Neutral => "neutral",
        AuthResult::Temperror => "temperror",
        AuthResult::Permerror => "permerror",
        AuthResult::Policy => "policy",
    }
}

/// DKIM, DMARC and ARC results, for traces: `dkim pass (d.example/s1), dmarc fail, arc none`.
pub fn describe_authentication(a: &Authentication) -> String {
    let dkim = if a.dkim.is_empty() {
        "none".to_owned()
    } else {
        a.dkim
            .iter()
            .map(|d| format!("{} ({}/{})", result_name(d.result), d.domain, d.selector))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "dkim {dkim}, dmarc {}, arc {}",
        result_name(a.dmarc),
        result_name(a.arc)
    )
}

/// A header edit, for reports.
pub fn describe_edit(e: &HeaderEdit) -> String {
    match e {
        HeaderEdit::Prepend { name, value } => format!("prepend {name}: {value}"),
        HeaderEdit::Append { name, value } => format!("append {name}: {value}"),
        HeaderEdit::Remove { name } => format!("remove {name}"),
        HeaderEdit::Replace { name, index, value } => format!("replace {name}[{index}]: {value}"),
    }
}

/// A route, for reports.
pub fn describe_route(r: &RouteDecision) -> String {
    match r {
        RouteDecision::Mx => "mx".into(),
        RouteDecision::Relay { host, port, tls } => {
            format!("relay {host}:{port} tls {}", tls_name(*tls))
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

fn tls_name(t: TlsPolicy) -> &'static str {
    match t {
        TlsPolicy::None => "none",
        TlsPolicy::Opportunistic => "opportunistic",
        TlsPolicy::Require => "require",
    }
}

/// The header block of a message (up to the blank line), for traces.
fn header_block(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg);
    let end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 2);
    text[..end].replace("\r\n", "\n")
}

/// Plays one run, stage by stage, stopping where the relay would.
async fn play(pipeline: &Arc<Pipeline>, run: &Run, n: usize, clock: &ManualClock) -> RunReport {
    use postrider_kv::Clock;
    let mut report = RunReport {
        label: run.label.clone(),
        clock_ms: clock.now_ms(),
        stages: Vec::new(),
        kv: BTreeMap::new(),
    };
    let mut conn = conn_info(&run.conn.resolve(&format!("harness-{n}")));
    let mut chain = pipeline.session(true);

    let mut stage = StageReport::new(Stage::Connect, None, describe_conn(&conn));
    let out = chain.on_connect(&conn).await;
    chain.end_transaction();
    stage.verdict = Some(VerdictReport::of(&out.decision));
    stage.calls = call_reports!(out.calls);
    let go_on = stage.passes();
    report.stages.push(stage);
    if !go_on {
        return report;
    }

    if let Some(helo) = &run.helo {
        conn.helo = Some(helo.clone());
        let mut stage = StageReport::new(Stage::Helo, None, helo.clone());
        let out = chain.on_helo(&conn, helo).await;
        chain.end_transaction();
        stage.verdict = Some(VerdictReport::of(&out.decision));
        stage.calls = call_reports!(out.calls);
        let go_on = stage.passes();
        report.stages.push(stage);
        if !go_on {
            return report;
        }
    }

    let Some(from) = &run.mail_from else {
        return report;
    };
    let mut env = EnvelopeInfo {
        queue_id: None,
        mail_from: bare_path(from),
        mail_params: run.mail_params.clone(),
        recipients: Vec::new(),
        smtputf8: run.mail_params.iter().any(|(k, _)| k == "SMTPUTF8"),
        spf: run.spf.clone(),
    };
    if !transaction(&mut chain, &conn, &mut env, run, &mut report).await {
        chain.end_transaction();
        return report;
    }
    chain.end_transaction();
    if env.recipients.is_empty() {
        return report;
    }
    if pipeline.wants(Stage::Route) || !run.expect.routes.is_empty() {
        env.queue_id = Some(run.queue_id.clone().unwrap_or_else(|| format!("H{n:05}")));
        for rcpt in env.recipients.clone() {
            let mut stage = StageReport::new(Stage::Route, Some(rcpt.clone()), describe_env(&env));
            let (route, calls) = pipeline.route(&conn, &env, &rcpt, true).await;
            stage.route = Some(describe_route(&route));
            stage.raw_route = Some(route);
            stage.calls = call_reports!(calls);
            report.stages.push(stage);
        }
    }
    report
}

/// MAIL FROM, each RCPT TO and DATA; false when the session ended or the message was refused.
async fn transaction(
    chain: &mut ChainSession,
    conn: &ConnInfo,
    env: &mut EnvelopeInfo,
    run: &Run,
    report: &mut RunReport,
) -> bool {
    let mut stage = StageReport::new(Stage::MailFrom, None, describe_env(env));
    let out = chain.on_mail_from(conn, env).await;
    stage.verdict = Some(VerdictReport::of(&out.decision));
    stage.calls = call_reports!(out.calls);
    let go_on = stage.passes();
    report.stages.push(stage);
    if !go_on {
        return false;
    }
    for rcpt in &run.rcpt {
        let given = bare_path(rcpt);
        let mut stage = StageReport::new(
            Stage::Rcpt,
            Some(rcpt.clone()),
            format!("<{given}>, {}", describe_env(env)),
        );
        let out = chain.on_rcpt(conn, env, &given).await;
        stage.verdict = Some(VerdictReport::of(&out.decision));
        stage.rewrite = out.rewrite.clone();
        stage.calls = call_reports!(out.calls);
        let (passes, ends) = (stage.passes(), stage.disconnects());
        report.stages.push(stage);
        if ends {
            return false;
        }
        if passes {
            env.recipients.push(out.rewrite.unwrap_or(given));
        }
    }
    let Some(message) = &run.message else {
        return true;
    };
    if env.recipients.is_empty() {
        return false;
    }
    env.queue_id = run.queue_id.clone();
    let mut stage = StageReport::new(
        Stage::Data,
        None,
        format!(
            "{} bytes, {}{}",
            message.len(),
            describe_env(env),
            run.authentication
                .as_ref()
                .map(|a| format!(", {}", describe_authentication(a)))
                .unwrap_or_default()
        ),
    );
    let mut view = MessageView::new(Arc::from(message.as_slice()));
    if let Some(auth) = &run.authentication {
        view = view.with_authentication(auth.clone());
    }
    let out = chain.on_data(conn, env, &view).await;
    env.queue_id = None;
    stage.verdict = Some(VerdictReport::of(&out.decision));
    stage.edits = out.edits.iter().map(describe_edit).collect();
    stage.headers_after = Some(header_block(&apply_edits(message, &out.edits)));
    stage.raw_edits = out.edits;
    stage.quarantine = out.quarantine;
    stage.calls = call_reports!(out.calls);
    let go_on = stage.passes();
    report.stages.push(stage);
    go_on
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
    let tls = |t: TlsKind| match t {
        TlsKind::None => TlsPolicy::None,
        TlsKind::Opportunistic => TlsPolicy::Opportunistic,
        TlsKind::Require => TlsPolicy::Require,
    };
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
                && et.is_none_or(|e| tls(e) == *t)
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
