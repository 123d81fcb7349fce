//! Builds the plugin pipeline of a configuration generation: the engine and the services
//! plugins import (embedded kv, the relay's resolver, the clock) are created once and shared
//! by every generation; each `[[plugin]]` is loaded in order, reusing the compiled plugin of
//! the previous generation when nothing about it changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use postrider_config::{Config, KvRedis, MilterConfig, PluginConfig, PluginSettings};
use postrider_kv::{Clock, EmbeddedKv, KvStore, MemoryKv, RedisKv, RedisOptions, SystemClock};
use postrider_metrics::Metrics;
use postrider_plugin_host::{
    Dns, EngineOptions, LoadedPlugin, MilterSpec, Pipeline, PluginEngine, PluginSpec, Services,
    component_hash,
};
use tracing::{info, warn};

/// What every generation shares: created at the first configuration that has plugins.
#[derive(Clone)]
struct Runtime {
    engine: Arc<PluginEngine>,
    /// The engine's per-instance memory cap, fixed when it was created.
    max_memory_bytes: usize,
    /// The engine's instance pool size, fixed when it was created.
    max_instances: u32,
    kv: Arc<dyn KvStore>,
    /// Which kv store `kv` is: the embedded file, or a Redis.
    kv_backend: (PathBuf, Option<KvRedis>),
    clock: Arc<dyn Clock>,
}

/// The settings that choose the kv store, to notice a change that needs a restart.
fn kv_backend(settings: &PluginSettings) -> (PathBuf, Option<KvRedis>) {
    (settings.kv_path.clone(), settings.kv_redis.clone())
}

/// Opens the configured kv store: Redis when `kv_url` is set (without connecting yet, so
/// the relay starts while Redis is down), the embedded file otherwise.
fn open_kv(
    settings: &PluginSettings,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn KvStore>> {
    if let Some(redis) = open_redis(settings, clock, metrics)? {
        let cluster = settings.kv_redis.as_ref().map(|r| r.cluster.as_str());
        info!(cluster = cluster.unwrap_or_default(), "kv store: redis");
        return Ok(redis);
    }
    if let Some(dir) = settings.kv_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let kv = EmbeddedKv::open(&settings.kv_path, Arc::clone(clock))
        .with_context(|| format!("opening the kv store {}", settings.kv_path.display()))?;
    Ok(Arc::new(kv))
}

/// The configured kv store for `postrider kv` while the relay is stopped: its Redis, or its
/// embedded file.
pub fn open_offline_kv(settings: &PluginSettings) -> anyhow::Result<Arc<dyn KvStore>> {
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION"), 0));
    open_kv(
        settings,
        &(Arc::new(SystemClock) as Arc<dyn Clock>),
        &metrics,
    )
}

/// A client of the Redis of `[plugins] kv_url` (not connected yet, so the relay starts while
/// Redis is down), or `None` without one. The relay's own shared counts use it too.
pub fn open_redis(
    settings: &PluginSettings,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<dyn KvStore>>> {
    let Some(redis) = &settings.kv_redis else {
        return Ok(None);
    };
    let ca_pem = match &redis.ca_file {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let kv = RedisKv::new(
        RedisOptions {
            url: redis.url.clone(),
            cluster: redis.cluster.clone(),
            ca_pem,
            timeout: Duration::from_millis(settings.kv_timeout_ms),
        },
        Arc::clone(clock),
    )
    .context("plugins.kv_url")?;
    let metrics = Arc::clone(metrics);
    let kv = kv.with_failure_hook(Arc::new(move || metrics.kv_failure()));
    Ok(Some(Arc::new(kv)))
}

/// Builds pipelines; owns the one engine, kv store and resolver of the process.
pub struct PluginBuilder {
    dns: Arc<dyn Dns>,
    metrics: Arc<Metrics>,
    runtime: Mutex<Option<Runtime>>,
    /// `check-config`: plugins get an empty kv store in memory and no compile cache.
    check_only: bool,
}

impl PluginBuilder {
    /// A builder using `dns` for every generation; the engine is created lazily.
    pub fn new(dns: Arc<dyn Dns>, metrics: Arc<Metrics>) -> PluginBuilder {
        PluginBuilder {
            dns,
            metrics,
            runtime: Mutex::new(None),
            check_only: false,
        }
    }

    /// A builder for `check-config`: plugins are compiled and initialised as `serve` would,
    /// but their kv store is an empty one in memory (the relay's may be locked by the running
    /// relay, and a check must not change it) and nothing is written to the plugin cache.
    pub fn checking(dns: Arc<dyn Dns>, metrics: Arc<Metrics>) -> PluginBuilder {
        PluginBuilder {
            check_only: true,
            ..PluginBuilder::new(dns, metrics)
        }
    }

    /// The engine and services, created now if this is the first config with plugins.
    fn runtime(&self, config: &Config) -> anyhow::Result<Runtime> {
        let mut slot = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(runtime) = slot.as_ref() {
            return Ok(runtime.clone());
        }
        let settings = &config.plugin_settings;
        let max_memory_bytes = memory_cap(config);
        let engine = Arc::new(
            PluginEngine::new(&EngineOptions {
                max_instances: settings.max_instances,
                max_memory_bytes,
            })
            .context("starting the plugin engine")?,
        );
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let runtime = Runtime {
            engine,
            max_memory_bytes,
            max_instances: settings.max_instances,
            kv: if self.check_only {
                Arc::new(MemoryKv::new(Arc::clone(&clock)))
            } else {
                open_kv(settings, &clock, &self.metrics)?
            },
            kv_backend: kv_backend(settings),
            clock,
        };
        *slot = Some(runtime.clone());
        Ok(runtime)
    }

    /// Loads every configured plugin of `config`; `None` when there are none. Plugins of
    /// `previous` whose file (by hash) and settings are unchanged are reused as they are;
    /// every other plugin is compiled and canary-initialised now, so a plugin that does not
    /// compile or whose `init` fails makes the whole build fail.
    pub async fn build(
        &self,
        config: &Config,
        previous: Option<&Arc<Pipeline>>,
    ) -> anyhow::Result<Option<Arc<Pipeline>>> {
        if config.plugins.is_empty() && config.milters.is_empty() {
            return Ok(None);
        }
        let runtime = self.runtime(config)?;
        let settings = &config.plugin_settings;
        let wanted = memory_cap(config);
        if wanted > runtime.max_memory_bytes {
            anyhow::bail!(
                "a plugin's memory_mb ({} MiB) exceeds the engine's limit of {} MiB, fixed at \
                 start: restart the relay to raise it",
                wanted >> 20,
                runtime.max_memory_bytes >> 20
            );
        }
        if kv_backend(settings) != runtime.kv_backend {
            warn!(
                "plugins.kv_path/kv_url/kv_cluster/kv_ca_file changed: needs a restart; the \
                 running kv store stays in use"
            );
        }
        if settings.max_instances != runtime.max_instances {
            warn!(
                running = runtime.max_instances,
                configured = settings.max_instances,
                "plugins.max_instances changed: needs a restart"
            );
        }
        let services = Services {
            kv: Arc::clone(&runtime.kv),
            dns: Arc::clone(&self.dns),
            clock: Arc::clone(&runtime.clock),
            kv_timeout: Duration::from_millis(settings.kv_timeout_ms),
            dns_timeout: Duration::from_millis(settings.dns_timeout_ms),
            net_observer: Some(Arc::new(NetMetrics(Arc::clone(&self.metrics)))),
        };
        let mut plugins = Vec::new();
        for p in &config.plugins {
            let spec = spec_of(p);
            if let Some(old) = reusable(previous, &spec).await? {
                info!(plugin = %p.name, hash = %old.hash, "plugin unchanged, reused");
                plugins.push(old);
                continue;
            }
            let started = std::time::Instant::now();
            // A check writes nothing: not even compiled code into the cache.
            let cache = (!self.check_only).then_some(settings.cache_dir.as_path());
            let loaded = match p.builtin() {
                Some(name) => {
                    let bytes = crate::builtin::component(name)
                        .with_context(|| format!("plugin {}", p.name))?;
                    LoadedPlugin::from_bytes(
                        &runtime.engine,
                        spec,
                        bytes.to_vec(),
                        cache,
                        &services,
                    )
                    .await
                }
                None => LoadedPlugin::load(&runtime.engine, spec, cache, &services).await,
            };
            let plugin = loaded
                .with_context(|| format!("loading plugin {} from {}", p.name, p.path.display()))?;
            info!(plugin = %p.name, hash = %plugin.hash, ms = started.elapsed().as_millis() as u64, "plugin loaded");
            plugins.push(Arc::new(plugin));
        }
        let milters = config
            .milters
            .iter()
            .map(|m| milter_spec(config, m))
            .collect();
        Ok(Some(Arc::new(
            Pipeline::new(Arc::clone(&runtime.engine), plugins, services).with_milters(milters),
        )))
    }
}

/// The largest per-instance memory any plugin of `config` asks for, in bytes.
fn memory_cap(config: &Config) -> usize {
    config
        .plugins
        .iter()
        .map(|p| p.memory_mb as usize)
        .max()
        .unwrap_or(32)
        << 20
}

/// Plugins' network use into the relay's metrics.
struct NetMetrics(Arc<Metrics>);

impl postrider_plugin_host::NetObserver for NetMetrics {
    fn observe(
        &self,
        plugin: &str,
        kind: &str,
        grant: Option<&str>,
        result: &str,
        elapsed: Duration,
    ) {
        self.0.plugin_network(plugin, kind, grant, result, elapsed);
    }
}

/// The host's view of one `[[plugin]]` entry.
fn spec_of(p: &PluginConfig) -> PluginSpec {
    PluginSpec {
        name: p.name.clone(),
        path: p.path.clone(),
        config_json: p.config_json.clone(),
        failure_policy: p.failure_policy,
        timeout: Duration::from_millis(p.timeout_ms),
        memory_bytes: (p.memory_mb as usize) << 20,
        reuse: p.reuse,
        pool_idle: p.pool_idle,
        log_level: p.log_level,
        network: p.network.clone(),
    }
}

/// The host's view of one `[[milter]]` entry.
fn milter_spec(config: &Config, m: &MilterConfig) -> MilterSpec {
    MilterSpec {
        name: m.name.clone(),
        address: m.address.clone(),
        stages: m.stages.clone(),
        after: m.after.clone(),
        failure_policy: m.failure_policy,
        connect_timeout: Duration::from_millis(m.connect_timeout_ms),
        command_timeout: Duration::from_millis(m.command_timeout_ms),
        content_timeout: Duration::from_millis(m.content_timeout_ms),
        max_body: usize::try_from(config.limits.max_message_size).unwrap_or(usize::MAX),
        hostname: config.hostname.clone(),
    }
}

/// The previous generation's plugin with exactly this spec whose file still has the same
/// content, if there is one.
async fn reusable(
    previous: Option<&Arc<Pipeline>>,
    spec: &PluginSpec,
) -> anyhow::Result<Option<Arc<LoadedPlugin>>> {
    let Some(old) = previous.and_then(|p| p.plugins().iter().find(|old| old.spec() == spec)) else {
        return Ok(None);
    };
    let hash = file_hash(&spec.path).await?;
    Ok((hash == old.hash).then(|| Arc::clone(old)))
}

/// The [`component_hash`] of a plugin's component: a builtin, or a file (read and hashed on a
/// blocking thread).
async fn file_hash(path: &Path) -> anyhow::Result<String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || match postrider_config::builtin_name(&path) {
        Some(name) => Ok(component_hash(crate::builtin::component(name)?)),
        None => std::fs::read(&path)
            .map(|bytes| component_hash(&bytes))
            .with_context(|| format!("reading plugin {}", path.display())),
    })
    .await
    .context("hashing a plugin file")?
}

/// Records each plugin call of a stage in the metrics: duration, verdict, failure.
pub fn record_calls(
    metrics: &postrider_metrics::Metrics,
    calls: &[postrider_plugin_host::PluginCall],
) {
    for call in calls {
        metrics.plugin_call(
            call.stage.name(),
            &call.plugin,
            call.verdict,
            call.failure.as_ref().map(|f| f.kind()),
            call.elapsed,
        );
        if let Some(source) = call.instance {
            metrics.plugin_instance(&call.plugin, source.name());
        }
    }
}
