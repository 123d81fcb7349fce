//! What one plugin instance's store holds: its capabilities (kv namespace, dns, clock), a
//! WASI context with no files, env or args and only the sockets its grants allow, the
//! `wasi:http` hooks that check its HTTP grants, the resource table and the memory limiter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use postrider_kv::{Clock, KvStore};
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::net::{HttpHooks, NetObserver, PluginNet};

use postrider_config::PluginLogLevel;
use postrider_dns::Dns;

/// The relay services plugins reach through their imports, shared by every store.
#[derive(Clone)]
pub struct Services {
    /// The kv store (each plugin sees only its own namespace).
    pub kv: Arc<dyn KvStore>,
    /// The relay's resolver.
    pub dns: Arc<dyn Dns>,
    /// Wall clock for the `clock` import and kv expiry.
    pub clock: Arc<dyn Clock>,
    /// Bound on every kv call, so a slow backend cannot hang a session.
    pub kv_timeout: Duration,
    /// Bound on every DNS lookup.
    pub dns_timeout: Duration,
    /// Counts plugins' network requests and connections (the relay's metrics), if set.
    pub net_observer: Option<Arc<dyn NetObserver>>,
}

/// One host call a plugin made, kept when tracing (the plugin test harness shows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCall {
    /// "kv.get", "dns.lookup-ip", "log.info", ...
    pub call: String,
    /// The arguments, rendered for people.
    pub args: String,
    /// The result, rendered for people.
    pub result: String,
    /// How long the host took.
    pub elapsed: Duration,
}

/// The data of one plugin instance's store.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: HttpHooks,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) namespace: Arc<str>,
    pub(crate) log_level: Option<PluginLogLevel>,
    pub(crate) services: Services,
    pub(crate) trace: Option<Vec<HostCall>>,
}

impl HostState {
    pub(crate) fn new(
        namespace: Arc<str>,
        log_level: Option<PluginLogLevel>,
        services: Services,
        net: &Arc<PluginNet>,
        memory_bytes: usize,
        trace: bool,
    ) -> HostState {
        HostState {
            wasi: net.wasi_ctx(services.net_observer.clone()),
            http: WasiHttpCtx::new(),
            hooks: HttpHooks {
                net: Arc::clone(net),
                observer: services.net_observer.clone(),
            },
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .table_elements(100_000)
                .instances(16)
                .tables(16)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            namespace,
            log_level,
            services,
            trace: trace.then(Vec::new),
        }
    }

    /// Records a host call when tracing.
    pub(crate) fn record(&mut self, call: &str, args: String, result: String, started: Instant) {
        if let Some(trace) = &mut self.trace {
            trace.push(HostCall {
                call: call.to_owned(),
                args,
                result,
                elapsed: started.elapsed(),
            });
        }
    }

    /// Starts or stops recording host calls (a reused instance serves a new session).
    pub(crate) fn set_trace(&mut self, trace: bool) {
        self.trace = trace.then(Vec::new);
    }

    pub(crate) fn take_trace(&mut self) -> Vec<HostCall> {
        self.trace.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            hooks: &mut self.hooks,
            table: &mut self.table,
            ctx: &mut self.http,
        }
    }
}
