//! Builds the plugin pipeline from the config: the engine, the services plugins import
//! (embedded kv, the relay's resolver, the clock) and every `[[plugin]]`, loaded in order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use postrider_config::{Config, FailurePolicy};
use postrider_kv::{EmbeddedKv, SystemClock};
use postrider_plugin_host::{
    self as host, Dns, EngineOptions, LoadedPlugin, Pipeline, PluginEngine, PluginSpec, Services,
};
use tracing::info;

/// Loads every configured plugin; `None` when there are none (no engine is built then).
pub async fn load(config: &Config, dns: Arc<dyn Dns>) -> anyhow::Result<Option<Arc<Pipeline>>> {
    if config.plugins.is_empty() {
        return Ok(None);
    }
    let settings = &config.plugin_settings;
    let max_memory = config
        .plugins
        .iter()
        .map(|p| p.memory_mb as usize)
        .max()
        .unwrap_or(32)
        << 20;
    let engine = Arc::new(
        PluginEngine::new(&EngineOptions {
            max_instances: settings.max_instances,
            max_memory_bytes: max_memory,
        })
        .context("starting the plugin engine")?,
    );
    if let Some(dir) = settings.kv_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let clock = Arc::new(SystemClock);
    let kv = EmbeddedKv::open(&settings.kv_path, clock.clone())
        .with_context(|| format!("opening the kv store {}", settings.kv_path.display()))?;
    let services = Services {
        kv: Arc::new(kv),
        dns,
        clock,
        kv_timeout: Duration::from_millis(settings.kv_timeout_ms),
        dns_timeout: Duration::from_millis(settings.dns_timeout_ms),
    };
    let mut plugins = Vec::new();
    for p in &config.plugins {
        let spec = PluginSpec {
            name: p.name.clone(),
            path: p.path.clone(),
            config_json: p.config_json.clone(),
            failure_policy: match p.failure_policy {
                FailurePolicy::Tempfail => host::FailurePolicy::Tempfail,
                FailurePolicy::Continue => host::FailurePolicy::Continue,
                FailurePolicy::Reject => host::FailurePolicy::Reject,
            },
            timeout: Duration::from_millis(p.timeout_ms),
            memory_bytes: (p.memory_mb as usize) << 20,
        };
        let started = std::time::Instant::now();
        let plugin =
            LoadedPlugin::load(&engine, spec, Some(&settings.cache_dir), &services).await?;
        info!(plugin = %p.name, hash = %plugin.hash, ms = started.elapsed().as_millis() as u64, "plugin loaded");
        plugins.push(Arc::new(plugin));
    }
    Ok(Some(Arc::new(Pipeline::new(engine, plugins, services))))
}
