//! The stage chain: plugins and milters run in config order; the first verdict other than
//! `continue` decides; header edits accumulate; a failed call is answered by that plugin's (or
//! milter's) policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_smtp::reply::Reply;
use wasmtime::component::Resource;

use crate::bindings::postrider::plugin::types as wit;
use crate::engine::PluginEngine;
use crate::error::CallFailure;
use crate::message::{BodyChanges, MessageView};
use crate::milter::{Heard, MilterLink, MilterSpec, Now};
use crate::plugin::{FailurePolicy, Instance, LoadedPlugin, Stage};
use crate::state::{HostCall, Services};
use crate::{ConnInfo, Decision, EnvelopeEdit, EnvelopeInfo, HeaderEdit, RouteDecision, validate};

/// One plugin's part in a stage, for logs and the test harness.
#[derive(Debug, Clone)]
pub struct PluginCall {
    /// Plugin name.
    pub plugin: String,
    /// Stage.
    pub stage: Stage,
    /// What it answered (or what its failure policy made of a failure).
    pub outcome: String,
    /// The verdict's short name ([`Decision::kind`], or [`RouteDecision::kind`] at route).
    pub verdict: &'static str,
    /// The failure, if the call failed.
    pub failure: Option<CallFailure>,
    /// Wall time of the call, instantiation included.
    pub elapsed: Duration,
    /// Host calls it made (when tracing).
    pub host_calls: Vec<HostCall>,
    /// Set on the call that took an instance: a fresh one or one from the warm pool.
    pub instance: Option<InstanceSource>,
}

/// Where a plugin call's instance came from (see `PluginSpec::reuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceSource {
    /// Instantiated for this use.
    Fresh,
    /// Taken from the plugin's warm pool.
    Warm,
}

impl InstanceSource {
    /// Name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            InstanceSource::Fresh => "fresh",
            InstanceSource::Warm => "warm",
        }
    }
}

/// The result of a connect, helo or mail-from stage.
#[derive(Debug, Clone)]
pub struct StageOutcome {
    /// The chain's decision.
    pub decision: Decision,
    /// Each plugin call, in order.
    pub calls: Vec<PluginCall>,
}

/// The result of a rcpt stage.
#[derive(Debug, Clone)]
pub struct RcptOutcome {
    /// The chain's decision.
    pub decision: Decision,
    /// The recipient to use instead of the one given, if a plugin rewrote it.
    pub rewrite: Option<String>,
    /// Each plugin call, in order.
    pub calls: Vec<PluginCall>,
}

/// The result of a data stage.
#[derive(Debug, Clone)]
pub struct DataOutcome {
    /// The chain's decision.
    pub decision: Decision,
    /// Header edits of every plugin that ran, in order.
    pub edits: Vec<HeaderEdit>,
    /// The body to store instead of the message's (after the empty line), if one was given;
    /// the last one given wins.
    pub body: Option<Vec<u8>>,
    /// Texts to append as text/plain parts after the body change, in order.
    pub texts: Vec<String>,
    /// Envelope edits, in order.
    pub envelope: Vec<EnvelopeEdit>,
    /// Quarantine reason, if a plugin asked for it.
    pub quarantine: Option<String>,
    /// The milter that said discard (in this or an earlier stage of the transaction): the
    /// message is accepted and thrown away.
    pub discard: Option<String>,
    /// Each plugin call, in order.
    pub calls: Vec<PluginCall>,
}

/// A place in the chain.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Index into the plugins.
    Plugin(usize),
    /// Index into the milters.
    Milter(usize),
}

/// The ordered plugins and milters of one config generation, and what they need to run.
pub struct Pipeline {
    engine: Arc<PluginEngine>,
    plugins: Vec<Arc<LoadedPlugin>>,
    milters: Vec<Arc<MilterSpec>>,
    order: Vec<Link>,
    services: Services,
}

impl Pipeline {
    /// A pipeline of already loaded plugins, in call order.
    pub fn new(
        engine: Arc<PluginEngine>,
        plugins: Vec<Arc<LoadedPlugin>>,
        services: Services,
    ) -> Pipeline {
        Pipeline {
            engine,
            order: (0..plugins.len()).map(Link::Plugin).collect(),
            plugins,
            milters: Vec::new(),
            services,
        }
    }

    /// Places milters in the chain, each after the plugin or milter its `after` names (after
    /// every link so far when it names none).
    pub fn with_milters(mut self, milters: Vec<MilterSpec>) -> Pipeline {
        for spec in milters {
            let at = spec
                .after
                .as_deref()
                .and_then(|name| self.order.iter().position(|l| self.name(*l) == name))
                .map_or(self.order.len(), |p| p + 1);
            self.order.insert(at, Link::Milter(self.milters.len()));
            self.milters.push(Arc::new(spec));
        }
        self
    }

    fn name(&self, link: Link) -> &str {
        match link {
            Link::Plugin(i) => &self.plugins[i].spec.name,
            Link::Milter(m) => &self.milters[m].name,
        }
    }

    /// The chain's names in call order (plugins and milters).
    pub fn order(&self) -> Vec<&str> {
        self.order.iter().map(|l| self.name(*l)).collect()
    }

    /// The milters, in config order.
    pub fn milters(&self) -> &[Arc<MilterSpec>] {
        &self.milters
    }

    /// The services the plugins reach (`postrider kv` reads their kv store).
    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The plugins, in order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Whether any plugin asked for `stage` (callers skip building inputs otherwise).
    pub fn wants(&self, stage: Stage) -> bool {
        self.plugins.iter().any(|p| p.wants(stage)) || self.milters.iter().any(|m| m.wants(stage))
    }

    /// After a reload to `next`: discards the warm pools of this pipeline's plugins that
    /// `next` does not share (changed or removed); the plugins it keeps keep their pools.
    pub fn retire_replaced(&self, next: Option<&Pipeline>) {
        for plugin in &self.plugins {
            let kept = next.is_some_and(|n| n.plugins.iter().any(|p| Arc::ptr_eq(p, plugin)));
            if !kept {
                plugin.retire();
            }
        }
    }

    /// A chain for one SMTP session; `trace` records host calls (for the harness).
    pub fn session(self: &Arc<Self>, trace: bool) -> ChainSession {
        ChainSession {
            pipeline: Arc::clone(self),
            instances: self.plugins.iter().map(|_| None).collect(),
            trace,
            dropped_trace: Vec::new(),
            taken: self.plugins.iter().map(|_| None).collect(),
            milters: self
                .milters
                .iter()
                .map(|m| MilterLink::new(Arc::clone(m)))
                .collect(),
            discard: None,
        }
    }

    /// Routes one recipient of a queued message; each plugin gets its own instance for the
    /// call (fresh, or warm from its pool with `reuse` > 1).
    pub async fn route(
        self: &Arc<Self>,
        conn: &ConnInfo,
        env: &EnvelopeInfo,
        rcpt: &str,
        trace: bool,
    ) -> (RouteDecision, Vec<PluginCall>) {
        let mut session = self.session(trace);
        let conn = wit_conn(conn);
        let env = wit_env(env);
        let mut calls = Vec::new();
        for i in 0..self.plugins.len() {
            let plugin = Arc::clone(&self.plugins[i]);
            if !plugin.wants(Stage::Route) {
                continue;
            }
            let started = Instant::now();
            let result = session
                .call(i, Stage::Route, Call::Route(&conn, &env, rcpt))
                .await;
            let (decision, failure) = match result {
                Ok(Answer::Route(r)) => match validate::route(&r) {
                    Ok(d) => (Some(d), None),
                    Err(e) => (None, Some(CallFailure::Invalid(e))),
                },
                Ok(_) => (None, Some(CallFailure::Invalid("wrong answer kind".into()))),
                Err(f) => (None, Some(f)),
            };
            let decision = match (decision, &failure) {
                (Some(d), _) => d,
                (None, Some(f)) => {
                    session.drop_instance(i);
                    RouteDecision::Defer(format!("plugin {}: {f}", plugin.spec.name))
                }
                (None, None) => RouteDecision::Mx,
            };
            calls.push(session.record(
                i,
                Stage::Route,
                decision.kind(),
                format!("{decision:?}"),
                failure,
                started,
            ));
            // Mx is "no opinion": the next routing plugin may pick something else.
            if decision != RouteDecision::Mx {
                return (decision, calls);
            }
            session.release(i);
        }
        (RouteDecision::Mx, calls)
    }
}

/// What a plugin is asked.
enum Call<'a> {
    Connect(&'a wit::Connection),
    Helo(&'a wit::Connection, &'a str),
    MailFrom(&'a wit::Connection, &'a wit::Envelope),
    Rcpt(&'a wit::Connection, &'a wit::Envelope, &'a str),
    Data(&'a wit::Connection, &'a wit::Envelope, MessageView),
    Route(&'a wit::Connection, &'a wit::Envelope, &'a str),
}

/// What a plugin answered, before validation.
enum Answer {
    Verdict(wit::Verdict),
    Rcpt(wit::RcptOutcome),
    Data(wit::DataOutcome, BodyChanges),
    Route(wit::Route),
}

/// The plugin instances of one SMTP transaction, taken on first use and given back at its
/// end (dropped, or kept in the plugin's warm pool); dropping the session gives them back too.
pub struct ChainSession {
    pipeline: Arc<Pipeline>,
    instances: Vec<Option<Instance>>,
    trace: bool,
    /// Host calls of an instance dropped after a failure, until they are recorded.
    dropped_trace: Vec<HostCall>,
    /// Per plugin: where the instance taken by the current call came from, until recorded.
    taken: Vec<Option<InstanceSource>>,
    /// Per milter: its connection in this session.
    milters: Vec<MilterLink>,
    /// The milter that said discard in this transaction.
    discard: Option<String>,
}

fn policy_decision(policy: FailurePolicy) -> Decision {
    match policy {
        FailurePolicy::Continue => Decision::Continue,
        FailurePolicy::Tempfail => Decision::Tempfail(Reply::local(
            451,
            (4, 3, 0),
            "Temporary local problem, try again later",
        )),
        FailurePolicy::Reject => {
            Decision::Reject(Reply::local(550, (5, 7, 1), "Refused by policy"))
        }
    }
}

impl Drop for ChainSession {
    fn drop(&mut self) {
        self.end_transaction();
    }
}

impl ChainSession {
    /// Ends the current transaction: its instances are dropped, or with `reuse` > 1 those
    /// whose every call succeeded go back to their plugin's pool (`init` runs again before
    /// the next transaction uses one).
    pub fn end_transaction(&mut self) {
        for i in 0..self.instances.len() {
            self.release(i);
        }
        for link in &mut self.milters {
            link.end_transaction();
        }
    }

    /// Gives plugin `i`'s instance back (kept for reuse only if sound and wanted).
    fn release(&mut self, i: usize) {
        if let Some(instance) = self.instances[i].take() {
            self.pipeline.plugins[i].checkin(instance);
        }
    }

    /// The pipeline this session runs (a reload does not change it mid-session).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Connect stage.
    pub async fn on_connect(&mut self, conn: &ConnInfo) -> StageOutcome {
        let wconn = wit_conn(conn);
        self.verdict_stage(Now::Connect(conn), |_| Call::Connect(&wconn))
            .await
    }

    /// HELO/EHLO stage.
    pub async fn on_helo(&mut self, conn: &ConnInfo, helo: &str) -> StageOutcome {
        let wconn = wit_conn(conn);
        self.verdict_stage(Now::Helo(conn), |_| Call::Helo(&wconn, helo))
            .await
    }

    /// MAIL FROM stage.
    pub async fn on_mail_from(&mut self, conn: &ConnInfo, env: &EnvelopeInfo) -> StageOutcome {
        self.discard = None;
        for link in &mut self.milters {
            link.begin_transaction();
        }
        let wconn = wit_conn(conn);
        let wenv = wit_env(env);
        self.verdict_stage(Now::Mail(conn, env), |_| Call::MailFrom(&wconn, &wenv))
            .await
    }

    async fn verdict_stage<'a>(
        &mut self,
        now: Now<'_>,
        make: impl Fn(usize) -> Call<'a>,
    ) -> StageOutcome {
        let stage = now.stage();
        let mut calls = Vec::new();
        for k in 0..self.pipeline.order.len() {
            let i = match self.pipeline.order[k] {
                Link::Plugin(i) => i,
                Link::Milter(m) => {
                    let Some((heard, call)) = self.milter(m, now).await else {
                        continue;
                    };
                    calls.push(call);
                    if heard.decision != Decision::Continue {
                        return StageOutcome {
                            decision: heard.decision,
                            calls,
                        };
                    }
                    continue;
                }
            };
            if !self.pipeline.plugins[i].wants(stage) {
                continue;
            }
            let started = Instant::now();
            let answer = self.call(i, stage, make(i)).await;
            let checked = match answer {
                Ok(Answer::Verdict(v)) => validate::verdict(&v).map_err(CallFailure::Invalid),
                Ok(_) => Err(CallFailure::Invalid("wrong answer kind".into())),
                Err(f) => Err(f),
            };
            let (decision, failure) = self.settle(i, checked);
            calls.push(self.record(
                i,
                stage,
                decision.kind(),
                format!("{decision:?}"),
                failure,
                started,
            ));
            if decision != Decision::Continue {
                return StageOutcome { decision, calls };
            }
        }
        StageOutcome {
            decision: Decision::Continue,
            calls,
        }
    }

    /// RCPT TO stage; a rewrite from one plugin is what later plugins see.
    pub async fn on_rcpt(
        &mut self,
        conn: &ConnInfo,
        env: &EnvelopeInfo,
        rcpt: &str,
    ) -> RcptOutcome {
        let wconn = wit_conn(conn);
        let wenv = wit_env(env);
        let mut current = rcpt.to_owned();
        let mut rewrite = None;
        let mut calls = Vec::new();
        for k in 0..self.pipeline.order.len() {
            let i = match self.pipeline.order[k] {
                Link::Plugin(i) => i,
                Link::Milter(m) => {
                    let Some((heard, call)) = self.milter(m, Now::Rcpt(conn, env, &current)).await
                    else {
                        continue;
                    };
                    calls.push(call);
                    if heard.decision != Decision::Continue {
                        return RcptOutcome {
                            decision: heard.decision,
                            rewrite,
                            calls,
                        };
                    }
                    continue;
                }
            };
            if !self.pipeline.plugins[i].wants(Stage::Rcpt) {
                continue;
            }
            let started = Instant::now();
            let answer = self
                .call(i, Stage::Rcpt, Call::Rcpt(&wconn, &wenv, &current))
                .await;
            let checked = match answer {
                Ok(Answer::Rcpt(out)) => validate::verdict(&out.verdict)
                    .and_then(|d| {
                        let new = match (&d, &out.rewrite) {
                            (Decision::Accept | Decision::Continue, Some(addr)) => {
                                Some(validate::rewrite(addr, env.smtputf8)?)
                            }
                            _ => None,
                        };
                        Ok((d, new))
                    })
                    .map_err(CallFailure::Invalid),
                Ok(_) => Err(CallFailure::Invalid("wrong answer kind".to_owned())),
                Err(f) => Err(f),
            };
            let (decision, failure) = match checked {
                Ok((d, new)) => {
                    if let Some(addr) = new {
                        current = addr.clone();
                        rewrite = Some(addr);
                    }
                    (d, None)
                }
                Err(failure) => {
                    self.drop_instance(i);
                    (
                        policy_decision(self.pipeline.plugins[i].spec.failure_policy),
                        Some(failure),
                    )
                }
            };
            calls.push(self.record(
                i,
                Stage::Rcpt,
                decision.kind(),
                format!("{decision:?} rewrite {rewrite:?}"),
                failure,
                started,
            ));
            if decision != Decision::Continue {
                return RcptOutcome {
                    decision,
                    rewrite,
                    calls,
                };
            }
        }
        RcptOutcome {
            decision: Decision::Continue,
            rewrite,
            calls,
        }
    }

    /// DATA stage: the message is lent to each plugin as a resource.
    pub async fn on_data(
        &mut self,
        conn: &ConnInfo,
        env: &EnvelopeInfo,
        message: &MessageView,
    ) -> DataOutcome {
        let mut out = DataOutcome {
            decision: Decision::Continue,
            edits: Vec::new(),
            body: None,
            texts: Vec::new(),
            envelope: Vec::new(),
            quarantine: None,
            discard: self.discard.clone(),
            calls: Vec::new(),
        };
        if out.discard.is_some() {
            return out;
        }
        let wconn = wit_conn(conn);
        let wenv = wit_env(env);
        for k in 0..self.pipeline.order.len() {
            let i = match self.pipeline.order[k] {
                Link::Plugin(i) => i,
                Link::Milter(m) => {
                    let now = Now::Data(conn, env, message.bytes());
                    let Some((heard, call)) = self.milter(m, now).await else {
                        continue;
                    };
                    out.calls.push(call);
                    let changes = heard.changes;
                    out.edits.extend(changes.edits);
                    if changes.body.is_some() {
                        out.body = changes.body;
                    }
                    out.envelope.extend(changes.envelope);
                    if out.quarantine.is_none() {
                        out.quarantine = changes.quarantine;
                    }
                    if heard.discard {
                        out.discard = self.discard.clone();
                        return out;
                    }
                    if heard.decision != Decision::Continue {
                        out.decision = heard.decision;
                        return out;
                    }
                    continue;
                }
            };
            if !self.pipeline.plugins[i].wants(Stage::Data) {
                continue;
            }
            let started = Instant::now();
            let answer = self
                .call(i, Stage::Data, Call::Data(&wconn, &wenv, message.clone()))
                .await;
            let checked = match answer {
                Ok(Answer::Data(d, changes)) => validate::verdict(&d.verdict)
                    .and_then(|decision| {
                        let edits = validate::edits(&d.edits)?;
                        let quarantine =
                            d.quarantine.as_deref().map(validate::reason).transpose()?;
                        Ok((decision, edits, quarantine, changes))
                    })
                    .map_err(CallFailure::Invalid),
                Ok(_) => Err(CallFailure::Invalid("wrong answer kind".to_owned())),
                Err(f) => Err(f),
            };
            let (decision, failure) = match checked {
                Ok((decision, edits, quarantine, changes)) => {
                    out.edits.extend(edits);
                    if changes.body.is_some() {
                        out.body = changes.body;
                    }
                    out.texts.extend(changes.texts);
                    if out.quarantine.is_none() {
                        out.quarantine = quarantine;
                    }
                    (decision, None)
                }
                Err(failure) => {
                    self.drop_instance(i);
                    (
                        policy_decision(self.pipeline.plugins[i].spec.failure_policy),
                        Some(failure),
                    )
                }
            };
            out.calls.push(self.record(
                i,
                Stage::Data,
                decision.kind(),
                format!("{decision:?}"),
                failure,
                started,
            ));
            if decision != Decision::Continue {
                out.decision = decision;
                return out;
            }
        }
        out
    }

    /// Applies the failure policy to a failed or invalid call.
    fn settle(
        &mut self,
        i: usize,
        checked: Result<Decision, CallFailure>,
    ) -> (Decision, Option<CallFailure>) {
        match checked {
            Ok(d) => (d, None),
            Err(f) => {
                self.drop_instance(i);
                (
                    policy_decision(self.pipeline.plugins[i].spec.failure_policy),
                    Some(f),
                )
            }
        }
    }

    /// Drops plugin `i`'s instance (never enter a store again after a failure), keeping
    /// the host calls it made for the trace.
    fn drop_instance(&mut self, i: usize) {
        if let Some(mut inst) = self.instances[i].take() {
            self.dropped_trace
                .extend(inst.store.data_mut().take_trace());
        }
    }

    fn record(
        &mut self,
        i: usize,
        stage: Stage,
        verdict: &'static str,
        outcome: String,
        failure: Option<CallFailure>,
        started: Instant,
    ) -> PluginCall {
        let mut host_calls = std::mem::take(&mut self.dropped_trace);
        if let Some(inst) = self.instances[i].as_mut() {
            host_calls.extend(inst.store.data_mut().take_trace());
        }
        let mut call = logged(PluginCall {
            plugin: self.pipeline.plugins[i].spec.name.clone(),
            stage,
            outcome,
            verdict,
            failure,
            elapsed: started.elapsed(),
            host_calls,
            instance: None,
        });
        call.instance = self.taken[i].take();
        call
    }

    /// Consults milter `m` at this stage, if it is consulted there; a failure is answered by
    /// its failure policy. A milter that failed earlier in the transaction and whose policy is
    /// `continue` is left out until the next MAIL FROM.
    async fn milter(&mut self, m: usize, now: Now<'_>) -> Option<(Heard, PluginCall)> {
        let stage = now.stage();
        let link = &mut self.milters[m];
        let spec = Arc::clone(&link.spec);
        if !spec.wants(stage) || (link.down && spec.failure_policy == FailurePolicy::Continue) {
            return None;
        }
        let started = Instant::now();
        let (heard, failure) = match link.stage(now).await {
            Ok(heard) => (heard, None),
            Err(f) => (Heard::failed(policy_decision(spec.failure_policy)), Some(f)),
        };
        if heard.discard && self.discard.is_none() {
            self.discard = Some(spec.name.clone());
        }
        let call = logged(PluginCall {
            plugin: spec.name.clone(),
            stage,
            outcome: format!("{:?}", heard.decision),
            verdict: if heard.discard {
                "discard"
            } else {
                heard.decision.kind()
            },
            failure,
            elapsed: started.elapsed(),
            host_calls: Vec::new(),
            instance: None,
        });
        Some((heard, call))
    }

    /// Calls plugin `i`, taking an initialised instance first if needed. On any failure
    /// the instance is dropped (a trapped store must never be entered again).
    async fn call(
        &mut self,
        i: usize,
        stage: Stage,
        call: Call<'_>,
    ) -> Result<Answer, CallFailure> {
        let plugin = Arc::clone(&self.pipeline.plugins[i]);
        if self.instances[i].is_none() {
            let instance = plugin
                .checkout(&self.pipeline.engine, &self.pipeline.services, self.trace)
                .await?;
            // A warm instance has served before this use.
            self.taken[i] = Some(if instance.uses > 1 {
                InstanceSource::Warm
            } else {
                InstanceSource::Fresh
            });
            self.instances[i] = Some(instance);
        }
        let Some(instance) = self.instances[i].as_mut() else {
            return Err(CallFailure::Busy);
        };
        plugin.arm(&mut instance.store);
        let timeout = plugin.spec.timeout;
        // Stays false if this future is dropped midway: such a store is never reused.
        instance.sound = false;
        let result = tokio::time::timeout(timeout, invoke(instance, call)).await;
        let result = match result {
            Err(_) => Err(CallFailure::Timeout(timeout.as_millis())),
            Ok(Err(e)) => Err(classify(&e, timeout)),
            Ok(Ok(answer)) => {
                instance.sound = true;
                Ok(answer)
            }
        };
        if result.is_err() {
            tracing::debug!(plugin = %plugin.spec.name, stage = stage.name(), "dropping failed instance");
            self.drop_instance(i);
        }
        result
    }
}

/// Logs a call: a failure as a warning, a verdict at debug.
fn logged(call: PluginCall) -> PluginCall {
    let (plugin, stage, outcome) = (&call.plugin, call.stage.name(), &call.outcome);
    match &call.failure {
        Some(f) => {
            tracing::warn!(plugin = %plugin, stage, failure = %f, outcome = %outcome, "plugin call failed")
        }
        None => {
            tracing::debug!(plugin = %plugin, stage, us = call.elapsed.as_micros() as u64, outcome = %outcome, "plugin verdict")
        }
    }
    call
}

fn classify(e: &wasmtime::Error, timeout: Duration) -> CallFailure {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => CallFailure::Timeout(timeout.as_millis()),
        _ => CallFailure::Trap(format!("{e:#}")),
    }
}

async fn invoke(instance: &mut Instance, call: Call<'_>) -> wasmtime::Result<Answer> {
    let filter = instance.bindings.postrider_plugin_filter();
    let store = &mut instance.store;
    Ok(match call {
        Call::Connect(c) => Answer::Verdict(filter.call_on_connect(&mut *store, c).await?),
        Call::Helo(c, h) => Answer::Verdict(filter.call_on_helo(&mut *store, c, h).await?),
        Call::MailFrom(c, e) => Answer::Verdict(filter.call_on_mail_from(&mut *store, c, e).await?),
        Call::Rcpt(c, e, r) => Answer::Rcpt(filter.call_on_rcpt(&mut *store, c, e, r).await?),
        Call::Route(c, e, r) => Answer::Route(filter.call_on_route(&mut *store, c, e, r).await?),
        Call::Data(c, e, view) => {
            let owned: Resource<MessageView> = store.data_mut().table.push(view)?;
            let borrow = Resource::<MessageView>::new_borrow(owned.rep());
            let result = filter.call_on_data(&mut *store, c, e, borrow).await;
            // Remove the host's entry whether or not the call succeeded.
            let changes = store
                .data_mut()
                .table
                .delete(owned)
                .map(|mut view| view.take_changes())
                .unwrap_or_default();
            Answer::Data(result?, changes)
        }
    })
}

fn wit_conn(c: &ConnInfo) -> wit::Connection {
    wit::Connection {
        id: c.id.clone(),
        client_ip: c.client_ip.to_string(),
        client_port: c.client_port,
        client_name: c.client_name.clone(),
        listener: c.listener.clone(),
        server_ip: c.server_ip.to_string(),
        server_port: c.server_port,
        helo: c.helo.clone(),
        tls: c.tls.as_ref().map(|t| wit::TlsInfo {
            protocol: t.protocol.clone(),
            cipher: t.cipher.clone(),
            sni: t.sni.clone(),
        }),
        auth_user: c.auth_user.clone(),
    }
}

fn wit_env(e: &EnvelopeInfo) -> wit::Envelope {
    wit::Envelope {
        queue_id: e.queue_id.clone(),
        mail_from: e.mail_from.clone(),
        mail_params: e.mail_params.clone(),
        recipients: e.recipients.clone(),
        spf: e.spf.clone(),
    }
}
