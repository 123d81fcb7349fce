//! Loading one plugin: read, compile (or reuse the on-disk cache), link, and a canary
//! instance whose `init` validates the config and names the stages the plugin wants; then
//! handing out initialised instances, fresh or (with `reuse` > 1) warm from its pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::Store;
use wasmtime::component::Component;

use crate::bindings::exports::postrider::plugin::filter::Stages;
use crate::bindings::{Plugin, PluginPre};
use crate::engine::PluginEngine;
use crate::error::{CallFailure, HostError};
use crate::net::PluginNet;
use crate::pool::WarmPool;
use crate::state::{HostState, Services};
use postrider_config::NetworkGrants;

pub use postrider_config::{FailurePolicy, PluginLogLevel, Stage};

/// The plugin-facing flag of a stage.
pub(crate) fn stage_flag(stage: Stage) -> Stages {
    match stage {
        Stage::Connect => Stages::CONNECT,
        Stage::Helo => Stages::HELO,
        Stage::MailFrom => Stages::MAIL_FROM,
        Stage::Rcpt => Stages::RCPT,
        Stage::Data => Stages::DATA,
        Stage::Route => Stages::ROUTE,
    }
}

/// One `[[plugin]]` of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// Name in logs; also its kv namespace.
    pub name: String,
    /// The component file.
    pub path: PathBuf,
    /// Its config table as JSON text, passed to `init`.
    pub config_json: String,
    /// What a failed call means.
    pub failure_policy: FailurePolicy,
    /// Deadline of each call.
    pub timeout: Duration,
    /// Memory cap of each instance, in bytes.
    pub memory_bytes: usize,
    /// Transactions (or routing calls) one instance may serve; 1 = a fresh instance each.
    pub reuse: u32,
    /// Most idle instances kept for reuse (only with `reuse` > 1).
    pub pool_idle: u32,
    /// `[[plugin]] log_level`: see [`postrider_config::PluginConfig::log_level`].
    pub log_level: Option<PluginLogLevel>,
    /// What it may reach on the network (nothing by default).
    pub network: NetworkGrants,
}

/// A compiled, validated plugin, ready to instantiate.
pub struct LoadedPlugin {
    pub(crate) spec: PluginSpec,
    pub(crate) pre: PluginPre<HostState>,
    pub(crate) stages: Stages,
    pub(crate) namespace: Arc<str>,
    pub(crate) pool: Arc<WarmPool>,
    /// Its network grants and HTTP client.
    pub(crate) net: Arc<PluginNet>,
    /// SHA-256 of the component file, hex.
    pub hash: String,
    /// When it was loaded (compiled or taken from the cache, and initialised).
    pub loaded_at: std::time::SystemTime,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.spec.name)
            .field("hash", &self.hash)
            .field("stages", &self.stages)
            .finish()
    }
}

/// A live instance: its store and bindings; dropped after a failure.
pub(crate) struct Instance {
    pub(crate) store: Store<HostState>,
    pub(crate) bindings: Plugin,
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// Transactions it was handed out for, the current one included.
    pub(crate) uses: u32,
    /// False while a guest call runs, and for good once one failed: a call whose future was
    /// dropped midway leaves the store unusable, and such an instance is never pooled.
    pub(crate) sound: bool,
}

impl LoadedPlugin {
    /// Reads, compiles (through `cache_dir` when given) and canary-initialises a plugin.
    pub async fn load(
        engine: &Arc<PluginEngine>,
        spec: PluginSpec,
        cache_dir: Option<&Path>,
        services: &Services,
    ) -> Result<LoadedPlugin, HostError> {
        let bytes = tokio::fs::read(&spec.path)
            .await
            .map_err(|e| HostError::Read {
                plugin: spec.name.clone(),
                path: spec.path.display().to_string(),
                message: e.to_string(),
            })?;
        LoadedPlugin::from_bytes(engine, spec, bytes, cache_dir, services).await
    }

    /// Compiles (through `cache_dir` when given) and canary-initialises the component
    /// `bytes` (a plugin built into the relay, or a file already read).
    pub async fn from_bytes(
        engine: &Arc<PluginEngine>,
        spec: PluginSpec,
        bytes: Vec<u8>,
        cache_dir: Option<&Path>,
        services: &Services,
    ) -> Result<LoadedPlugin, HostError> {
        let hash = component_hash(&bytes);
        let component = {
            let engine = Arc::clone(engine);
            let cache =
                cache_dir.map(|d| d.join(format!("{hash}-{:016x}.cwasm", compat_hash(&engine))));
            let name = spec.name.clone();
            tokio::task::spawn_blocking(move || compile(&engine, &bytes, cache.as_deref()))
                .await
                .map_err(|e| HostError::Compile {
                    plugin: name.clone(),
                    message: e.to_string(),
                })?
                .map_err(|message| HostError::Compile {
                    plugin: name,
                    message,
                })?
        };
        let instance_pre =
            engine
                .linker
                .instantiate_pre(&component)
                .map_err(|e| HostError::Compile {
                    plugin: spec.name.clone(),
                    message: format!("does not fit the host's interface: {e:#}"),
                })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| HostError::Compile {
            plugin: spec.name.clone(),
            message: format!("does not export postrider:plugin/filter: {e:#}"),
        })?;
        let pool = engine.pools.pool(spec.reuse, spec.pool_idle as usize);
        let net = Arc::new(PluginNet::new(
            &spec.name,
            spec.network.clone(),
            Arc::clone(&services.dns),
            services.dns_timeout,
        )?);
        let mut plugin = LoadedPlugin {
            namespace: Arc::from(spec.name.as_str()),
            net,
            pool,
            spec,
            pre,
            stages: Stages::empty(),
            hash,
            loaded_at: std::time::SystemTime::now(),
        };
        let mut canary = plugin
            .instantiate(engine, services, false)
            .await
            .map_err(|e| HostError::Init {
                plugin: plugin.spec.name.clone(),
                message: e.to_string(),
            })?;
        plugin.stages = plugin
            .init(&mut canary)
            .await
            .map_err(|message| HostError::Init {
                plugin: plugin.spec.name.clone(),
                message,
            })?;
        Ok(plugin)
    }

    /// The plugin's config entry.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// The stages the plugin asked for at `init`, by name, in stage order.
    pub fn stage_names(&self) -> Vec<&'static str> {
        [
            Stage::Connect,
            Stage::Helo,
            Stage::MailFrom,
            Stage::Rcpt,
            Stage::Data,
            Stage::Route,
        ]
        .into_iter()
        .filter(|s| self.wants(*s))
        .map(Stage::name)
        .collect()
    }

    /// Whether the plugin asked for `stage`.
    pub fn wants(&self, stage: Stage) -> bool {
        self.stages.contains(stage_flag(stage))
    }

    /// Idle instances kept for reuse now (always 0 unless `reuse` > 1).
    pub fn idle_instances(&self) -> usize {
        self.pool.idle_len()
    }

    /// Drops the idle instances and keeps none from now on: this plugin's config generation
    /// was replaced by a reload. Running transactions finish on their instances.
    pub fn retire(&self) {
        self.pool.retire();
    }

    /// An initialised instance for one transaction: a warm one from the pool (its `init`
    /// called again) when there is one, a fresh one otherwise.
    pub(crate) async fn checkout(
        &self,
        engine: &PluginEngine,
        services: &Services,
        trace: bool,
    ) -> Result<Instance, CallFailure> {
        while let Some(mut instance) = self.pool.take() {
            instance.store.data_mut().set_trace(trace);
            instance.sound = false;
            match self.init(&mut instance).await {
                Ok(_) => {
                    instance.sound = true;
                    instance.uses += 1;
                    return Ok(instance);
                }
                Err(message) => {
                    tracing::warn!(plugin = %self.spec.name, error = %message, "init of a reused instance failed; dropping it");
                }
            }
        }
        let mut instance = self.instantiate(engine, services, trace).await?;
        self.init(&mut instance).await.map_err(CallFailure::Trap)?;
        instance.sound = true;
        instance.uses = 1;
        Ok(instance)
    }

    /// Gives back an instance at the end of a transaction: kept for reuse when it is sound
    /// and the pool takes it, dropped otherwise.
    pub(crate) fn checkin(&self, instance: Instance) {
        self.pool.put(instance);
    }

    /// A fresh instance with this plugin's limits (not yet initialised).
    pub(crate) async fn instantiate(
        &self,
        engine: &PluginEngine,
        services: &Services,
        trace: bool,
    ) -> Result<Instance, CallFailure> {
        let slot =
            crate::pool::acquire_slot(&engine.instance_slots, &engine.pools, self.spec.timeout)
                .await?;
        let (store, bindings) = match self.instantiate_in(engine, services, trace).await {
            // Idle warm instances also hold the pooling allocator's core instances, memories
            // and tables: when one of those ran out, free them all and try once more.
            Err(CallFailure::Busy) if engine.pools.idle() > 0 => {
                engine.pools.evict_all();
                self.instantiate_in(engine, services, trace).await
            }
            other => other,
        }?;
        Ok(Instance {
            store,
            bindings,
            _slot: slot,
            uses: 0,
            sound: false,
        })
    }

    async fn instantiate_in(
        &self,
        engine: &PluginEngine,
        services: &Services,
        trace: bool,
    ) -> Result<(Store<HostState>, Plugin), CallFailure> {
        let state = HostState::new(
            Arc::clone(&self.namespace),
            self.spec.log_level,
            services.clone(),
            &self.net,
            self.spec.memory_bytes,
            trace,
        );
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|s| &mut s.limits);
        self.arm(&mut store);
        let bindings =
            tokio::time::timeout(self.spec.timeout, self.pre.instantiate_async(&mut store))
                .await
                .map_err(|_| CallFailure::Timeout(self.spec.timeout.as_millis()))?
                .map_err(|e| {
                    if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                        CallFailure::Busy
                    } else {
                        CallFailure::Trap(format!("{e:#}"))
                    }
                })?;
        Ok((store, bindings))
    }

    /// Sets the deadline for the next call. At every epoch tick the guest yields to the
    /// async executor (a busy guest never holds a worker thread for long); past the
    /// deadline it traps with `Interrupt`.
    pub(crate) fn arm(&self, store: &mut Store<HostState>) {
        let deadline = std::time::Instant::now() + self.spec.timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if std::time::Instant::now() >= deadline {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
    }

    /// Calls `init` with the plugin's config in a new instance.
    pub(crate) async fn init(&self, instance: &mut Instance) -> Result<Stages, String> {
        self.arm(&mut instance.store);
        let call = instance
            .bindings
            .postrider_plugin_filter()
            .call_init(&mut instance.store, &self.spec.config_json);
        match tokio::time::timeout(self.spec.timeout, call).await {
            Err(_) => Err(format!(
                "timed out after {} ms",
                self.spec.timeout.as_millis()
            )),
            Ok(Err(trap)) => Err(format!("trap: {trap:#}")),
            Ok(Ok(Err(message))) => Err(message),
            Ok(Ok(Ok(stages))) => Ok(stages),
        }
    }
}

/// Compiles a component, reading and writing the artifact cache when given.
fn compile(engine: &PluginEngine, bytes: &[u8], cache: Option<&Path>) -> Result<Component, String> {
    if let Some(path) = cache
        && path.exists()
    {
        {
            // SAFETY: `path` is in the relay's own cache directory, named by the SHA-256 of
            // the component and the engine's compatibility hash, and only ever written by
            // `write_cache` below from wasmtime's own precompile output.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize_file(&engine.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable compiled plugin cache")
                }
            }
        }
    }
    check_header(bytes)?;
    let component = Component::from_binary(&engine.engine, bytes)
        .map_err(|e| format!("not a valid component: {e:#}"))?;
    if let Some(path) = cache
        && let Err(e) = write_cache(&component, path)
    {
        tracing::warn!(path = %path.display(), error = %e, "could not write compiled plugin cache");
    }
    Ok(component)
}

/// Refuses, with a message that says what the file is, anything but a binary component: a
/// core module or a text file named `.wasm` would otherwise get a parser's error.
fn check_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT: &[u8] = &[0x0d, 0x00, 0x01, 0x00];
    const MODULE: &[u8] = &[0x01, 0x00, 0x00, 0x00];
    match (bytes.get(..4), bytes.get(4..8)) {
        (Some(MAGIC), Some(COMPONENT)) => Ok(()),
        (Some(MAGIC), Some(MODULE)) => Err("a core WebAssembly module, not a component: build \
             for wasm32-wasip2, or wrap it with `wasm-tools component new`"
            .to_owned()),
        (Some(MAGIC), _) => Err(
            "a WebAssembly binary of an unknown version, not a component \
             this host reads"
                .to_owned(),
        ),
        _ => Err(format!(
            "not a WebAssembly component (a component file starts with \"\\0asm\"; this one \
             starts with {:?})",
            String::from_utf8_lossy(&bytes[..bytes.len().min(16)])
        )),
    }
}

/// Writes the artifact atomically (temp file, then rename), so a half-written file is never read.
fn write_cache(component: &Component, path: &Path) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn compat_hash(engine: &PluginEngine) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// The hash a loaded plugin is known by ([`LoadedPlugin::hash`]): SHA-256 of its component,
/// in hex, so a reload can tell whether a file still holds the same build.
pub fn component_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_header;

    #[test]
    fn only_binary_components_pass_the_header_check() {
        assert_eq!(check_header(b"\0asm\x0d\x00\x01\x00rest"), Ok(()));
        let module = check_header(b"\0asm\x01\x00\x00\x00").unwrap_err();
        assert!(module.contains("core WebAssembly module"), "{module}");
        let text = check_header(b"(component)\n").unwrap_err();
        assert!(
            text.contains("not a WebAssembly component") && text.contains("(component)"),
            "{text}"
        );
        assert!(
            check_header(b"")
                .unwrap_err()
                .contains("not a WebAssembly component")
        );
        assert!(
            check_header(b"\0asm\x02\x00")
                .unwrap_err()
                .contains("unknown version")
        );
    }
}
